"""The `compare` stage of a many-SAE run: the studies' case studies side by side.

`faithcase run` on a config with `studies: [[a, b], …]` runs the matrix, then each study's
single-pair pipeline (studies.py), then this stage: comparison.json and comparison.html, the
studies' group tables and the distributions of agreement, known answers and AUROC next to each
other.
"""

from __future__ import annotations

from pathlib import Path

from faithcase.artifacts import (
    CASE_STUDY_FILE,
    LEDGER_FILE,
    SUMMARY_FILE,
)
from faithcase.case_study import CaseStudySummary, PairCase
from faithcase.config import study_name
from faithcase.matrix_artifacts import (
    COMPARISON_FILE,
    COMPARISON_HTML,
    ComparisonArtifact,
    MatrixArtifact,
    StudyEntry,
)
from faithcase.run.errors import FaithcaseError
from faithcase.run.graph import Stage
from faithcase.run.store import Ledger, read_artifact


def study_folder(rt, a: str, b: str) -> Path:
    return rt.cfg.for_study(a, b).output_dir()


def study_entry(name: str, a: str, b: str, folder: Path, matrix: MatrixArtifact,
                root: Path) -> StudyEntry:
    """A study's numbers, read from its case study and summary."""
    cases = read_artifact(folder / CASE_STUDY_FILE, list[PairCase], "assemble")
    summary = read_artifact(folder / SUMMARY_FILE, CaseStudySummary, "assemble")
    kept = [c for c in cases if not any(c.silent)]
    kinds = list(dict.fromkeys(c.kind for c in cases))
    return StudyEntry(
        name=name, a=a, b=b, folder=str(folder.relative_to(root)), matrix=matrix.pair(a, b),
        groups=summary.groups, comparison=summary.comparison,
        explainers=[n for n, e in summary.explainers.items() if not e.control],
        pearson={k: [c.agreement.pearson for c in kept if c.kind == k] for k in kinds},
        auroc={k: [v for c in kept if c.kind == k for v in c.eleuthers if v is not None]
               for k in kinds},
        known_answer={k: [x.known_answer for c in kept if c.kind == k for x in c.checks
                          if x.known_answer is not None] for k in kinds})


def compare(rt, matrix: MatrixArtifact) -> ComparisonArtifact:
    entries = []
    for a, b in rt.cfg.studies:
        folder = study_folder(rt, a, b)
        if not (folder / CASE_STUDY_FILE).is_file():
            raise FaithcaseError(f"the study {a} × {b} has no case study in {folder}: run "
                                 "`faithcase run` on this config first")
        entries.append(study_entry(study_name(a, b), a, b, folder, matrix, rt.out_dir))
    return ComparisonArtifact(studies=entries)


# ---------------------------------------------------------------- the stage


def _check(rt) -> None:
    if not rt.cfg.studies:
        raise FaithcaseError("the config lists no studies: add studies: [[NAME, NAME], …] "
                             "naming pairs of its saes")


def _compute(job) -> ComparisonArtifact:
    from faithcase.render.compare_html import render_comparison

    artifact = compare(job.ctx, job.inputs["matrix"])
    job.write(COMPARISON_FILE, artifact)
    job.write_bytes(COMPARISON_HTML, render_comparison(artifact, job.inputs["matrix"]).encode())
    return artifact


def _key(rt) -> dict:
    """The studies and the fingerprint of each one's case study, as its ledger records it."""
    studies = {}
    for a, b in rt.cfg.studies:
        ledger = Ledger(study_folder(rt, a, b) / LEDGER_FILE)
        studies[study_name(a, b)] = ledger.fingerprint("assemble")
    return {"studies": studies}


STAGE = Stage(
    "compare", _compute, inputs=("matrix",), artifact=ComparisonArtifact, key=_key, check=_check,
    doc="The studies' case studies side by side: comparison.json and comparison.html.")
