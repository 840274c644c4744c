"""assemble: the keys researchers read, what each `eleuther` slot means (checked against
embed.json's documents and explanations), correspondence with the upstream artifacts, group means
and correlations recomputed independently from the raw artifacts, the shared reader, refusal of
incomplete inputs."""

from __future__ import annotations

from itertools import product
from statistics import fmean

import numpy as np
import orjson
import pytest
from fixtures_case import (EXPLAINERS, FAILED, FIXTURE_KINDS, N_TOKENS, NONE_AUROC, PAIRS, SILENT,
                           make_case_artifacts, top_token_explanation)
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from faithcase.artifacts import CRITERIA, PAIR_KINDS, SAE_KEYS
from faithcase.run.errors import FaithcaseError
from faithcase.stages.assemble import assemble, check_complete, read_case_study, write_case_study
from faithcase.numerics.statistics import spearman

# what researchers read in case_study.json, and the names retired for one field per number
RESEARCHER_KEYS = {"kind", "rank", "similarity", "indices", "self_explanations", "eleuthers",
                   "windows"}
RETIRED_KEYS = {"cross_eleuthers", "controls", "own_auroc", "cross_auroc", "own", "partner"}
RETIRED_PAIR_KEYS = RETIRED_KEYS | {"eleuther", "window_explanations", "window_eleuthers"}


@pytest.fixture
def arts():
    return make_case_artifacts()


def run(arts):
    return assemble(arts.match, arts.scan, arts.pairs, arts.explain, arts.windows, arts.embed, arts.config,
                    describe=arts.describe)


@pytest.fixture
def written(arts, tmp_path):
    cases, summary = run(arts)
    write_case_study(tmp_path, cases, summary)
    return (orjson.loads((tmp_path / "case_study.json").read_bytes()),
            orjson.loads((tmp_path / "summary.json").read_bytes()))


def recorded_auroc(arts, documents_of: str, feature: int, explanation_of: str, explainer: str):
    """sklearn's AUROC of the similarities embed.json recorded for this (documents, explanation),
    None where it recorded none."""
    scored = arts.embed.features[documents_of][str(feature)]
    score = scored.eleuther[explanation_of][explainer]
    if not score.similarities:
        return None
    return roc_auc_score([d.label for d in scored.documents], score.similarities)


def query_text(arts, explanation_of: str, feature: int, explainer: str) -> str:
    """The explanation a score's query holds, from explain.json and windows_*.json."""
    explained = arts.explain.features[explanation_of]
    if explainer == "window":
        return arts.describe.features[explanation_of][str(feature)].explanation
    if explainer == "baseline":
        return top_token_explanation(arts.windows[explanation_of].features[str(feature)])
    if explainer == "null":
        feature = arts.embed.explainers["null"].record["partners"][explanation_of][str(feature)]
    return explained[str(feature)].explanations[0]


def mean(values):
    values = [v for v in values if v is not None]
    return fmean(values) if values else None


def grid(entry) -> dict:
    """An entry's AUROCs as [documents_of][explanation_of][explainer], rebuilt from its one field
    per number: `eleuthers` (self, own) and `aurocs[explainer][own|cross]` (the rest)."""
    out = {docs: {of: {} for of in SAE_KEYS} for docs in SAE_KEYS}
    for slot, docs in enumerate(SAE_KEYS):
        out[docs][docs]["self"] = entry["eleuthers"][slot]
        for name, sides in entry["aurocs"].items():
            for side, values in sides.items():
                of = docs if side == "own" else SAE_KEYS[1 - slot]
                assert name not in out[docs][of], "an AUROC said twice"
                out[docs][of][name] = values[slot]
    return out


def walk(tree, depth: int):
    """Every (key path, leaf) of nested dicts `depth` levels deep."""
    if depth == 0:
        yield (), tree
        return
    for key, sub in tree.items():
        for path, leaf in walk(sub, depth - 1):
            yield (key, *path), leaf


def test_researchers_keys_are_there_and_the_old_names_are_gone(written):
    entries, summary = written
    assert isinstance(entries, list) and len(entries) == len(PAIRS)
    for entry in entries:
        assert RESEARCHER_KEYS <= set(entry) and not RETIRED_PAIR_KEYS & set(entry)
        paths = [path for path, _ in walk(grid(entry), 3)]
        assert sorted(paths) == sorted(product(SAE_KEYS, SAE_KEYS, EXPLAINERS))
        assert "own" not in entry["aurocs"]["self"]  # self's own AUROCs are `eleuthers` only
        assert set(entry["explanations"]) == set(EXPLAINERS) - {"self"}
        for per_sae in entry["windows"]:
            assert set(per_sae) == set(CRITERIA) and all(per_sae.values())
    for group in summary["groups"].values():
        assert not RETIRED_KEYS & set(group)
        assert sorted(path for path, _ in walk(group["eleuther"], 2)) == sorted(
            product(("own", "cross"), EXPLAINERS))


