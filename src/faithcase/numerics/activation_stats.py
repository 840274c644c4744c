"""Exact activation statistics of many features, streamed in bounded memory: per feature the
count, sum and maximum of its positive activations and a histogram of them."""

from __future__ import annotations

import math

import torch

from faithcase.artifacts import FeatureStats, Histogram
from faithcase.numerics.exact_sum import CompensatedSum

FINE_BINS = 1024  # streaming histogram resolution; a power of two, so a value's fine bin is exact
_FINE_BITS = FINE_BINS.bit_length() - 1  # FINE_BINS == 2 ** _FINE_BITS

HISTOGRAM_METHOD = (
    f"exact counts: while streaming, {FINE_BINS} equal-width bins over [0, 2^e) with 2^e > the "
    "running max (adjacent bins merged when the max doubles); at the end n_hist_bins equal-width "
    "bins, each a whole number of fine bins, over [0, E] with "
    f"max < E <= (1 + n_hist_bins / {FINE_BINS // 2}) max"
)


class StreamingHistogram:
    """Per feature, counts of its positive values in FINE_BINS equal-width fine bins over
    [0, 2^e), 2^e above its running maximum (see HISTOGRAM_METHOD)."""

    def __init__(self, n_features: int, device: torch.device):
        self.counts = torch.zeros(n_features, FINE_BINS, dtype=torch.long, device=device)
        self.exponents: list[int | None] = [None] * n_features  # fine bins cover [0, 2^exponent)

    def update(self, acts: torch.Tensor, active: torch.Tensor, batch_max: torch.Tensor) -> None:
        """Count one batch: acts [..., F] (>= 0), active = acts > 0, batch_max [F] its maxima."""
        n_features = self.counts.shape[0]
        exponents = torch.frexp(batch_max).exponent.tolist()  # batch_max < 2^exponent
        for f, (value, exponent) in enumerate(zip(batch_max.tolist(), exponents)):
            if value > 0:
                self._widen(f, exponent)
        scale = torch.tensor(
            [math.ldexp(1.0, _FINE_BITS - (e if e is not None else 0)) for e in self.exponents],
            dtype=torch.float64,
            device=acts.device,
        )
        fine = (acts.double() * scale).floor().long().clamp(max=FINE_BINS - 1)
        flat_bins = fine + torch.arange(n_features, device=acts.device) * FINE_BINS
        counts = torch.bincount(flat_bins[active], minlength=n_features * FINE_BINS)
        self.counts += counts.view(-1, FINE_BINS)

    def _widen(self, f: int, exponent: int | None) -> None:
        """Feature f's range widened to [0, 2^exponent) if that is wider; merging bin pairs is
        exact, so the counts do not depend on when the range grew."""
        old = self.exponents[f]
        if exponent is None or (old is not None and exponent <= old):
            return
        if old is not None:
            factor = 1 << min(exponent - old, _FINE_BITS)
            merged = self.counts[f].view(-1, factor).sum(1)
            self.counts[f].zero_()
            self.counts[f, : merged.numel()] = merged
        self.exponents[f] = exponent

    def merge(self, counts: torch.Tensor, exponents: list[int | None]) -> None:
        """Add another shard's histogram (its `counts` and `exponents`), exactly."""
        counts = counts.to(self.counts.device).clone()
        for f, exponent in enumerate(exponents):
            self._widen(f, exponent)
            mine = self.exponents[f]
            if exponent is not None and exponent < mine:
                factor = 1 << min(mine - exponent, _FINE_BITS)
                merged = counts[f].view(-1, factor).sum(1)
                counts[f].zero_()
                counts[f, : merged.numel()] = merged
        self.counts += counts

    def histograms(self, n_bins: int) -> list[Histogram]:
        """Every feature's histogram in n_bins equal-width bins, each a whole number of fine
        bins, covering every non-empty fine bin."""
        counts = self.counts.cpu()
        return [_coarse(counts[f], exponent, n_bins) for f, exponent in enumerate(self.exponents)]


def _coarse(fine: torch.Tensor, exponent: int | None, n: int) -> Histogram:
    if exponent is None:  # never active: zero counts over [0, 1]
        return Histogram(edges=[k / n for k in range(n + 1)], counts=[0] * n)
    fine_width = math.ldexp(1.0, exponent - _FINE_BITS)
    highest = int(fine.nonzero().max())
    group = highest // n + 1  # n bins of `group` fine bins cover every non-empty fine bin
    padded = torch.zeros(n * group, dtype=torch.long)
    padded[: min(FINE_BINS, n * group)] = fine[: n * group]
    return Histogram(edges=[k * group * fine_width for k in range(n + 1)],
                     counts=padded.view(n, group).sum(1).tolist())


class ActivationStats:
    """Per feature: how many activations are positive, their sum, the maximum and a histogram."""

    def __init__(self, n_features: int, device: torch.device):
        self.n_active = torch.zeros(n_features, dtype=torch.long, device=device)
        self.sum_active = CompensatedSum(n_features, device)
        self.max = torch.zeros(n_features, dtype=torch.float32, device=device)
        self.histogram = StreamingHistogram(n_features, device)

    def update(self, acts: torch.Tensor) -> None:
        """Count one batch of activations [B, L, F] (non-negative)."""
        active = acts > 0
        self.n_active += active.sum((0, 1))
        self.sum_active.add(acts.double().sum((0, 1)))
        batch_max = acts.amax((0, 1))
        self.max = torch.maximum(self.max, batch_max)
        self.histogram.update(acts, active, batch_max)

    def state(self) -> dict:
        return {"n_active": self.n_active.cpu(), "sum_active": self.sum_active.state(),
                "max": self.max.cpu(), "counts": self.histogram.counts.cpu(),
                "exponents": list(self.histogram.exponents)}

    def merge_state(self, state: dict) -> None:
        device = self.n_active.device
        self.n_active += state["n_active"].to(device)
        self.sum_active.merge(CompensatedSum.from_state(state["sum_active"]))
        self.max = torch.maximum(self.max, state["max"].to(device))
        self.histogram.merge(state["counts"], state["exponents"])

    def finish(self, n_tokens: int, n_bins: int) -> list[FeatureStats]:
        """Every feature's statistics over n_tokens counted positions, histograms in n_bins bins."""
        n_active, maxima = self.n_active.tolist(), self.max.tolist()
        sum_active = self.sum_active.value.tolist()
        return [
            FeatureStats(
                n_tokens=n_tokens,
                n_active=n_active[f],
                frequency=n_active[f] / n_tokens if n_tokens else 0.0,
                max=maxima[f],
                mean_nonzero=sum_active[f] / n_active[f] if n_active[f] else 0.0,
                histogram=histogram,
            )
            for f, histogram in enumerate(self.histogram.histograms(n_bins))
        ]
