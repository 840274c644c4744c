"""report: self-contained, well-formed HTML with every pair's explanations and highlighted windows; a headless-browser check."""

from __future__ import annotations

import base64
import os
from html import escape
from pathlib import Path

import pytest
from fixtures_case import EXPLAINERS, make_case_artifacts
from html_tree import Node, TreeParser, parse

from faithcase.artifacts import CRITERIA, SAE_KEYS
from faithcase.stages.assemble import assemble
from faithcase.render.plots import decoder_vs_agreement, make_plots
from faithcase.stages.report import build_report, render_report, report_files


@pytest.fixture(scope="module")
def rendered():
    arts = make_case_artifacts()
    cases, summary = assemble(arts.match, arts.scan, arts.pairs, arts.explain, arts.windows, arts.embed, arts.config)
    background = (arts.match.assignment.similarity, arts.scan.agreement.pearson)
    plots = make_plots(cases, summary, arts.explain, background)
    html = render_report(cases, summary, plots, arts.explain)
    return cases, summary, plots, html


def pair_node(tree: TreeParser, kind: str, rank: int) -> Node:
    found = [n for n in tree.root.find_all("div", "pair") if n.attrs.get("data-kind") == kind
             and n.attrs.get("data-rank") == str(rank)]
    assert len(found) == 1, (kind, rank)
    return found[0]


def displayed_token(text: str) -> str:
    return text.replace("\n", "↵").replace("\r", "␍").replace("\t", "⇥")


def test_html_is_well_formed_and_self_contained(rendered):
    _, _, plots, html = rendered
    assert html.startswith("<!DOCTYPE html>")
    tree = parse(html)
    assert tree.urls, "expected data: URIs for the figures"
    for url in tree.urls:
        assert url.startswith(("data:", "#")), url
    assert "http://" not in html and "https://" not in html
    images = tree.root.find_all("img")
    assert len(images) == len(plots)
    for png in plots.values():
        assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in html


def test_every_pair_has_its_escaped_explanations(rendered):
    cases, _, _, html = rendered
    tree = parse(html)
    assert "<b>bold</b>" not in html  # the explanation's markup is text, not tags
    assert len(tree.root.find_all("div", "pair")) == len(cases)
    for case in cases:
        node = pair_node(tree, case.kind, case.rank)
        explanations = node.find_all(cls="explanation")
        assert [e.text() for e in explanations] == case.self_explanations
        for explanation in case.self_explanations:
            assert escape(explanation) in html


def test_every_window_token_is_highlighted_by_activation(rendered):
    cases, _, _, html = rendered
    tree = parse(html)
    for case in cases:
        features = pair_node(tree, case.kind, case.rank).find_all("div", "feature")
        assert [f.attrs["data-sae"] for f in features] == list(SAE_KEYS)
        for slot, feature in enumerate(features):
            assert feature.attrs["data-feature"] == str(case.indices[slot])
            for criterion in CRITERIA:
                panel = [p for p in feature.find_all("div", "windows") if p.attrs["data-criterion"] == criterion]
                assert len(panel) == 1
                expected = case.windows[slot][criterion]
                windows = panel[0].find_all("div", "win")
                assert len(windows) == len(expected)
                for window, example in zip(windows, expected):
                    assert (window.attrs["data-seq-id"], window.attrs["data-start"]) == (
                        str(example.seq_id), str(example.start))
                    tokens = window.find_all("span", "tok")
                    assert [t.text() for t in tokens] == [displayed_token(t) for t in example.texts]
                    assert [float(t.attrs["data-act"]) for t in tokens] == pytest.approx(example.acts, rel=1e-5)
                    for token, act in zip(tokens, example.acts):
                        assert token.attrs["title"] == f"{act:.3f}"
                        assert ("on" in token.classes) == (act > 0)
                        assert ("--a:" in (token.attrs.get("style") or "")) == (act > 0)  # background alpha
    assert "↵" in html and "日本" in html and "&lt;/script&gt;" in html
    assert "</script>" in html and html.count("</script>") == 1  # only the page's own script


def test_summary_tables_evidence_and_sweeps(rendered):
    cases, summary, _, html = rendered
    tree = parse(html)
    table, correlations = tree.root.find_all("table", "summary")[:2]
    rows = table.find_all("tr")[2:]
    assert [r.find_all("td")[0].text() for r in rows] == ["best", "worst", "random", "stratified"]
    for row, kind in zip(rows, ("best", "worst", "random", "stratified")):
        cells = [c.text() for c in row.find_all("td")]
        group = summary.groups[kind]
        assert cells[1:5] == [str(group.n_pairs), str(group.n_left_out), f"{group.mean_similarity:.3f}",
                              f"{group.mean_pearson:.3f}"]
        n = len(EXPLAINERS)
        for side, shown_cells in (("own", cells[6:6 + n]), ("cross", cells[6 + n:6 + 2 * n])):
            assert shown_cells == [f"{group.eleuther[side][n]:.3f}" for n in EXPLAINERS]
    shown = [[c.text() for c in r.find_all("td")][:4] for r in correlations.find_all("tr")[1:]]
    assert shown == [[c.score, c.pairs, str(c.n), "—" if c.rho is None else f"{c.rho:.3f}"]
                     for c in summary.correlations]
    for case in cases:
        agree = pair_node(tree, case.kind, case.rank).find_all("div", "agree")[0].text()
        assert f"{case.agreement.pearson:.3f}" in agree if case.agreement.pearson is not None else "—" in agree
    assert len(tree.root.find_all("span", "silent")) == sum(sum(c.silent) for c in cases) == 1
    assert "load check:" in html and "a &lt;warning&gt; about the load" in html
    assert len(tree.root.find_all("table", "sweep")) == 2 * len(cases)
    assert escape(summary.model) in html


