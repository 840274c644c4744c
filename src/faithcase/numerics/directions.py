"""Feature directions: unit decoder rows, the dead rows (all zero or non-finite) that have none,
and seeded random unit directions."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from faithcase.numerics.similarity import BLOCK_ROWS, similarity_blocks, unit_rows
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


def nearest_rows(W_from: torch.Tensor, W_to: torch.Tensor,
                 chunk: int = BLOCK_ROWS) -> tuple[list[int], list[int], list[float]]:
    """Each alive row of W_from (its index) with the alive row of W_to at the highest cosine (its
    nearest neighbour: index and cosine, float32, as the matching computes it), in row blocks of
    W_from; ties: the lowest index."""
    W_from, W_to = W_from.detach().float().cpu(), W_to.detach().float().cpu()
    alive_from = torch.nonzero(~dead_rows(W_from)).flatten()
    alive_to = torch.nonzero(~dead_rows(W_to)).flatten()
    if len(alive_from) == 0 or len(alive_to) == 0:
        return [], [], []
    partners, sims = [], []
    for _, block in similarity_blocks(unit_rows(W_from[alive_from]), unit_rows(W_to[alive_to]),
                                      chunk):
        best, at = block.max(dim=1)
        partners += alive_to[at].tolist()
        sims += best.tolist()
    return alive_from.tolist(), partners, sims
