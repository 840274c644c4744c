"""The second paper's computation (EleutherAI/sae_overlap, hungarian_aligmnent.py), written
independently with scipy: the reference the overlap tests compare faithcase against."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def unit(W: np.ndarray) -> np.ndarray:
    return W / np.linalg.norm(W, axis=1, keepdims=True)


def sae_overlap(enc1, enc2, dec1, dec2, threshold=0.7) -> dict:
    """EleutherAI/sae_overlap's hungarian_aligmnent.py run twice (encoder rows, then decoder rows:
    unit rows, NaN -> 0, linear_sum_assignment maximizing), then the shared rule: same partner,
    both cosines above the threshold."""
    found = {}
    for name, (A, B) in {"encoder": (enc1, enc2), "decoder": (dec1, dec2)}.items():
        cost = np.nan_to_num(unit(A) @ unit(B).T, nan=0)
        rows, cols = linear_sum_assignment(cost, maximize=True)
        found[name] = rows, cols, cost[rows, cols]
    (enc_rows, enc_cols, enc_cos), (dec_rows, dec_cols, dec_cos) = found["encoder"], found["decoder"]
    assert (enc_rows == dec_rows).all()
    agree = enc_cols == dec_cols
    return {"faithfulsae": (dec_cos > threshold).mean(), "agreement": agree.mean(),
            "paulo_belrose": (agree & (enc_cos > threshold) & (dec_cos > threshold)).mean(),
            "enc_cols": enc_cols, "enc_cos": enc_cos}
