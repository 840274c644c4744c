"""assemble: documented fields, correspondence with the upstream artifacts, group means, refusal of incomplete inputs."""

from __future__ import annotations

from statistics import fmean

import orjson
import pytest
from fixtures_case import FAILED, NONE_AUROC, PAIRS, make_case_artifacts

from faithcase.artifacts import CRITERIA
from faithcase.stages.assemble import assemble, check_complete, read_case_study, write_case_study
from faithcase.errors import FaithcaseError

# the documented fields of one case-study entry, of a window, of the summary and of a summary group
PAIR_CASE_FIELDS = {"kind", "rank", "similarity", "indices", "self_explanations", "eleuthers", "cross_eleuthers", "explanation_similarity",
                    "windows", "scales", "failed", "stats"}
ACT_EXAMPLE_FIELDS = {"tokens", "texts", "acts"}
STATS_FIELDS = {"n_tokens", "n_active", "frequency", "max", "mean_nonzero", "histogram"}
SUMMARY_FIELDS = {"meta", "model", "hook", "sae1", "sae2", "match", "groups", "config"}
GROUP_FIELDS = {"n_pairs", "mean_similarity", "mean_own_auroc", "mean_cross_auroc", "failed_share"}


@pytest.fixture
def arts():
    return make_case_artifacts()


@pytest.fixture
def written(arts, tmp_path):
    cases, summary = assemble(arts.match, arts.explain, arts.windows, arts.embed, arts.config)
    write_case_study(tmp_path, cases, summary)
    return orjson.loads((tmp_path / "case_study.json").read_bytes()), orjson.loads((tmp_path / "summary.json").read_bytes())


def test_json_has_exactly_the_documented_fields(written):
    entries, summary = written
    assert isinstance(entries, list) and len(entries) == len(PAIRS)
    for entry in entries:
        assert set(entry) == PAIR_CASE_FIELDS
        for key in ("indices", "self_explanations", "eleuthers", "cross_eleuthers", "windows", "scales", "failed", "stats"):
            assert len(entry[key]) == 2, key
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
    assert set(summary["groups"]) == {"best", "worst", "random"}
    for group in summary["groups"].values():
        assert set(group) == GROUP_FIELDS
    assert summary["model"] == "tiny/Model-<test>" and summary["hook"] == "blocks.2.hook_resid_pre"
    assert summary["config"]["match"]["n_pairs"] == 2


def test_pairs_are_ordered_best_worst_random_by_rank(written):
    entries, _ = written
    assert [(e["kind"], e["rank"]) for e in entries] == [(k, r) for k, r, *_ in PAIRS]


def test_entries_correspond_to_the_artifacts(arts, written):
    entries, _ = written
    for entry, (kind, rank, i1, i2, sim) in zip(entries, PAIRS):
        assert entry["indices"] == [i1, i2]
        assert entry["similarity"] == pytest.approx(sim)
        cross = next(c for c in arts.embed.cross if (c.kind, c.rank) == (kind, rank))
        assert entry["cross_eleuthers"] == [cross.sae1_on_sae2.auroc, cross.sae2_on_sae1.auroc]
        assert entry["explanation_similarity"] == cross.explanation_similarity
        for slot, (sae, feature) in enumerate((("sae1", i1), ("sae2", i2))):
            explained = arts.explain.features[sae][str(feature)]
            assert entry["self_explanations"][slot] == explained.explanations[0]
            assert entry["scales"][slot] == explained.scale
            assert entry["failed"][slot] == ((sae, feature) in FAILED)
            assert entry["eleuthers"][slot] == arts.embed.scores[sae][str(feature)].auroc
            source = arts.windows[sae].features[str(feature)]
            assert entry["stats"][slot] == source.stats.model_dump(mode="json")
            for criterion in CRITERIA:
                expected = [{"tokens": w.tokens, "texts": w.texts, "acts": w.acts} for w in source.windows[criterion]]
                assert entry["windows"][slot][criterion] == expected
    # the fixture's None AUROC survives as null
    none_sae, none_feature = NONE_AUROC
    slot = 0 if none_sae == "sae1" else 1
    assert any(e["indices"][slot] == none_feature and e["eleuthers"][slot] is None for e in entries)


def test_group_means_match_a_brute_force_recomputation(arts, written):
    _, summary = written

    def mean(values):
        values = [v for v in values if v is not None]
        return fmean(values) if values else None

    for kind in ("best", "worst", "random"):
        sims, own, cross, failed = [], [], [], []
        for pair in arts.match.pairs[kind]:
            sims.append(pair.similarity)
            own.append(arts.embed.scores["sae1"][str(pair.index1)].auroc)
            own.append(arts.embed.scores["sae2"][str(pair.index2)].auroc)
            for c in arts.embed.cross:
                if (c.kind, c.rank) == (kind, pair.rank):
                    cross += [c.sae1_on_sae2.auroc, c.sae2_on_sae1.auroc]
            failed.append(arts.explain.features["sae1"][str(pair.index1)].failed)
            failed.append(arts.explain.features["sae2"][str(pair.index2)].failed)
        group = summary["groups"][kind]
        assert group["n_pairs"] == len(sims)
        assert group["mean_similarity"] == pytest.approx(mean(sims))
        assert group["mean_own_auroc"] == pytest.approx(mean(own))
        assert group["mean_cross_auroc"] == pytest.approx(mean(cross))
        assert group["failed_share"] == pytest.approx(sum(failed) / len(failed))
    assert summary["groups"]["worst"]["failed_share"] == pytest.approx(0.5)  # the fixture fails 2 of the 4 worst features


def test_summary_records_upstream_fingerprints(arts, written):
    _, summary = written
    assert summary["meta"]["stage"] == "assemble"
    assert summary["meta"]["upstream"] == {
        "match.json": arts.match.meta.fingerprint, "explain.json": arts.explain.meta.fingerprint,
        "windows_sae1.json": "fp-windows-sae1", "windows_sae2.json": "fp-windows-sae2", "embed.json": "fp-embed",
    }


def test_case_study_round_trips(arts, tmp_path):
    cases, summary = assemble(arts.match, arts.explain, arts.windows, arts.embed, arts.config)
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
        (lambda a: a.embed.scores["sae2"].pop("30"), "embed.json lacks feature 30 of sae2: run `faithcase embed`"),
        (lambda a: a.embed.cross.pop(), "embed.json lacks the cross scores of random pair 2 (33, 17): run `faithcase embed`"),
        (lambda a: a.windows.pop("sae2"), "windows_sae2.json is missing: run `faithcase windows`"),
    ],
)
def test_missing_feature_names_the_stage_to_run(arts, tmp_path, remove, message):
    remove(arts)
    with pytest.raises(FaithcaseError) as err:
        assemble(arts.match, arts.explain, arts.windows, arts.embed, arts.config)
    assert str(err.value) == message
    assert not (tmp_path / "case_study.json").exists()


def test_windows_of_the_wrong_sae_are_refused(arts):
    arts.windows["sae2"] = arts.windows["sae1"]
    with pytest.raises(FaithcaseError, match=r"windows_sae2.json holds the windows of sae1: run `faithcase windows --force`"):
        check_complete(arts.match, arts.explain, arts.windows, arts.embed)