def test_each_feature_shows_its_own_and_cross_aurocs(rendered):
    """A feature's metrics: own = its documents by its own SAE's explanations, cross = by its
    partner's (case.auroc, checked against embed.json in test_assemble)."""
    cases, _, _, html = rendered
    tree = parse(html)

    def shown(value):
        return "—" if value is None else f"{value:.3f}"

    for case in cases:
        features = pair_node(tree, case.kind, case.rank).find_all("div", "feature")
        for slot, feature in enumerate(features):
            own = {n: case.auroc("own", n)[slot] for n in EXPLAINERS}
            cross = {n: case.auroc("cross", n)[slot] for n in EXPLAINERS}
            metrics_div = feature.find_all("div", "metrics")[0]
            spans = [m for m in metrics_div.children if isinstance(m, Node)]
            metrics = {m.find_all("em")[0].text(): m.text()[len(m.find_all("em")[0].text()):]
                       for m in spans}
            assert metrics["own AUROC"] == shown(own["self"]) == shown(case.eleuthers[slot])
            assert metrics["cross AUROC"] == shown(cross["self"])
            for label, scores in (("baseline · null", own), ("cross baseline · null", cross)):
                assert metrics[label] == f"{shown(scores['baseline'])} · {shown(scores['null'])}"


def test_report_without_explain_or_plots_still_renders(rendered):
    cases, summary, _, _ = rendered
    html = render_report(cases, summary, {})
    tree = parse(html)
    assert not tree.root.find_all("table", "sweep")
    assert len(tree.root.find_all("div", "pair")) == len(cases)


def written_report(folder):
    arts = make_case_artifacts()
    cases, summary = assemble(arts.match, arts.scan, arts.pairs, arts.explain, arts.windows, arts.embed,
                              arts.config)
    background = (arts.match.assignment.similarity, arts.scan.agreement.pearson)
    return build_report(folder, cases, summary, arts.explain, background), (cases, summary, arts.explain,
                                                                            background)


def test_build_report_writes_index_and_pngs(rendered, tmp_path):
    _, _, plots, html = rendered
    index, inputs = written_report(tmp_path)
    assert index == tmp_path / "report" / "index.html"
    assert index.read_text(encoding="utf-8") == html
    files = report_files(*inputs)
    assert set(files) == {"report/index.html"} | {f"report/{name}" for name in plots}
    for name, payload in files.items():
        assert (tmp_path / name).read_bytes() == payload
    for name, png in plots.items():
        assert (tmp_path / "report" / name).read_bytes() == png
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.endswith(".tmp")]


def test_plot_functions_return_and_save_png(rendered, tmp_path):
    cases, _, plots, _ = rendered
    path = tmp_path / "scatter.png"
    png = decoder_vs_agreement(cases, ([0.9, 0.1], [0.8, None]), path)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and path.read_bytes() == png
    assert set(plots) == {f"{name}.png" for name in ("similarity_histogram", "decoder_vs_agreement", "auroc_by_group",
                                                      "decoder_vs_scores", "null_selfsim", "scale_sweeps")}


# ---------------------------------------------------------------- headless browser


@pytest.mark.timeout(180)
def test_report_in_headless_chromium(rendered, driver, tmp_path):
    from selenium.webdriver.common.by import By

    cases = rendered[0]
    index, _ = written_report(tmp_path)
    driver.set_window_size(1400, 2000)
    driver.get(index.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"

    for case in cases:
        pair = driver.find_element(By.CSS_SELECTOR, f'div.pair[data-kind="{case.kind}"][data-rank="{case.rank}"]')
        explanations = pair.find_elements(By.CSS_SELECTOR, ".explanation")
        assert [e.text.strip() for e in explanations] == [e.strip() for e in case.self_explanations]
        for slot, sae in enumerate(SAE_KEYS):
            visible = pair.find_elements(By.CSS_SELECTOR, f'.feature[data-sae="{sae}"] .windows.shown span.tok[data-act]')
            expected_tokens = sum(len(ex.texts) for ex in case.windows[slot]["mean"])
            assert len(visible) == expected_tokens
            hot = [t for t in visible if float(t.get_attribute("data-act")) > 0]
            assert hot and all(t.is_displayed() for t in hot[:5])
            assert "rgba" in hot[0].value_of_css_property("background-color")

    # the criterion tabs switch the windows shown (JS ran)
    first = driver.find_element(By.CSS_SELECTOR, "div.pair")
    first.find_element(By.CSS_SELECTOR, '.tab[data-criterion="density"]').click()
    assert first.find_element(By.CSS_SELECTOR, '.windows[data-criterion="density"]').is_displayed()
    assert not first.find_element(By.CSS_SELECTOR, '.windows[data-criterion="mean"]').is_displayed()

    for image in driver.find_elements(By.TAG_NAME, "img"):
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)

    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe

    screenshot = os.environ.get("FAITHCASE_SCREENSHOT")
    if screenshot:
        first.find_element(By.CSS_SELECTOR, '.tab[data-criterion="mean"]').click()
        driver.execute_script("window.scrollTo(0, 0)")
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(screenshot)
