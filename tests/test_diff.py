"""faithcase diff across the one-field-per-number rename: a case study and embed.json written in
the old layout agree with the new ones number by number, and a changed number is still seen."""

from __future__ import annotations

import orjson
from fixtures_case import make_case_artifacts

from faithcase.artifacts import SAE_KEYS
from faithcase.stages.assemble import assemble
from faithcase.tools.diff import compare_runs


def old_layout(case) -> dict:
    """The entry as the previous version wrote it: eleuther[documents_of][explanation_of][name],
    window_explanations, window_eleuthers."""
    entry = case.model_dump(mode="json", exclude={"aurocs", "explanations", "scores"})
    names = case.explainer_names()
    entry["eleuther"] = {docs: {of: {n: case.auroc("own" if of == docs else "cross", n)[slot]
                                     for n in names} for of in SAE_KEYS}
                         for slot, docs in enumerate(SAE_KEYS)}
    entry["window_explanations"] = case.explanations["window"]
    entry["window_eleuthers"] = case.auroc("own", "window")
    return entry


def test_the_old_layout_agrees_after_the_renames_and_a_changed_number_is_seen(tmp_path):
    arts = make_case_artifacts()
    cases, _ = assemble(arts.match, arts.scan, arts.pairs, arts.explain, arts.windows, arts.embed,
                        arts.config, describe=arts.describe)
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (new / "case_study.json").write_bytes(orjson.dumps([c.model_dump(mode="json") for c in cases]))
    (new / "embed.json").write_bytes(orjson.dumps(arts.embed.model_dump(mode="json")))
    entries = [old_layout(c) for c in cases]
    embed = arts.embed.model_dump(mode="json")
    embed["nulls"] = embed["explainers"].pop("null")["record"]["partners"]
    (old / "embed.json").write_bytes(orjson.dumps(embed))
    (old / "case_study.json").write_bytes(orjson.dumps(entries))
    assert compare_runs(old, new) == []
    cross = next(v for v in entries[0]["eleuther"]["sae1"]["sae2"].values() if v is not None)
    key = next(k for k, v in entries[0]["eleuther"]["sae1"]["sae2"].items() if v == cross)
    entries[0]["eleuther"]["sae1"]["sae2"][key] = cross + 0.01
    (old / "case_study.json").write_bytes(orjson.dumps(entries))
    assert compare_runs(old, new) == [
        f"case_study.json[0].aurocs.{key}.cross[0]: {cross + 0.01!r} vs {cross!r}"]
