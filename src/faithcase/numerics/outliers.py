"""The one rule for positions that never count as activations: BOS and massive-activation positions.

Residual streams of small chat models hold a few positions with norms ~200x the median; they would
dominate SAE training, quality figures and every `max` window. The demo bundle, its manifest and the
windows stage all call `excluded_positions` with the same settings.
"""

from __future__ import annotations

import torch


def excluded_positions(resid: torch.Tensor, norm_ratio: float | None,
                       exclude_bos: bool = True) -> torch.Tensor:
    """Bool mask [B, T]: position 0 when exclude_bos, and positions whose residual norm exceeds
    norm_ratio × the median norm of this batch's other positions."""
    batch, length = resid.shape[:2]
    excluded = torch.zeros(batch, length, dtype=torch.bool, device=resid.device)
    if exclude_bos:
        excluded[:, 0] = True
    if norm_ratio is not None:
        norms = resid.float().norm(dim=-1)
        candidates = norms[~excluded]
        if candidates.numel():
            excluded |= norms > norm_ratio * candidates.median()
    return excluded


def counted_positions(excluded: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    """Bool mask [B, T] of the positions that count as activations: 1..T-1 (position 0 is BOS and
    never counts), minus the excluded ones."""
    counted = torch.ones(shape, dtype=torch.bool) if excluded is None else ~excluded.cpu()
    counted[:, 0] = False
    return counted
