"""The report as HTML: every fragment of the page, from artifacts to one self-contained string
(inline CSS/JS, PNGs as data URIs)."""

from __future__ import annotations

import base64
import json
from html import escape

from faithcase.artifacts import (
    CRITERIA,
    GROUPS,
    SAE_KEYS,
    SIDES,
    ExplainArtifact,
)
from faithcase.case_study import CaseStudySummary, CaseWindow, PairCase
from faithcase.render.checks_html import (
    checks_table_html,
    feature_checks_html,
    feature_flags_html,
)
from faithcase.render.calibration_html import calibration_html
from faithcase.render.style import CSS, JS
from faithcase.render.window_html import (comparison_html, controls_of, explainer_html,
                                          explainer_names, orphans_html, sensitivity_html)

CRITERION_HELP = {
    "mean": "highest mean activation over the window",
    "density": "highest share of active tokens in the window",
    "max": "highest peak activation, window centred on the peak",
}
PLOT_CAPTIONS = {
    "calibration": "Known features: each explainer's AUROC against the true answer's on the same "
                   "documents (diagonal: as good as the truth); dotted: on the best matched pairs.",
    "similarity_histogram": "Decoder cosine similarity of the Hungarian-matched pairs; dashed "
                            "line: shared-feature threshold.",
    "decoder_vs_agreement": "The ground truth: decoder cosine of every matched pair (grey) against "
                            "the Pearson correlation of its two features' activations on the "
                            "corpus; the selected pairs in colour.",
    "auroc_by_group": "Embedding AUROC by pair group: each feature's self-explanation, its "
                      "top-token baseline and a null (another feature's explanation), on its own "
                      "contexts and on its partner's (cross); dashed line: chance.",
    "decoder_vs_scores": "Decoder cosine against each score, over the stratified pairs (Spearman "
                         "rho in the titles).",
    "null_selfsim": "Best self-similarity of random directions (the null) and of the selected "
                    "features; dashed line: the failure threshold.",
    "scale_sweeps": "Steering scale sweeps of every selected feature: change of self-similarity "
                    "and the criterion curve against scale; dotted line: the scale of the "
                    "explanation.",
}
PLOT_ORDER = ("similarity_histogram", "decoder_vs_agreement", "auroc_by_group", "null_selfsim",
              "decoder_vs_scores")
SWEEP_PLOT = "scale_sweeps"
WIDE_PLOTS = {"decoder_vs_scores"}  # a row of panels: the page's full width
TOKEN_GLYPHS = {"\n": "↵", "\r": "␍", "\t": "⇥"}


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def auroc_html(value: float | None) -> str:
    """An AUROC, coloured when clearly above or at/below chance."""
    if value is None:
        return '<span class="muted" title="not computable">—</span>'
    css = "good" if value >= 0.7 else "bad" if value <= 0.55 else ""
    return f'<span class="{css}">{value:.3f}</span>'


def token_html(text: str, act: float, feature_max: float) -> str:
    """One token as a span, background by activation relative to the feature's max."""
    shown = "".join(f'<span class="glyph">{TOKEN_GLYPHS[c]}</span>' if c in TOKEN_GLYPHS
                    else escape(c) for c in text)
    attrs = f'class="tok{" on" if act > 0 else ""}" data-act="{act:.6g}" title="{act:.3f}"'
    if act > 0:
        alpha = min(1.0, act / feature_max) * 0.85 + 0.05
        attrs += f' style="--a:{alpha:.2f}"'
    return f"<span {attrs}>{shown}</span>"


def criterion_value(criterion: str, acts: list[float]) -> float:
    if not acts:
        return 0.0
    if criterion == "density":
        return sum(a > 0 for a in acts) / len(acts)
    if criterion == "mean":
        return sum(acts) / len(acts)
    return max(acts)


