"""Matching the features of two SAEs by the cosine similarity of their decoder rows.

The optimal one-to-one assignment that maximizes the total cosine similarity (Hungarian; the solvers
are in `assignment.py`), over alive features only: a decoder row that is all zero or holds a
non-finite value is a dead feature, counted and never matched. The statistics are FaithfulSAE's
(`scripts/feat_match.py`): rows L2-normalized, the shared ratio is the share of matched pairs above
the threshold, the top-1 ratio the share of SAE 2 features whose best SAE 1 cosine is above it
(`top1_ratio_sae1` is the other direction).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from faithcase.artifacts import Assignment, Histogram, Matching, MatchStats
from faithcase.numerics import assignment as solvers
from faithcase.numerics import directions
from faithcase.run.errors import FaithcaseError

HISTOGRAM_BINS = 50


def dead_rows(W: torch.Tensor) -> torch.Tensor:
    """Boolean mask of rows that are all zero or hold a non-finite value (a checked decoder)."""
    _check_matrix(W, "decoder")
    return directions.dead_rows(W)


def match_features(
    W_dec1: torch.Tensor,
    W_dec2: torch.Tensor,
    threshold: float = 0.7,
    solver: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
    rows: str = "decoder",
    **solver_options,
) -> Matching:
    """Optimal one-to-one matching of the alive features of two SAEs by decoder cosine similarity.

    ``solver``: "dense" (scipy on the full matrix), "sparse" (certified candidate graph) or
    "auto" (dense up to 4096 x 4096 pairs); ``solver_options`` go to `assignment.solve`.
    ``rows`` names the directions in messages ("encoder": W_enc.T rows, numerics/overlap.py).
    """
    _check_inputs(W_dec1, W_dec2, solver, solver_options, rows)
    W_dec1, W_dec2 = W_dec1.detach().cpu(), W_dec2.detach().cpu()  # parameters or GPU tensors
    dead1, dead2 = directions.dead_rows(W_dec1), directions.dead_rows(W_dec2)
    alive1, alive2 = _alive(dead1, "SAE 1", rows), _alive(dead2, "SAE 2", rows)

    A = solvers.unit_rows(W_dec1[torch.from_numpy(alive1)])
    B = solvers.unit_rows(W_dec2[torch.from_numpy(alive2)])
    transposed = len(alive1) > len(alive2)  # the solvers want rows to be the smaller side
    rows_side, cols_side = (B, A) if transposed else (A, B)
    solution = solvers.solve(rows_side, cols_side, solver, progress=progress, **solver_options)

    rows = np.arange(len(solution.cols))
    if transposed:
        local1, local2, best1, best2 = solution.cols, rows, solution.col_best, solution.row_best
    else:
        local1, local2, best1, best2 = rows, solution.cols, solution.row_best, solution.col_best
    order = np.argsort(local1)
    similarity = solution.sims[order].astype(np.float32)
    stats = _match_stats(similarity, (best1, best2), (dead1, dead2), threshold)
    assignment = Assignment(index1=alive1[local1[order]].tolist(),
                            index2=alive2[local2[order]].tolist(), similarity=similarity.tolist())
    return Matching(stats=stats, solver=solution.info, assignment=assignment)


def _check_inputs(W_dec1: torch.Tensor, W_dec2: torch.Tensor, solver: str,
                  solver_options: dict, rows: str = "decoder") -> None:
    """One-line errors for decoders that cannot be matched and for unknown solver settings."""
    _check_matrix(W_dec1, f"SAE 1 {rows}")
    _check_matrix(W_dec2, f"SAE 2 {rows}")
    if W_dec1.shape[1] != W_dec2.shape[1]:
        raise FaithcaseError(
            f"the SAEs have different {rows} widths ({W_dec1.shape[1]} vs {W_dec2.shape[1]}): "
            "match SAEs trained on the same model and hook site"
        )
    if solver not in solvers.SOLVERS:
        raise FaithcaseError(f"unknown matching solver {solver!r}: "
                             f"use one of {', '.join(solvers.SOLVERS)}")
    if solver_options.get("k", 1) < 1 or solver_options.get("depth", 1) < 1:
        raise FaithcaseError(f"k and depth must be at least 1 (got {solver_options})")


def _alive(dead: torch.Tensor, name: str, rows: str = "decoder") -> np.ndarray:
    """Indices of the alive features of one SAE; an error if there are none."""
    alive = torch.nonzero(~dead).flatten().numpy()
    if len(alive) == 0:
        raise FaithcaseError(f"{name} has no alive features: "
                             f"every {rows} row is zero or non-finite")
    return alive


def _match_stats(similarity: np.ndarray, best: tuple, dead_masks: tuple[torch.Tensor, torch.Tensor],
                 threshold: float) -> MatchStats:
    """Statistics of the matched pairs. best: each SAE's best cosine of every alive feature;
    dead_masks: each SAE's dead features."""
    sims = similarity.astype(np.float64)
    counts, edges = np.histogram(np.clip(sims, -1.0, 1.0), bins=HISTOGRAM_BINS, range=(-1.0, 1.0))
    best1, best2 = (np.asarray(values, dtype=np.float64) for values in best)
    dead = [torch.nonzero(mask).flatten().tolist() for mask in dead_masks]
    return MatchStats(
        threshold=threshold,
        n_features1=len(dead_masks[0]),
        n_features2=len(dead_masks[1]),
        n_alive1=int((~dead_masks[0]).sum()),
        n_alive2=int((~dead_masks[1]).sum()),
        n_dead1=len(dead[0]),
        n_dead2=len(dead[1]),
        n_matched=len(similarity),
        shared_ratio=float((sims > threshold).mean()),
        top1_ratio=float((best2 > threshold).mean()),
        top1_ratio_sae1=float((best1 > threshold).mean()),
        mean_similarity=float(sims.mean()),
        histogram=Histogram(edges=edges.tolist(), counts=counts.tolist()),
        dead1=dead[0],
        dead2=dead[1],
    )


def _check_matrix(W: torch.Tensor, name: str) -> None:
    if not isinstance(W, torch.Tensor) or W.ndim != 2:
        raise FaithcaseError(f"the {name} must be a 2-D tensor [features, d_in]")
    if not W.is_floating_point():
        raise FaithcaseError(f"the {name} must hold floating-point values (got {W.dtype})")
