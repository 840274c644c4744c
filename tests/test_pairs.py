"""Pair selection: best, worst among firing pairs, a random control and stratified pairs over the cosine range."""

from __future__ import annotations

import numpy as np
import pytest

from faithcase.artifacts import Assignment
from faithcase.config import PairsConfig
from faithcase.run.errors import FaithcaseError
from faithcase.stages.pairs import check_selection, firing_pairs, select_pairs

N = 200


@pytest.fixture(scope="module")
def matched():
    rng = np.random.default_rng(0)
    sims = np.round(rng.uniform(-0.1, 1.0, N), 6)
    assignment = Assignment(index1=list(range(N)), index2=rng.permutation(N).tolist(), similarity=sims.tolist())
    firing = {"sae1": rng.integers(0, 20, N).tolist(), "sae2": rng.integers(0, 20, N).tolist()}
    for i in np.argsort(sims)[:5]:  # the five lowest cosines have a feature that never fires
        firing["sae2"][assignment.index2[i]] = 0
    return assignment, firing


def positions(assignment, pairs):
    return [assignment.index1.index(p.index1) for p in pairs]


def test_kinds_follow_their_rules_and_are_disjoint(matched):
    assignment, firing = matched
    settings = PairsConfig(n_pairs=8, n_stratified=30, strata=6, min_firing=1)
    result = select_pairs(assignment, settings, firing)
    sims = np.array(assignment.similarity)
    eligible = firing_pairs(assignment, firing, 1)
    assert result.n_eligible == int(eligible.sum()) < N
    best, worst, random, stratified = (positions(assignment, result.pairs[k]) for k in
                                       ("best", "worst", "random", "stratified"))
    assert best == np.argsort(-sims, kind="stable")[:8].tolist()  # best ignores firing
    expected_worst = [i for i in np.argsort(sims, kind="stable") if eligible[i] and i not in best][:8]
    assert worst == expected_worst and not set(np.argsort(sims)[:5]) & set(worst)
    assert all(eligible[i] for i in random + stratified)
    groups = [set(best), set(worst), set(random), set(stratified)]
    assert sum(map(len, groups)) == len(set().union(*groups)) == 8 + 8 + 8 + 30
    for kind in ("best", "random", "stratified"):
        values = [p.similarity for p in result.pairs[kind]]
        assert values == sorted(values, reverse=True)
        assert [p.rank for p in result.pairs[kind]] == list(range(1, len(values) + 1))
    for pair in result.all_pairs():
        i = assignment.index1.index(pair.index1)
        assert (pair.index2, pair.similarity) == (assignment.index2[i], assignment.similarity[i])


def test_stratified_pairs_fill_equal_width_bins_evenly(matched):
    assignment, firing = matched
    result = select_pairs(assignment, PairsConfig(n_pairs=5, n_stratified=30, strata=6), firing)
    edges = np.array(result.strata_edges)
    sims = np.array(assignment.similarity)
    assert edges[0] == sims.min() and edges[-1] == sims.max() and len(edges) == 7
    counts, _ = np.histogram([p.similarity for p in result.pairs["stratified"]], bins=edges)
    assert counts.tolist() == [5] * 6


def test_a_thin_bin_gives_its_share_to_the_others():
    sims = [0.0, 0.01, 0.02] + [0.9 + 0.0005 * i for i in range(100)]  # bin 0 holds 3 pairs, bin 1 the rest
    assignment = Assignment(index1=list(range(103)), index2=list(range(103)), similarity=sims)
    result = select_pairs(assignment, PairsConfig(n_pairs=1, n_stratified=20, strata=2, require_firing=False))
    chosen = [p.similarity for p in result.pairs["stratified"]]
    assert len(chosen) == 20 and sum(s < 0.5 for s in chosen) == 2  # bin 0 keeps what it has left after worst


def test_selection_is_seeded_and_can_ignore_firing(matched):
    assignment, firing = matched
    settings = PairsConfig(n_pairs=6, n_stratified=12, seed=1)
    assert select_pairs(assignment, settings, firing).pairs == select_pairs(assignment, settings, firing).pairs
    other = select_pairs(assignment, settings.model_copy(update={"seed": 2}), firing)
    assert other.pairs["random"] != select_pairs(assignment, settings, firing).pairs["random"]
    everyone = select_pairs(assignment, settings.model_copy(update={"require_firing": False}), firing)
    sims = np.array(assignment.similarity)
    assert positions(assignment, everyone.pairs["worst"]) == np.argsort(sims, kind="stable")[:6].tolist()
    assert everyone.n_eligible == N


def test_sizes_larger_than_the_matching_are_refused(matched):
    assignment, firing = matched
    with pytest.raises(FaithcaseError, match="n_stratified 500 is larger than the 200 matched pairs"):
        select_pairs(assignment, PairsConfig(n_stratified=500), firing)
    with pytest.raises(FaithcaseError, match="--n-pairs 201"):
        check_selection(N, PairsConfig(n_pairs=201))
