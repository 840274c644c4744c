"""`faithcase bench matrix`: the matrix's one corpus pass for every SAE against one pass per pair
of SAEs (what running a two-SAE scan per pair costs), on the same sequences and assignments."""

from __future__ import annotations

import itertools
import time

import torch

from faithcase.numerics.matching import match_features
from faithcase.numerics.pass_sums import PassSums


def _pass(rt, sequences: torch.Tensor, saes: dict, pairs: dict) -> tuple[PassSums, float]:
    start = time.perf_counter()
    sums = PassSums(saes, pairs)
    for batch in rt.stream(sequences, rt.cfg.hook, "bench matrix"):
        sums.update(*batch)
    return sums, time.perf_counter() - start


def bench_matrix(rt, n_tokens: int = 8192) -> dict:
    names = rt.cfg.matrix_names()
    saes = {name: rt.sae_for_model(name) for name in names}
    sequences = rt.sequences[: max(1, n_tokens // rt.sequences.shape[1])]
    pairs = {}
    for a, b in itertools.combinations(names, 2):
        m = match_features(saes[a].W_dec.float(), saes[b].W_dec.float(), rt.cfg.match.threshold)
        pairs[(a, b)] = (m.assignment.index1, m.assignment.index2)
    rt.lm  # loaded before timing
    together, one_pass = _pass(rt, sequences, saes, pairs)
    per_pair, same = 0.0, True
    for (a, b), indices in pairs.items():
        alone, seconds = _pass(rt, sequences, {a: saes[a], b: saes[b]}, {(a, b): indices})
        per_pair += seconds
        same = same and alone.agreement((a, b)) == together.agreement((a, b))
    return {"SAEs": len(names), "pairs": len(pairs), "tokens": int(sequences.numel()),
            "one pass s": one_pass, "one pass per pair s": per_pair,
            "speedup": per_pair / one_pass, "same agreement": str(same)}
