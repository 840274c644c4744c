"""assemble: documented fields, correspondence with the upstream artifacts, the evidence beside every score
(agreement, baseline, null), group means and correlations recomputed independently, refusal of incomplete inputs."""

from __future__ import annotations

from statistics import fmean

import numpy as np
import orjson
import pytest
from fixtures_case import FAILED, N_TOKENS, NONE_AUROC, PAIRS, SILENT, make_case_artifacts
from scipy.stats import spearmanr

from faithcase.artifacts import CRITERIA, EXPLAINERS, PAIR_KINDS
from faithcase.run.errors import FaithcaseError
from faithcase.stages.assemble import assemble, check_complete, read_case_study, write_case_study
from faithcase.numerics.statistics import spearman

PAIR_CASE_FIELDS = {"kind", "rank", "similarity", "indices", "agreement", "silent", "self_explanations", "eleuthers",
                    "cross_eleuthers", "controls", "explanation_similarity", "windows", "scales", "failed", "stats"}
AGREEMENT_FIELDS = {"pearson", "jaccard", "p2_given_1", "p1_given_2", "frequency1", "frequency2"}
ACT_EXAMPLE_FIELDS = {"tokens", "texts", "acts"}
STATS_FIELDS = {"n_tokens", "n_active", "frequency", "max", "mean_nonzero", "histogram"}
SUMMARY_FIELDS = {"meta", "model", "hook", "sae1", "sae2", "match", "quality", "groups", "correlations", "failure",
                  "templates", "n_left_out", "config"}
GROUP_FIELDS = {"n_pairs", "n_left_out", "mean_similarity", "mean_pearson", "mean_jaccard", "own_auroc", "cross_auroc",
                "pass_rate", "mean_explanation_similarity"}


@pytest.fixture
def arts():
    return make_case_artifacts()


def run(arts):
    return assemble(arts.match, arts.scan, arts.pairs, arts.explain, arts.windows, arts.embed, arts.config)


@pytest.fixture
def written(arts, tmp_path):
    cases, summary = run(arts)
    write_case_study(tmp_path, cases, summary)
    return orjson.loads((tmp_path / "case_study.json").read_bytes()), orjson.loads((tmp_path / "summary.json").read_bytes())


def test_json_has_exactly_the_documented_fields(written):
    entries, summary = written
    assert isinstance(entries, list) and len(entries) == len(PAIRS)
    for entry in entries:
        assert set(entry) == PAIR_CASE_FIELDS and set(entry["agreement"]) == AGREEMENT_FIELDS
        for key in ("indices", "silent", "self_explanations", "eleuthers", "cross_eleuthers", "windows", "scales",
                    "failed", "stats"):
            assert len(entry[key]) == 2, key
        assert {side: set(v) for side, v in entry["controls"].items()} == {"own": {"baseline", "null"},
                                                                           "cross": {"baseline", "null"}}
        for per_sae in entry["windows"]:
            assert set(per_sae) == set(CRITERIA)
            for examples in per_sae.values():
                assert examples
                for example in examples:
                    assert set(example) == ACT_EXAMPLE_FIELDS
                    assert len(example["tokens"]) == len(example["texts"]) == len(example["acts"])
        for stats in entry["stats"]:
            assert set(stats) == STATS_FIELDS
    assert set(summary) == SUMMARY_FIELDS
    assert set(summary["groups"]) == set(PAIR_KINDS)
    for group in summary["groups"].values():
        assert set(group) == GROUP_FIELDS and set(group["own_auroc"]) == set(EXPLAINERS)


def test_pairs_are_ordered_by_kind_then_rank(written):
    entries, _ = written
    assert [(e["kind"], e["rank"]) for e in entries] == [(k, r) for k, r, *_ in PAIRS]