def test_pairs_are_ordered_by_kind_then_rank(written):
    entries, _ = written
    assert [(e["kind"], e["rank"]) for e in entries] == [(k, r) for k, r, *_ in PAIRS]


def test_eleuther_is_keyed_by_documents_then_explanation(arts, written):
    """eleuther[documents_of][explanation_of][explainer]: sklearn's AUROC of the similarities of
    that SAE's feature's documents to that SAE's explanation, as embed.json recorded them."""
    entries, _ = written
    checked = 0
    for entry in entries:
        feature = dict(zip(SAE_KEYS, entry["indices"]))
        for (documents_of, explanation_of, explainer), value in walk(grid(entry), 3):
            scored = arts.embed.features[documents_of][str(feature[documents_of])]
            score = scored.eleuther[explanation_of][explainer]
            assert score.explanation == query_text(arts, explanation_of, feature[explanation_of],
                                                   explainer)
            expected = recorded_auroc(arts, documents_of, feature[documents_of], explanation_of,
                                      explainer)
            assert value == (None if expected is None else pytest.approx(expected, abs=1e-12))
            checked += expected is not None
        # the researchers' eleuthers: each SAE's self-explanation on its own feature's documents
        assert entry["eleuthers"] == [recorded_auroc(arts, sae, feature[sae], sae, "self")
                                      if recorded_auroc(arts, sae, feature[sae], sae, "self")
                                      is None else pytest.approx(
                                          recorded_auroc(arts, sae, feature[sae], sae, "self"))
                                      for sae in SAE_KEYS]
    assert checked > 0
    none_sae, none_feature = NONE_AUROC
    slot = SAE_KEYS.index(none_sae)
    assert any(e["indices"][slot] == none_feature and e["eleuthers"][slot] is None for e in entries)


def test_a_swapped_slot_would_be_seen(written):
    """The fixture's scores differ between the slots: a reversed list or a transposed dict fails."""
    entries, _ = written
    entry = next(e for e in entries if None not in e["eleuthers"])
    values = [value for _, value in walk(grid(entry), 3)]
    assert len(set(values)) == len(values)


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
        for slot, (sae, feature) in enumerate((("sae1", i1), ("sae2", i2))):
            explained = arts.explain.features[sae][str(feature)]
            assert entry["self_explanations"][slot] == explained.explanations[0]
            assert entry["scales"][slot] == explained.scale
            assert entry["failed"][slot] == ((sae, feature) in FAILED)
            source = arts.windows[sae].features[str(feature)]
            assert entry["stats"][slot] == source.stats.model_dump(mode="json")
            for criterion in CRITERIA:
                # every window keeps where it comes from: its sequence and first token
                expected = [{"tokens": w.tokens, "texts": w.texts, "acts": w.acts,
                             "seq_id": w.seq_id, "start": w.start}
                            for w in source.windows[criterion]]
                assert entry["windows"][slot][criterion] == expected


