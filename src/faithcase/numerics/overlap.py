"""Shared latents under two definitions: the decoder assignment alone, or decoder and encoder.

- ``faithfulsae`` (FaithfulSAE, `scripts/feat_match.py`): one Hungarian assignment on unit decoder
  rows; a latent is shared when its matched decoder cosine is > threshold (0.7).
- ``paulo_belrose`` (Paulo & Belrose 2025, "Sparse Autoencoders Trained on the Same Data Learn
  Different Features", EleutherAI/sae_overlap `hungarian_aligmnent.py`): a second assignment on
  unit encoder directions (sparsify's `encoder.weight` rows = our `W_enc[:, i]`); a latent is
  shared when both assignments pick the same partner and both cosines are above the threshold.
  Their script solves each assignment (scipy `linear_sum_assignment(maximize=True)` on the full
  cosine matrix, NaN set to 0) and saves the indices and the mean matched cosine; it applies no
  threshold. The 0.7 cut lives in the repo's notebook (`sae_overlap.ipynb`), which is over the
  size the reference store keeps, so whether it is `>` or `>=` could not be read: we use `>`, as
  FaithfulSAE does. On float cosines the two differ only at exact ties.

Both use the certified solver of `assignment.py` over alive rows (`matching.match_features`).
The share of agreement is the share of decoder-matched pairs that the encoder assignment also
makes. Ratios are over the decoder-matched pairs (`MatchStats.n_matched`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from faithcase.artifacts import EncoderMatching, Matching
from faithcase.numerics import directions
from faithcase.numerics.matching import match_features

DEFINITIONS = {
    "faithfulsae": "decoder assignment only: matched decoder cosine > threshold (FaithfulSAE)",
    "paulo_belrose": "decoder and encoder assignments pick the same partner and both cosines "
                     "> threshold (Paulo & Belrose 2025)",
}


def encoder_rows(sae: Any) -> tuple[torch.Tensor | None, str | None]:
    """(each latent's encoder direction as a row [d_sae, d_in], None) or (None, why there is none):
    no encoder weights, a transcoder (its encoder reads another site than its decoder writes),
    a shape that does not pair with the decoder, or no alive encoder row."""
    W_enc, W_dec = getattr(sae, "W_enc", None), getattr(sae, "W_dec", None)
    if W_enc is None:
        return None, "no encoder weights"
    if getattr(sae, "transcoder", False) or getattr(sae, "transcode", False):
        return None, "a transcoder: its encoder reads another site than its decoder writes"
    if W_enc.ndim != 2 or W_dec is None or tuple(W_enc.shape[::-1]) != tuple(W_dec.shape):
        shape = tuple(W_enc.shape)
        return None, f"encoder of shape {shape} does not pair with the decoder's latents"
    rows = W_enc.detach().cpu().T.float()
    if bool(directions.dead_rows(rows).all()):
        return None, "every encoder direction is zero or non-finite"
    return rows, None


def match_saes(sae1: Any, sae2: Any, threshold: float = 0.7, solver: str = "auto",
               names: tuple[str, str] = ("SAE 1", "SAE 2"), progress=None,
               encoder: bool = True, **solver_options) -> Matching:
    """The decoder `Matching` of two SAEs (anything with W_dec [d_sae, d_in], and W_enc
    [d_in, d_sae] for the encoder definition) with its `encoder` assignment filled in
    (`encoder` False: the decoder definition only, the encoder's reason says so)."""
    decoder = match_features(sae1.W_dec.float(), sae2.W_dec.float(), threshold, solver,
                             progress=progress, **solver_options)
    if not encoder:
        return decoder.model_copy(update={"encoder": match_encoders(
            decoder, None, None, "encoder matching off (match.encoder: false)")})
    (rows1, why1), (rows2, why2) = encoder_rows(sae1), encoder_rows(sae2)
    reason = f"{names[0]}: {why1}" if why1 else f"{names[1]}: {why2}" if why2 else None
    encoder = match_encoders(decoder, rows1, rows2, reason, solver, progress=progress,
                             **solver_options)
    return decoder.model_copy(update={"encoder": encoder})


def match_encoders(decoder: Matching, rows1: torch.Tensor | None, rows2: torch.Tensor | None,
                   reason: str | None = None, solver: str = "auto",
                   **solver_options) -> EncoderMatching:
    """The encoder assignment of two SAEs beside their decoder `Matching`, and both definitions.
    rows: `encoder_rows` of each SAE; None (with `reason`) reports the decoder definition only."""
    threshold = decoder.stats.threshold
    faithfulsae = decoder.stats.shared_ratio
    if rows1 is None or rows2 is None:
        return EncoderMatching(reason=reason or "no encoder directions", faithfulsae=faithfulsae)
    encoder = match_features(rows1, rows2, threshold, solver, rows="encoder", **solver_options)
    partner, cosine = _partners(encoder, len(rows1))
    index1 = np.asarray(decoder.assignment.index1, dtype=np.int64)
    index2 = np.asarray(decoder.assignment.index2, dtype=np.int64)
    enc2, enc_cos = partner[index1], cosine[index1]
    agree = enc2 == index2
    dec_cos = np.asarray(decoder.assignment.similarity, dtype=np.float64)
    shared = agree & (dec_cos > threshold) & (enc_cos > threshold)
    return EncoderMatching(
        faithfulsae=faithfulsae, paulo_belrose=float(shared.mean()), agreement=float(agree.mean()),
        mean_similarity=encoder.stats.mean_similarity, solver=encoder.solver,
        index2=[None if j < 0 else int(j) for j in enc2],
        similarity=[None if j < 0 else float(c) for j, c in zip(enc2, enc_cos)])


def _partners(encoder: Matching, n1: int) -> tuple[np.ndarray, np.ndarray]:
    """Each SAE 1 latent's encoder partner (-1: none) and encoder cosine (NaN: none)."""
    partner = np.full(n1, -1, dtype=np.int64)
    cosine = np.full(n1, np.nan, dtype=np.float64)
    partner[encoder.assignment.index1] = encoder.assignment.index2
    cosine[encoder.assignment.index1] = encoder.assignment.similarity
    return partner, cosine


def shared_pairs(decoder: Matching, definition: str) -> np.ndarray | None:
    """Boolean mask over the decoder-matched pairs: shared under `definition`; None when the
    definition needs an encoder the pair does not have."""
    sims = np.asarray(decoder.assignment.similarity, dtype=np.float64)
    threshold = decoder.stats.threshold
    if definition == "faithfulsae":
        return sims > threshold
    encoder = decoder.encoder
    if encoder is None or encoder.index2 is None:
        return None
    partner = np.array([-1 if j is None else j for j in encoder.index2], dtype=np.int64)
    cosine = np.array([np.nan if c is None else c for c in encoder.similarity], dtype=np.float64)
    same = partner == np.asarray(decoder.assignment.index2, dtype=np.int64)
    return same & (sims > threshold) & (cosine > threshold)


def shared_counts(order: list[str], n_features: Mapping[str, int],
                  matchings: Mapping[tuple[str, str], Matching],
                  definition: str) -> dict[str, np.ndarray] | None:
    """Per SAE, per latent: in how many of the other SAEs it has a shared partner under
    `definition` (None when a pair lacks what the definition needs). `matchings`: keyed (a, b)
    with a before b in `order`."""
    counts = {name: np.zeros(n_features[name], dtype=np.int64) for name in order}
    for a, b in itertools.combinations(order, 2):
        decoder = matchings[(a, b)]
        mask = shared_pairs(decoder, definition)
        if mask is None:
            return None
        counts[a][np.asarray(decoder.assignment.index1, dtype=np.int64)[mask]] += 1
        counts[b][np.asarray(decoder.assignment.index2, dtype=np.int64)[mask]] += 1
    return counts


def overlap_histogram(counts: np.ndarray, alive: np.ndarray, n_saes: int) -> list[int]:
    """Number of alive latents shared with exactly k of the other SAEs, k = 0 .. n_saes - 1."""
    return np.bincount(counts[alive], minlength=n_saes)[:n_saes].astype(int).tolist()