def test_entries_correspond_to_the_artifacts(arts, written):
    entries, _ = written
    position = {i1: k for k, i1 in enumerate(arts.match.assignment.index1)}
    for entry, (kind, rank, i1, i2, sim) in zip(entries, PAIRS):
        assert entry["indices"] == [i1, i2] and entry["similarity"] == pytest.approx(sim)
        row = position[i1]
        table = arts.scan.agreement
        assert arts.match.assignment.index2[row] == i2
        assert entry["agreement"]["pearson"] == table.pearson[row]
        assert entry["agreement"]["jaccard"] == table.jaccard[row]
        assert entry["agreement"]["frequency2"] == pytest.approx(table.n2[row] / N_TOKENS)
        assert entry["silent"] == [arts.scan.firing["sae1"][i1] == 0, arts.scan.firing["sae2"][i2] == 0]
        similarity = next(p for p in arts.embed.pairs if (p.kind, p.rank) == (kind, rank))
        assert entry["explanation_similarity"] == similarity.explanation_similarity
        scored = [arts.embed.features["sae1"][str(i1)], arts.embed.features["sae2"][str(i2)]]
        assert entry["eleuthers"] == [s.own["self"].auroc for s in scored]
        # SAE 1's explanation on SAE 2's contexts sits on SAE 2's feature, and the reverse
        assert entry["cross_eleuthers"] == [scored[1].partner["self"].auroc, scored[0].partner["self"].auroc]
        for name in ("baseline", "null"):
            assert entry["controls"]["own"][name] == [s.own[name].auroc for s in scored]
            assert entry["controls"]["cross"][name] == [scored[1].partner[name].auroc, scored[0].partner[name].auroc]
        for slot, (sae, feature) in enumerate((("sae1", i1), ("sae2", i2))):
            explained = arts.explain.features[sae][str(feature)]
            assert entry["self_explanations"][slot] == explained.explanations[0]
            assert entry["scales"][slot] == explained.scale
            assert entry["failed"][slot] == ((sae, feature) in FAILED)
            source = arts.windows[sae].features[str(feature)]
            assert entry["stats"][slot] == source.stats.model_dump(mode="json")
            for criterion in CRITERIA:
                expected = [{"tokens": w.tokens, "texts": w.texts, "acts": w.acts} for w in source.windows[criterion]]
                assert entry["windows"][slot][criterion] == expected
    none_sae, none_feature = NONE_AUROC
    slot = 0 if none_sae == "sae1" else 1
    assert any(e["indices"][slot] == none_feature and e["eleuthers"][slot] is None for e in entries)


def test_group_means_leave_out_silent_pairs_and_match_a_brute_force_recomputation(arts, written):
    _, summary = written

    def mean(values):
        values = [v for v in values if v is not None]
        return fmean(values) if values else None

    position = {i1: k for k, i1 in enumerate(arts.match.assignment.index1)}
    left_out = 0
    for kind in PAIR_KINDS:
        sims, pearson, own, cross, failed = [], [], {n: [] for n in EXPLAINERS}, {n: [] for n in EXPLAINERS}, []
        members = [p for p in arts.pairs.pairs[kind]]
        kept = [p for p in members if arts.scan.firing["sae1"][p.index1] and arts.scan.firing["sae2"][p.index2]]
        left_out += len(members) - len(kept)
        for pair in kept:
            sims.append(pair.similarity)
            pearson.append(arts.scan.agreement.pearson[position[pair.index1]])
            f1, f2 = arts.embed.features["sae1"][str(pair.index1)], arts.embed.features["sae2"][str(pair.index2)]
            for name in EXPLAINERS:
                own[name] += [f1.own[name].auroc, f2.own[name].auroc]
                cross[name] += [f2.partner[name].auroc, f1.partner[name].auroc]
            failed += [arts.explain.features["sae1"][str(pair.index1)].failed,
                       arts.explain.features["sae2"][str(pair.index2)].failed]
        group = summary["groups"][kind]
        assert group["n_pairs"] == len(members) and group["n_left_out"] == len(members) - len(kept)
        assert group["mean_similarity"] == pytest.approx(mean(sims))
        assert group["mean_pearson"] == pytest.approx(mean(pearson))
        for name in EXPLAINERS:
            assert group["own_auroc"][name] == pytest.approx(mean(own[name]))
            assert group["cross_auroc"][name] == pytest.approx(mean(cross[name]))
        assert group["pass_rate"] == pytest.approx(1 - sum(failed) / len(failed))
    assert summary["n_left_out"] == left_out == 1  # the stratified pair with SAE 2's silent feature
    assert summary["groups"]["worst"]["pass_rate"] == pytest.approx(0.5)  # 2 of the 4 worst features fail
    silent = next(e for e in written[0] if e["indices"][1] == SILENT[1])
    assert silent["silent"] == [False, True] and silent["agreement"]["pearson"] is None


