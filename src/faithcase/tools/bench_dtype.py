"""`faithcase bench dtype`: the match and scan numbers with both SAEs encoded in float32, in
bfloat16 (FaithfulSAE's checkpoints declare and were evaluated in bfloat16) and in `auto` (the
dtype policy of run/machine.py: the declared dtype unless half-precision matmul is slow on this
CPU), side by side, with each scan's time as a ratio to float32's.

One corpus pass feeds both scans: the batches are kept in memory. Each dtype loads the SAEs
through a Runtime whose config sets `sae1.dtype` and `sae2.dtype`, so the weights are cast once
from the stored tensors, as a run with that setting does.
"""

from __future__ import annotations

import math
import time
from typing import Any

from faithcase.artifacts import SAE_KEYS
from faithcase.render.tables import console, table

DTYPES = ("float32", "bfloat16", "auto")
N_BEST = 10  # the best matched pairs whose activation agreement is averaged


def with_sae_dtype(cfg, dtype: str):
    """A copy of the config with both SAEs encoding in `dtype`."""
    return cfg.model_copy(update={key: getattr(cfg, key).model_copy(update={"dtype": dtype})
                                  for key in SAE_KEYS})


def _mean(values: list[float | None], rows: list[int]) -> float | None:
    kept = [values[i] for i in rows if values[i] is not None]
    return math.fsum(kept) / len(kept) if kept else None


def measure(run, batches: list[tuple], n_best: int = N_BEST) -> dict[str, Any]:
    """Match and scan (the public functions) with the Runtime's SAEs on the given batches."""
    import faithcase as fc

    saes = {key: run.sae(key) for key in SAE_KEYS}
    matched = fc.match(saes["sae1"], saes["sae2"], run.cfg.match)
    start = time.perf_counter()
    scanned = fc.scan(saes, matched.assignment, batches, run.cfg.scan, run.cfg.hook)
    seconds = time.perf_counter() - start
    a = matched.assignment
    best = sorted(range(len(a.similarity)), key=lambda i: -a.similarity[i])[:n_best]
    row: dict[str, Any] = {
        "shared ratio": matched.stats.shared_ratio,
        "top-1 ratio": matched.stats.top1_ratio,
        f"mean Pearson, {n_best} best pairs": _mean(scanned.agreement.pearson, best),
        f"mean Jaccard, {n_best} best pairs": _mean(scanned.agreement.jaccard, best),
    }
    for key in SAE_KEYS:
        row[f"FVU {key}"] = scanned.quality[key].fvu
    for key in SAE_KEYS:
        row[f"L0 {key}"] = scanned.quality[key].l0
    row["scan s"] = seconds
    row["encoded in"] = " / ".join(str(saes[key].dtype).removeprefix("torch.") for key in SAE_KEYS)
    row["_n_tokens"] = scanned.n_tokens
    row["_pairs"] = set(zip(a.index1, a.index2))
    row["_best"] = {(a.index1[i], a.index2[i]) for i in best}
    return row


def bench_dtype(rt, n_best: int = N_BEST) -> dict[str, dict[str, Any]]:
    """{dtype: {measure: value}} for float32, bfloat16 and auto, from one corpus pass of `rt`."""
    from faithcase.run.runtime import Runtime

    batches = list(rt.activation_batches(description="corpus pass (shared by both dtypes)"))
    results = {}
    for dtype in DTYPES:
        run = Runtime(with_sae_dtype(rt.cfg, dtype), console=rt.console)
        results[dtype] = measure(run, batches, n_best)
    base = results[DTYPES[0]]
    for row in results.values():
        row["scan time ÷ float32's"] = row["scan s"] / base["scan s"]
        row["matched pairs as in float32"] = len(row["_pairs"] & base["_pairs"]) / len(
            base["_pairs"])
        row[f"{n_best} best pairs as in float32"] = len(row["_best"] & base["_best"])
    return results


def print_dtype_table(results: dict[str, dict[str, Any]]) -> None:
    names = list(results)
    grid = table(f"SAEs encoded in {' vs '.join(names)}, one corpus pass of "
                 f"{results[names[0]]['_n_tokens']:,} kept tokens",
                 ["measure", *names, f"{names[-1]} − {names[0]}"])
    for measure_name, first in results[names[0]].items():
        if measure_name.startswith("_"):
            continue
        values = [results[name][measure_name] for name in names]
        digits = 1 if measure_name.startswith(("L0", "scan s")) else 2 if measure_name.startswith(
            "scan time") else 4
        cells = ["—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)
                 for v in values]
        difference = (values[-1] - first if isinstance(first, float)
                      and isinstance(values[-1], float) else None)
        cells.append(_difference(difference, digits))
        grid.add_row(measure_name, *cells)
    console.print(grid)


def _difference(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    return f"{value:+.1e}" if abs(value) < 10**-digits else f"{value:+.{digits}f}"
