"""Optimal one-to-one assignment of two sets of unit vectors by cosine similarity.

Two exact solvers:

- ``dense``: scipy's ``linear_sum_assignment`` on the full similarity matrix (the reference).
- ``sparse``: one blocked pass over the similarity keeps the top pairs of every row exactly and,
  per row and per column, an upper bound on every pair it did not keep. A candidate graph (the
  top-k pairs of every row and column) is solved exactly (``min_weight_full_bipartite_matching``);
  LP dual potentials of that solution are then checked against every pair of the full matrix:
  kept pairs directly, the others through the bounds, and where the bounds cannot decide, the
  row is recomputed exactly. Pairs that break the check join the graph and it is solved again,
  until none does: the assignment is then provably optimal (up to a 1e-7 tolerance).

This module is the entry point (`solve`) and the dense solver; the sparse solver is
`sparse_assignment.py`, its candidate graph `candidate_graph.py`, its certificate
`certificate.py`, and the similarity primitive `similarity.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from faithcase.artifacts import SolverInfo
from faithcase.numerics.similarity import (
    BLOCK_ROWS,
    cosine_similarity,
    full_similarity,
    similarity_blocks,
    unit_rows,
)
from faithcase.numerics.solution import Solution
from faithcase.numerics.certificate import SparseSettings
from faithcase.numerics.sparse_assignment import solve_sparse

__all__ = [  # the similarity primitives are re-exported: callers import them from here
    "BLOCK_ROWS", "DEEPEN_MAX_PER_ROW", "DEFAULT_TOLERANCE", "DENSE_AUTO_MAX_PAIRS", "SOLVERS",
    "Solution", "cosine_similarity", "similarity_blocks", "solve", "unit_rows",
]

SOLVERS = ("auto", "dense", "sparse")
DENSE_AUTO_MAX_PAIRS = 4096 * 4096  # "auto" solves densely up to this many similarity entries
DEFAULT_TOLERANCE = 1e-7  # a left-out pair may exceed u_i + v_j by this much (float32 similarity)
DEEPEN_MAX_PER_ROW = 1024  # pairs kept per row when the sparse solver computes a whole row


def _solve_dense(A: torch.Tensor, B: torch.Tensor, block_rows: int) -> Solution:
    """scipy's exact assignment on the full float32 similarity matrix."""
    sim_np = full_similarity(A, B, block_rows).numpy()
    rows, cols = linear_sum_assignment(sim_np, maximize=True)
    sims = sim_np[rows, cols]
    row_best, col_best = sim_np.max(axis=1), sim_np.max(axis=0)
    total = float(sims.astype(np.float64).sum())
    info = SolverInfo(
        name="dense",
        exact=True,
        certified=False,
        total=total,
        upper_bound=float(row_best.astype(np.float64).sum()),
        dual_bound=None,
        relative_gap=0.0,
        iterations=1,
        candidate_edges=int(sim_np.size),
        seconds=0.0,
        tolerance=0.0,
        message="exact: scipy linear_sum_assignment on the full similarity matrix",
    )
    return Solution(cols=cols, sims=sims, info=info, row_best=row_best, col_best=col_best)


def _quiet(stage: str, done: int, total: int) -> None:
    pass


def solve(A: torch.Tensor, B: torch.Tensor, solver: str = "auto", k: int = 16, depth: int = 64,
          tolerance: float = DEFAULT_TOLERANCE, max_iterations: int = 50,
          time_limit: float | None = None, block_rows: int = BLOCK_ROWS,
          progress: Callable[[str, int, int], None] | None = None) -> Solution:
    """Optimal assignment of the rows of A (the smaller side) to rows of B, both unit-row float32.

    ``solver``: "dense", "sparse" or "auto" (dense up to 4096 x 4096 pairs). Sparse only: ``k``
    pairs per row and per column start in the candidate graph; ``depth`` pairs per row are kept
    exactly by the first pass; ``max_iterations`` and ``time_limit`` (seconds, checked between
    rounds) cap the certification: when hit, the best assignment found is returned, uncertified.
    """
    if solver == "auto":
        solver = "dense" if A.shape[0] * B.shape[0] <= DENSE_AUTO_MAX_PAIRS else "sparse"
    start = time.perf_counter()
    if solver == "dense":
        solution = _solve_dense(A, B, block_rows)
    else:
        settings = SparseSettings(k=k, depth=depth, tol=tolerance, max_iterations=max_iterations,
                                  time_limit=time_limit, block_rows=block_rows,
                                  max_per_row=DEEPEN_MAX_PER_ROW, progress=progress or _quiet)
        solution = solve_sparse(A, B, settings)
    solution.info = solution.info.model_copy(update={"seconds": time.perf_counter() - start})
    return solution
