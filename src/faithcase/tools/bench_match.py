"""The match benchmark: faithcase's matching (solver auto) vs dense scipy on structured synthetic
decoders shaped like real SAE pairs (features in families around shared parent directions, a
share of SAE 2's features noisy copies of SAE 1's with cosines spread over ~0.25-0.97).
"""

from __future__ import annotations

import resource
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy.optimize import linear_sum_assignment

from faithcase.numerics.assignment import cosine_similarity
from faithcase.stages.match import match_features

BIG_SIZE, BIG_D = 65_536, 2048


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


def _family_features(parents: torch.Tensor, n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """n unit features, each a random mix of one parent direction (weight 0-0.8) and own noise."""
    parent = parents[torch.randint(len(parents), (n,), generator=gen)]
    weight = 0.8 * torch.rand(n, 1, generator=gen)
    own = _unit(torch.randn(n, d, generator=gen))
    return _unit(weight * parent + torch.sqrt(1 - weight**2) * own)


def synthetic_decoders(
    n: int, d: int, seed: int = 0, shared: float = 0.75, family_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two decoder matrices [n, d] of SAEs that share about `shared` of their features."""
    gen = torch.Generator().manual_seed(seed)
    parents = _unit(torch.randn(max(n // family_size, 1), d, generator=gen))
    W1 = _family_features(parents, n, d, gen)

    n_shared = int(shared * n)
    source = torch.randperm(n, generator=gen)[:n_shared]
    target_cos = 0.25 + 0.72 * torch.rand(n_shared, 1, generator=gen)
    # cos(x, x + s * unit noise) ~ 1 / sqrt(1 + s^2)
    noise_scale = torch.sqrt(1 / target_cos**2 - 1)
    copies = _unit(W1[source] + noise_scale * _unit(torch.randn(n_shared, d, generator=gen)))
    W2 = torch.cat([copies, _family_features(parents, n - n_shared, d, gen)])
    W2 = W2[torch.randperm(n, generator=gen)]
    return W1, W2


def _dense_scipy(W1: torch.Tensor, W2: torch.Tensor) -> float:
    """The baseline: full similarity matrix, then scipy's linear_sum_assignment; returns the
    total."""
    sim = cosine_similarity(W1, W2).numpy()
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return float(sim[rows, cols].astype(np.float64).sum())


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def bench_size(n: int, d: int, seed: int = 0) -> dict:
    """Dense scipy vs faithcase (solver auto) on one synthetic pair of size n x n."""
    W1, W2 = synthetic_decoders(n, d, seed)
    start = time.perf_counter()
    dense_total = _dense_scipy(W1, W2)
    dense_s = time.perf_counter() - start
    start = time.perf_counter()
    result = match_features(W1, W2, solver="auto")
    ours_s = time.perf_counter() - start
    info = result.solver
    return {
        "n": n,
        "d": d,
        "solver": info.name,
        "dense_scipy_s": dense_s,
        "faithcase_s": ours_s,
        "speedup": dense_s / ours_s,
        "relative_gap": (dense_total - info.total) / abs(dense_total),
        "certified": info.certified,
        "iterations": info.iterations,
        "candidate_edges": info.candidate_edges,
        "shared_ratio": result.stats.shared_ratio,
        "mean_similarity": result.stats.mean_similarity,
    }


def bench_big(
    n: int = BIG_SIZE,
    d: int = BIG_D,
    seed: int = 0,
    time_limit: float = 480.0,
    console: Console | None = None,
) -> dict:
    """The sparse solver alone on a large pair (no dense baseline fits): time, certificate, RSS."""
    console = console or Console()
    W1, W2 = synthetic_decoders(n, d, seed)
    start = time.perf_counter()

    def report(stage: str, done: int, total: int) -> None:
        if stage != "similarity" or done == total or (done // 2048) % 8 == 0:
            console.print(f"  {time.perf_counter() - start:7.1f} s  {stage} {done}/{total}")

    result = match_features(W1, W2, solver="sparse", time_limit=time_limit, progress=report)
    info = result.solver
    return {
        "n": n,
        "d": d,
        "solver": info.name,
        "faithcase_s": time.perf_counter() - start,
        "certified": info.certified,
        "iterations": info.iterations,
        "candidate_edges": info.candidate_edges,
        "relative_gap": info.relative_gap,
        "gap_to_row_max_bound": (info.upper_bound - info.total) / abs(info.total),
        "peak_rss_gib": _peak_rss_gib(),
        "shared_ratio": result.stats.shared_ratio,
        "mean_similarity": result.stats.mean_similarity,
    }


def run_match_bench(
    sizes=(2304, 4608, 14336), d: int = 576, big: bool = False, console: Console | None = None
) -> list[dict]:
    """Benchmark every size in one run, print a table, and return one dict per row."""
    console = console or Console()
    rows = []
    for n in sizes:
        console.print(f"matching {n} x {n} features (d={d}) ...")
        rows.append(bench_size(n, d))
    if big:
        console.print(f"matching {BIG_SIZE} x {BIG_SIZE} features (d={BIG_D}), "
                      "sparse solver only ...")
        rows.append(bench_big(console=console))
    console.print(_table(rows))
    return rows


COLUMNS = (
    "features", "d", "solver", "dense scipy s", "faithcase s", "speedup",
    "gap", "optimal", "rounds", "graph pairs", "peak RSS",
)  # fmt: skip


def _table(rows: list[dict]) -> Table:
    table = Table(
        title="feature matching: faithcase (solver auto) vs dense scipy linear_sum_assignment, "
        "same run",
        caption="gap: (dense total - faithcase total) / dense total; without a dense baseline, the "
        "proven gap to the best upper bound. optimal: 'certified' by LP duals, 'exact' for dense.",
    )
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for row in rows:
        dense = row.get("dense_scipy_s")
        optimal = "certified" if row["certified"] else "exact" if row["solver"] == "dense" else "no"
        table.add_row(
            f"{row['n']:,}",
            str(row["d"]),
            row["solver"],
            "-" if dense is None else f"{dense:.2f}",
            f"{row['faithcase_s']:.2f}",
            "-" if dense is None else f"{row['speedup']:.1f}x",
            f"{row['relative_gap']:.1e}",
            optimal,
            str(row["iterations"]),
            f"{row['candidate_edges']:,}",
            f"{row['peak_rss_gib']:.1f} GiB" if "peak_rss_gib" in row else "-",
        )
    return table