def window_html(example: CaseWindow, criterion: str, feature_max: float) -> str:
    value = criterion_value(criterion, example.acts)
    label = pct(value) if criterion == "density" else fmt(value, 2)
    tokens = "".join(token_html(t, a, feature_max) for t, a in zip(example.texts, example.acts))
    where = (f'data-seq-id="{example.seq_id}" data-start="{example.start}" '
             f'title="sequence {example.seq_id}, from token {example.start}"')
    return (f'<div class="win" {where}><span class="wv" title="{escape(criterion)}">{label}</span>'
            f'<span class="toks">{tokens}</span></div>')


def feature_max_of(case: PairCase, slot: int) -> float:
    stats_max = case.stats[slot].max if slot < len(case.stats) else 0.0
    window_max = max((a for examples in case.windows[slot].values() for ex in examples
                      for a in ex.acts), default=0.0)
    return stats_max if stats_max > 0 else window_max if window_max > 0 else 1.0


def sweep_html(explain: ExplainArtifact, sae: str, feature: int) -> str:
    entry = explain.features.get(sae, {}).get(str(feature))
    if entry is None:
        return ""
    parts = []
    if entry.ranking:
        items = "".join(f"<li>{escape(t.text) or '<i>empty</i>'} "
                        f"<span class=\"muted\">(scale {t.scale:g}, "
                        f"{'greedy' if t.greedy else 'sampled'}, "
                        f"specificity {fmt(t.specificity, 2)})</span></li>"
                        for t in entry.ranking)
        parts.append(f'<details class="more"><summary>{len(entry.ranking)} ranked texts</summary>'
                     f'<ol>{items}</ol></details>')
    if entry.sweep:
        rows = "".join(
            '<tr class="'
            f'{"chosen" if entry.scale is not None and p.scale == entry.scale else ""}">'
            f"<td>{p.scale:g}</td><td>{p.selfsim:+.4f}</td><td>{fmt(p.ce)}</td>"
            f"<td>{p.entropy:+.3f}</td>"
            f"<td>{fmt(p.score)}</td></tr>"
            for p in sorted(entry.sweep, key=lambda p: p.scale)
        )
        parts.append(
            '<details class="more sweep"><summary>scale sweep '
            f"(best Δselfsim {entry.best_selfsim:+.4f})</summary>"
            '<table class="sweep"><tr><th>scale</th><th>Δ selfsim</th><th>CE</th>'
            '<th>Δ entropy</th><th>score</th></tr>'
            f"{rows}</table></details>"
        )
    return "".join(parts)


def metrics_html(case: PairCase, slot: int, controls: list[str]) -> str:
    """A feature's scale, its self-explanation's own and cross AUROC, the controls', the registered
    scores, its frequency and peak."""
    own, cross = case.auroc("own", "self")[slot], case.auroc("cross", "self")[slot]
    scale, stats = case.scales[slot], case.stats[slot]
    control_own = " · ".join(auroc_html(case.auroc("own", c)[slot]) for c in controls)
    control_cross = " · ".join(auroc_html(case.auroc("cross", c)[slot]) for c in controls)
    names = " · ".join(controls)
    extra = "".join(f"<span><em>{escape(key)}</em>{fmt(values[slot])}</span>"
                    for key, values in case.scores.items())
    return (
        f'<span><em>scale</em>{"—" if scale is None else f"{scale:g}"}</span>'
        f"<span><em>own AUROC</em>{auroc_html(own)}</span>"
        '<span title="the partner\'s explanation scored on this feature\'s contexts">'
        f"<em>cross AUROC</em>{auroc_html(cross)}</span>"
        f'<span title="own AUROC of the controls: {escape(names)}"><em>{escape(names)}</em>'
        f"{control_own}</span>"
        f'<span title="cross AUROC of the partner\'s controls: {escape(names)}">'
        f"<em>cross {escape(names)}</em>{control_cross}</span>{extra}"
        f"<span><em>freq</em>{stats.frequency:.2%}</span>"
        f"<span><em>max act</em>{stats.max:.2f}</span>"
    )


