"""Report stage: one static, self-contained HTML page (inline CSS/JS, PNGs as data URIs) of the case study."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from faithcase.artifacts import (
    CRITERIA,
    PAIR_KINDS,
    REPORT_DIR,
    SAE_KEYS,
    ActExample,
    CaseStudySummary,
    ExplainArtifact,
    PairCase,
    write_bytes_atomic,
)
CRITERION_HELP = {
    "mean": "highest mean activation over the window",
    "density": "highest share of active tokens in the window",
    "max": "highest peak activation, window centred on the peak",
}
PLOT_CAPTIONS = {
    "similarity_histogram": "Decoder cosine similarity of the Hungarian-matched pairs; dashed line: shared-feature threshold.",
    "auroc_by_group": "Embedding AUROC of each feature's own explanation and of its matched partner's explanation "
                      "(cross), by pair group; dashed line: chance.",
    "scale_sweeps": "Steering scale sweeps of every selected feature: change of self-similarity and of next-token "
                    "entropy against scale; dotted line: the chosen scale.",
    "decoder_vs_explanation": "Decoder cosine of each pair against the cosine of its two explanations' embeddings.",
}
PLOT_ORDER = ("similarity_histogram", "auroc_by_group", "decoder_vs_explanation")
SWEEP_PLOT = "scale_sweeps"
TOKEN_GLYPHS = {"\n": "↵", "\r": "␍", "\t": "⇥"}

CSS = """
:root { --ink:#1d1d1f; --muted:#6b6b70; --line:#e4e4e7; --bg:#f6f6f4; --card:#fff;
  --best:#2b7bba; --worst:#d1495b; --random:#7a7a7a; --hot:249,115,22; }
* { box-sizing:border-box; }
html { -webkit-text-size-adjust:100%; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Inter,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1320px; margin:0 auto; padding:24px 28px 48px; }
h1 { font-size:22px; margin:0 0 4px; letter-spacing:-.01em; }
h2 { font-size:16px; margin:28px 0 10px; text-transform:uppercase; letter-spacing:.06em; color:var(--muted); }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace; font-size:12.5px; }
.sub { color:var(--muted); margin:0 0 14px; }
.saes { display:grid; grid-template-columns:1fr 1fr; gap:12px; }
.box { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
.box b { font-size:12px; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); }
.kv { display:flex; flex-wrap:wrap; gap:6px 16px; margin-top:4px; }
.kv span { white-space:nowrap; } .kv em { font-style:normal; color:var(--muted); margin-right:4px; }
.chips { display:flex; flex-wrap:wrap; gap:8px; margin-top:12px; }
.chip { background:var(--card); border:1px solid var(--line); border-radius:999px; padding:3px 11px; font-size:13px; }
.chip em { font-style:normal; color:var(--muted); margin-right:4px; }
table { border-collapse:collapse; background:var(--card); font-variant-numeric:tabular-nums; }
table.summary { border:1px solid var(--line); border-radius:8px; overflow:hidden; min-width:640px; }
th, td { padding:6px 14px; text-align:right; border-bottom:1px solid var(--line); }
th { font-size:12px; color:var(--muted); font-weight:600; background:#fafafa; }
th:first-child, td:first-child { text-align:left; }
tr:last-child td { border-bottom:none; }
.badge { display:inline-block; color:#fff; border-radius:4px; padding:1px 7px; font-size:11.5px; font-weight:600;
  text-transform:uppercase; letter-spacing:.04em; }
.badge.best { background:var(--best); } .badge.worst { background:var(--worst); } .badge.random { background:var(--random); }
.plots { display:grid; grid-template-columns:repeat(auto-fill,minmax(380px,1fr)); gap:14px; }
figure { margin:0; background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px; }
figure.wide { grid-column:1/-1; }
figure img { width:100%; height:auto; display:block; }
figcaption { color:var(--muted); font-size:12.5px; margin-top:6px; }
details.config { margin-top:8px; }
details.config summary { cursor:pointer; color:var(--muted); font-size:12.5px; }
details.config pre { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px;
  overflow:auto; max-height:360px; font-size:12px; }
.toc { display:flex; flex-wrap:wrap; gap:6px; align-items:center; margin:8px 0 14px; }
.toc a { text-decoration:none; color:var(--ink); background:var(--card); border:1px solid var(--line);
  border-left:4px solid var(--random); border-radius:5px; padding:2px 8px; font-size:12.5px; }
.toc a.best { border-left-color:var(--best); } .toc a.worst { border-left-color:var(--worst); }
.toolbar { display:flex; gap:8px; align-items:center; color:var(--muted); font-size:12.5px; margin-bottom:10px; }
.pair { background:var(--card); border:1px solid var(--line); border-left:4px solid var(--random); border-radius:8px;
  margin:0 0 16px; padding:12px 16px 14px; scroll-margin-top:12px; }
.pair[data-kind=best] { border-left-color:var(--best); } .pair[data-kind=worst] { border-left-color:var(--worst); }
.pair-head { display:flex; flex-wrap:wrap; align-items:center; gap:10px; margin-bottom:10px; }
.pair-head .title { font-weight:600; font-size:15px; }
.pair-head .sim { color:var(--muted); }
.tabs { margin-left:auto; display:inline-flex; border:1px solid var(--line); border-radius:6px; overflow:hidden; }
.tab { border:0; background:#fafafa; padding:3px 12px; font:inherit; font-size:12.5px; cursor:pointer; color:var(--muted); }
.tab + .tab { border-left:1px solid var(--line); }
.tab.active { background:var(--ink); color:#fff; }
.features { display:grid; grid-template-columns:1fr 1fr; gap:18px; }
.feature { min-width:0; }
.feature-head { display:flex; align-items:baseline; gap:8px; font-size:13px; color:var(--muted); margin-bottom:4px; }
.feature-head b { color:var(--ink); font-size:13.5px; }
.flag { color:#fff; background:var(--worst); border-radius:4px; padding:0 6px; font-size:11px; font-weight:600; }
.explanation { margin:0 0 6px; padding:7px 10px; background:#f3f6fa; border-left:3px solid var(--best);
  border-radius:4px; font-size:14px; white-space:pre-wrap; overflow-wrap:anywhere; }
.explanation.failed { background:#fbf1f2; border-left-color:var(--worst); }
.explanation.none { color:var(--muted); font-style:italic; }
.metrics { display:flex; flex-wrap:wrap; gap:4px 14px; font-size:12.5px; margin-bottom:8px; font-variant-numeric:tabular-nums; }
.metrics em { font-style:normal; color:var(--muted); margin-right:3px; }
.good { color:#1f7a3f; font-weight:600; } .muted { color:var(--muted); } .bad { color:var(--worst); font-weight:600; }
.crit-label { font-size:11.5px; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); margin:8px 0 2px; }
.js .crit-label { display:none; }
.js .windows:not(.shown) { display:none; }
.win { display:flex; gap:8px; padding:3px 0; border-top:1px dashed var(--line); }
.win:first-of-type { border-top:none; }
.wv { flex:0 0 44px; text-align:right; color:var(--muted); font-size:11.5px; padding-top:2px; font-variant-numeric:tabular-nums; }
.toks { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace; font-size:12px;
  line-height:1.75; white-space:pre-wrap; overflow-wrap:anywhere; min-width:0; }
.tok { border-radius:2px; padding:1px 0; }
.tok.on { background:rgba(var(--hot),var(--a,.5)); }
.tok:hover { outline:1px solid #333; }
.glyph { color:#a0a0a6; }
.empty { color:var(--muted); font-style:italic; font-size:12.5px; }
details.more { margin-top:6px; font-size:12.5px; }
details.more summary { cursor:pointer; color:var(--muted); }
details.more ul { margin:4px 0; padding-left:18px; }
table.sweep { margin-top:4px; font-size:12px; border:1px solid var(--line); }
table.sweep td, table.sweep th { padding:2px 10px; }
table.sweep tr.chosen td { font-weight:700; background:#fff4e8; }
.legend { display:flex; align-items:center; gap:6px; font-size:12px; color:var(--muted); }
.ramp { width:120px; height:10px; border-radius:2px; background:linear-gradient(90deg,rgba(var(--hot),0),rgba(var(--hot),.9)); }
footer { margin-top:28px; color:var(--muted); font-size:12px; }
@media (max-width:900px) { .features, .saes { grid-template-columns:1fr; } .plots { grid-template-columns:1fr; } }
"""

JS = """
document.documentElement.classList.add('js');
function showCriterion(scope, criterion) {
  scope.querySelectorAll('.tab').forEach(function (tab) {
    tab.classList.toggle('active', tab.dataset.criterion === criterion);
  });
  scope.querySelectorAll('.windows').forEach(function (panel) {
    panel.classList.toggle('shown', panel.dataset.criterion === criterion);
  });
}
document.addEventListener('click', function (event) {
  var tab = event.target.closest('.tab');
  if (!tab) return;
  var pair = tab.closest('.pair');
  showCriterion(pair || document, tab.dataset.criterion);
});
"""


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
    shown = "".join(f'<span class="glyph">{TOKEN_GLYPHS[c]}</span>' if c in TOKEN_GLYPHS else escape(c) for c in text)
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


def window_html(example: ActExample, criterion: str, feature_max: float) -> str:
    value = criterion_value(criterion, example.acts)
    label = pct(value) if criterion == "density" else fmt(value, 2)
    tokens = "".join(token_html(t, a, feature_max) for t, a in zip(example.texts, example.acts))
    return f'<div class="win"><span class="wv" title="{escape(criterion)}">{label}</span><span class="toks">{tokens}</span></div>'


def feature_max_of(case: PairCase, slot: int) -> float:
    stats_max = case.stats[slot].max if slot < len(case.stats) else 0.0
    window_max = max((a for examples in case.windows[slot].values() for ex in examples for a in ex.acts), default=0.0)
    return stats_max if stats_max > 0 else window_max if window_max > 0 else 1.0


def sweep_html(explain: ExplainArtifact, sae: str, feature: int) -> str:
    entry = explain.features.get(sae, {}).get(str(feature))
    if entry is None:
        return ""
    parts = []
    if len(entry.explanations) > 1:
        items = "".join(f"<li>{escape(text)}</li>" for text in entry.explanations[1:])
        n_more = len(entry.explanations) - 1
        label = f"{n_more} more generation{'s' if n_more > 1 else ''}"
        parts.append(f'<details class="more"><summary>{label}</summary><ul>{items}</ul></details>')
    if entry.sweep:
        rows = "".join(
            f'<tr class="{"chosen" if entry.scale is not None and p.scale == entry.scale else ""}">'
            f"<td>{p.scale:g}</td><td>{p.selfsim:+.4f}</td><td>{p.entropy:+.3f}</td><td>{fmt(p.score)}</td></tr>"
            for p in sorted(entry.sweep, key=lambda p: p.scale)
        )
        parts.append(
            '<details class="more sweep"><summary>scale sweep '
            f"(best Δselfsim {entry.best_selfsim:+.4f})</summary>"
            '<table class="sweep"><tr><th>scale</th><th>Δ selfsim</th><th>Δ entropy</th><th>score</th></tr>'
            f"{rows}</table></details>"
        )
    return "".join(parts)


def feature_html(case: PairCase, slot: int, explain: ExplainArtifact | None) -> str:
    sae = SAE_KEYS[slot]
    feature = case.indices[slot]
    failed = case.failed[slot]
    explanation = case.self_explanations[slot]
    stats = case.stats[slot]
    classes = "explanation" + (" failed" if failed else "") + ("" if explanation is not None else " none")
    text = escape(explanation) if explanation is not None else "no explanation"
    flag = ' <span class="flag" title="best self-similarity under the threshold">failed</span>' if failed else ""
    scale = case.scales[slot]
    metrics = (
        f'<span><em>scale</em>{"—" if scale is None else f"{scale:g}"}</span>'
        f"<span><em>own AUROC</em>{auroc_html(case.eleuthers[slot])}</span>"
        f'<span title="this explanation scored on the partner feature\'s contexts"><em>cross AUROC</em>'
        f"{auroc_html(case.cross_eleuthers[slot])}</span>"
        f"<span><em>freq</em>{stats.frequency:.2%}</span><span><em>max act</em>{stats.max:.2f}</span>"
    )
    feature_max = feature_max_of(case, slot)
    panels = []
    for criterion in CRITERIA:
        examples = case.windows[slot].get(criterion, [])
        body = "".join(window_html(ex, criterion, feature_max) for ex in examples) or '<div class="empty">no windows</div>'
        shown = " shown" if criterion == CRITERIA[0] else ""
        panels.append(
            f'<div class="windows{shown}" data-criterion="{criterion}">'
            f'<div class="crit-label">{criterion} · {CRITERION_HELP[criterion]}</div>{body}</div>'
        )
    extra = sweep_html(explain, sae, feature) if explain is not None else ""
    return (
        f'<div class="feature" data-sae="{sae}" data-feature="{feature}">'
        f'<div class="feature-head"><b>{sae.upper()} · feature {feature}</b>{flag}</div>'
        f'<blockquote class="{classes}">{text}</blockquote>'
        f'<div class="metrics">{metrics}</div>{"".join(panels)}{extra}</div>'
    )


def pair_id(case: PairCase) -> str:
    return f"pair-{case.kind}-{case.rank}"


def pair_html(case: PairCase, explain: ExplainArtifact | None) -> str:
    tabs = "".join(
        f'<button type="button" class="tab{" active" if c == CRITERIA[0] else ""}" data-criterion="{c}" '
        f'title="{CRITERION_HELP[c]}">{c}</button>'
        for c in CRITERIA
    )
    return (
        f'<div class="pair" id="{pair_id(case)}" data-kind="{case.kind}" data-rank="{case.rank}">'
        f'<div class="pair-head"><span class="badge {case.kind}">{case.kind}</span>'
        f'<span class="title">#{case.rank} · SAE1 f{case.indices[0]} ↔ SAE2 f{case.indices[1]}</span>'
        f'<span class="sim">decoder cos <b>{case.similarity:.3f}</b></span>'
        f'<div class="tabs" role="tablist">{tabs}</div></div>'
        f'<div class="features">{feature_html(case, 0, explain)}{feature_html(case, 1, explain)}</div></div>'
    )


def header_html(summary: CaseStudySummary, explain: ExplainArtifact | None) -> str:
    def sae_box(label: str, info) -> str:
        return (
            f'<div class="box"><b>{label}</b><div class="kv">'
            f"<span><em>path</em><code>{escape(info.path)}</code></span>"
            f"<span><em>format</em>{escape(info.format)}</span>"
            f"<span><em>size</em>{info.d_in} → {info.d_sae}</span>"
            f"<span><em>sha256</em><code>{escape(info.sha256[:12])}</code></span></div></div>"
        )

    stats = summary.match
    chips = [
        ("matched pairs", str(stats.n_matched)),
        (f"shared (cos > {stats.threshold:g})", pct(stats.shared_ratio)),
        ("top-1 ratio", pct(stats.top1_ratio)),
        ("mean cos", fmt(stats.mean_similarity)),
        ("dead features", f"{stats.n_dead1} / {stats.n_dead2}"),
    ]
    chip_html = "".join(f'<span class="chip"><em>{escape(k)}</em>{escape(v)}</span>' for k, v in chips)
    baseline = ""
    if explain is not None:
        baseline = (
            f'<p class="sub">Steering: insert layer {explain.settings.insert_layer}, read layer '
            f"{explain.settings.read_layer}, mode {escape(explain.settings.mode)}. "
            f"Unsteered answer: <q>{escape(explain.baseline.replace_zero)}</q></p>"
        )
    return (
        "<header><h1>Matched-feature case study</h1>"
        f'<p class="sub">model <code>{escape(summary.model)}</code> · hook <code>{escape(summary.hook)}</code>'
        f" · {escape(summary.meta.created)}</p>"
        f'<div class="saes">{sae_box("SAE 1", summary.sae1)}{sae_box("SAE 2", summary.sae2)}</div>'
        f'<div class="chips">{chip_html}</div>{baseline}</header>'
    )


def summary_table_html(summary: CaseStudySummary) -> str:
    rows = []
    for kind in [k for k in PAIR_KINDS if k in summary.groups] + [k for k in summary.groups if k not in PAIR_KINDS]:
        group = summary.groups[kind]
        n_pairs = group.get("n_pairs")
        rows.append(
            f'<tr><td><span class="badge {escape(kind)}">{escape(kind)}</span></td>'
            f"<td>{'—' if n_pairs is None else int(n_pairs)}</td>"
            f"<td>{fmt(group.get('mean_similarity'))}</td><td>{auroc_html(group.get('mean_own_auroc'))}</td>"
            f"<td>{auroc_html(group.get('mean_cross_auroc'))}</td><td>{pct(group.get('failed_share'))}</td></tr>"
        )
    return (
        '<table class="summary"><tr><th>group</th><th>pairs</th><th>mean decoder cos</th>'
        "<th>own AUROC</th><th>cross AUROC</th><th>failed explanations</th></tr>" + "".join(rows) + "</table>"
    )


def plot_stem(name: str) -> str:
    return name[:-4] if name.endswith(".png") else name


def figure_html(name: str, png: bytes, wide: bool = False) -> str:
    stem = plot_stem(name)
    data = base64.b64encode(png).decode("ascii")
    caption = PLOT_CAPTIONS.get(stem, stem.replace("_", " "))
    css = ' class="wide"' if wide else ""
    return (
        f'<figure{css} id="plot-{escape(stem)}">'
        f'<img src="data:image/png;base64,{data}" alt="{escape(stem)}"><figcaption>{escape(caption)}</figcaption></figure>'
    )


def plots_html(plots: dict[str, bytes]) -> str:
    """Every figure except the tall scale sweeps (shown after the pairs)."""
    order = {name: i for i, name in enumerate(PLOT_ORDER)}
    names = sorted((n for n in plots if plot_stem(n) != SWEEP_PLOT), key=lambda n: (order.get(plot_stem(n), len(order)), n))
    figures = "".join(figure_html(name, plots[name]) for name in names)
    return f'<div class="plots">{figures}</div>' if figures else '<p class="empty">no figures</p>'


def sweep_section_html(plots: dict[str, bytes]) -> str:
    names = [n for n in plots if plot_stem(n) == SWEEP_PLOT]
    if not names:
        return ""
    return f'<section id="sweeps"><h2>Scale sweeps</h2>{figure_html(names[0], plots[names[0]], wide=True)}</section>'


def render_report(
    cases: list[PairCase],
    summary: CaseStudySummary,
    plots: dict[str, bytes],
    explain: ExplainArtifact | None = None,
) -> str:
    """The whole report as one self-contained HTML string (no network: inline CSS/JS, base64 PNGs)."""
    toc = "".join(
        f'<a class="{c.kind}" href="#{pair_id(c)}">{c.kind} #{c.rank} · {c.similarity:.2f}</a>' for c in cases
    )
    global_tabs = "".join(f'<button type="button" class="tab" data-criterion="{c}">{c}</button>' for c in CRITERIA)
    config_json = json.dumps(summary.config, indent=2, ensure_ascii=False, default=str)
    title = f"faithcase · {summary.model} · {summary.hook}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{CSS}</style></head><body><main>'
        f"{header_html(summary, explain)}"
        f'<section id="summary"><h2>Summary by group</h2>{summary_table_html(summary)}'
        f'<details class="config"><summary>run configuration</summary><pre>{escape(config_json)}</pre></details></section>'
        f'<section id="figures"><h2>Figures</h2>{plots_html(plots)}</section>'
        f'<section id="pairs"><h2>Pairs</h2><nav class="toc">{toc}</nav>'
        f'<div class="toolbar"><span>windows for all pairs:</span><div class="tabs">{global_tabs}</div>'
        '<span class="legend">activation relative to the feature\'s max: <span class="ramp"></span></span></div>'
        f'{"".join(pair_html(c, explain) for c in cases)}</section>{sweep_section_html(plots)}'
        "<footer>Tokens are coloured by activation relative to the feature's maximum; hover a token for its value. "
        "↵ marks a newline. Own AUROC: the feature's explanation retrieving its own activating contexts; "
        "cross AUROC: the same explanation on the matched partner's contexts.</footer>"
        f"</main><script>{JS}</script></body></html>\n"
    )


def write_report(out_dir: Path, html: str, plots: dict[str, bytes]) -> Path:
    """Write the PNGs, then report/index.html, under out_dir, each atomically; returns the index path."""
    report_dir = Path(out_dir) / REPORT_DIR
    for name, png in plots.items():
        write_bytes_atomic(report_dir / f"{plot_stem(Path(name).name)}.png", png)
    index = report_dir / "index.html"
    write_bytes_atomic(index, html.encode("utf-8"))
    return index


def build_report(out_dir: Path, cases: list[PairCase], summary: CaseStudySummary,
                 explain: ExplainArtifact | None = None) -> Path:
    """Plots and the HTML page of a case study, written under out_dir/report; returns the index path."""
    from faithcase.stages.plots import make_plots

    points = [(c.similarity, c.explanation_similarity, c.kind) for c in cases if c.explanation_similarity is not None]
    plots = make_plots(cases, summary, explain, points)
    return write_report(out_dir, render_report(cases, summary, plots, explain), plots)
