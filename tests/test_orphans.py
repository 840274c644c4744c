"""Orphans: features without a shared partner, paired with their nearest decoder neighbour. The
neighbours and their agreement against brute force, the draw's rules, the shared − orphan interval
against an independent bootstrap, and the tiny run's orphan group recomputed from its artifacts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faithcase.artifacts import Assignment, MatchStats, Histogram, Matching, SolverInfo
from faithcase.config import PairsConfig
from faithcase.numerics.directions import nearest_rows
from faithcase.numerics.outliers import counted_positions
from faithcase.numerics.statistics import group_difference
from faithcase.run.errors import FaithcaseError
from faithcase.stages.pairs import select_orphans, select_pairs
from faithcase.stages.scan import scan

from toy_saes import batches, corpus, topk_sae


def test_nearest_rows_equal_a_brute_force_argmax():
    g = torch.Generator().manual_seed(0)
    W1, W2 = torch.randn(30, 8, generator=g), torch.randn(25, 8, generator=g)
    W1[4] = 0  # dead rows: neither a feature nor a neighbour
    W2[7] = float("nan")
    features, partners, sims = nearest_rows(W1, W2, chunk=7)
    with np.errstate(invalid="ignore", divide="ignore"):  # the dead rows
        a = W1.double().numpy() / np.linalg.norm(W1.double().numpy(), axis=1, keepdims=True)
        b = W2.double().numpy() / np.linalg.norm(W2.double().numpy(), axis=1, keepdims=True)
    cos = a @ np.nan_to_num(b, nan=-2).T
    cos[:, 7] = -np.inf
    assert features == [i for i in range(30) if i != 4]
    assert partners == [int(np.argmax(cos[i])) for i in features]
    assert sims == pytest.approx([float(cos[i].max()) for i in features], abs=1e-6)


def test_the_scan_measures_every_features_agreement_with_its_nearest_neighbour():
    from scipy.optimize import linear_sum_assignment

    saes = {"sae1": topk_sae(1), "sae2": topk_sae(2)}
    cos = (saes["sae1"].W_dec @ saes["sae2"].W_dec.T).double().numpy()
    rows, cols = linear_sum_assignment(-cos)  # some nearest neighbours are the matched partner
    assignment = Assignment(index1=rows.tolist(), index2=cols.tolist(),
                            similarity=cos[rows, cols].tolist())
    resid, tokens, excluded = corpus()
    result = scan(saes, assignment, batches(resid, tokens, excluded, [2, 4]))
    for side in ("sae1", "sae2"):  # both ways of filling a row: streamed, or the matched row's
        table, mine = result.nearest[side], 0 if side == "sae1" else 1
        same = [(f, g) in set(zip(*((rows, cols) if mine == 0 else (cols, rows))))
                for f, g in zip(table.feature, table.partner)]
        assert any(same) and not all(same)
    kept = resid[counted_positions(excluded, tokens.shape)]
    acts = {key: sae.encode(kept).double().numpy() for key, sae in saes.items()}
    for side, other in (("sae1", "sae2"), ("sae2", "sae1")):
        table = result.nearest[side]
        expected = nearest_rows(saes[side].W_dec, saes[other].W_dec)
        assert (table.feature, table.partner) == expected[:2]
        for row, (f, g) in enumerate(zip(table.feature, table.partner)):
            a, b = acts[side][:, f], acts[other][:, g]
            if a.std() > 0 and b.std() > 0:
                assert table.agreement.pearson[row] == pytest.approx(np.corrcoef(a, b)[0, 1],
                                                                     abs=1e-9)
            both = ((a > 0) & (b > 0)).sum()
            assert (table.agreement.n1[row], table.agreement.n2[row],
                    table.agreement.n_both[row]) == ((a > 0).sum(), (b > 0).sum(), both)
    again = scan(saes, assignment, batches(resid, tokens, excluded, [6]), nearest=False)
    assert again.agreement == result.agreement and again.nearest == {}


def toy_matching(n: int = 40, seed: int = 0) -> tuple[Matching, dict, dict]:
    """A matching of n features with cosines spread over [0, 1], every feature firing but two, and
    nearest neighbours that differ from the matched partners."""
    rng = np.random.default_rng(seed)
    sims = np.round(rng.uniform(0, 1, n), 3)
    matching = Matching(
        stats=MatchStats(threshold=0.7, n_features1=n, n_features2=n, n_alive1=n, n_alive2=n,
                         n_dead1=0, n_dead2=0, n_matched=n, shared_ratio=float((sims > .7).mean()),
                         top1_ratio=0.5, top1_ratio_sae1=0.5, mean_similarity=float(sims.mean()),
                         histogram=Histogram(edges=[0.0, 1.0], counts=[n])),
        solver=SolverInfo(name="dense", exact=True, certified=False, total=0.0, seconds=0.0),
        assignment=Assignment(index1=list(range(n)), index2=list(range(n)),
                              similarity=sims.tolist()))
    firing = {"sae1": [5] * n, "sae2": [5] * n}
    firing["sae1"][3] = firing["sae2"][8] = 0
    from faithcase.artifacts import AgreementTable, NearestTable

    def table(shift: int) -> NearestTable:
        partners = [(i + shift) % n for i in range(n)]
        empty = AgreementTable(pearson=[0.1] * n, jaccard=[0.1] * n, p2_given_1=[0.1] * n,
                               p1_given_2=[0.2] * n, n1=[5] * n, n2=[5] * n, n_both=[1] * n)
        return NearestTable(feature=list(range(n)), partner=partners,
                            similarity=np.round(rng.uniform(0.3, 0.7, n), 3).tolist(),
                            agreement=empty)

    return matching, {"sae1": table(1), "sae2": table(3)}, firing


def test_orphans_have_no_shared_partner_fire_and_share_no_feature_with_other_pairs():
    matching, nearest, firing = toy_matching()
    settings = PairsConfig(n_pairs=3, n_stratified=4, strata=2, n_orphans=7, seed=5)
    taken = select_pairs(matching.assignment, settings, firing).all_pairs()
    orphans = select_orphans(matching, nearest, taken, settings, firing)
    shared = {i for i, s in enumerate(matching.assignment.similarity) if s > 0.7}
    assert [p.orphan for p in orphans].count("sae1") == 4 and len(orphans) == 7
    used = {"sae1": {p.index1 for p in taken}, "sae2": {p.index2 for p in taken}}
    for p in orphans:
        side, other = p.orphan, "sae2" if p.orphan == "sae1" else "sae1"
        mine, theirs = (p.index1, p.index2) if side == "sae1" else (p.index2, p.index1)
        assert mine not in shared  # matched to itself: shared iff its cosine is above 0.7
        assert firing[side][mine] > 0 and firing[other][theirs] > 0
        table = nearest[side]
        assert theirs == table.partner[table.feature.index(mine)]
        assert p.similarity == table.similarity[table.feature.index(mine)]
        assert mine not in used[side] and theirs not in used[other]
        used[side].add(mine)
        used[other].add(theirs)
    assert [p.rank for p in orphans] == list(range(1, 8))
    assert [p.similarity for p in orphans] == sorted((p.similarity for p in orphans), reverse=True)
    assert select_orphans(matching, nearest, taken, settings, firing) == orphans  # seeded
    with pytest.raises(FaithcaseError, match="needs the encoder assignment"):
        select_orphans(matching, nearest, taken,
                       settings.model_copy(update={"shared": "paulo_belrose"}), firing)


def test_the_shared_minus_orphan_interval_equals_an_independent_bootstrap():
    shared, orphan = [0.9, 0.8, None, 0.7, 0.75], [0.5, 0.6, 0.55, float("nan")]
    found = group_difference("own self AUROC", shared, orphan, n_bootstrap=500, seed=3)
    a, b = np.array([0.9, 0.8, 0.7, 0.75]), np.array([0.5, 0.6, 0.55])
    rng = np.random.default_rng(3)
    draws = []
    for _ in range(500):
        draws.append(a[rng.integers(0, 4, 4)].mean())
    means_a = np.array(draws)
    means_b = np.array([b[rng.integers(0, 3, 3)].mean() for _ in range(500)])
    assert (found.n_shared, found.n_orphan) == (4, 3)
    assert found.difference == pytest.approx(a.mean() - b.mean())
    # numpy draws the same integers whether asked for at once or row by row
    low, high = np.percentile(means_a - means_b, [2.5, 97.5])
    assert (found.ci_low, found.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert group_difference("x", [0.5], [], 10).difference is None


def test_the_tiny_runs_orphan_pairs_come_from_the_scans_neighbours(tiny_run):
    from faithcase.artifacts import PairsArtifact, ScanArtifact
    from faithcase.case_study import CaseStudySummary, PairCase
    from faithcase.run.store import read_artifact

    _, out = tiny_run
    scan_artifact = read_artifact(out / "scan.json", ScanArtifact)
    pairs = read_artifact(out / "pairs.json", PairsArtifact)
    cases = read_artifact(out / "case_study.json", list[PairCase])
    summary = read_artifact(out / "summary.json", CaseStudySummary)
    orphans = [c for c in cases if c.kind == "orphan"]
    assert len(orphans) == len(pairs.pairs["orphan"]) == 2
    for case in orphans:
        slot = 0 if case.orphan == "sae1" else 1
        table = scan_artifact.nearest[case.orphan]
        row = table.feature.index(case.indices[slot])
        assert case.indices[1 - slot] == table.partner[row]
        assert case.agreement.pearson == table.agreement.pearson[row]
        assert case.agreement.jaccard == table.agreement.jaccard[row]
        assert case.similarity == pytest.approx(table.similarity[row])
    group = summary.groups["orphan"]
    kept = [c for c in orphans if not any(c.silent)]
    assert group.n_pairs == 2 and group.n_features == 2 * len(kept)
    pearson = [c.agreement.pearson for c in kept if c.agreement.pearson is not None]
    assert group.mean_pearson == (pytest.approx(np.mean(pearson)) if pearson else None)
    first = summary.orphans[0]
    assert first.metric == "activation Pearson with the partner" and first.n_orphan == len(pearson)


def test_bench_scan_reports_the_three_ways_and_the_same_tables(demo_lm, monkeypatch, tmp_path):
    from faithcase.config import load_config
    from faithcase.model import lm as lm_module
    from faithcase.run.runtime import Runtime
    from faithcase.tools.bench_scan import bench_scan

    from conftest import tiny_config

    monkeypatch.setattr(lm_module, "load_model", lambda *args, **kwargs: demo_lm)
    (tmp_path / "tiny.yaml").write_text(tiny_config())
    found = bench_scan(Runtime(load_config(str(tmp_path / "tiny.yaml"))), n_tokens=512)
    assert found["same tables"] == "True" and found["tokens"] == 512
    assert 0 < found["of them, the matched pair"] < found["nearest pairs"]
    assert found["as the scan does / matched only"] == pytest.approx(
        found["nearest, as the scan does s"] / found["matched only s"])