def feature_html(case: PairCase, slot: int, explain: ExplainArtifact | None,
                 controls: list[str]) -> str:
    sae = SAE_KEYS[slot]
    feature = case.indices[slot]
    failed = case.failed[slot]
    explanation = case.self_explanations[slot]
    classes = ("explanation" + (" failed" if failed else "")
               + ("" if explanation is not None else " none"))
    text = escape(explanation) if explanation is not None else "no explanation"
    flag = (' <span class="flag" title="best self-similarity at most the failure threshold">'
            "failed</span>") if failed else ""
    if case.silent[slot]:
        flag += (' <span class="silent" title="never fires on the corpus: left out of the group'
                 ' means">silent</span>')
    flag += feature_flags_html(case, slot)
    feature_max = feature_max_of(case, slot)
    panels = []
    for criterion in CRITERIA:
        examples = case.windows[slot].get(criterion, [])
        body = ("".join(window_html(ex, criterion, feature_max) for ex in examples)
                or '<div class="empty">no windows</div>')
        shown = " shown" if criterion == CRITERIA[0] else ""
        panels.append(
            f'<div class="windows{shown}" data-criterion="{criterion}">'
            f'<div class="crit-label">{criterion} · {CRITERION_HELP[criterion]}</div>{body}</div>'
        )
    extra = sweep_html(explain, sae, feature) if explain is not None else ""
    others = "".join(explainer_html(case, slot, name) for name in case.explainer_names()
                     if name != "self" and name not in controls)
    return (
        f'<div class="feature" data-sae="{sae}" data-feature="{feature}">'
        f'<div class="feature-head"><b>{sae.upper()} · feature {feature}</b>{flag}</div>'
        f'<blockquote class="{classes}">{text}</blockquote>{others}'
        f'<div class="metrics">{metrics_html(case, slot, controls)}'
        f'{feature_checks_html(case, slot)}</div>'
        f'{"".join(panels)}{extra}</div>'
    )


def pair_id(case: PairCase) -> str:
    return f"pair-{case.kind}-{case.rank}"


def agreement_html(case: PairCase) -> str:
    a = case.agreement
    return ('<div class="agree" title="activation agreement of the two features on the same '
            'corpus tokens">'
            f"<span><em>activation Pearson</em><b>{fmt(a.pearson)}</b></span>"
            f"<span><em>Jaccard</em>{fmt(a.jaccard)}</span>"
            f"<span><em>P(2 fires | 1 fires)</em>{fmt(a.p2_given_1)}</span>"
            f"<span><em>P(1 | 2)</em>{fmt(a.p1_given_2)}</span>"
            f"<span><em>frequencies</em>{a.frequency1:.2%} · {a.frequency2:.2%}</span>"
            f"<span><em>explanation similarity</em>{fmt(case.explanation_similarity)}</span></div>")


def pair_html(case: PairCase, explain: ExplainArtifact | None, controls: list[str]) -> str:
    tabs = "".join(
        f'<button type="button" class="tab{" active" if c == CRITERIA[0] else ""}" '
        f'data-criterion="{c}" title="{CRITERION_HELP[c]}">{c}</button>'
        for c in CRITERIA
    )
    return (
        f'<div class="pair" id="{pair_id(case)}" data-kind="{case.kind}" data-rank="{case.rank}">'
        f'<div class="pair-head"><span class="badge {case.kind}">{case.kind}</span>'
        f'<span class="title">#{case.rank} · SAE1 f{case.indices[0]} ↔ '
        f'SAE2 f{case.indices[1]}</span>'
        f'<span class="sim">decoder cos <b>{case.similarity:.3f}</b></span>'
        f'<div class="tabs" role="tablist">{tabs}</div></div>{agreement_html(case)}'
        f'<div class="features">{feature_html(case, 0, explain, controls)}'
        f'{feature_html(case, 1, explain, controls)}</div></div>'
    )


