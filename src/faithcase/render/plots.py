"""Report figures as PNG bytes (matplotlib, Agg; no pyplot global state). Each function can also
save to a file."""

from __future__ import annotations

import io
import math
import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from faithcase.artifacts import (
    PAIR_KINDS,
    SAE_KEYS,
    ExplainArtifact,
    MatchStats,
)
from faithcase.case_study import CaseStudySummary, PairCase
from faithcase.run.store import write_bytes_atomic

KIND_COLORS = {"best": "#2b7bba", "worst": "#d1495b", "random": "#8c8c8c", "stratified": "#3a9d5d",
               "orphan": "#b5831f"}
SELFSIM_COLOR = "#2b7bba"
CRITERION_COLOR = "#e8871e"
# alpha, hatch
EXPLAINER_STYLES = {"self": (0.8, None), "baseline": (0.45, "//"), "null": (0.2, "..")}
# stratified pairs are many; their sweeps stay in explain.json
SWEEP_KINDS = ("best", "worst", "random")

PLOT_FILES = {name: f"{name}.png" for name in (
    "similarity_histogram", "decoder_vs_agreement", "auroc_by_group", "decoder_vs_scores",
    "null_selfsim", "scale_sweeps", "calibration")}
CALIBRATION_MARKERS = {"self": ("o", "#2b7bba"), "window": ("s", "#e8871e"),
                       "baseline": ("^", "#8c8c8c"), "null": ("x", "#d1495b")}


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
    """Histogram of Hungarian-matched decoder cosine similarities, with the shared-feature
    threshold."""
    fig = new_figure(5.2, 3.4)
    ax = fig.add_subplot()
    edges, counts = stats.histogram.edges, stats.histogram.counts
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    colors = ["#2b7bba" if left >= stats.threshold else "#9ec3e0" for left in edges[:-1]]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color=colors, edgecolor="white",
           linewidth=0.5)
    ax.axvline(stats.threshold, color="#d1495b", linestyle="--", linewidth=1.2,
               label=f"threshold {stats.threshold:g}: {stats.shared_ratio:.1%} shared")
    ax.set_xlabel("decoder cosine similarity of matched pair", fontsize=9)
    ax.set_ylabel("pairs", fontsize=9)
    ax.set_title(f"{stats.n_matched} matched pairs, mean similarity {stats.mean_similarity:.3f}",
                 fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    style_axes(ax)
    return to_png(fig, path)


def scale_sweeps(cases: list[PairCase], explain: ExplainArtifact, path: Path | None = None,
                 columns: int = 4) -> bytes:
    """Small multiples, one panel per feature of the best, worst and random pairs: the change of
    self-similarity and the criterion curve against the steering scale."""
    panels = [(case, slot) for case in cases if case.kind in SWEEP_KINDS for slot in range(2)]
    columns = max(2, columns - columns % 2)  # keep the two features of a pair on one row
    rows = max(1, math.ceil(len(panels) / columns))
    fig = new_figure(2.6 * columns, 2.0 * rows + 0.4)
    criterion = explain.settings.criterion
    for number, (case, slot) in enumerate(panels):
        sae = SAE_KEYS[slot]
        feature = case.indices[slot]
        ax = fig.add_subplot(rows, columns, number + 1)
        entry = explain.features.get(sae, {}).get(str(feature))
        failed = case.failed[slot]
        ax.set_title(f"{case.kind} #{case.rank} · {sae} f{feature}"
                     + (" · failed" if failed else ""),
                     fontsize=8, color="#d1495b" if failed else "#222222")
        style_axes(ax)
        if entry is None or not entry.sweep:
            ax.text(0.5, 0.5, "no sweep", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8)
            continue
        sweep = sorted(entry.sweep, key=lambda p: p.scale)
        scales = [p.scale for p in sweep]
        ax.plot(scales, [p.selfsim for p in sweep], color=SELFSIM_COLOR, marker="o",
                markersize=2.5, linewidth=1.2)
        ax.set_ylabel("Δ selfsim", fontsize=7, color=SELFSIM_COLOR)
        curve_ax = ax.twinx()
        values = [(p.ce if criterion == "ce" else p.entropy) for p in sweep]
        curve_ax.plot(scales, [v if v is not None else math.nan for v in values],
                      color=CRITERION_COLOR, marker="s", markersize=2.5, linewidth=1.0,
                      linestyle="--")
        curve_ax.tick_params(labelsize=7, colors=CRITERION_COLOR)
        curve_ax.spines[["top"]].set_visible(False)
        if all(s > 0 for s in scales):
            ax.set_xscale("log", base=2)
        if entry.scale is not None:
            ax.axvline(entry.scale, color="#222222", linewidth=1.0, linestyle=":")
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Scale sweeps (blue: Δ self-similarity, orange dashed: {criterion}, "
                 "dotted: the explanation's scale)", fontsize=9)
    return to_png(fig, path)


def auroc_by_group(cases: list[PairCase], path: Path | None = None) -> bytes:
    """Mean own and cross AUROC per pair group of the self-explanation, the top-token baseline and
    the null, each value a point; pairs with a feature that never fires are left out. 0.5 = chance.
    Own: each feature's documents by its own SAE's explanation; cross: by its partner's."""
    fig = new_figure(7.6, 3.6)
    ax = fig.add_subplot()
    jitter = random.Random(0)
    width = 0.13
    for label, offset in (("own", -0.21), ("cross", 0.21)):
        for position, kind in enumerate(PAIR_KINDS):
            members = [c for c in cases if c.kind == kind and not any(c.silent)]
            for e, (name, (alpha, hatch)) in enumerate(EXPLAINER_STYLES.items()):
                x = position + offset + (e - 1) * width
                values = [a for c in members for a in c.auroc(label, name) if a is not None]
                if not values:
                    continue
                ax.bar(x, sum(values) / len(values), width=width * 0.92, color=KIND_COLORS[kind],
                       alpha=alpha, hatch=hatch, edgecolor=KIND_COLORS[kind],
                       label=f"{label} {name}" if position == 0 else None)
                ax.scatter([x + jitter.uniform(-width / 4, width / 4) for _ in values], values, s=4,
                           color="#222222", zorder=3, linewidths=0)
    ax.axhline(0.5, color="#444444", linestyle="--", linewidth=1.0)
    ax.set_xticks(range(len(PAIR_KINDS)), [f"{k}\nown | cross" for k in PAIR_KINDS],
                  fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("embedding AUROC", fontsize=9)
    ax.set_title("Self-explanation (solid) vs top-token baseline (//) vs null (..)", fontsize=10)
    style_axes(ax)
    return to_png(fig, path)


def decoder_vs_agreement(cases: list[PairCase], background: tuple[list, list] | None,
                         path: Path | None = None) -> bytes:
    """Decoder cosine against the activation correlation of every matched pair (grey) and of the
    selected ones."""
    fig = new_figure(5.6, 3.8)
    ax = fig.add_subplot()
    if background is not None:
        points = [(x, y) for x, y in zip(*background) if y is not None]
        ax.scatter([x for x, _ in points], [y for _, y in points], s=3, color="#c8c8c8",
                   linewidths=0,
                   label=f"all matched ({len(points)})")
    for kind in PAIR_KINDS:
        chosen = [(c.similarity, c.agreement.pearson) for c in cases
                  if c.kind == kind and c.agreement.pearson is not None]
        if chosen:
            ax.scatter(*zip(*chosen), s=16, color=KIND_COLORS[kind], label=kind, edgecolors="white",
                       linewidths=0.4)
    ax.set_xlabel("decoder cosine similarity", fontsize=9)
    ax.set_ylabel("activation Pearson correlation", fontsize=9)
    ax.set_title("Do matched directions fire together?", fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    style_axes(ax)
    return to_png(fig, path)


def decoder_vs_scores(cases: list[PairCase], summary: CaseStudySummary,
                      path: Path | None = None) -> bytes:
    """Decoder cosine against each score, every selected pair coloured by kind; rho over the
    stratified pairs."""
    def mean(values):
        present = [v for v in values if v is not None]
        return sum(present) / len(present) if present else None

    scores = {"activation correlation": lambda c: c.agreement.pearson,
              "explanation similarity": lambda c: c.explanation_similarity,
              "own AUROC": lambda c: mean(c.auroc("own", "self")),
              "cross AUROC": lambda c: mean(c.auroc("cross", "self"))}
    rho = {c.score: c for c in summary.correlations if c.pairs == "stratified"}
    fig = new_figure(10.0, 2.8)
    for i, (name, value) in enumerate(scores.items()):
        ax = fig.add_subplot(1, len(scores), i + 1)
        for kind in PAIR_KINDS:
            points = [(c.similarity, value(c)) for c in cases
                      if c.kind == kind and not any(c.silent)]
            points = [p for p in points if p[1] is not None]
            if points:
                ax.scatter(*zip(*points), s=10, color=KIND_COLORS[kind], label=kind, linewidths=0)
        r = rho.get(name)
        title = name if r is None or r.rho is None else \
            f"{name}\nρ {r.rho:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("decoder cosine", fontsize=8)
        if "AUROC" in name:
            ax.axhline(0.5, color="#444444", linestyle="--", linewidth=0.8)
        style_axes(ax)
    fig.axes[0].legend(fontsize=6, frameon=False)
    return to_png(fig, path)


def null_selfsim(cases: list[PairCase], explain: ExplainArtifact,
                 path: Path | None = None) -> bytes:
    """Histogram of the null's best self-similarities beside the selected features', and the
    threshold."""
    fig = new_figure(5.2, 3.4)
    ax = fig.add_subplot()
    features = [explain.features[sae][str(c.indices[slot])].best_selfsim for c in cases
                for slot, sae in enumerate(SAE_KEYS)
                if str(c.indices[slot]) in explain.features.get(sae, {})]
    null = explain.null.best_selfsim if explain.null else []
    values = null + features
    if values:
        bins = [min(values) + (max(values) - min(values) + 1e-9) * k / 30 for k in range(31)]
        if null:
            ax.hist(null, bins=bins, color="#9e9e9e", alpha=0.7, density=True,
                    label=f"random directions ({len(null)})")
        ax.hist(features, bins=bins, color=SELFSIM_COLOR, alpha=0.55, density=True,
                label=f"features ({len(features)})")
    if explain.threshold is not None:
        ax.axvline(explain.threshold, color="#d1495b", linestyle="--", linewidth=1.2,
                   label=f"threshold {explain.threshold:.3f} ({explain.threshold_source})")
    ax.set_xlabel("best Δ self-similarity over the scales", fontsize=9)
    ax.set_ylabel("density", fontsize=9)
    ax.set_title("Failure test: features against random directions", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    style_axes(ax)
    return to_png(fig, path)


def make_plots(cases: list[PairCase], summary: CaseStudySummary,
               explain: ExplainArtifact | None = None,
               background: tuple[list, list] | None = None) -> dict[str, bytes]:
    """Every figure the inputs allow, keyed by file name (see PLOT_FILES)."""
    plots = {
        PLOT_FILES["similarity_histogram"]: similarity_histogram(summary.match),
        PLOT_FILES["decoder_vs_agreement"]: decoder_vs_agreement(cases, background),
        PLOT_FILES["auroc_by_group"]: auroc_by_group(cases),
        PLOT_FILES["decoder_vs_scores"]: decoder_vs_scores(cases, summary),
    }
    if summary.calibration is not None and summary.calibration.cases:
        plots[PLOT_FILES["calibration"]] = calibration_plot(summary)
    if explain is not None:
        plots[PLOT_FILES["scale_sweeps"]] = scale_sweeps(cases, explain)
        plots[PLOT_FILES["null_selfsim"]] = null_selfsim(cases, explain)
    return plots


def calibration_plot(summary: CaseStudySummary, path: Path | None = None) -> bytes:
    """Each known feature's AUROC by each explainer against the true answer's on the same
    documents; dotted: each explainer's mean own AUROC on the best matched pairs."""
    fig = new_figure(5.2, 4.0)
    ax = fig.add_subplot()
    cases = summary.calibration.cases
    for row in summary.calibration.explainers:
        marker, color = CALIBRATION_MARKERS.get(row.explainer, ("D", "#555555"))
        points = [(c.aurocs["truth"], c.aurocs.get(row.explainer)) for c in cases
                  if c.aurocs.get("truth") is not None and c.aurocs.get(row.explainer) is not None]
        if points:
            ax.scatter(*zip(*points), marker=marker, color=color, s=22, label=row.explainer)
        if row.best_auroc is not None and not row.control:
            ax.axhline(row.best_auroc, color=color, linestyle=":", linewidth=1.0)
    ax.plot([0, 1], [0, 1], color="#444444", linewidth=0.8)
    ax.axhline(0.5, color="#444444", linestyle="--", linewidth=0.6)
    ax.set_xlim(0.2, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("true answer's AUROC", fontsize=9)
    ax.set_ylabel("explainer's AUROC", fontsize=9)
    ax.set_title("Features of known meaning: each explainer against the true answer", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    style_axes(ax)
    return to_png(fig, path)


def matrix_heatmap(artifact, statistic: str, path: Path | None = None) -> bytes:
    """One statistic of the matrix as a heatmap, SAEs in the matrix order (dataset, seed)."""
    import numpy as np

    order, values = artifact.order, artifact.tables[statistic]
    grid = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    size = 1.2 + 0.75 * len(order)
    fig = new_figure(size + 1.2, size)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=1)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if value < 0.6 else "black")
    ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.set_title(statistic.replace("_", " "), fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return to_png(fig, path)


def overlap_histogram(overlap, path: Path | None = None) -> bytes:
    """Many seeds: share of each SAE's alive latents with a shared partner in exactly k of the
    other SAEs, one panel per definition (bars: all SAEs pooled; dots: each SAE)."""
    definitions = list(overlap.definitions)
    n = overlap.n_others + 1
    fig = new_figure(3.4 * len(definitions) + 0.6, 3.2)
    axes = fig.subplots(1, len(definitions), sharey=True, squeeze=False)[0]
    pooled = max(sum(e.n_latents for e in overlap.saes), 1)
    for ax, definition in zip(axes, definitions):
        total = overlap.total[definition]
        if total is None:
            ax.text(0.5, 0.5, "no encoder directions:\n" + (overlap.encoder_reason or ""),
                    ha="center", va="center", fontsize=7, wrap=True, transform=ax.transAxes)
        else:
            ax.bar(range(n), [c / pooled for c in total], color=KIND_COLORS["best"], alpha=0.6,
                   label="all SAEs")
            for entry in overlap.saes:
                counts = getattr(entry, definition)
                ax.plot(range(n), [c / max(entry.n_latents, 1) for c in counts], "o",
                        markersize=3, color="#333333", alpha=0.6)
        ax.set_xticks(range(n))
        ax.set_xlabel(f"other SAEs (of {overlap.n_others}) with a shared partner", fontsize=8)
        ax.set_title(definition, fontsize=9)
        style_axes(ax)
    axes[0].set_ylabel("share of alive latents (dots: each SAE)", fontsize=8)
    return to_png(fig, path)
