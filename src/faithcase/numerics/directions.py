"""Feature directions: unit decoder rows, the dead rows (all zero or non-finite) that have none,
and seeded random unit directions."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from faithcase.run.errors import FaithcaseError


def dead_rows(W: torch.Tensor) -> torch.Tensor:
    """Boolean mask of rows that are all zero or hold a non-finite value."""
    return ~torch.isfinite(W).all(dim=1) | (W == 0).all(dim=1)


def unit_directions(W_dec: torch.Tensor, features: Iterable[int]) -> dict[int, torch.Tensor]:
    """{feature: W_dec[feature] / ||W_dec[feature]||} in float32; FaithcaseError for an index out
    of range or a dead feature (it has no direction to explain)."""
    n = int(W_dec.shape[0])
    directions = {}
    for feature in map(int, features):
        if not 0 <= feature < n:
            raise FaithcaseError(f"feature index {feature} out of range; the SAE has features "
                                 f"0..{n - 1}.")
        row = W_dec[feature].detach().float()
        if bool(dead_rows(row[None])[0]):
            raise FaithcaseError(f"feature {feature} has a zero or non-finite decoder row (a dead "
                                 "feature); it cannot be explained.")
        directions[feature] = row / row.norm()
    return directions


def random_directions(n: int, d_model: int, seed: int) -> torch.Tensor:
    """n seeded random unit directions [n, d_model] (float32)."""
    directions = torch.randn(n, d_model, generator=torch.Generator().manual_seed(seed))
    return directions / directions.norm(dim=-1, keepdim=True)