PROMPT_SEPARATOR = '<span class="muted">|</span>'  # between the prompt's tokens


def prompt_html(settings) -> str:
    """The steered prompt token by token (the id on hover), the placeholder tokens marked."""
    if not settings.prompt_tokens:  # an artifact from before prompt tokens were recorded
        return ""
    marked, spans = set(settings.placeholder_positions), []
    for i, (token_id, text) in enumerate(settings.prompt_tokens):
        shown = "".join(f'<span class="glyph">{TOKEN_GLYPHS[c]}</span>' if c in TOKEN_GLYPHS
                        else escape(c) for c in text)
        spans.append(f'<span class="tok{" on" if i in marked else ""}" title="{token_id}">'
                     f"{shown}</span>")
    return ('<details class="more"><summary>prompt, token by token '
            f"({len(spans)} tokens; placeholder at {settings.placeholder_positions})</summary>"
            f'<div class="toks">{PROMPT_SEPARATOR.join(spans)}</div></details>')


def header_html(summary: CaseStudySummary, explain: ExplainArtifact | None) -> str:
    def sae_box(label: str, key: str, info) -> str:
        quality = summary.quality.get(key)
        load = "" if quality is None else (
            f"<span><em>FVU</em>{quality.fvu:.3f}</span><span><em>L0</em>{quality.l0:.1f}"
            f"{f' (k {quality.k})' if quality.k else ''}</span>"
            f"<span><em>never fire</em>{quality.n_silent}</span>")
        return (
            f'<div class="box"><b>{label}</b><div class="kv">'
            f"<span><em>path</em><code>{escape(info.path)}</code></span>"
            f"<span><em>format</em>{escape(info.format)}</span>"
            f"<span><em>size</em>{info.d_in} → {info.d_sae}</span>{load}"
            f"<span><em>sha256</em><code>{escape(info.sha256[:12])}</code></span></div></div>"
        )

    stats = summary.match
    failure = summary.failure
    chips = [
        ("matched pairs", str(stats.n_matched)),
        (f"shared (cos > {stats.threshold:g})", pct(stats.shared_ratio)),
        ("top-1 ratio (SAE 2 → 1)", pct(stats.top1_ratio)),
        ("top-1 ratio (SAE 1 → 2)", pct(stats.top1_ratio_sae1)),
        ("mean cos", fmt(stats.mean_similarity)),
        ("dead features", f"{stats.n_dead1} / {stats.n_dead2}"),
        ("failure threshold",
         f"{fmt(failure.get('threshold'), 4)} ({failure.get('source', '')})"),
        ("pairs left out (silent feature)", str(summary.n_left_out)),
    ]
    chip_html = "".join(f'<span class="chip"><em>{escape(k)}</em>{escape(v)}</span>'
                        for k, v in chips)
    warnings = [w for quality in summary.quality.values() for w in quality.warnings]
    warning_html = "".join(f'<div class="warn"><b>load check:</b> {escape(w)}</div>'
                           for w in warnings)
    baseline = ""
    if explain is not None:
        baseline = (
            f'<p class="sub">Steering: insert layer {explain.settings.insert_layer}, read layer '
            f"{explain.settings.read_layer}, mode {escape(explain.settings.mode)}, criterion "
            f"{escape(explain.settings.criterion)}. Zeroed placeholder: "
            f"<q>{escape(explain.baseline.replace_zero)}</q>; "
            f"neutral placeholder: <q>{escape(explain.baseline.neutral)}</q></p>"
            f"{prompt_html(explain.settings)}"
        )
    return (
        "<header><h1>Matched-feature case study</h1>"
        f'<p class="sub">model <code>{escape(summary.model)}</code> · '
        f'hook <code>{escape(summary.hook)}</code>'
        f" · {escape(summary.meta.created if summary.meta else 'not committed by a run')}</p>"
        f'<div class="saes">{sae_box("SAE 1", "sae1", summary.sae1)}'
        f'{sae_box("SAE 2", "sae2", summary.sae2)}</div>'
        f'{warning_html}<div class="chips">{chip_html}</div>{baseline}</header>'
    )


