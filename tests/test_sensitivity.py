"""The smallest detectable difference: planting a shift of exactly that size and resampling, the
bootstrap interval detects it about 80% of the time (paired and two groups); the summary carries
it for the run's own comparisons, recomputed here."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_case import make_case_artifacts

from faithcase.numerics.statistics import detectable_difference
from faithcase.stages.assemble import assemble

N_SIMULATIONS, N_BOOTSTRAP = 400, 400


def detected(rng, samples: list[np.ndarray]) -> bool:
    """The percentile bootstrap 95% interval of the mean difference lies above 0."""
    draws = [s[rng.integers(0, len(s), size=(N_BOOTSTRAP, len(s)))].mean(axis=1) for s in samples]
    boot = draws[0] if len(samples) == 1 else draws[0] - draws[1]
    return np.percentile(boot, 2.5) > 0


def test_a_planted_paired_shift_of_that_size_is_detected_80_percent_of_the_time():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.3, 0.9, 60)
    b = a + rng.normal(0.0, 0.08, 60)
    found = detectable_difference("a − b", a.tolist(), b.tolist(), paired=True)
    differences = (a - b) - (a - b).mean()
    assert found.n == 60 and found.standard_error == pytest.approx(differences.std() / np.sqrt(60))
    hits = [detected(rng, [rng.choice(differences + found.detectable, 60)])
            for _ in range(N_SIMULATIONS)]
    assert np.mean(hits) == pytest.approx(0.8, abs=0.07)


def test_a_planted_shift_between_two_groups_is_detected_80_percent_of_the_time():
    rng = np.random.default_rng(1)
    first, second = rng.beta(5, 5, 40), rng.beta(4, 6, 25)
    found = detectable_difference("first − second", first.tolist(), second.tolist(), paired=False)
    assert (found.n, found.n_other) == (40, 25)
    centred = [first - first.mean() + found.detectable, second - second.mean()]
    hits = [detected(rng, [rng.choice(g, len(g)) for g in centred]) for _ in range(N_SIMULATIONS)]
    assert np.mean(hits) == pytest.approx(0.8, abs=0.07)


def test_too_few_values_have_no_figure_and_the_summary_carries_the_runs_own():
    assert detectable_difference("x", [0.5], [0.4], paired=True).detectable is None
    arts = make_case_artifacts()
    cases, summary = assemble(arts.match, arts.scan, arts.pairs, arts.explain, arts.windows,
                              arts.embed, arts.config, describe=arts.describe)
    kept = [c for c in cases if not any(c.silent)]
    own = {name: [(c.kind, a) for c in kept for a in c.auroc("own", name)]
           for name in ("self", "window")}
    pairs = [(s, w) for (_, s), (_, w) in zip(own["self"], own["window"])
             if s is not None and w is not None]
    differences = np.array([s - w for s, w in pairs])
    paired, groups, _ = summary.sensitivity
    assert paired.paired and paired.n == len(pairs)
    assert paired.detectable == pytest.approx(2.8016 * differences.std() / np.sqrt(len(pairs)),
                                              rel=1e-4)
    best = np.array([a for k, a in own["self"] if k == "best" and a is not None])
    worst = np.array([a for k, a in own["self"] if k == "worst" and a is not None])
    assert (groups.n, groups.n_other) == (len(best), len(worst))
    assert groups.detectable == pytest.approx(
        2.8016 * np.sqrt(best.var() / len(best) + worst.var() / len(worst)), rel=1e-4)
