"""A new score and a new explainer are each one module: named in FAITHCASE_PLUGINS (no other file
touched), they reach embed.json, case_study.json, the summary's group table, the printed tables and
the report, beside the built-ins, and their numbers are recomputed here from the artifacts."""

from __future__ import annotations

from pathlib import Path
from statistics import fmean

import orjson
import pytest
from conftest import faithcase_cli
from html_tree import parse
from sklearn.metrics import roc_auc_score

from faithcase import plugins
from faithcase.artifacts import PAIR_KINDS, SAE_KEYS
from faithcase.run.errors import FaithcaseError

PLUGINS = Path(__file__).parent / "plugins"
SCORE, EXPLAINER = PLUGINS / "explanation_length.py", PLUGINS / "top_token_explainer.py"
BUILTIN = ["self", "window", "baseline", "null"]


def read(folder: Path, name: str):
    return orjson.loads((folder / name).read_bytes())


@pytest.fixture(scope="module")
def with_plugins(tiny_run, tmp_path_factory):
    """The tiny run, copied, rerun with both plugins: (its run folder, the original, stdout)."""
    import os
    import shutil

    root, original = tiny_run
    copy = tmp_path_factory.mktemp("plugins")
    shutil.copy(root / "tiny.yaml", copy / "tiny.yaml")
    shutil.copytree(root / "outputs", copy / "outputs")
    saved = dict(os.environ)
    os.environ.update({plugins.PLUGINS_ENV: f"{SCORE},{EXPLAINER}", "COLUMNS": "400"})
    try:
        done = faithcase_cli("run", "--config", "tiny.yaml", cwd=copy)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return copy / "outputs" / "tiny", original, done.stdout + done.stderr


def kept(cases, kind):
    return [c for c in cases if c["kind"] == kind and not any(c["silent"])]


def test_only_what_the_plugins_feed_is_recomputed(with_plugins):
    _, _, printed = with_plugins
    for stage in ("match", "scan", "known", "pairs", "explain", "windows", "describe"):
        assert f"cached {stage} is up to date" in printed
    assert "cached embed" not in printed and "cached assemble" not in printed


def test_a_new_explainer_is_scored_beside_the_built_ins(with_plugins):
    run, original, printed = with_plugins
    embed, before = read(run, "embed.json"), read(original, "embed.json")
    assert list(embed["explainers"]) == ["self", "window", "top_token", "baseline", "null",
                                         "truth"]  # truth: the known features' true answer
    checked = 0
    for sae in SAE_KEYS:
        windows = read(run, f"windows_{sae}.json")["features"]
        for f, scored in embed["features"][sae].items():
            labels = [d["label"] for d in scored["documents"]]
            for of, by in scored["eleuther"].items():
                partner = f if of == sae else None
                if partner is not None:  # its own: the top token of its own spread
                    spread = windows[f]["stats"]["spread"]
                    assert by["top_token"]["explanation"] == ("".join(spread["texts"]).strip()
                                                              or None)
                score = by["top_token"]
                if score["auroc"] is not None:
                    assert score["auroc"] == pytest.approx(
                        roc_auc_score(labels, score["similarities"]), abs=1e-12)
                    checked += 1
                for name in BUILTIN:  # the built-ins' scores are untouched
                    assert by[name] == before["features"][sae][f]["eleuther"][of][name]
    assert checked > 0
    cases, summary = read(run, "case_study.json"), read(run, "summary.json")
    for case in cases:
        assert set(case["aurocs"]["top_token"]) == {"own", "cross"}
        assert len(case["explanations"]["top_token"]) == 2
    for kind in PAIR_KINDS:
        for side in ("own", "cross"):
            values = [v for c in kept(cases, kind) for v in c["aurocs"]["top_token"][side]
                      if v is not None]
            expected = fmean(values) if values else None
            got = summary["groups"][kind]["eleuther"][side]["top_token"]
            assert got == (None if expected is None else pytest.approx(expected, abs=1e-12))
    html = (run / "report" / "index.html").read_text()
    tree = parse(html)
    heads = [th.text() for th in tree.root.find_all("table", "summary")[0].find_all("th")]
    assert heads.count("top_token") == 2  # own and cross
    assert len(tree.root.find_all("blockquote")) and all(
        len([b for b in pair.find_all("blockquote")
             if b.attrs.get("data-explainer") == "top_token"]) == 2
        for pair in tree.root.find_all("div", "pair"))
    assert "self/window/top_token/baseline/null/truth" in printed


def test_a_new_score_reaches_the_case_study_the_group_table_and_the_report(with_plugins):
    run, _, printed = with_plugins
    cases, summary = read(run, "case_study.json"), read(run, "summary.json")
    embed = read(run, "embed.json")
    names = [n for n, e in embed["explainers"].items() if e["only"] is None]
    assert list(summary["scores"]) == [f"length.{n}" for n in names]
    for case in cases:
        for name in names:
            expected = []
            for slot, sae in enumerate(SAE_KEYS):
                text = embed["features"][sae][str(case["indices"][slot])]["eleuther"][sae][name][
                    "explanation"]
                expected.append(None if text is None else float(len(text.split())))
            assert case["scores"][f"length.{name}"] == expected
    for kind in PAIR_KINDS:
        for column in summary["scores"]:
            values = [v for c in kept(cases, kind) for v in c["scores"][column] if v is not None]
            expected = fmean(values) if values else None
            got = summary["groups"][kind]["scores"][column]
            assert got == (None if expected is None else pytest.approx(expected))
    html = (run / "report" / "index.html").read_text()
    table = parse(html).root.find_all("table", "summary")[0]
    heads = [th.text() for th in table.find_all("th")]
    assert "length.self" in heads and "length.top_token" in heads
    rows = {r.find_all("td")[0].text(): [td.text() for td in r.find_all("td")]
            for r in table.find_all("tr")[2:]}
    for kind, cells in rows.items():
        value = summary["groups"][kind]["scores"].get("length.self")  # known: none
        assert cells[-len(summary["scores"])] == ("—" if value is None else f"{value:.3f}")
    assert "scores by group" in printed and "length.self" in printed


def test_plugin_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(plugins.PLUGINS_ENV, str(tmp_path / "missing.py"))
    with pytest.raises(FaithcaseError, match="plugin file not found"):
        plugins.explainers()
    (tmp_path / "empty.py").write_text("X = 1\n")
    monkeypatch.setenv(plugins.PLUGINS_ENV, str(tmp_path / "empty.py"))
    with pytest.raises(FaithcaseError, match="declares neither EXPLAINER nor SCORE"):
        plugins.scores()
    (tmp_path / "twice.py").write_text("from faithcase.explainers.self_explanation import "
                                       "EXPLAINER\n")
    monkeypatch.setenv(plugins.PLUGINS_ENV, str(tmp_path / "twice.py"))
    with pytest.raises(FaithcaseError, match="two plugins declare the explainer 'self'"):
        plugins.explainers()
    monkeypatch.setenv(plugins.PLUGINS_ENV, "no_such_module_xyz")
    with pytest.raises(FaithcaseError, match="cannot be imported"):
        plugins.scores()