def summary_table_html(summary: CaseStudySummary) -> str:
    """Per group: agreement, `eleuther[own|cross][explainer]` means, pass rate, similarity, then
    the registered scores' means."""
    names = explainer_names(summary)
    columns = list(summary.scores)
    rows = []
    for kind in [k for k in GROUPS if k in summary.groups]:
        g = summary.groups[kind]
        aurocs = "".join(f"<td>{auroc_html(g.eleuther[side].get(n))}</td>"
                         for side in SIDES for n in names)
        extra = "".join(f"<td>{fmt(g.scores.get(key))}</td>" for key in columns)
        rows.append(
            f'<tr><td><span class="badge {escape(kind)}">{escape(kind)}</span></td>'
            f"<td>{g.n_pairs}</td><td>{g.n_left_out}</td><td>{fmt(g.mean_similarity)}</td>"
            f"<td><b>{fmt(g.mean_pearson)}</b></td><td>{fmt(g.mean_jaccard)}</td>{aurocs}"
            f"<td>{pct(g.pass_rate)}</td><td>{fmt(g.mean_explanation_similarity)}</td>{extra}"
            "</tr>"
        )
    heads = "".join(f"<th>{escape(n)}</th>" for _ in SIDES for n in names)
    extra_heads = "".join(f'<th rowspan="2" title="{escape(summary.scores[key])}">'
                          f"{escape(key)}</th>" for key in columns)
    n = len(names)
    head = ('<table class="summary"><tr><th rowspan="2">group</th><th rowspan="2">pairs</th>'
            '<th rowspan="2">left out</th><th rowspan="2">decoder cos</th>'
            f'<th colspan="2">activation agreement</th><th colspan="{n}">own AUROC</th>'
            f'<th colspan="{n}">cross AUROC</th><th rowspan="2">explanations passing</th>'
            f'<th rowspan="2">explanation similarity</th>{extra_heads}</tr>'
            f"<tr><th>Pearson</th><th>Jaccard</th>{heads}</tr>")
    return head + "".join(rows) + "</table>"


def correlations_html(summary: CaseStudySummary) -> str:
    rows = "".join(
        f"<tr><td>{escape(c.score)}</td><td>{escape(c.pairs)}</td><td>{c.n}</td>"
        f"<td><b>{fmt(c.rho)}</b></td>"
        f'<td class="ci">[{fmt(c.ci_low)}, {fmt(c.ci_high)}]</td><td>'
        f'{"—" if c.p_value is None else "&lt;1e-300" if c.p_value == 0 else f"{c.p_value:.2g}"}'
        "</td></tr>"
        for c in summary.correlations)
    templates = "; ".join(f"<code>{escape(t)}</code>: {fmt(v)}"
                          for t, v in summary.templates.items())
    note = (f'<p class="sub">Mean own AUROC of the self-explanations by query template: '
            f'{templates}</p>') if templates else ""
    return ('<table class="summary"><tr><th>score</th><th>pairs</th><th>n</th>'
            '<th>Spearman ρ with decoder cos</th>'
            f"<th>95% bootstrap interval</th><th>p</th></tr>{rows}</table>{note}")


def plot_stem(name: str) -> str:
    return name[:-4] if name.endswith(".png") else name


def figure_html(name: str, png: bytes, wide: bool = False) -> str:
    stem = plot_stem(name)
    data = base64.b64encode(png).decode("ascii")
    caption = PLOT_CAPTIONS.get(stem, stem.replace("_", " "))
    css = ' class="wide"' if wide else ""
    return (
        f'<figure{css} id="plot-{escape(stem)}">'
        f'<img src="data:image/png;base64,{data}" alt="{escape(stem)}">'
        f'<figcaption>{escape(caption)}</figcaption></figure>'
    )