def test_group_means_leave_out_silent_pairs_and_match_a_brute_force_recomputation(arts, written):
    """Every group mean recomputed from the raw pairs, scan, explain and embed artifacts: own is a
    feature's documents by its own SAE's explanation, cross by its partner's."""
    _, summary = written
    position = {i1: k for k, i1 in enumerate(arts.match.assignment.index1)}
    left_out = 0
    for kind in FIXTURE_KINDS:
        members = list(arts.pairs.pairs[kind])
        kept = [p for p in members if arts.scan.firing["sae1"][p.index1] and arts.scan.firing["sae2"][p.index2]]
        left_out += len(members) - len(kept)
        own = {n: [] for n in EXPLAINERS}
        cross = {n: [] for n in EXPLAINERS}
        for pair in kept:
            for name in EXPLAINERS:
                own[name] += [recorded_auroc(arts, "sae1", pair.index1, "sae1", name),
                              recorded_auroc(arts, "sae2", pair.index2, "sae2", name)]
                cross[name] += [recorded_auroc(arts, "sae1", pair.index1, "sae2", name),
                                recorded_auroc(arts, "sae2", pair.index2, "sae1", name)]
        failed = [arts.explain.features[sae][str(i)].failed for p in kept
                  for sae, i in (("sae1", p.index1), ("sae2", p.index2))]
        group = summary["groups"][kind]
        assert group["n_pairs"] == len(members) and group["n_left_out"] == len(members) - len(kept)
        assert group["mean_similarity"] == pytest.approx(mean([p.similarity for p in kept]))
        assert group["mean_pearson"] == pytest.approx(
            mean([arts.scan.agreement.pearson[position[p.index1]] for p in kept]))
        for name in EXPLAINERS:
            assert group["eleuther"]["own"][name] == pytest.approx(mean(own[name]), abs=1e-12)
            assert group["eleuther"]["cross"][name] == pytest.approx(mean(cross[name]), abs=1e-12)
        assert group["pass_rate"] == pytest.approx(1 - sum(failed) / len(failed))
    assert summary["n_left_out"] == left_out == 1  # the stratified pair with SAE 2's silent feature
    assert summary["groups"]["worst"]["pass_rate"] == pytest.approx(0.5)  # 2 of the 4 worst features fail
    assert summary["groups"]["best"]["eleuther"]["own"]["self"] == pytest.approx(
        fmean([0.65, 0.57, 0.89, 0.54]))  # the fixture's AUROCs of best pairs (5, 12) and (17, 3)
    silent = next(e for e in written[0] if e["indices"][1] == SILENT[1])
    assert silent["silent"] == [False, True] and silent["agreement"]["pearson"] is None


def test_correlations_equal_scipy_and_an_independent_bootstrap(arts, written):
    entries, summary = written
    stratified = [e for e in entries if e["kind"] == "stratified" and not any(e["silent"])]
    cosine = [e["similarity"] for e in stratified]
    rows = {(c["score"], c["pairs"]): c for c in summary["correlations"]}
    def per_pair(e, side):  # the mean over the pair's two features, recomputed from embed.json
        i1, i2 = e["indices"]
        other = {"own": {"sae1": "sae1", "sae2": "sae2"},
                 "cross": {"sae1": "sae2", "sae2": "sae1"}}[side]
        return mean([recorded_auroc(arts, "sae1", i1, other["sae1"], "self"),
                     recorded_auroc(arts, "sae2", i2, other["sae2"], "self")])

    expected = {"activation correlation": [e["agreement"]["pearson"] for e in stratified],
                "explanation similarity": [e["explanation_similarity"] for e in stratified],
                "own AUROC": [per_pair(e, "own") for e in stratified],
                "cross AUROC": [per_pair(e, "cross") for e in stratified]}
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


def test_summary_records_the_failure_test_and_leaves_meta_to_the_graph(arts, written):
    _, summary = written
    assert summary["meta"] is None  # the run graph stamps it when the stage commits
    assert summary["failure"]["threshold"] == arts.explain.threshold
    assert summary["failure"]["null_quantiles"] == arts.explain.null.quantiles
    assert summary["quality"]["sae2"]["warnings"] and summary["templates"] == arts.embed.templates
    assert summary["match"]["top1_ratio"] == 0.47 and summary["match"]["top1_ratio_sae1"] == 0.45


def test_case_study_round_trips(arts, tmp_path):
    cases, summary = run(arts)
    write_case_study(tmp_path, cases, summary)
    assert read_case_study(tmp_path) == (cases, summary)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_case_study_round_trips_under_another_name(arts, tmp_path):
    cases, summary = run(arts)
    cases_path, _ = write_case_study(tmp_path, cases, summary, cases_name="other.json")
    assert cases_path.name == "other.json"
    assert read_case_study(tmp_path, "other.json") == (cases, summary)


def test_reading_a_missing_case_study_says_to_assemble(tmp_path):
    with pytest.raises(FaithcaseError, match="faithcase assemble"):
        read_case_study(tmp_path)


