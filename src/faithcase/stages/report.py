"""Report stage: one static, self-contained HTML page (inline CSS/JS, PNGs as data URIs) of the
case study. The page's HTML fragments live in faithcase.render.html."""

from __future__ import annotations

from pathlib import Path

from faithcase.artifacts import (
    REPORT_DIR,
    REPORT_INDEX,
    ExplainArtifact,
)
from faithcase.case_study import CaseStudySummary, PairCase
from faithcase.run.graph import Stage
from faithcase.run.store import StagedFiles
from faithcase.render.html import plot_stem, render_report

__all__ = ["STAGE", "build_report", "render_report", "report_files"]


def report_files(cases: list[PairCase], summary: CaseStudySummary,
                 explain: ExplainArtifact | None = None,
                 background: tuple[list, list] | None = None) -> dict[str, bytes]:
    """{path under the run folder: bytes}: the plots as PNGs and report/index.html. `background`
    is (decoder cosine, activation Pearson) of every matched pair, for the ground-truth figure."""
    from faithcase.render.plots import make_plots

    plots = make_plots(cases, summary, explain, background)
    files = {f"{REPORT_DIR}/{plot_stem(Path(name).name)}.png": png for name, png in plots.items()}
    files[REPORT_INDEX] = render_report(cases, summary, plots, explain).encode("utf-8")
    return files


def build_report(out_dir: Path, cases: list[PairCase], summary: CaseStudySummary,
                 explain: ExplainArtifact | None = None,
                 background: tuple[list, list] | None = None) -> Path:
    """The report of a case study written under out_dir/report as one commit; its index path."""
    staged = StagedFiles()
    for name, payload in report_files(cases, summary, explain, background).items():
        staged.add(Path(out_dir) / name, payload)
    staged.commit()
    return Path(out_dir) / REPORT_INDEX


# ---------------------------------------------------------------- the stage


def _compute(job) -> Path:
    up = job.inputs
    cases, summary = up["assemble"]
    background = (up["match"].assignment.similarity, up["scan"].agreement.pearson)
    for name, payload in report_files(cases, summary, up["explain"], background).items():
        job.write_bytes(name, payload)
    return job.folder / REPORT_INDEX


STAGE = Stage(
    "report", _compute, inputs=("assemble", "match", "scan", "explain"),
    load=lambda job: job.folder / REPORT_INDEX,
    doc="A static, self-contained HTML report with plots.")
