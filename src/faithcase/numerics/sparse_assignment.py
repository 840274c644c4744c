"""The sparse exact solver: candidate graph + exact solve + dual certificate, repeated.

See `assignment.py` for the method; the graph is `candidate_graph.py`'s, the certificate
`certificate.py`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from faithcase.artifacts import SolverInfo
from faithcase.numerics.candidate_graph import (
    KnownPairs,
    SimilarityScan,
    complete_to_full_matching,
    initial_graph,
    scan_similarity,
    solve_on_graph,
)
from faithcase.numerics.certificate import (
    SparseSettings,
    add_most_violated,
    broken_known,
    dual_potentials,
    find_violations,
    repaired_dual_bound,
)
from faithcase.numerics.solution import Solution


@dataclass
class _Outcome:
    """How the certification loop ended."""

    matched: np.ndarray  # column matched to each row
    certified: bool
    dual_bound: float | None
    iterations: int
    message: str


def solve_sparse(A: torch.Tensor, B: torch.Tensor, settings: SparseSettings) -> Solution:
    """Candidate graph + exact solve + dual certificate, repeated until certified or capped."""
    start = time.perf_counter()
    depth = max(settings.depth, settings.k)
    scan = scan_similarity(A, B, depth, settings.block_rows, settings.progress)
    known = initial_graph(scan, settings.k, A.shape[0], B.shape[0])  # the rest stays in reserve
    completed = complete_to_full_matching(known, A, B)
    row_bound = scan.row_bound.copy()  # deepening tightens row bounds
    outcome = _certify(A, B, known, row_bound, scan.col_bound, settings, start)
    if completed:
        outcome.message += f"; {completed} rows needed extra candidate pairs to be matchable"
    return _solution(known, scan, outcome, settings.tol)


def _certify(A, B, known: KnownPairs, row_bound, col_bound, settings: SparseSettings,
             start: float) -> _Outcome:
    """Solve on the graph, check the certificate, grow the graph; until certified or capped."""
    tol, iterations = settings.tol, 0
    while True:
        iterations += 1
        settings.progress("certify", iterations, settings.max_iterations)
        matched = solve_on_graph(known)
        potentials = dual_potentials(known, matched)
        if potentials is None:
            message = "dual potentials did not settle (numerical trouble); assignment not certified"
            return _Outcome(matched, False, None, iterations, message)
        u, v = potentials
        broken, (new_rows, new_cols, new_sims) = find_violations(
            A, B, known, row_bound, col_bound, u, v, settings
        )
        n_broken = len(broken) + len(new_rows)
        if n_broken == 0:
            dual_bound = float(u.sum() + v.sum() + known.n_rows * tol)
            message = f"certified optimal: no pair exceeds its dual potentials by more than {tol:g}"
            return _Outcome(matched, True, dual_bound, iterations, message)
        add_most_violated(known, broken_known(known, u, v, tol - settings.near), u, v, settings.k)
        known.add(new_rows, new_cols, new_sims, in_graph=True)
        elapsed = time.perf_counter() - start
        out_of_time = settings.time_limit is not None and elapsed > settings.time_limit
        if iterations >= settings.max_iterations or out_of_time:
            dual_bound = repaired_dual_bound(known, row_bound, u, v)
            message = (
                f"not certified: stopped after {iterations} iterations ({elapsed:.0f} s) with "
                f"{n_broken} pairs still breaking the certificate; best assignment returned"
            )
            return _Outcome(solve_on_graph(known), False, dual_bound, iterations, message)


def _solution(known: KnownPairs, scan: SimilarityScan, outcome: _Outcome, tol: float) -> Solution:
    """The matched pairs' similarities and the solver report, with the best bound proven."""
    sims = known.similarity_of(np.arange(known.n_rows), outcome.matched)
    total = float(sims.sum())
    upper_bound = float(scan.row_best.astype(np.float64).sum())
    dual_bound = outcome.dual_bound
    best_bound = upper_bound if dual_bound is None else min(upper_bound, dual_bound)
    info = SolverInfo(
        name="sparse",
        exact=outcome.certified,
        certified=outcome.certified,
        total=total,
        upper_bound=upper_bound,
        dual_bound=dual_bound,
        relative_gap=max(best_bound - total, 0.0) / max(abs(total), 1e-12),
        iterations=outcome.iterations,
        candidate_edges=known.n_graph,
        seconds=0.0,
        tolerance=tol,
        message=outcome.message,
    )
    return Solution(cols=outcome.matched, sims=sims.astype(np.float32), info=info,
                    row_best=scan.row_best, col_best=scan.col_best)
