"""The sparse solver's candidate graph: the pairs it knows exactly, and its exact solve.

One blocked pass over the similarity (`scan_similarity`) keeps the top pairs of every row and
bounds on all the others; `KnownPairs` holds every pair whose similarity is known, those of the
candidate graph flagged; `solve_on_graph` is the exact assignment restricted to the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching


@dataclass
class SimilarityScan:
    """What one blocked pass over the similarity matrix keeps."""

    rows: np.ndarray  # pairs known exactly: the top `depth` pairs of every row
    cols: np.ndarray
    sims: np.ndarray  # float64 copies of the float32 similarities
    row_rank: np.ndarray  # rank of each pair in its row (0 = best)
    row_bound: np.ndarray  # every pair of row i not kept has similarity <= row_bound[i]
    col_bound: np.ndarray  # every pair of column j not kept has similarity <= col_bound[j]
    row_best: np.ndarray  # maximum of every row
    col_best: np.ndarray  # maximum of every column


def scan_similarity(
    A: torch.Tensor, B: torch.Tensor, depth: int, block_rows: int, progress
) -> SimilarityScan:
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
        rest = values[:, depth] if depth < n_cols else torch.full((len(block),), -torch.inf)
        row_bound.append(rest)
        block.scatter_(1, idx[:, :depth], -torch.inf)  # leave only what the rows did not keep
        torch.maximum(col_bound, block.amax(dim=0), out=col_bound)
        progress("similarity", start + len(block), n_rows)

    cols = torch.cat(kept_cols).numpy().ravel()
    sims = torch.cat(kept_sims).numpy().ravel().astype(np.float64)
    col_best = col_bound.numpy().astype(np.float64)
    np.maximum.at(col_best, cols, sims)
    return SimilarityScan(
        rows=np.repeat(np.arange(n_rows), depth),
        cols=cols,
        sims=sims,
        row_rank=np.tile(np.arange(depth), n_rows),
        row_bound=torch.cat(row_bound).numpy().astype(np.float64),
        col_bound=col_bound.numpy().astype(np.float64),
        row_best=torch.cat(kept_sims)[:, 0].numpy(),
        col_best=col_best,
    )


def rank_within(line: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of every entry among the entries of the same line, by descending score."""
    if len(line) == 0:
        return np.empty(0, dtype=np.int64)
    span = 2.0 * float(np.abs(score).max()) + 1.0
    order = np.argsort(line * span - score)  # one float sort: by line, then score descending
    sorted_line = line[order]
    rank = np.empty(len(line), dtype=np.int64)
    rank[order] = np.arange(len(order)) - np.searchsorted(sorted_line, sorted_line, side="left")
    return rank


class KnownPairs:
    """Pairs whose similarity is known exactly; those flagged ``in_graph`` form the candidate
    graph.

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

    def _keys_of(self, rows, cols) -> np.ndarray:
        return np.asarray(rows, np.int64) * self.n_cols + np.asarray(cols, np.int64)

    def add(self, rows, cols, sims, in_graph) -> None:
        """Add pairs; in_graph: a bool or one bool per pair. Duplicates keep one copy, in the
        graph if any copy is."""
        new_keys = self._keys_of(rows, cols)
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
        keys = self._keys_of(rows, cols)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[at] == keys

    def similarity_of(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Similarities of pairs that must be known."""
        return self.sims[np.searchsorted(self.keys, self._keys_of(rows, cols))]


def initial_graph(scan: SimilarityScan, k: int, n_rows: int, n_cols: int) -> KnownPairs:
    """Every scanned pair known; the top-k of every row and column in the graph, the rest in
    reserve."""
    known = KnownPairs(n_rows, n_cols)
    top_k = (scan.row_rank < k) | (rank_within(scan.cols, scan.sims) < k)
    known.add(scan.rows, scan.cols, scan.sims, in_graph=top_k)
    return known


def complete_to_full_matching(known: KnownPairs, A: torch.Tensor, B: torch.Tensor) -> int:
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
    pairs = A[torch.from_numpy(lonely_rows)] * B[torch.from_numpy(free_cols)]
    known.add(lonely_rows, free_cols, pairs.sum(dim=1).numpy(), in_graph=True)
    return len(lonely_rows)


def solve_on_graph(known: KnownPairs) -> np.ndarray:
    """Column matched to each row by the exact assignment restricted to the candidate graph."""
    rows, cols, sims = known.graph()
    # Costs relative to each row's best pair (the same optimum: every row is matched once) make
    # LAPJVsp several times faster than 2 - s; +1 keeps them > 0, as it requires.
    row_best = np.full(known.n_rows, -np.inf)
    np.maximum.at(row_best, rows, sims)
    shape = (known.n_rows, known.n_cols)
    costs = csr_array((row_best[rows] - sims + 1.0, (rows, cols)), shape=shape)
    matched_rows, matched_cols = min_weight_full_bipartite_matching(costs)
    matched = np.empty(known.n_rows, dtype=np.int64)
    matched[matched_rows] = matched_cols
    return matched
