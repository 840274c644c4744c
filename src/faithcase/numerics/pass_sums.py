"""The running sums of a corpus pass over several SAEs at once (the scan and the matrix).

Each SAE encodes every kept token once. Per SAE: firing counts, active total and the squared
reconstruction error (the load check), and each feature's summed activation and squared
activation; per matched pair of any two SAEs: the summed product of its two features' activations
(with those, its Pearson correlation) and the tokens both fire on. Float64 sums are
compensated (exact_sum.py), so a pass split over processes merges to the same numbers; memory is
bounded by the SAE sizes, never by the corpus.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from faithcase.artifacts import AgreementTable
from faithcase.numerics.outliers import counted_positions
from faithcase.numerics.chunks import row_chunks
from faithcase.numerics.exact_sum import CompensatedSum

FEATURE_SUMS = ("a", "aa")  # per feature: its activation and squared activation, summed
PAIR_SUMS = ("ab",)  # per pair: the product of its two features' activations, summed
PairKey = tuple[str, str]


class PassSums:
    """Streams batches of one corpus pass for the SAEs `saes` (name -> SAE) and the matched pairs
    `pairs` ((name_a, name_b) -> (indices in a, indices in b))."""

    def __init__(self, saes: Mapping[str, Any],
                 pairs: Mapping[PairKey, tuple[list[int], list[int]]]):
        self.saes = dict(saes)
        for a, b in pairs:
            if a not in self.saes or b not in self.saes:
                raise ValueError(f"pair {(a, b)} names an SAE not given")
        # every sum lives on its SAE's device (a pair's on its first SAE's); results move once
        self.device = next(iter(self.saes.values())).device
        self.index = {(a, b): (torch.tensor(ia, dtype=torch.long, device=self.saes[a].device),
                               torch.tensor(ib, dtype=torch.long, device=self.saes[b].device))
                      for (a, b), (ia, ib) in pairs.items()}
        self.d_in = next(iter(self.saes.values())).d_in
        self.reset()

    def reset(self) -> None:
        self.n_sequences = self.n_tokens = self.n_excluded = 0
        self.firing = {key: torch.zeros(sae.d_sae, dtype=torch.long, device=sae.device)
                       for key, sae in self.saes.items()}
        # active features, summed over tokens
        self.active = {key: torch.zeros((), dtype=torch.long, device=sae.device)
                       for key, sae in self.saes.items()}
        self.sse = {key: CompensatedSum(device=sae.device) for key, sae in self.saes.items()}
        self.sum_x = CompensatedSum(self.d_in, device=self.device)
        self.sum_sq = CompensatedSum(device=self.device)
        self.feature_sums = {key: {name: CompensatedSum(sae.d_sae, device=sae.device)
                                   for name in FEATURE_SUMS} for key, sae in self.saes.items()}
        self.pair_sums = {key: {name: CompensatedSum(len(ia), device=ia.device)
                                for name in PAIR_SUMS}
                          for key, (ia, _) in self.index.items()}
        self.n_both = {key: torch.zeros(len(ia), dtype=torch.long, device=ia.device)
                       for key, (ia, _) in self.index.items()}

    @torch.no_grad()
    def update(self, seq_ids, tokens: torch.Tensor, resid: torch.Tensor,
               excluded: torch.Tensor | None) -> None:
        counted = counted_positions(excluded, tokens.shape)
        self.n_sequences += tokens.shape[0]
        self.n_excluded += int(counted.numel() - counted.sum())
        x = resid[counted.to(resid.device)].to(self.device, torch.float32)
        self.n_tokens += len(x)
        for chunk in row_chunks(x, max(sae.d_sae for sae in self.saes.values())):
            self._update_chunk(chunk)

    def _update_chunk(self, x: torch.Tensor) -> None:
        x64 = x.double()
        self.sum_x.add(x64.sum(0))
        self.sum_sq.add(x64.pow(2).sum())
        acts = {}
        for key, sae in self.saes.items():
            a = sae.encode(x)
            fired = a > 0
            self.firing[key] += fired.sum(0)
            self.active[key] += fired.sum()
            error = sae.decode(a, x).double() - x64.to(a.device)
            self.sse[key].add(error.pow(2).sum())
            a64 = a.double()
            self.feature_sums[key]["a"].add(a64.sum(0))
            self.feature_sums[key]["aa"].add(a64.pow(2).sum(0))
            acts[key] = a
        for (ka, kb), (ia, ib) in self.index.items():
            a = acts[ka].index_select(1, ia).double()
            b = acts[kb].index_select(1, ib).to(a.device, torch.float64)
            self.pair_sums[(ka, kb)]["ab"].add((a * b).sum(0))
            self.n_both[(ka, kb)] += ((a > 0) & (b > 0)).sum(0)

    # -------------------------------------------------------- shards

    def state(self) -> dict:
        """Everything streamed so far, on the CPU (what `merge_state` adds)."""
        return {"counts": [self.n_sequences, self.n_tokens, self.n_excluded],
                "firing": _cpu(self.firing), "active": {k: int(v) for k, v in self.active.items()},
                "sse": {k: s.state() for k, s in self.sse.items()},
                "sum_x": self.sum_x.state(), "sum_sq": self.sum_sq.state(),
                "features": {key: {n: s.state() for n, s in sums.items()}
                             for key, sums in self.feature_sums.items()},
                "pairs": {key: {n: s.state() for n, s in sums.items()}
                          for key, sums in self.pair_sums.items()},
                "n_both": _cpu(self.n_both)}

    def merge_state(self, state: dict) -> None:
        n_sequences, n_tokens, n_excluded = state["counts"]
        self.n_sequences += n_sequences
        self.n_tokens += n_tokens
        self.n_excluded += n_excluded
        for key in self.saes:
            self.firing[key] += state["firing"][key].to(self.firing[key].device)
            self.active[key] += state["active"][key]
            self.sse[key].merge(CompensatedSum.from_state(state["sse"][key]))
        self.sum_x.merge(CompensatedSum.from_state(state["sum_x"]))
        self.sum_sq.merge(CompensatedSum.from_state(state["sum_sq"]))
        for key, sums in self.feature_sums.items():
            for name, total in sums.items():
                total.merge(CompensatedSum.from_state(state["features"][key][name]))
        for key, sums in self.pair_sums.items():
            for name, total in sums.items():
                total.merge(CompensatedSum.from_state(state["pairs"][key][name]))
            self.n_both[key] += state["n_both"][key].to(self.n_both[key].device)

    # -------------------------------------------------------- results

    def variance(self) -> float:
        """Total variance of the kept activations (summed over dimensions)."""
        n = self.n_tokens
        return float(self.sum_sq.value) - float(self.sum_x.value.pow(2).sum()) / n

    def fvu(self, key: str) -> float:
        variance = self.variance()
        return float(self.sse[key].value) / variance if variance > 0 else math.inf

    def l0(self, key: str) -> float:
        return int(self.active[key]) / self.n_tokens

    def agreement(self, pair: PairKey) -> AgreementTable:
        """Pearson, Jaccard and both conditional firing probabilities of every matched pair."""
        n = self.n_tokens
        ia, ib = self.index[pair]
        first, second = self.feature_sums[pair[0]], self.feature_sums[pair[1]]
        s = {"a": first["a"].value[ia].cpu(), "aa": first["aa"].value[ia].cpu(),
             "b": second["a"].value[ib].cpu(), "bb": second["aa"].value[ib].cpu(),
             "ab": self.pair_sums[pair]["ab"].value.cpu()}
        cov = s["ab"] / n - (s["a"] / n) * (s["b"] / n)
        var_a = s["aa"] / n - (s["a"] / n) ** 2
        var_b = s["bb"] / n - (s["b"] / n) ** 2
        denominator = (var_a * var_b).clamp_min(0).sqrt()
        defined = ((var_a > 1e-12 * (s["aa"] / n).clamp_min(1e-300))
                   & (var_b > 1e-12 * (s["bb"] / n).clamp_min(1e-300)))
        pearson = torch.where(defined, cov / denominator.clamp_min(1e-300), torch.nan).clamp(-1, 1)
        n1, n2 = self.firing[pair[0]][ia].cpu(), self.firing[pair[1]][ib].cpu()
        both = self.n_both[pair].cpu()
        either = n1 + n2 - both
        return AgreementTable(pearson=_or_none(pearson), jaccard=_ratio(both, either),
                              p2_given_1=_ratio(both, n1), p1_given_2=_ratio(both, n2),
                              n1=n1.tolist(), n2=n2.tolist(), n_both=both.tolist())


def _cpu(tensors: dict) -> dict:
    return {key: value.cpu() for key, value in tensors.items()}


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> list[float | None]:
    return _or_none(torch.where(denominator > 0, numerator.double() / denominator.clamp_min(1),
                                torch.nan))


def _or_none(values: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values.tolist()]