def plots_html(plots: dict[str, bytes]) -> str:
    """Every figure except the tall scale sweeps (shown after the pairs)."""
    order = {name: i for i, name in enumerate(PLOT_ORDER)}
    names = sorted((n for n in plots if plot_stem(n) != SWEEP_PLOT),
                   key=lambda n: (order.get(plot_stem(n), len(order)), n))
    figures = "".join(figure_html(name, plots[name], wide=plot_stem(name) in WIDE_PLOTS)
                      for name in names)
    return f'<div class="plots">{figures}</div>' if figures else '<p class="empty">no figures</p>'


def sweep_section_html(plots: dict[str, bytes]) -> str:
    names = [n for n in plots if plot_stem(n) == SWEEP_PLOT]
    if not names:
        return ""
    return (f'<section id="sweeps"><h2>Scale sweeps</h2>'
            f'{figure_html(names[0], plots[names[0]], wide=True)}</section>')


def render_report(
    cases: list[PairCase],
    summary: CaseStudySummary,
    plots: dict[str, bytes],
    explain: ExplainArtifact | None = None,
) -> str:
    """The whole report as one self-contained HTML string (no network: inline CSS/JS, base64
    PNGs)."""
    toc = "".join(
        f'<a class="{c.kind}" href="#{pair_id(c)}">{c.kind} #{c.rank} · {c.similarity:.2f}</a>'
        for c in cases
    )
    global_tabs = "".join(f'<button type="button" class="tab" data-criterion="{c}">{c}</button>'
                          for c in CRITERIA)
    config_json = json.dumps(summary.config, indent=2, ensure_ascii=False, default=str)
    title = f"faithcase · {summary.model} · {summary.hook}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{CSS}</style></head>'
        '<body><main>'
        f"{header_html(summary, explain)}"
        f'<section id="summary"><h2>Summary by group</h2>{summary_table_html(summary)}'
        '<h2>Self-explanation against the window explainer (same documents)</h2>'
        f"{comparison_html(summary)}{sensitivity_html(summary)}"
        f"{orphans_html(summary)}"
        '<h2>Calibration: features of known meaning</h2>'
        f"{calibration_html(summary)}"
        f'<h2>Scoring rules and explanation checks</h2>{checks_table_html(summary)}'
        f'<h2>Decoder cosine against the scores</h2>{correlations_html(summary)}'
        '<details class="config"><summary>run configuration</summary>'
        f'<pre>{escape(config_json)}</pre></details></section>'
        f'<section id="figures"><h2>Figures</h2>{plots_html(plots)}</section>'
        f'<section id="pairs"><h2>Pairs</h2><nav class="toc">{toc}</nav>'
        '<div class="toolbar"><span>windows for all pairs:</span>'
        f'<div class="tabs">{global_tabs}</div>'
        '<span class="legend">activation relative to the feature\'s max: '
        '<span class="ramp"></span></span></div>'
        f'{"".join(pair_html(c, explain, controls_of(summary)) for c in cases)}</section>'
        f"{sweep_section_html(plots)}"
        "<footer>Tokens are coloured by activation relative to the feature's maximum; "
        "hover a token for its value. "
        "↵ marks a newline. Own AUROC: the feature's explanation retrieving its own activating "
        "contexts; "
        "cross AUROC: the matched partner's explanation on the feature's contexts; "
        "baseline: the feature's most frequent peak tokens; null: another selected feature's "
        "explanation. Activation agreement is measured on the same corpus tokens for both "
        "features. "
        "Group means leave out pairs with a feature that never fires; AUROC means are over "
        "the scored features (delphi's rules: enough activating and non-activating windows)."
        "</footer>"
        f"</main><script>{JS}</script></body></html>\n"
    )
