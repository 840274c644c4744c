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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

from faithcase.artifacts import SolverInfo

SOLVERS = ("auto", "dense", "sparse")
DENSE_AUTO_MAX_PAIRS = 4096 * 4096  # "auto" solves densely up to this many similarity entries
BLOCK_ROWS = 2048  # rows of the similarity matrix computed at once
DEFAULT_TOLERANCE = 1e-7  # a left-out pair may exceed u_i + v_j by this much (float32 similarity)
DEEPEN_MAX_PER_ROW = 1024  # pairs kept per row when the sparse solver computes a whole row


@dataclass
class Solution:
    """A solver's answer, rows being the smaller side."""

    cols: np.ndarray  # column matched to each row
    sims: np.ndarray  # their similarities (float32 values)
    info: SolverInfo
    row_best: np.ndarray  # maximum of every row
    col_best: np.ndarray  # maximum of every column


# ----------------------------------------------------------------------------------------------
# Similarity


def unit_rows(W: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm in float32 (scaled by their max first, so no over/underflow)."""
    W = W.to(torch.float32)
    W = W / W.abs().amax(dim=1, keepdim=True)
    return W / torch.linalg.vector_norm(W, dim=1, keepdim=True)


def similarity_blocks(A: torch.Tensor, B: torch.Tensor, block_rows: int = BLOCK_ROWS):
    """Yield (first row, A[rows] @ B.T) for consecutive row blocks of unit-row matrices."""
    Bt = B.T
    for start in range(0, A.shape[0], block_rows):
        yield start, A[start : start + block_rows] @ Bt


def cosine_similarity(W1: torch.Tensor, W2: torch.Tensor, block_rows: int = BLOCK_ROWS) -> torch.Tensor:
    """Full float32 cosine similarity [n1, n2] of the rows of two matrices, computed in row blocks."""
    return _full_similarity(unit_rows(W1.detach().cpu()), unit_rows(W2.detach().cpu()), block_rows)


def _full_similarity(A: torch.Tensor, B: torch.Tensor, block_rows: int) -> torch.Tensor:
    out = torch.empty(A.shape[0], B.shape[0], dtype=torch.float32)
    for start, block in similarity_blocks(A, B, block_rows):
        out[start : start + block.shape[0]] = block
    return out


# ----------------------------------------------------------------------------------------------
# Dense solver


def _solve_dense(A: torch.Tensor, B: torch.Tensor, block_rows: int):
    """scipy's exact assignment on the full float32 similarity matrix."""
    sim_np = _full_similarity(A, B, block_rows).numpy()
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


# ----------------------------------------------------------------------------------------------
# Sparse solver: candidate graph


@dataclass
class _SimilarityScan:
    """What one blocked pass over the similarity matrix keeps."""

    rows: np.ndarray  # pairs known exactly: the top `depth` pairs of every row
    cols: np.ndarray
    sims: np.ndarray  # float64 copies of the float32 similarities
    row_rank: np.ndarray  # rank of each pair in its row (0 = best)
    row_bound: np.ndarray  # every pair of row i not kept has similarity <= row_bound[i]
    col_bound: np.ndarray  # every pair of column j not kept has similarity <= col_bound[j]
    row_best: np.ndarray  # maximum of every row
    col_best: np.ndarray  # maximum of every column


def _scan_similarity(A: torch.Tensor, B: torch.Tensor, depth: int, block_rows: int, progress) -> _SimilarityScan:
    """One pass over A @ B.T in row blocks, keeping what the sparse solver needs.

    Per row: its top-`depth` pairs, and the next value as the bound of the rest. Per column: the
    maximum over the pairs no row kept, as the bound of the rest (column-wise maxima are cheap,
    column-wise top-k is not).
    """
    n_rows, n_cols = A.shape[0], B.shape[0]
    depth = min(depth, n_cols)
    kept_cols, kept_sims, row_bound = [], [], []
    col_bound = torch.full((n_cols,), -torch.inf)
    Bt = B.T
    block = torch.empty(min(block_rows, n_rows), n_cols)
    for start in range(0, n_rows, block_rows):
        block = block[: min(block_rows, n_rows - start)]
        torch.matmul(A[start : start + block_rows], Bt, out=block)
        values, idx = torch.topk(block, min(depth + 1, n_cols), dim=1)
        kept_cols.append(idx[:, :depth])
        kept_sims.append(values[:, :depth])
        row_bound.append(values[:, depth] if depth < n_cols else torch.full((len(block),), -torch.inf))
        block.scatter_(1, idx[:, :depth], -torch.inf)  # leave only what the rows did not keep
        torch.maximum(col_bound, block.amax(dim=0), out=col_bound)
        progress("similarity", start + len(block), n_rows)

    rows = np.repeat(np.arange(n_rows), depth)
    cols = torch.cat(kept_cols).numpy().ravel()
    sims = torch.cat(kept_sims).numpy().ravel().astype(np.float64)
    col_best = col_bound.numpy().astype(np.float64)
    np.maximum.at(col_best, cols, sims)
    return _SimilarityScan(
        rows=rows,
        cols=cols,
        sims=sims,
        row_rank=np.tile(np.arange(depth), n_rows),
        row_bound=torch.cat(row_bound).numpy().astype(np.float64),
        col_bound=col_bound.numpy().astype(np.float64),
        row_best=torch.cat(kept_sims)[:, 0].numpy(),
        col_best=col_best,
    )


def _rank_within(line: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of every entry among the entries of the same line, by descending score."""
    if len(line) == 0:
        return np.empty(0, dtype=np.int64)
    span = 2.0 * float(np.abs(score).max()) + 1.0
    order = np.argsort(line * span - score)  # one float sort: by line, then score descending
    sorted_line = line[order]
    rank = np.empty(len(line), dtype=np.int64)
    rank[order] = np.arange(len(order)) - np.searchsorted(sorted_line, sorted_line, side="left")
    return rank


class _KnownPairs:
    """Pairs whose similarity is known exactly; those flagged ``in_graph`` form the candidate graph.

    The others are a reserve (pairs found while deepening rows): they are checked against the
    potentials every round and join the graph only when they break the certificate.
    """

    def __init__(self, n_rows: int, n_cols: int):
        self.n_rows, self.n_cols = n_rows, n_cols
        self.keys = np.empty(0, dtype=np.int64)  # row * n_cols + col, sorted
        self.rows = self.cols = np.empty(0, dtype=np.int64)
        self.sims = np.empty(0, dtype=np.float64)
        self.in_graph = np.empty(0, dtype=bool)

    @property
    def n_graph(self) -> int:
        return int(self.in_graph.sum())

    def add(self, rows, cols, sims, in_graph) -> None:
        """Add pairs; in_graph: a bool or one bool per pair. Duplicates keep one copy, in the
        graph if any copy is."""
        new_keys = np.asarray(rows, np.int64) * self.n_cols + np.asarray(cols, np.int64)
        if len(new_keys) == 0:
            return
        keys = np.concatenate([self.keys, new_keys])
        sims = np.concatenate([self.sims, np.asarray(sims, np.float64)])
        flags = np.concatenate([self.in_graph, np.broadcast_to(in_graph, new_keys.shape)])
        self.keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        self.rows, self.cols = np.divmod(self.keys, self.n_cols)
        self.sims = sims[first]
        self.in_graph = np.bincount(inverse, weights=flags, minlength=len(self.keys)) > 0

    def graph(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, sims) of the candidate graph."""
        return self.rows[self.in_graph], self.cols[self.in_graph], self.sims[self.in_graph]

    def contains(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        keys = rows.astype(np.int64) * self.n_cols + cols
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[at] == keys

    def similarity_of(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Similarities of pairs that must be known."""
        return self.sims[np.searchsorted(self.keys, rows.astype(np.int64) * self.n_cols + cols)]


def _complete_to_full_matching(known: _KnownPairs, A: torch.Tensor, B: torch.Tensor) -> int:
    """Add graph pairs until every row can be matched; return how many were added.

    Rows left out of a maximum matching of the graph are paired with unused columns, with their
    true similarities. The certificate later brings in better pairs if these are poor.
    """
    rows, cols, _ = known.graph()
    pattern = csr_array((np.ones(len(rows)), (rows, cols)), shape=(known.n_rows, known.n_cols))
    matched_col = maximum_bipartite_matching(pattern, perm_type="column")
    lonely_rows = np.flatnonzero(matched_col < 0)
    if len(lonely_rows) == 0:
        return 0
    used = np.zeros(known.n_cols, dtype=bool)
    used[matched_col[matched_col >= 0]] = True
    free_cols = np.flatnonzero(~used)[: len(lonely_rows)]
    sims = (A[torch.from_numpy(lonely_rows)] * B[torch.from_numpy(free_cols)]).sum(dim=1).numpy()
    known.add(lonely_rows, free_cols, sims, in_graph=True)
    return len(lonely_rows)


def _solve_on_graph(known: _KnownPairs) -> np.ndarray:
    """Column matched to each row by the exact assignment restricted to the candidate graph."""
    rows, cols, sims = known.graph()
    # Costs relative to each row's best pair (the same optimum: every row is matched once) make
    # LAPJVsp several times faster than 2 - s; +1 keeps them > 0, as it requires.
    row_best = np.full(known.n_rows, -np.inf)
    np.maximum.at(row_best, rows, sims)
    costs = csr_array((row_best[rows] - sims + 1.0, (rows, cols)), shape=(known.n_rows, known.n_cols))
    matched_rows, matched_cols = min_weight_full_bipartite_matching(costs)
    matched = np.empty(known.n_rows, dtype=np.int64)
    matched[matched_rows] = matched_cols
    return matched


# ----------------------------------------------------------------------------------------------
# Sparse solver: certificate


def _dual_potentials(known: _KnownPairs, matched: np.ndarray, max_rounds: int | None = None):
    """LP dual potentials (u, v) of an optimal matching on the candidate graph, or None.

    The LP: maximize sum s_ij x_ij, every row matched once, every column at most once.
    Its dual: minimize sum u + sum v with u_i + v_j >= s_ij and v_j >= 0; at the optimum
    u_i + v_j = s_ij on matched pairs and v_j = 0 on unmatched columns.

    Put u_i = s(i, m(i)) - v(m(i)) (equality on matched pairs) and v = -d. A graph pair (i, j)
    is then feasible iff d_j <= d_m(i) + [s(i, m(i)) - s_ij]: d are shortest-path distances over
    columns with arcs m(i) -> j of that weight, from a virtual source joined to every column by a
    zero arc (so d <= 0, v >= 0). Unmatched columns have no outgoing arcs and, if the matching is
    optimal, no negative path into them, so their d stays 0. Weights can be negative, so the
    distances come from Bellman-Ford rounds over all arcs at once; None if they do not settle
    (a negative cycle: the matching was not optimal on the graph).
    """
    rows, cols, sims = known.graph()
    on_match = cols == matched[rows]
    matched_sim = np.empty(known.n_rows)
    matched_sim[rows[on_match]] = sims[on_match]
    arc = ~on_match
    by_source = np.argsort(matched[rows[arc]], kind="stable")  # arcs grouped by source column
    src = matched[rows[arc]][by_source]
    dst = cols[arc][by_source]
    weight = (matched_sim[rows[arc]] - sims[arc])[by_source]
    arcs_until = np.searchsorted(src, np.arange(known.n_cols + 1))  # CSR offsets by source

    dist = np.zeros(known.n_cols)
    changed = np.arange(known.n_cols)  # Bellman-Ford, relaxing only arcs out of changed columns
    for _ in range(max_rounds or known.n_cols + 1):
        arcs = _ranges(arcs_until[changed], arcs_until[changed + 1])
        if len(arcs) == 0:
            break
        relaxed = dist.copy()
        np.minimum.at(relaxed, dst[arcs], dist[src[arcs]] + weight[arcs])
        changed = np.flatnonzero(relaxed < dist - 1e-12)
        dist[changed] = relaxed[changed]
    else:
        return None
    v = -dist
    u = matched_sim - v[matched]
    return u, v


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start, stop) over the given ranges."""
    lengths = stops - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return offsets + np.arange(total)


def _suspects(bound_row, bound_col, u, v, tol):
    """Rows and columns that may hold an unknown pair with s_ij > u_i + v_j + tol.

    An unknown pair has s_ij <= min(bound_row_i, bound_col_j); it can break the certificate only if
    bound_row_i - u_i - tol > v_j and bound_col_j - v_j > u_i + tol. Sorting v (resp. the row
    slack) turns "is there such a partner" into a prefix maximum (resp. suffix minimum) lookup.
    """
    row_slack = bound_row - u - tol  # a pair (i, j) is suspect only if v_j < row_slack_i ...
    col_room = bound_col - v  # ... and u_i + tol < col_room_j
    by_v = np.argsort(v)
    room_prefix_max = np.maximum.accumulate(col_room[by_v])
    n_below = np.searchsorted(v[by_v], row_slack, side="left")
    suspect_rows = (n_below > 0) & (room_prefix_max[np.maximum(n_below - 1, 0)] > u + tol)

    by_slack = np.argsort(row_slack)
    u_suffix_min = np.minimum.accumulate((u + tol)[by_slack][::-1])[::-1]
    first_above = np.searchsorted(row_slack[by_slack], v, side="right")
    has_partner = first_above < len(u)
    suspect_cols = has_partner & (u_suffix_min[np.minimum(first_above, len(u) - 1)] < col_room)
    return np.flatnonzero(suspect_rows), np.flatnonzero(suspect_cols)


def _deepen_rows(A, B, known, row_bound, rows, floor, max_per_row, block_rows) -> None:
    """Compute whole rows exactly; keep every pair >= floor_i (at most max_per_row) as known.

    Afterwards every unknown pair of such a row is below its new bound (floor_i, or the
    (max_per_row + 1)-th value of the row when the cap binds).
    """
    Bt = B.T
    for start in range(0, len(rows), block_rows):
        chunk = rows[start : start + block_rows]
        block = A[torch.from_numpy(chunk)] @ Bt
        limit = torch.from_numpy(floor[chunk]).to(torch.float32)
        r, c = torch.nonzero(block >= limit[:, None], as_tuple=True)
        crowded = torch.bincount(r, minlength=len(chunk)) > max_per_row
        if bool(crowded.any()):  # keep only their top entries; the next one becomes the bound
            limit[crowded] = torch.topk(block[crowded], max_per_row + 1, dim=1).values[:, -1]
            keep = block[r, c] > limit[r]
            r, c = r[keep], c[keep]
        known.add(chunk[r.numpy()], c.numpy(), block[r, c].numpy(), in_graph=False)
        row_bound[chunk] = np.minimum(row_bound[chunk], limit.numpy().astype(np.float64))


def _exact_violations(A, B, rows, cols, u, v, tol, block_rows):
    """Pairs of rows x cols with s_ij > u_i + v_j + tol, computed exactly (for crowded rows)."""
    found = ([], [], [])
    B_sub = B[torch.from_numpy(cols)].contiguous()
    v_sub32 = torch.from_numpy(v[cols]).to(torch.float32)
    for start in range(0, len(rows), block_rows):
        chunk = rows[start : start + block_rows]
        block = A[torch.from_numpy(chunk)] @ B_sub.T
        # float32 screen with a wide margin, then the float64 test on the few survivors
        limit32 = torch.from_numpy(u[chunk] + tol).to(torch.float32)[:, None] + v_sub32[None, :] - 1e-5
        r, c = torch.nonzero(block > limit32, as_tuple=True)
        sims = block[r, c].numpy().astype(np.float64)
        r, c = chunk[r.numpy()], cols[c.numpy()]
        broken = sims > u[r] + v[c] + tol
        for part, values in zip(found, (r, c, sims)):
            part.append(values[broken])
    return tuple(np.concatenate(part) if part else np.empty(0) for part in found)


def _add_most_violated(known: _KnownPairs, broken: np.ndarray, u, v, per_line: int) -> None:
    """Move into the graph the broken known pairs among the per_line worst of their row or column."""
    rows, cols = known.rows[broken], known.cols[broken]
    excess = known.sims[broken] - u[rows] - v[cols]
    worst = (_rank_within(rows, excess) < per_line) | (_rank_within(cols, excess) < per_line)
    known.in_graph[broken[worst]] = True


def _broken_known(known: _KnownPairs, u, v, tol) -> np.ndarray:
    """Positions of known pairs outside the graph with s_ij > u_i + v_j + tol."""
    rows, cols = known.rows, known.cols
    return np.flatnonzero(~known.in_graph & (known.sims > u[rows] + v[cols] + tol))


def _find_violations(A, B, known, row_bound, col_bound, u, v, tol, settings):
    """Pairs that break the certificate under potentials (u, v), cheapest evidence first.

    Returns (positions of known pairs, (rows, cols, sims) of newly computed pairs); both empty
    means the potentials are feasible for every pair of the full matrix.
    """
    none = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    broken = _broken_known(known, u, v, tol)
    suspect_rows, _ = _suspects(row_bound, col_bound, u, v, tol)
    if len(suspect_rows) == 0 or (len(broken) and len(suspect_rows) > known.n_rows // 8):
        return broken, none  # while potentials are rough, fix the known pairs first
    floor = u + v.min() + tol - settings.margin
    _deepen_rows(A, B, known, row_bound, suspect_rows, floor, settings.max_per_row, settings.block_rows)
    broken = _broken_known(known, u, v, tol)
    crowded_rows, crowded_cols = _suspects(row_bound, col_bound, u, v, tol)  # only capped rows remain
    if len(broken) or len(crowded_rows) == 0 or len(crowded_cols) == 0:
        return broken, none
    rows, cols, sims = _exact_violations(A, B, crowded_rows, crowded_cols, u, v, tol, settings.block_rows)
    unknown = ~known.contains(rows, cols)
    return broken, (rows[unknown], cols[unknown], sims[unknown])


def _repaired_dual_bound(known, row_bound, u, v) -> float:
    """A valid upper bound from potentials that may be infeasible: raise each u_i until row i fits."""
    need = np.full(known.n_rows, -np.inf)
    np.maximum.at(need, known.rows, known.sims - v[known.cols])
    need = np.maximum(need, row_bound - v.min())
    return float(np.maximum(u, need).sum() + v.sum())


def _quiet(stage: str, done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class _SparseSettings:
    """Knobs of the sparse solver (see match_features)."""

    k: int  # best pairs per row and per column that start in the candidate graph
    depth: int  # best pairs per row kept (known exactly) by the first pass
    tol: float
    max_iterations: int
    time_limit: float | None
    block_rows: int
    max_per_row: int  # at most this many pairs kept per deepened row
    progress: Callable[[str, int, int], None]
    margin: float = 0.02  # deepened rows keep pairs down to this far below what could break
    near: float = 0.03  # pairs this close to breaking the certificate join the graph with those that do


def _solve_sparse(A, B, settings: _SparseSettings):
    """Candidate graph + exact solve + dual certificate, repeated until certified or capped."""
    start = time.perf_counter()
    n_rows, n_cols, tol = A.shape[0], B.shape[0], settings.tol
    scan = _scan_similarity(A, B, max(settings.depth, settings.k), settings.block_rows, settings.progress)
    known = _KnownPairs(n_rows, n_cols)
    top_k = (scan.row_rank < settings.k) | (_rank_within(scan.cols, scan.sims) < settings.k)
    known.add(scan.rows, scan.cols, scan.sims, in_graph=top_k)  # the rest stays in reserve
    completed = _complete_to_full_matching(known, A, B)
    row_bound, col_bound = scan.row_bound.copy(), scan.col_bound  # deepening tightens row bounds

    certified, dual_bound, iterations = False, None, 0
    while True:
        iterations += 1
        settings.progress("certify", iterations, settings.max_iterations)
        matched = _solve_on_graph(known)
        potentials = _dual_potentials(known, matched)
        if potentials is None:
            message = "dual potentials did not settle (numerical trouble); assignment not certified"
            break
        u, v = potentials
        broken, (new_rows, new_cols, new_sims) = _find_violations(
            A, B, known, row_bound, col_bound, u, v, tol, settings
        )
        n_broken = len(broken) + len(new_rows)
        if n_broken == 0:
            certified = True
            dual_bound = float(u.sum() + v.sum() + n_rows * tol)
            message = f"certified optimal: no pair exceeds its dual potentials by more than {tol:g}"
            break
        _add_most_violated(known, _broken_known(known, u, v, tol - settings.near), u, v, settings.k)
        known.add(new_rows, new_cols, new_sims, in_graph=True)
        elapsed = time.perf_counter() - start
        out_of_time = settings.time_limit is not None and elapsed > settings.time_limit
        if iterations >= settings.max_iterations or out_of_time:
            dual_bound = _repaired_dual_bound(known, row_bound, u, v)
            message = (
                f"not certified: stopped after {iterations} iterations ({elapsed:.0f} s) with "
                f"{n_broken} pairs still breaking the certificate; best assignment returned"
            )
            matched = _solve_on_graph(known)
            break
    if completed:
        message += f"; {completed} rows needed extra candidate pairs to be matchable"

    sims = known.similarity_of(np.arange(n_rows), matched)
    total = float(sims.sum())
    upper_bound = float(scan.row_best.astype(np.float64).sum())
    best_bound = upper_bound if dual_bound is None else min(upper_bound, dual_bound)
    info = SolverInfo(
        name="sparse",
        exact=certified,
        certified=certified,
        total=total,
        upper_bound=upper_bound,
        dual_bound=dual_bound,
        relative_gap=max(best_bound - total, 0.0) / max(abs(total), 1e-12),
        iterations=iterations,
        candidate_edges=known.n_graph,
        seconds=0.0,
        tolerance=tol,
        message=message,
    )
    return Solution(cols=matched, sims=sims.astype(np.float32), info=info, row_best=scan.row_best,
                    col_best=scan.col_best)


# ----------------------------------------------------------------------------------------------
# Entry point


def solve(A: torch.Tensor, B: torch.Tensor, solver: str = "auto", k: int = 16, depth: int = 64,
          tolerance: float = DEFAULT_TOLERANCE, max_iterations: int = 50, time_limit: float | None = None,
          block_rows: int = BLOCK_ROWS, progress: Callable[[str, int, int], None] | None = None) -> Solution:
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
        settings = _SparseSettings(k=k, depth=depth, tol=tolerance, max_iterations=max_iterations,
                                   time_limit=time_limit, block_rows=block_rows, max_per_row=DEEPEN_MAX_PER_ROW,
                                   progress=progress or _quiet)
        solution = _solve_sparse(A, B, settings)
    solution.info = solution.info.model_copy(update={"seconds": time.perf_counter() - start})
    return solution
