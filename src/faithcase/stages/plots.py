"""Report figures as PNG bytes (matplotlib, Agg; no pyplot global state). Each function can also save to a file."""

from __future__ import annotations

import io
import math
import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from faithcase.artifacts import (  # noqa: E402
    PAIR_KINDS,
    SAE_KEYS,
    CaseStudySummary,
    ExplainArtifact,
    MatchStats,
    PairCase,
    write_bytes_atomic,
)

KIND_COLORS = {"best": "#2b7bba", "worst": "#d1495b", "random": "#8c8c8c"}
SELFSIM_COLOR = "#2b7bba"
ENTROPY_COLOR = "#e8871e"

PLOT_FILES = {
    "similarity_histogram": "similarity_histogram.png",
    "scale_sweeps": "scale_sweeps.png",
    "auroc_by_group": "auroc_by_group.png",
    "decoder_vs_explanation": "decoder_vs_explanation.png",
}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    fig.set_facecolor("white")
    return fig


def style_axes(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.25, linewidth=0.6)


def to_png(fig: Figure, path: Path | None = None) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    png = buffer.getvalue()
    if path is not None:
        write_bytes_atomic(Path(path), png)
    return png


def similarity_histogram(stats: MatchStats, path: Path | None = None) -> bytes:
    """Histogram of Hungarian-matched decoder cosine similarities, with the shared-feature threshold."""
    fig = new_figure(5.2, 3.4)
    ax = fig.add_subplot()
    edges, counts = stats.histogram.edges, stats.histogram.counts
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    colors = ["#2b7bba" if left >= stats.threshold else "#9ec3e0" for left in edges[:-1]]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color=colors, edgecolor="white", linewidth=0.5)
    ax.axvline(stats.threshold, color="#d1495b", linestyle="--", linewidth=1.2,
               label=f"threshold {stats.threshold:g}: {stats.shared_ratio:.1%} shared")
    ax.set_xlabel("decoder cosine similarity of matched pair", fontsize=9)
    ax.set_ylabel("pairs", fontsize=9)
    ax.set_title(f"{stats.n_matched} matched pairs, mean similarity {stats.mean_similarity:.3f}", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    style_axes(ax)
    return to_png(fig, path)


def scale_sweeps(cases: list[PairCase], explain: ExplainArtifact, path: Path | None = None, columns: int = 4) -> bytes:
    """Small multiples, one panel per feature of each selected pair: selfsim and entropy vs steering scale."""
    panels = [(case, slot) for case in cases for slot in range(2)]
    columns = max(2, columns - columns % 2)  # keep the two features of a pair on one row
    rows = max(1, math.ceil(len(panels) / columns))
    fig = new_figure(2.6 * columns, 2.0 * rows + 0.4)
    for number, (case, slot) in enumerate(panels):
        sae = SAE_KEYS[slot]
        feature = case.indices[slot]
        ax = fig.add_subplot(rows, columns, number + 1)
        entry = explain.features.get(sae, {}).get(str(feature))
        failed = case.failed[slot]
        ax.set_title(f"{case.kind} #{case.rank} · {sae} f{feature}" + (" · failed" if failed else ""),
                     fontsize=8, color="#d1495b" if failed else "#222222")
        style_axes(ax)
        if entry is None or not entry.sweep:
            ax.text(0.5, 0.5, "no sweep", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            continue
        sweep = sorted(entry.sweep, key=lambda p: p.scale)
        scales = [p.scale for p in sweep]
        ax.plot(scales, [p.selfsim for p in sweep], color=SELFSIM_COLOR, marker="o", markersize=2.5, linewidth=1.2)
        ax.set_ylabel("Δ selfsim", fontsize=7, color=SELFSIM_COLOR)
        entropy_ax = ax.twinx()
        entropy_ax.plot(scales, [p.entropy for p in sweep], color=ENTROPY_COLOR, marker="s", markersize=2.5,
                        linewidth=1.0, linestyle="--")
        entropy_ax.tick_params(labelsize=7, colors=ENTROPY_COLOR)
        entropy_ax.spines[["top"]].set_visible(False)
        if all(s > 0 for s in scales):
            ax.set_xscale("log", base=2)
        if entry.scale is not None:
            ax.axvline(entry.scale, color="#222222", linewidth=1.0, linestyle=":")
        ax.tick_params(labelsize=7)
    fig.suptitle("Scale sweeps (blue: Δ self-similarity, orange dashed: Δ entropy, dotted: chosen scale)", fontsize=9)
    return to_png(fig, path)


def auroc_by_group(cases: list[PairCase], path: Path | None = None) -> bytes:
    """Own vs cross embedding AUROC per pair group: mean bars and every value as a jittered point; 0.5 = chance."""
    fig = new_figure(5.2, 3.4)
    ax = fig.add_subplot()
    jitter = random.Random(0)
    width = 0.36
    for position, kind in enumerate(PAIR_KINDS):
        members = [c for c in cases if c.kind == kind]
        for offset, label, values in (
            (-width / 2, "own", [a for c in members for a in c.eleuthers if a is not None]),
            (width / 2, "cross", [a for c in members for a in c.cross_eleuthers if a is not None]),
        ):
            x = position + offset
            color = KIND_COLORS[kind]
            if values:
                mean = sum(values) / len(values)
                ax.bar(x, mean, width=width * 0.92, color=color, alpha=0.35 if label == "cross" else 0.7,
                       hatch="//" if label == "cross" else None, edgecolor=color)
                ax.scatter([x + jitter.uniform(-width / 4, width / 4) for _ in values], values, s=10,
                           color="#222222", zorder=3, linewidths=0)
            else:
                ax.text(x, 0.02, "n/a", ha="center", fontsize=7)
    ax.axhline(0.5, color="#444444", linestyle="--", linewidth=1.0)
    ax.text(len(PAIR_KINDS) - 0.5, 0.505, "chance", fontsize=7, ha="right", va="bottom", color="#444444")
    ax.set_xticks(range(len(PAIR_KINDS)), [f"{k}\nown | cross" for k in PAIR_KINDS], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("embedding AUROC", fontsize=9)
    ax.set_title("Own vs partner's explanation (cross)", fontsize=10)
    style_axes(ax)
    return to_png(fig, path)


def decoder_vs_explanation(points: list[tuple[float, float, str]], path: Path | None = None) -> bytes:
    """Scatter of (decoder cosine, cosine of the two explanations' embeddings), coloured by pair kind."""
    fig = new_figure(5.2, 3.4)
    ax = fig.add_subplot()
    for kind in PAIR_KINDS:
        chosen = [(d, e) for d, e, k in points if k == kind and d is not None and e is not None]
        if chosen:
            ax.scatter([d for d, _ in chosen], [e for _, e in chosen], s=22, color=KIND_COLORS[kind],
                       label=kind, alpha=0.85, edgecolors="white", linewidths=0.5)
    if not points:
        ax.text(0.5, 0.5, "no pairs", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("decoder cosine similarity", fontsize=9)
    ax.set_ylabel("explanation embedding cosine", fontsize=9)
    ax.set_title("Do matched directions get matching explanations?", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    style_axes(ax)
    return to_png(fig, path)


def make_plots(
    cases: list[PairCase],
    summary: CaseStudySummary,
    explain: ExplainArtifact | None = None,
    explanation_similarities: list[tuple[float, float, str]] | None = None,
) -> dict[str, bytes]:
    """Every figure the inputs allow, keyed by file name (see PLOT_FILES)."""
    plots = {
        PLOT_FILES["similarity_histogram"]: similarity_histogram(summary.match),
        PLOT_FILES["auroc_by_group"]: auroc_by_group(cases),
    }
    if explain is not None:
        plots[PLOT_FILES["scale_sweeps"]] = scale_sweeps(cases, explain)
    if explanation_similarities is not None:
        plots[PLOT_FILES["decoder_vs_explanation"]] = decoder_vs_explanation(explanation_similarities)
    return plots
