"""The sparse solver's certificate: LP dual potentials checked against every pair of the matrix.

Known pairs are checked directly; the others through the per-row and per-column bounds of the
first pass; where the bounds cannot decide, rows are recomputed exactly (`deepen_rows`), and rows
too crowded to keep whole are checked pair by pair (`exact_violations`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from faithcase.numerics.candidate_graph import KnownPairs, rank_within
from faithcase.numerics.similarity import selected_row_blocks


@dataclass(frozen=True)
class SparseSettings:
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
    near: float = 0.03  # pairs this close to breaking the certificate join the graph too


def dual_potentials(known: KnownPairs, matched: np.ndarray, max_rounds: int | None = None):
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

    An unknown pair has s_ij <= min(bound_row_i, bound_col_j); it can break the certificate only
    if bound_row_i - u_i - tol > v_j and bound_col_j - v_j > u_i + tol. Sorting v (resp. the row
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
    for chunk, block in selected_row_blocks(A, B, rows, block_rows):
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
    for chunk, block in selected_row_blocks(A, B_sub, rows, block_rows):
        # float32 screen with a wide margin, then the float64 test on the few survivors
        u_chunk32 = torch.from_numpy(u[chunk] + tol).to(torch.float32)
        limit32 = u_chunk32[:, None] + v_sub32[None, :] - 1e-5
        r, c = torch.nonzero(block > limit32, as_tuple=True)
        sims = block[r, c].numpy().astype(np.float64)
        r, c = chunk[r.numpy()], cols[c.numpy()]
        broken = sims > u[r] + v[c] + tol
        for part, values in zip(found, (r, c, sims)):
            part.append(values[broken])
    return tuple(np.concatenate(part) if part else np.empty(0) for part in found)


def add_most_violated(known: KnownPairs, broken: np.ndarray, u, v, per_line: int) -> None:
    """Move into the graph the broken known pairs among the per_line worst of their row or
    column."""
    rows, cols = known.rows[broken], known.cols[broken]
    excess = known.sims[broken] - u[rows] - v[cols]
    worst = (rank_within(rows, excess) < per_line) | (rank_within(cols, excess) < per_line)
    known.in_graph[broken[worst]] = True


def broken_known(known: KnownPairs, u, v, tol) -> np.ndarray:
    """Positions of known pairs outside the graph with s_ij > u_i + v_j + tol."""
    rows, cols = known.rows, known.cols
    return np.flatnonzero(~known.in_graph & (known.sims > u[rows] + v[cols] + tol))


def find_violations(A, B, known, row_bound, col_bound, u, v, settings: SparseSettings):
    """Pairs that break the certificate under potentials (u, v), cheapest evidence first.

    Returns (positions of known pairs, (rows, cols, sims) of newly computed pairs); both empty
    means the potentials are feasible for every pair of the full matrix.
    """
    tol = settings.tol
    none = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    broken = broken_known(known, u, v, tol)
    suspect_rows, _ = _suspects(row_bound, col_bound, u, v, tol)
    if len(suspect_rows) == 0 or (len(broken) and len(suspect_rows) > known.n_rows // 8):
        return broken, none  # while potentials are rough, fix the known pairs first
    floor = u + v.min() + tol - settings.margin
    _deepen_rows(A, B, known, row_bound, suspect_rows, floor, settings.max_per_row,
                 settings.block_rows)
    broken = broken_known(known, u, v, tol)
    # only capped rows can remain suspect now
    crowded_rows, crowded_cols = _suspects(row_bound, col_bound, u, v, tol)
    if len(broken) or len(crowded_rows) == 0 or len(crowded_cols) == 0:
        return broken, none
    rows, cols, sims = _exact_violations(A, B, crowded_rows, crowded_cols, u, v, tol,
                                         settings.block_rows)
    unknown = ~known.contains(rows, cols)
    return broken, (rows[unknown], cols[unknown], sims[unknown])


def repaired_dual_bound(known: KnownPairs, row_bound, u, v) -> float:
    """A valid upper bound from potentials that may be infeasible: raise each u_i until row i
    fits."""
    need = np.full(known.n_rows, -np.inf)
    np.maximum.at(need, known.rows, known.sims - v[known.cols])
    need = np.maximum(need, row_bound - v.min())
    return float(np.maximum(u, need).sum() + v.sum())
