"""Assemble stage: join match, explain, windows and embed artifacts into one case study, one entry per pair."""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from faithcase.artifacts import (
    CASE_STUDY_FILE,
    CRITERIA,
    EMBED_FILE,
    EXPLAIN_FILE,
    MATCH_FILE,
    PAIR_KINDS,
    SAE_KEYS,
    SUMMARY_FILE,
    ActExample,
    CaseStudySummary,
    CrossScore,
    EmbedArtifact,
    ExplainArtifact,
    MatchArtifact,
    Meta,
    Pair,
    PairCase,
    WindowsArtifact,
    windows_file,
    write_json,
)
from faithcase.errors import FaithcaseError

CASES_ADAPTER = TypeAdapter(list[PairCase])


# ---------------------------------------------------------------- completeness


def find_cross(embed: EmbedArtifact, pair: Pair) -> CrossScore | None:
    for cross in embed.cross:
        if (cross.kind, cross.rank, cross.index1, cross.index2) == (pair.kind, pair.rank, pair.index1, pair.index2):
            return cross
    return None


def check_complete(
    match: MatchArtifact, explain: ExplainArtifact, windows: dict[str, WindowsArtifact], embed: EmbedArtifact
) -> None:
    """Refuse artifacts that lack a selected pair or feature, naming the stage to rerun (freshness
    is the graph's job: `graph.py`)."""
    for sae in SAE_KEYS:
        name = windows_file(sae)
        if sae not in windows:
            raise FaithcaseError(f"{name} is missing: run `faithcase windows`")
        if windows[sae].sae != sae:
            raise FaithcaseError(f"{name} holds the windows of {windows[sae].sae}: run `faithcase windows --force`")

    for sae, features in match.selected_features().items():
        for feature in features:
            key = str(feature)
            if key not in explain.features.get(sae, {}):
                raise FaithcaseError(f"{EXPLAIN_FILE} lacks feature {feature} of {sae}: run `faithcase explain`")
            if key not in windows[sae].features:
                raise FaithcaseError(f"{windows_file(sae)} lacks feature {feature} of {sae}: run `faithcase windows`")
            if key not in embed.scores.get(sae, {}):
                raise FaithcaseError(f"{EMBED_FILE} lacks feature {feature} of {sae}: run `faithcase embed`")
    for pair in match.all_pairs():
        if find_cross(embed, pair) is None:
            raise FaithcaseError(
                f"{EMBED_FILE} lacks the cross scores of {pair.kind} pair {pair.rank} "
                f"({pair.index1}, {pair.index2}): run `faithcase embed`"
            )


# ---------------------------------------------------------------- assemble


def mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def group_summary(cases: list[PairCase]) -> dict[str, dict[str, float | None]]:
    """Per pair kind: pair count, mean decoder similarity, mean own / cross AUROC, share of failed explanations."""
    groups: dict[str, dict[str, float | None]] = {}
    for kind in PAIR_KINDS:
        members = [c for c in cases if c.kind == kind]
        failed = [f for c in members for f in c.failed]
        groups[kind] = {
            "n_pairs": len(members),
            "mean_similarity": mean_or_none([c.similarity for c in members]),
            "mean_own_auroc": mean_or_none([a for c in members for a in c.eleuthers]),
            "mean_cross_auroc": mean_or_none([a for c in members for a in c.cross_eleuthers]),
            "failed_share": sum(failed) / len(failed) if failed else None,
        }
    return groups


