"""`faithcase bench scan`: the scan's sums on one in-memory corpus pass, three ways: the matched
pairs only, every feature's nearest neighbour streamed as well (each its own pair), and what the
scan does (only the neighbours that are not the matched partner streamed; the others reuse its
row). Ratios against the matched-only baseline of the same run; the last two must agree."""

from __future__ import annotations

import time

import torch

from faithcase.artifacts import SAE_KEYS
from faithcase.numerics.directions import nearest_rows
from faithcase.numerics.pass_sums import PassSums
from faithcase.stages.scan import ScanCollector


def _timed(collector, batches: list) -> float:
    start = time.perf_counter()
    for batch in batches:
        collector.update(*batch)
    return time.perf_counter() - start


def bench_scan(rt, n_tokens: int = 50_000) -> dict:
    saes = {key: rt.sae_for_model(key) for key in SAE_KEYS}
    from faithcase.numerics.overlap import match_saes

    assignment = match_saes(saes["sae1"], saes["sae2"], encoder=False).assignment
    nearest = {"sae1": nearest_rows(saes["sae1"].W_dec, saes["sae2"].W_dec),
               "sae2": nearest_rows(saes["sae2"].W_dec, saes["sae1"].W_dec)}
    sequences = rt.sequences[: max(1, n_tokens // rt.sequences.shape[1])]
    batches = list(rt.stream(sequences, rt.cfg.hook, "bench scan: the pass"))
    with torch.no_grad():
        matched = _timed(ScanCollector(saes, assignment), batches)
        everything = PassSums(saes, {
            SAE_KEYS: (assignment.index1 + nearest["sae1"][0],
                       assignment.index2 + nearest["sae1"][1]),
            SAE_KEYS[::-1]: nearest["sae2"][:2]})
        streamed = _timed(everything, batches)
        scan = ScanCollector(saes, assignment, nearest)
        reused = _timed(scan, batches)
    found = scan.finish()
    every = everything.agreement(SAE_KEYS).rows(len(assignment.index1), None)
    same = (found.nearest["sae1"].agreement == every
            and found.nearest["sae2"].agreement == everything.agreement(SAE_KEYS[::-1]))
    n_reused = sum(len(nearest[k][0]) - len(scan.own[k]) for k in SAE_KEYS)
    return {"tokens": int(sequences.numel()), "matched pairs": len(assignment.index1),
            "nearest pairs": sum(len(nearest[k][0]) for k in SAE_KEYS),
            "of them, the matched pair": n_reused, "matched only s": matched,
            "nearest, every pair streamed s": streamed, "nearest, as the scan does s": reused,
            "every pair streamed / matched only": streamed / matched,
            "as the scan does / matched only": reused / matched, "same tables": str(same)}
