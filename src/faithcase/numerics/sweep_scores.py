"""Scores of a steering sweep: normalised curves, the best scales, the best self-similarity."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _min_max(values: torch.Tensor) -> torch.Tensor:
    low = values.min(dim=-1, keepdim=True).values
    span = values.max(dim=-1, keepdim=True).values - low
    return torch.where(span > 0, (values - low) / span.clamp_min(1e-12), torch.zeros_like(values))


def score_sweep(selfsim: torch.Tensor, curve: torch.Tensor, selfsim_weight: float,
                criterion_weight: float) -> torch.Tensor:
    """Per feature, both curves min-max normalized over the grid;
    score = w_s·selfsim − w_c·curve."""
    return selfsim_weight * _min_max(selfsim) - criterion_weight * _min_max(curve)


def best_scales(scores: torch.Tensor, eligible: Sequence[bool], n_best: int) -> list[list[int]]:
    """Indices of the n_best highest-scoring eligible scales per feature, best first."""
    allowed = torch.tensor(eligible, dtype=torch.bool)
    masked = torch.where(allowed[None, :], scores, torch.full_like(scores, -math.inf))
    k = min(n_best, int(allowed.sum()))
    return masked.topk(k, dim=-1).indices.tolist()


def best_selfsim(selfsim: torch.Tensor, eligible: Sequence[bool]) -> torch.Tensor:
    """Per row, the highest self-similarity over the eligible scales."""
    return selfsim[:, torch.tensor(eligible, dtype=torch.bool)].max(dim=-1).values