def build_case(pair: Pair, explain: ExplainArtifact, windows: dict[str, WindowsArtifact], embed: EmbedArtifact) -> PairCase:
    indices = {"sae1": pair.index1, "sae2": pair.index2}
    explained = [explain.features[sae][str(indices[sae])] for sae in SAE_KEYS]
    featured = [windows[sae].features[str(indices[sae])] for sae in SAE_KEYS]
    cross = find_cross(embed, pair)
    assert cross is not None  # guaranteed by check_complete
    return PairCase(
        kind=pair.kind,
        rank=pair.rank,
        similarity=pair.similarity,
        indices=[pair.index1, pair.index2],
        self_explanations=[e.explanations[0] if e.explanations else None for e in explained],
        eleuthers=[embed.scores[sae][str(indices[sae])].auroc for sae in SAE_KEYS],
        cross_eleuthers=[cross.sae1_on_sae2.auroc, cross.sae2_on_sae1.auroc],
        explanation_similarity=cross.explanation_similarity,
        windows=[
            {
                criterion: [ActExample(tokens=w.tokens, texts=w.texts, acts=w.acts) for w in f.windows.get(criterion, [])]
                for criterion in CRITERIA
            }
            for f in featured
        ],
        scales=[e.scale for e in explained],
        failed=[e.failed for e in explained],
        stats=[f.stats for f in featured],
    )


def assemble(
    match: MatchArtifact,
    explain: ExplainArtifact,
    windows: dict[str, WindowsArtifact],
    embed: EmbedArtifact,
    config: dict[str, Any],
    summary_fingerprint: str = "",
) -> tuple[list[PairCase], CaseStudySummary]:
    """One PairCase per selected pair and the run's summary; FaithcaseError if an artifact lacks a pair."""
    check_complete(match, explain, windows, embed)
    cases = [build_case(pair, explain, windows, embed) for pair in match.all_pairs()]

    recorded = {
        MATCH_FILE: match.meta.fingerprint,
        EXPLAIN_FILE: explain.meta.fingerprint,
        **{windows_file(sae): windows[sae].meta.fingerprint for sae in SAE_KEYS},
        EMBED_FILE: embed.meta.fingerprint,
    }
    model_section = config.get("model")
    model_name = model_section.get("name") if isinstance(model_section, dict) else model_section
    summary = CaseStudySummary(
        meta=Meta(
            stage="assemble",
            fingerprint=summary_fingerprint,
            upstream=recorded,
        ),
        model=str(model_name or "unknown model"),
        hook=str(config.get("hook") or match.sae1.hook_name or "unknown hook"),
        sae1=match.sae1,
        sae2=match.sae2,
        match=match.stats,
        groups=group_summary(cases),
        config=config,
    )
    return cases, summary


# ---------------------------------------------------------------- files


def write_case_study(out_dir: Path, cases: list[PairCase], summary: CaseStudySummary,
                     cases_name: str = CASE_STUDY_FILE) -> tuple[Path, Path]:
    """Validate, then atomically write case_study.json (the list) and summary.json beside it."""
    cases = CASES_ADAPTER.validate_python([c.model_dump() for c in cases])
    cases_path, summary_path = out_dir / cases_name, out_dir / SUMMARY_FILE
    write_json(cases_path, CASES_ADAPTER.dump_python(cases, mode="json"))
    write_json(summary_path, summary.model_dump(mode="json"))
    return cases_path, summary_path


def read_case_study(out_dir: Path, cases_name: str | None = None) -> tuple[list[PairCase], CaseStudySummary]:
    """Read case_study.json and summary.json back; FaithcaseError if missing or invalid."""
    cases_path, summary_path = out_dir / (cases_name or CASE_STUDY_FILE), out_dir / SUMMARY_FILE
    for path in (cases_path, summary_path):
        if not path.is_file():
            raise FaithcaseError(f"missing artifact {path}: run `faithcase assemble` first")
    try:
        cases = CASES_ADAPTER.validate_python(orjson.loads(cases_path.read_bytes()))
        summary = CaseStudySummary.model_validate(orjson.loads(summary_path.read_bytes()))
    except (orjson.JSONDecodeError, ValidationError) as err:
        raise FaithcaseError(
            f"invalid case study in {out_dir} ({type(err).__name__}): run `faithcase assemble --force`"
        ) from None
    return cases, summary
