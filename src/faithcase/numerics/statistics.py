"""Rank correlation with a bootstrap interval (how a score relates to decoder cosine over many
pairs), and the paired comparison of two explainers on the same documents."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from statistics import fmean

import numpy as np
from scipy.stats import norm, rankdata, spearmanr

from faithcase.artifacts import Correlation, PairedComparison, Sensitivity
from faithcase.evidence import GroupDifference

N_BOOTSTRAP = 2000


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def _present(x: Sequence[float | None], y: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    keep = [(a, b) for a, b in zip(x, y)
            if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    return (np.array([a for a, _ in keep], dtype=np.float64),
            np.array([b for _, b in keep], dtype=np.float64))


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of a with the same row of b (NaN for a constant row)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=1) / denominator, np.nan)


def spearman(x: Sequence[float | None], y: Sequence[float | None], score: str, pairs: str,
             n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> Correlation:
    """Spearman's rho of the pairs where both values exist, scipy's p-value, and a seeded percentile
    bootstrap 95% interval (pairs resampled with replacement; resamples with a constant side
    skipped)."""
    a, b = _present(x, y)
    n = len(a)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return Correlation(score=score, pairs=pairs, n=n, rho=None, ci_low=None, ci_high=None,
                           p_value=None)
    result = spearmanr(a, b)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
    boot = _row_pearson(rankdata(a[draws], axis=1), rankdata(b[draws], axis=1))
    low, high = np.nanpercentile(boot, [2.5, 97.5])
    return Correlation(score=score, pairs=pairs, n=n, rho=float(result.statistic),
                       ci_low=float(low), ci_high=float(high), p_value=float(result.pvalue))


def paired_comparison(self_scores: Sequence[float | None], window_scores: Sequence[float | None],
                      side: str, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> PairedComparison:
    """Self minus window score over the items where both exist: the mean difference with a seeded
    percentile bootstrap 95% interval (items resampled with replacement), and the share of items
    where the self score is higher (ties count half)."""
    a, b = _present(self_scores, window_scores)
    n = len(a)
    if n == 0:
        return PairedComparison(side=side, n=0, mean_self=None, mean_window=None,
                                mean_difference=None, ci_low=None, ci_high=None, self_wins=None,
                                n_bootstrap=n_bootstrap, seed=seed)
    difference = a - b
    draws = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
    low, high = np.percentile(difference[draws].mean(axis=1), [2.5, 97.5])
    wins = float(np.mean((difference > 0) + 0.5 * (difference == 0)))
    return PairedComparison(side=side, n=n, mean_self=float(a.mean()), mean_window=float(b.mean()),
                            mean_difference=float(difference.mean()), ci_low=float(low),
                            ci_high=float(high), self_wins=wins, n_bootstrap=n_bootstrap,
                            seed=seed)


def detectable_difference(comparison: str, first: Sequence[float | None],
                          second: Sequence[float | None], paired: bool, power: float = 0.8,
                          alpha: float = 0.05) -> Sensitivity:
    """The smallest difference in mean (first - second) the bootstrap interval would detect with
    probability `power` (Sensitivity). Paired: items where both exist; else each group's values."""
    if paired:
        a, b = _present(first, second)
        groups = [a - b]
    else:
        groups = [np.array([v for v in values if v is not None and math.isfinite(v)],
                           dtype=np.float64) for values in (first, second)]
    sizes = [len(g) for g in groups]
    if min(sizes) < 2:
        return Sensitivity(comparison=comparison, paired=paired, n=sizes[0],
                           n_other=None if paired else sizes[1], standard_error=None,
                           detectable=None, power=power, alpha=alpha)
    error = math.sqrt(sum(g.var() / len(g) for g in groups))
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return Sensitivity(comparison=comparison, paired=paired, n=sizes[0],
                       n_other=None if paired else sizes[1], standard_error=error,
                       detectable=z * error, power=power, alpha=alpha)


def group_difference(metric: str, shared: Sequence[float | None], orphan: Sequence[float | None],
                     n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> GroupDifference:
    """Mean of `shared` minus mean of `orphan` (present, finite values), with a 95% percentile
    bootstrap interval that resamples each group independently (GroupDifference)."""
    a, b = (np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
            for values in (shared, orphan))
    found = {"metric": metric, "n_shared": len(a), "n_orphan": len(b), "n_bootstrap": n_bootstrap,
             "seed": seed, "mean_shared": float(a.mean()) if len(a) else None,
             "mean_orphan": float(b.mean()) if len(b) else None}
    if not len(a) or not len(b):
        return GroupDifference(**found, difference=None, ci_low=None, ci_high=None)
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(0, len(a), size=(n_bootstrap, len(a)))].mean(axis=1)
    means_b = b[rng.integers(0, len(b), size=(n_bootstrap, len(b)))].mean(axis=1)
    low, high = np.percentile(means_a - means_b, [2.5, 97.5])
    return GroupDifference(**found, difference=float(a.mean() - b.mean()), ci_low=float(low),
                           ci_high=float(high))
