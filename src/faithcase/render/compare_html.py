"""comparison.html: the studies of a many-SAE run side by side (self-contained, offline)."""

from __future__ import annotations

import base64
from html import escape

from faithcase.artifacts import GROUPS, PAIR_KINDS
from faithcase.matrix_artifacts import ComparisonArtifact, MatrixArtifact
from faithcase.render.html import auroc_html, fmt, pct
from faithcase.render.plots import (matrix_heatmap, new_figure, overlap_histogram,
                                    style_axes, to_png)
from faithcase.render.style import CSS

DISTRIBUTIONS = (("pearson", "activation Pearson of each pair"),
                 ("auroc", "own AUROC of each scored self-explanation"),
                 ("known_answer", "share of self-explanations naming a peak token"))


def _png_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def distribution_png(artifact: ComparisonArtifact, field: str, title: str) -> bytes:
    """One panel per pair kind: the field's values of every study, side by side."""
    kinds = [k for k in PAIR_KINDS if any(k in getattr(s, field) for s in artifact.studies)]
    fig = new_figure(3.0 * max(len(kinds), 1) + 0.6, 3.2)
    axes = fig.subplots(1, max(len(kinds), 1), squeeze=False)[0]
    names = [s.name for s in artifact.studies]
    for ax, kind in zip(axes, kinds):
        values = [[float(v) for v in getattr(s, field).get(kind, []) if v is not None]
                  for s in artifact.studies]
        if field == "known_answer":
            ax.bar(range(len(names)), [sum(v) / len(v) if v else 0 for v in values],
                   color="#2b7bba", alpha=0.8)
            ax.set_ylim(0, 1)
        else:
            shown = [v if v else [float("nan")] for v in values]
            ax.boxplot(shown, positions=range(len(names)), widths=0.5, showfliers=False)
            for i, v in enumerate(values):
                ax.scatter([i] * len(v), v, s=8, alpha=0.6, color="#2b7bba")
        labels = [f"{n.replace('__', ' ×' + chr(10))}\n(n={len(v)})" for n, v in zip(names, values)]
        ax.set_xticks(range(len(names)), labels, fontsize=7)
        ax.set_title(kind, fontsize=8)
        style_axes(ax)
    fig.suptitle(title, fontsize=9)
    return to_png(fig)


def _studies_table(artifact: ComparisonArtifact) -> str:
    rows = "".join(
        f"<tr><td>{escape(s.name)}</td><td>{escape(s.matrix.group)}</td>"
        f"<td>{fmt(s.matrix.shared_ratio)}</td><td>{fmt(s.matrix.top1_ratio_ab)}</td>"
        f"<td>{fmt(s.matrix.top1_ratio_ba)}</td><td><b>{fmt(s.matrix.mean_pearson)}</b></td>"
        f"<td>{fmt(s.matrix.mean_jaccard)}</td><td>{fmt(s.matrix.share_pearson)}</td>"
        f'<td><a href="{escape(s.folder)}/report/index.html">report</a></td></tr>'
        for s in artifact.studies)
    return ('<table class="summary" id="studies"><tr><th>study</th><th>group</th>'
            "<th>shared ratio</th><th>top-1 a→b</th><th>top-1 b→a</th><th>mean Pearson</th>"
            "<th>mean Jaccard</th><th>Pearson &gt; cutoff</th><th></th></tr>"
            f"{rows}</table>")


def _groups_table(artifact: ComparisonArtifact) -> str:
    """The studies' group tables, kind by kind, one row per study."""
    rows = []
    others = list(dict.fromkeys(n for s in artifact.studies for n in s.explainers if n != "self"))
    for kind in GROUPS:
        for s in artifact.studies:
            g = s.groups.get(kind)
            if g is None:
                continue
            checks = g.checks
            rows.append(
                f'<tr data-study="{escape(s.name)}" data-kind="{kind}">'
                f'<td><span class="badge {kind}">{kind}</span></td><td>{escape(s.name)}</td>'
                f"<td>{g.n_pairs}</td><td>{g.n_left_out}</td><td>{fmt(g.mean_similarity)}</td>"
                f"<td><b>{fmt(g.mean_pearson)}</b></td><td>{fmt(g.mean_jaccard)}</td>"
                f"<td>{g.n_scored}/{g.n_features}</td>"
                f"<td>{auroc_html(g.eleuther['own'].get('self'))}</td>"
                f"<td>{auroc_html(g.eleuther['cross'].get('self'))}</td>"
                + "".join(f"<td>{auroc_html(g.eleuther['own'].get(n))}</td>" for n in others) +
                f"<td>{pct(g.pass_rate)}</td>"
                f"<td>{pct(checks.known_answer_rate if checks else None)}</td></tr>")
    return ('<table class="summary" id="groups"><tr><th>group</th><th>study</th><th>pairs</th>'
            "<th>left out</th><th>decoder cos</th><th>Pearson</th><th>Jaccard</th>"
            "<th>scored</th><th>own self AUROC</th><th>cross self AUROC</th>"
            + "".join(f"<th>own {escape(n)} AUROC</th>" for n in others) +
            "<th>passing</th><th>names peak token</th></tr>"
            f'{"".join(rows)}</table>')


def render_comparison(artifact: ComparisonArtifact, matrix: MatrixArtifact) -> str:
    names = ("shared_ratio", "paulo_belrose", "agreement", "mean_pearson", "share_pearson")
    heatmaps = "".join(f"<figure>{_png_tag(matrix_heatmap(matrix, name), name)}"
                       f"<figcaption>{escape(matrix.statistics[name])}</figcaption></figure>"
                       for name in names if name in matrix.tables)
    if matrix.overlap is not None:
        png = overlap_histogram(matrix.overlap)
        heatmaps += (f'<figure class="wide">{_png_tag(png, "overlap")}'
                     "<figcaption>in how many of the other SAEs each latent has a shared partner"
                     "</figcaption></figure>")
    figures = "".join(f'<figure class="wide">'
                      f'{_png_tag(distribution_png(artifact, field, title), field)}'
                      f"<figcaption>{escape(title)}</figcaption></figure>"
                      for field, title in DISTRIBUTIONS)
    title = f"faithcase · {len(artifact.studies)} studies · {matrix.hook}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{CSS}</style>'
        "</head><body><main>"
        f"<header><h1>{escape(title)}</h1><p class=\"sub\">{len(matrix.order)} SAEs, "
        f"{matrix.n_tokens:,} kept tokens in one corpus pass; threshold {matrix.threshold}, "
        f"Pearson cutoff {matrix.pearson_cutoff}</p></header>"
        f"<section><h2>The studies in the matrix</h2>{_studies_table(artifact)}</section>"
        f"<section><h2>Case studies by group</h2>{_groups_table(artifact)}</section>"
        f'<section><h2>Distributions</h2><div class="plots">{figures}</div></section>'
        f'<section><h2>Matrix</h2><div class="plots">{heatmaps}</div></section>'
        "<footer>Each study is a full case study (its report is linked); group means leave out "
        "pairs with a feature that never fires, AUROC means are over the scored features."
        "</footer></main></body></html>\n")