def test_correlations_equal_scipy_and_an_independent_bootstrap(arts, written):
    entries, summary = written
    stratified = [e for e in entries if e["kind"] == "stratified" and not any(e["silent"])]
    cosine = [e["similarity"] for e in stratified]
    rows = {(c["score"], c["pairs"]): c for c in summary["correlations"]}
    expected = {"activation correlation": [e["agreement"]["pearson"] for e in stratified],
                "explanation similarity": [e["explanation_similarity"] for e in stratified],
                "own AUROC": [np.mean([a for a in e["eleuthers"] if a is not None]) for e in stratified]}
    for score, values in expected.items():
        row = rows[(score, "stratified")]
        rho, p = spearmanr(cosine, values)
        assert row["n"] == len(values) and row["rho"] == pytest.approx(rho) and row["p_value"] == pytest.approx(p)
    everything = rows[("activation correlation", "all matched")]
    present = [(s, p) for s, p in zip(arts.match.assignment.similarity, arts.scan.agreement.pearson) if p is not None]
    assert everything["n"] == len(present)
    assert everything["rho"] == pytest.approx(spearmanr(*zip(*present)).statistic)


def test_bootstrap_interval_recomputed_resample_by_resample():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    row = spearman(x.tolist(), y.tolist(), "score", "pairs", n_bootstrap=300, seed=7)
    draws = np.random.default_rng(7).integers(0, 40, size=(300, 40))
    boot = [spearmanr(x[d], y[d]).statistic for d in draws]
    assert row.rho == pytest.approx(spearmanr(x, y).statistic)
    assert (row.ci_low, row.ci_high) == pytest.approx(tuple(np.nanpercentile(boot, [2.5, 97.5])), abs=1e-12)
    assert row.ci_low < row.rho < row.ci_high
    assert spearman([1, 2], [3, 4], "s", "p").rho is None  # too few pairs
    assert spearman([1, 1, 1, 1], [1, 2, 3, 4], "s", "p").rho is None  # a constant side


def test_summary_records_upstream_fingerprints_and_the_failure_test(arts, written):
    _, summary = written
    assert summary["meta"]["stage"] == "assemble"
    assert summary["meta"]["upstream"] == {
        "match.json": "fp-match", "scan.json": "fp-scan", "pairs.json": "fp-pairs", "explain.json": "fp-explain",
        "windows_sae1.json": "fp-windows-sae1", "windows_sae2.json": "fp-windows-sae2", "embed.json": "fp-embed"}
    assert summary["failure"]["threshold"] == arts.explain.threshold
    assert summary["failure"]["null_quantiles"] == arts.explain.null.quantiles
    assert summary["quality"]["sae2"]["warnings"] and summary["templates"] == arts.embed.templates
    assert summary["match"]["top1_ratio"] == 0.47 and summary["match"]["top1_ratio_sae1"] == 0.45


def test_case_study_round_trips(arts, tmp_path):
    cases, summary = run(arts)
    write_case_study(tmp_path, cases, summary)
    assert read_case_study(tmp_path) == (cases, summary)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_reading_a_missing_case_study_says_to_assemble(tmp_path):
    with pytest.raises(FaithcaseError, match="faithcase assemble"):
        read_case_study(tmp_path)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        (lambda a: a.explain.features["sae2"].pop("17"), "explain.json lacks feature 17 of sae2: run `faithcase explain`"),
        (lambda a: a.explain.features["sae1"].pop("17"), "explain.json lacks feature 17 of sae1: run `faithcase explain`"),
        (lambda a: a.windows["sae1"].features.pop("33"), "windows_sae1.json lacks feature 33 of sae1: run `faithcase windows`"),
        (lambda a: a.embed.features["sae2"].pop("30"), "embed.json lacks feature 30 of sae2: run `faithcase embed`"),
        (lambda a: a.embed.pairs.pop(), "embed.json lacks stratified pair 5 (26, 27): run `faithcase embed`"),
        (lambda a: a.windows.pop("sae2"), "windows_sae2.json is missing: run `faithcase windows`"),
    ],
)
def test_missing_feature_names_the_stage_to_run(arts, tmp_path, remove, message):
    remove(arts)
    with pytest.raises(FaithcaseError) as err:
        run(arts)
    assert str(err.value) == message
    assert not (tmp_path / "case_study.json").exists()


def test_windows_of_the_wrong_sae_are_refused(arts):
    arts.windows["sae2"] = arts.windows["sae1"]
    with pytest.raises(FaithcaseError, match=r"windows_sae2.json holds the windows of sae1: run `faithcase windows --force`"):
        check_complete(arts.pairs, arts.explain, arts.windows, arts.embed)