@pytest.mark.parametrize("damage", [
    lambda entries: entries[0].update(cross_eleuthers=[0.5, 0.5]),  # an old name
    lambda entries: entries[0]["aurocs"]["self"].update(sae3={}),  # no such side
    lambda entries: entries[0]["windows"][0]["max"][0].pop("seq_id"),
])
def test_an_invalid_case_study_is_one_error_naming_the_file_and_the_stage(arts, tmp_path, damage):
    cases, summary = run(arts)
    cases_path, _ = write_case_study(tmp_path, cases, summary)
    entries = orjson.loads(cases_path.read_bytes())
    damage(entries)
    cases_path.write_bytes(orjson.dumps(entries))
    with pytest.raises(FaithcaseError) as err:
        read_case_study(tmp_path)
    assert str(cases_path) in str(err.value) and "faithcase assemble" in str(err.value)
    assert "--force" in str(err.value)
    cases_path.write_bytes(b"[{")
    with pytest.raises(FaithcaseError, match="invalid artifact"):
        read_case_study(tmp_path)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        (lambda a: a.explain.features["sae2"].pop("17"), "explain.json lacks feature 17 of sae2: run `faithcase explain`"),
        (lambda a: a.explain.features["sae1"].pop("17"), "explain.json lacks feature 17 of sae1: run `faithcase explain`"),
        (lambda a: a.windows["sae1"].features.pop("33"), "windows_sae1.json lacks feature 33 of sae1: run `faithcase windows`"),
        (lambda a: a.embed.features["sae2"].pop("30"), "embed.json lacks feature 30 of sae2: run `faithcase embed`"),
        (lambda a: a.embed.pairs.pop(), "embed.json lacks stratified pair 5 (26, 27): run `faithcase embed`"),
        (lambda a: a.embed.features["sae1"]["5"].eleuther.pop("sae2"),
         "embed.json lacks the scores of sae2's explanations on feature 5 of sae1: "
         "run `faithcase embed`"),
        (lambda a: a.embed.features["sae2"]["12"].eleuther["sae2"].pop("null"),
         "embed.json lacks the scores of sae2's explanations on feature 12 of sae2: "
         "run `faithcase embed`"),
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


def test_the_summary_printer_shows_own_then_cross_means(arts, monkeypatch):
    from faithcase.render import summary_print as stage

    _, summary = run(arts)
    printed = []
    monkeypatch.setattr(stage.console, "print", printed.append)
    stage.print_summary(summary)
    cells = {column.header: list(column.cells) for column in printed[0].columns}
    assert cells["group"] == list(FIXTURE_KINDS)
    for header, side in (("own self/window/baseline/null", "own"),
                         ("cross self/window/baseline/null", "cross")):
        assert cells[header] == [" / ".join(f"{summary.groups[k].eleuther[side][n]:.2f}"
                                            for n in EXPLAINERS) for k in FIXTURE_KINDS]


def test_window_explanations_and_the_paired_comparison_by_brute_force(arts, written):
    """case_study.json keeps self_explanations / eleuthers and has the window explanations; the
    summary's comparison is self minus window AUROC over the features both score, recomputed here
    with its bootstrap, resample by resample."""
    entries, summary = written
    for entry in entries:
        i1, i2 = entry["indices"]
        assert entry["explanations"]["window"] == [
            arts.describe.features["sae1"][str(i1)].explanation,
            arts.describe.features["sae2"][str(i2)].explanation]
        assert entry["aurocs"]["window"]["own"] == [grid(entry)["sae1"]["sae1"]["window"],
                                                    grid(entry)["sae2"]["sae2"]["window"]]
    rng_seed, n_boot = 0, 2000
    for group, rows in summary["comparison"].items():
        for row in rows:
            side = row["side"]
            diffs = []
            for pair in arts.pairs.all_pairs():
                if group != "all" and pair.kind != group:
                    continue
                if not (arts.scan.firing["sae1"][pair.index1] and arts.scan.firing["sae2"][pair.index2]):
                    continue
                for docs, index, partner in (("sae1", pair.index1, "sae2"), ("sae2", pair.index2, "sae1")):
                    by = docs if side == "own" else partner
                    a = recorded_auroc(arts, docs, index, by, "self")
                    b = recorded_auroc(arts, docs, index, by, "window")
                    if a is not None and b is not None:
                        diffs.append(a - b)
            diffs = np.array(diffs)
            assert row["n"] == len(diffs) > 0
            assert row["mean_difference"] == pytest.approx(diffs.mean())
            assert row["self_wins"] == pytest.approx(np.mean((diffs > 0) + 0.5 * (diffs == 0)))
            draws = np.random.default_rng(rng_seed).integers(0, len(diffs), size=(n_boot, len(diffs)))
            means = [diffs[row_].mean() for row_ in draws]
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert set(summary["comparison"]) == {"all", *FIXTURE_KINDS}
