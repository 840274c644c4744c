"""Tests of the match stage: exact Hungarian matching of SAE decoder rows, statistics, pair selection."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from faithcase.tools.bench import synthetic_decoders
from faithcase.run.errors import FaithcaseError
from faithcase.stages import match as match_module
from faithcase.numerics.assignment import cosine_similarity
from faithcase.stages.match import HISTOGRAM_BINS, dead_rows


def match_features(*args, **kwargs):
    """The matching, with its assignment as numpy arrays and its statistics as attributes."""
    matching = match_module.match_features(*args, **kwargs)
    a = matching.assignment
    stats = dict(matching.stats) | {"dead1": np.array(matching.stats.dead1), "dead2": np.array(matching.stats.dead2)}
    return SimpleNamespace(**stats, solver=matching.solver, matching=matching,
                           index1=np.array(a.index1), index2=np.array(a.index2),
                           similarity=np.array(a.similarity, dtype=np.float32))


def random_decoder(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def structured_pair(n1: int, n2: int, d: int = 48, seed: int = 0):
    """Family-structured decoders (siblings compete), cut to n1 and n2 rows."""
    W1, W2 = synthetic_decoders(max(n1, n2), d, seed=seed)
    return W1[:n1], W2[:n2]


def reference_total(W1: torch.Tensor, W2: torch.Tensor) -> float:
    """Plain scipy on the full float32 similarity matrix."""
    sim = cosine_similarity(W1, W2).numpy()
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return float(sim[rows, cols].astype(np.float64).sum())


def assert_one_to_one(result, n1: int, n2: int) -> None:
    assert result.n_matched == min(result.n_alive1, result.n_alive2) == len(result.index1)
    assert len(set(result.index1.tolist())) == len(result.index1)
    assert len(set(result.index2.tolist())) == len(result.index2)
    assert result.index1.min() >= 0 and result.index1.max() < n1
    assert result.index2.min() >= 0 and result.index2.max() < n2


# ----------------------------------------------------------------------------------------------
# planted permutation


@pytest.mark.parametrize("solver,k", [("dense", 16), ("sparse", 2), ("sparse", 16)])
def test_planted_permutation_is_recovered(solver, k):
    n, d = 400, 64
    W1 = random_decoder(n, d, seed=1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    W2 = W1[perm] + 0.05 * random_decoder(n, d, seed=3) / d**0.5  # SAE2 feature j = SAE1 perm[j]
    result = match_features(W1, W2, solver=solver, k=k)

    expected_partner = torch.argsort(perm).numpy()  # SAE1 feature i sits at SAE2 row inv_perm[i]
    assert np.array_equal(result.index1, np.arange(n))
    assert np.array_equal(result.index2, expected_partner[result.index1])
    assert result.similarity.min() > 0.99
    assert result.solver.exact


# ----------------------------------------------------------------------------------------------
# optimality against scipy


SHAPES = [(300, 300), (200, 330), (330, 200)]


@pytest.mark.parametrize("n1,n2", SHAPES)
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_totals_equal_scipy(n1, n2, kind):
    if kind == "random":
        W1, W2 = random_decoder(n1, 32, seed=n1), random_decoder(n2, 32, seed=n2 + 7)
    else:
        W1, W2 = structured_pair(n1, n2)
    expected = reference_total(W1, W2)
    sim = cosine_similarity(W1, W2).numpy()

    for solver, k in [("dense", 16), ("sparse", 2), ("sparse", 8)]:
        result = match_features(W1, W2, solver=solver, k=k, depth=4 * k)
        assert_one_to_one(result, n1, n2)
        info = result.solver
        assert info.name == solver
        assert abs(info.total - expected) <= 1e-6 * abs(expected), (solver, k)
        assert np.allclose(result.similarity, sim[result.index1, result.index2], atol=1e-6)
        if solver == "sparse":
            assert info.certified and info.exact, info.message
            assert info.dual_bound >= expected - 1e-9
            assert info.relative_gap <= 1e-6


@pytest.mark.parametrize("n1,n2", [(1, 1), (1, 5), (5, 1), (3, 2), (70, 3)])
def test_tiny_and_very_rectangular_inputs(n1, n2):
    W1, W2 = random_decoder(n1, 4, seed=n1), random_decoder(n2, 4, seed=10 + n2)
    expected = reference_total(W1, W2)
    for solver in ("dense", "sparse"):
        result = match_features(W1, W2, solver=solver, k=1, depth=1)
        assert_one_to_one(result, n1, n2)
        assert result.solver.exact
        assert result.solver.total == pytest.approx(expected, abs=1e-6)


def test_certification_adds_edges_when_the_graph_is_too_small():
    W1, W2 = structured_pair(500, 500, seed=3)
    expected = reference_total(W1, W2)
    result = match_features(W1, W2, solver="sparse", k=1, depth=2)
    info = result.solver
    assert info.certified
    assert info.iterations > 1
    assert abs(info.total - expected) <= 1e-6 * abs(expected)


def test_capped_certification_returns_a_valid_assignment_and_bound():
    W1, W2 = structured_pair(400, 450, seed=4)
    expected = reference_total(W1, W2)
    result = match_features(W1, W2, solver="sparse", k=1, depth=1, max_iterations=1)
    info = result.solver
    assert_one_to_one(result, 400, 450)
    assert info.iterations == 1
    assert not info.certified and not info.exact
    assert "not certified" in info.message
    assert info.total <= expected + 1e-6
    assert info.dual_bound >= expected - 1e-9  # still a valid upper bound
    assert info.upper_bound >= expected - 1e-9
    assert info.relative_gap >= 0


def test_auto_picks_dense_for_small_inputs():
    W1, W2 = structured_pair(100, 120)
    assert match_features(W1, W2).solver.name == "dense"


# ----------------------------------------------------------------------------------------------
# dead features


def test_dead_rows_mask():
    W = random_decoder(6, 8, seed=0)
    W[1] = 0
    W[3, 2] = float("nan")
    W[4, 0] = float("inf")
    W[5] *= 1e-30  # tiny but alive
    assert dead_rows(W).tolist() == [False, True, False, True, True, False]


@pytest.mark.parametrize("solver", ["dense", "sparse"])
def test_dead_features_are_excluded_and_counted(solver):
    W1, W2 = structured_pair(120, 100, seed=5)
    W1, W2 = W1.clone(), W2.clone()
    W1[[3, 50]] = 0
    W1[7, 5] = float("nan")
    W1[90, 0] = float("-inf")
    W2[[0, 99]] = 0
    W2[10] = float("inf")
    result = match_features(W1, W2, solver=solver, k=4)

    assert (result.n_dead1, result.n_dead2) == (4, 3)
    assert result.dead1.tolist() == [3, 7, 50, 90]
    assert result.dead2.tolist() == [0, 10, 99]
    assert (result.n_alive1, result.n_alive2) == (116, 97)
    assert result.n_matched == 97
    assert not set(result.index1.tolist()) & {3, 7, 50, 90}
    assert not set(result.index2.tolist()) & {0, 10, 99}
    assert_one_to_one(result, 120, 100)
    assert np.isfinite(result.similarity).all()

    alive1 = [i for i in range(120) if i not in (3, 7, 50, 90)]
    alive2 = [j for j in range(100) if j not in (0, 10, 99)]
    expected = reference_total(W1[alive1], W2[alive2])
    assert abs(result.solver.total - expected) <= 1e-6 * abs(expected)


def test_tiny_rows_are_normalized_not_dropped():
    W1, W2 = structured_pair(50, 50, seed=6)
    scaled = W1.clone()
    scaled[::2] *= 1e-30
    scaled[1::2] *= 1e30
    plain, tiny = match_features(W1, W2), match_features(scaled, W2)
    assert tiny.n_dead1 == 0
    assert np.array_equal(plain.index2, tiny.index2)
    assert np.allclose(plain.similarity, tiny.similarity, atol=1e-6)


def test_decoder_parameters_are_accepted():
    W1, W2 = structured_pair(60, 60, seed=12)
    as_parameters = match_features(torch.nn.Parameter(W1), torch.nn.Parameter(W2), solver="sparse")
    assert np.array_equal(as_parameters.index2, match_features(W1, W2).index2)


def test_a_side_without_alive_features_is_an_error():
    with pytest.raises(FaithcaseError, match="SAE 2 has no alive features"):
        match_features(random_decoder(10, 8, 0), torch.zeros(5, 8))


def test_bad_inputs_are_errors():
    W = random_decoder(10, 8, 0)
    with pytest.raises(FaithcaseError, match="different decoder widths"):
        match_features(W, random_decoder(10, 9, 1))
    with pytest.raises(FaithcaseError, match="unknown matching solver"):
        match_features(W, W, solver="greedy")
    with pytest.raises(FaithcaseError, match="2-D"):
        match_features(W[0], W)


# ----------------------------------------------------------------------------------------------
# statistics


@pytest.mark.parametrize("n1,n2", [(240, 240), (260, 200), (200, 260)])
@pytest.mark.parametrize("solver", ["dense", "sparse"])
def test_statistics_match_brute_force(n1, n2, solver):
    W1, W2 = structured_pair(n1, n2, seed=8)
    W1 = W1.clone()
    W1[5] = 0  # one dead feature: statistics are over alive features only
    threshold = 0.5
    result = match_features(W1, W2, threshold=threshold, solver=solver, k=4)

    a = W1.double().numpy()
    b = W2.double().numpy()
    alive1 = np.flatnonzero(np.abs(a).sum(axis=1) > 0)
    a = a[alive1] / np.linalg.norm(a[alive1], axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    sim = a @ b.T
    best1, best2 = sim.max(axis=1), sim.max(axis=0)  # per SAE 1 feature, per SAE 2 feature
    matched = sim[np.searchsorted(alive1, result.index1), result.index2]
    # no value sits so close to the threshold that float32 rounding could flip it
    assert np.abs(np.concatenate([best1, best2, matched]) - threshold).min() > 1e-5

    assert result.shared_ratio == pytest.approx((matched > threshold).mean())
    # FaithfulSAE's feat_match.py: for each SAE 2 feature, its best SAE 1 cosine
    assert result.top1_ratio == pytest.approx((best2 > threshold).mean())
    assert result.top1_ratio_sae1 == pytest.approx((best1 > threshold).mean())
    assert result.mean_similarity == pytest.approx(matched.mean(), abs=1e-6)
    counts = result.histogram.counts
    assert len(counts) == HISTOGRAM_BINS and len(result.histogram.edges) == HISTOGRAM_BINS + 1
    assert sum(counts) == result.n_matched
    assert counts == np.histogram(matched, bins=HISTOGRAM_BINS, range=(-1, 1))[0].tolist()
    assert result.solver.upper_bound >= result.solver.total - 1e-9


def test_certificate_with_crowded_rows(monkeypatch):
    """Rows too crowded to keep whole fall back to an exact check of the suspect pairs."""
    from faithcase.numerics import assignment

    monkeypatch.setattr(assignment, "DEEPEN_MAX_PER_ROW", 2)
    W1, W2 = structured_pair(300, 340, seed=11)
    expected = reference_total(W1, W2)
    result = match_features(W1, W2, solver="sparse", k=1, depth=2)
    assert result.solver.certified
    assert abs(result.solver.total - expected) <= 1e-6 * abs(expected)
