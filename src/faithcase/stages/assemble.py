"""Assemble stage: join every artifact into one case study, one entry per pair, and its summary.

Each entry puts the scores of a pair beside their ground truth (the activation agreement of its two
features, from the scan) and their controls (the top-token baseline and the null explanation).
The summary gives per group (best, worst, random, stratified) the mean agreement, the mean own and
cross AUROC of self-explanation, baseline and null, and the explanation pass rate, leaving out the
pairs with a feature that never fires; and the Spearman correlation of decoder cosine with each
score, with a bootstrap interval, over the stratified pairs (and over every matched pair for the
activation agreement).
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from faithcase.render.tables import console, fmt, table
from faithcase.artifacts import (
    CASE_STUDY_FILE,
    CRITERIA,
    EMBED_FILE,
    EXPLAIN_FILE,
    EXPLAINERS,
    MATCH_FILE,
    PAIR_KINDS,
    PAIRS_FILE,
    SAE_KEYS,
    SCAN_FILE,
    SUMMARY_FILE,
    ActExample,
    CaseStudySummary,
    Correlation,
    EmbedArtifact,
    ExplainArtifact,
    GroupSummary,
    MatchArtifact,
    Meta,
    Pair,
    PairCase,
    PairsArtifact,
    ScanArtifact,
    WindowsArtifact,
    windows_file,
)
from faithcase.run.store import write_json
from faithcase.run.errors import FaithcaseError
from faithcase.numerics.statistics import spearman

CASES_ADAPTER = TypeAdapter(list[PairCase])


# ---------------------------------------------------------------- completeness


def check_complete(pairs: PairsArtifact, explain: ExplainArtifact, windows: dict[str, WindowsArtifact],
                   embed: EmbedArtifact) -> None:
    """Refuse artifacts that lack a selected pair or feature, naming the stage to rerun (freshness
    is the graph's job: `graph.py`)."""
    for sae in SAE_KEYS:
        name = windows_file(sae)
        if sae not in windows:
            raise FaithcaseError(f"{name} is missing: run `faithcase windows`")
        if windows[sae].sae != sae:
            raise FaithcaseError(f"{name} holds the windows of {windows[sae].sae}: run `faithcase windows --force`")
    for sae, features in pairs.selected_features().items():
        for feature in features:
            key = str(feature)
            if key not in explain.features.get(sae, {}):
                raise FaithcaseError(f"{EXPLAIN_FILE} lacks feature {feature} of {sae}: run `faithcase explain`")
            if key not in windows[sae].features:
                raise FaithcaseError(f"{windows_file(sae)} lacks feature {feature} of {sae}: run `faithcase windows`")
            if key not in embed.features.get(sae, {}):
                raise FaithcaseError(f"{EMBED_FILE} lacks feature {feature} of {sae}: run `faithcase embed`")
    for pair in pairs.all_pairs():
        if find_similarity(embed, pair) is None:
            raise FaithcaseError(f"{EMBED_FILE} lacks {pair.kind} pair {pair.rank} ({pair.index1}, {pair.index2}): "
                                 "run `faithcase embed`")


def find_similarity(embed: EmbedArtifact, pair: Pair):
    for item in embed.pairs:
        if (item.kind, item.rank, item.index1, item.index2) == (pair.kind, pair.rank, pair.index1, pair.index2):
            return item
    return None


# ---------------------------------------------------------------- cases


def mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def build_case(pair: Pair, position: int, scan: ScanArtifact, explain: ExplainArtifact,
               windows: dict[str, WindowsArtifact], embed: EmbedArtifact) -> PairCase:
    """One pair's entry; `position` is the pair's place in the match assignment (its agreement row)."""
    indices = {"sae1": pair.index1, "sae2": pair.index2}
    explained = [explain.features[sae][str(indices[sae])] for sae in SAE_KEYS]
    featured = [windows[sae].features[str(indices[sae])] for sae in SAE_KEYS]
    scored = [embed.features[sae][str(indices[sae])] for sae in SAE_KEYS]
    partner = scored[::-1]  # each explanation's cross score sits on the partner's documents
    similarity = find_similarity(embed, pair)
    return PairCase(
        kind=pair.kind,
        rank=pair.rank,
        similarity=pair.similarity,
        indices=[pair.index1, pair.index2],
        agreement=scan.agreement.pair(position, scan.n_tokens),
        silent=[scan.firing[sae][indices[sae]] == 0 for sae in SAE_KEYS],
        self_explanations=[e.explanations[0] if e.explanations else None for e in explained],
        eleuthers=[s.own["self"].auroc for s in scored],
        cross_eleuthers=[s.partner["self"].auroc for s in partner],
        controls={"own": {name: [s.own[name].auroc for s in scored] for name in EXPLAINERS[1:]},
                  "cross": {name: [s.partner[name].auroc for s in partner] for name in EXPLAINERS[1:]}},
        explanation_similarity=similarity.explanation_similarity if similarity else None,
        windows=[{criterion: [ActExample(tokens=w.tokens, texts=w.texts, acts=w.acts)
                              for w in f.windows.get(criterion, [])] for criterion in CRITERIA} for f in featured],
        scales=[e.scale for e in explained],
        failed=[e.failed for e in explained],
        stats=[f.stats for f in featured],
    )


def own_scores(case: PairCase, name: str) -> list[float | None]:
    return case.eleuthers if name == "self" else case.controls["own"][name]


def cross_scores(case: PairCase, name: str) -> list[float | None]:
    return case.cross_eleuthers if name == "self" else case.controls["cross"][name]


def group_summary(cases: list[PairCase]) -> dict[str, GroupSummary]:
    """Per pair kind, over the pairs whose features both fire (the others are counted in n_left_out)."""
    groups = {}
    for kind in PAIR_KINDS:
        everyone = [c for c in cases if c.kind == kind]
        members = [c for c in everyone if not any(c.silent)]
        failed = [f for c in members for f in c.failed]
        groups[kind] = GroupSummary(
            n_pairs=len(everyone), n_left_out=len(everyone) - len(members),
            mean_similarity=mean_or_none([c.similarity for c in members]),
            mean_pearson=mean_or_none([c.agreement.pearson for c in members]),
            mean_jaccard=mean_or_none([c.agreement.jaccard for c in members]),
            own_auroc={name: mean_or_none([a for c in members for a in own_scores(c, name)]) for name in EXPLAINERS},
            cross_auroc={name: mean_or_none([a for c in members for a in cross_scores(c, name)])
                         for name in EXPLAINERS},
            pass_rate=1 - sum(failed) / len(failed) if failed else None,
            mean_explanation_similarity=mean_or_none([c.explanation_similarity for c in members]))
    return groups


def correlations(cases: list[PairCase], match: MatchArtifact, scan: ScanArtifact, seed: int = 0) -> list[Correlation]:
    """Spearman's rho of decoder cosine with each score: over the stratified pairs (one score per pair:
    the mean over its two features where a score is per feature), and over every matched pair for the
    activation agreement."""
    stratified = [c for c in cases if c.kind == "stratified" and not any(c.silent)]
    cosine = [c.similarity for c in stratified]
    per_pair = {
        "activation correlation": [c.agreement.pearson for c in stratified],
        "activation Jaccard": [c.agreement.jaccard for c in stratified],
        "explanation similarity": [c.explanation_similarity for c in stratified],
        "own AUROC": [mean_or_none(c.eleuthers) for c in stratified],
        "cross AUROC": [mean_or_none(c.cross_eleuthers) for c in stratified],
    }
    rows = [spearman(cosine, values, score, "stratified", seed=seed) for score, values in per_pair.items()]
    everything = match.assignment.similarity
    rows.append(spearman(everything, scan.agreement.pearson, "activation correlation", "all matched", seed=seed))
    rows.append(spearman(everything, scan.agreement.jaccard, "activation Jaccard", "all matched", seed=seed))
    return rows


def assemble(
    match: MatchArtifact,
    scan: ScanArtifact,
    pairs: PairsArtifact,
    explain: ExplainArtifact,
    windows: dict[str, WindowsArtifact],
    embed: EmbedArtifact,
    config: dict[str, Any],
    summary_fingerprint: str = "",
) -> tuple[list[PairCase], CaseStudySummary]:
    """One PairCase per selected pair and the run's summary; FaithcaseError if an artifact lacks a pair."""
    check_complete(pairs, explain, windows, embed)
    position = {index: i for i, index in enumerate(match.assignment.index1)}
    cases = [build_case(p, position[p.index1], scan, explain, windows, embed) for p in pairs.all_pairs()]
    recorded = {MATCH_FILE: match.meta.fingerprint, SCAN_FILE: scan.meta.fingerprint,
                PAIRS_FILE: pairs.meta.fingerprint, EXPLAIN_FILE: explain.meta.fingerprint,
                **{windows_file(sae): windows[sae].meta.fingerprint for sae in SAE_KEYS},
                EMBED_FILE: embed.meta.fingerprint}
    model_section = config.get("model")
    model_name = model_section.get("name") if isinstance(model_section, dict) else model_section
    null = explain.null
    summary = CaseStudySummary(
        meta=Meta(stage="assemble", fingerprint=summary_fingerprint, upstream=recorded),
        model=str(model_name or "unknown model"),
        hook=str(config.get("hook") or match.sae1.hook_name or "unknown hook"),
        sae1=match.sae1,
        sae2=match.sae2,
        match=match.stats,
        quality=scan.quality,
        groups=group_summary(cases),
        correlations=correlations(cases, match, scan, seed=int(config.get("match", {}).get("seed", 0))),
        failure={"threshold": explain.threshold, "source": explain.threshold_source,
                 "null_quantiles": null.quantiles if null else None, "n_null": null.n if null else 0},
        templates=embed.templates,
        n_left_out=sum(any(c.silent) for c in cases),
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


# ---------------------------------------------------------------- printing


def print_summary(summary) -> None:
    grid = table("case study by group (pairs with a silent feature left out)",
                   ["group", "pairs", "left out", "cos", "act. Pearson", "own self/base/null", "cross self/base/null",
                    "passing"])
    for kind, g in summary.groups.items():
        own = " / ".join(fmt(g.own_auroc[n], 2) for n in ("self", "baseline", "null"))
        cross = " / ".join(fmt(g.cross_auroc[n], 2) for n in ("self", "baseline", "null"))
        grid.add_row(kind, str(g.n_pairs), str(g.n_left_out), fmt(g.mean_similarity), fmt(g.mean_pearson), own,
                      cross, fmt(g.pass_rate, 2))
    console.print(grid)
    for c in summary.correlations:
        console.print(f"Spearman ρ(decoder cos, {c.score}) over {c.pairs} pairs (n={c.n}): {fmt(c.rho)} "
                      f"[{fmt(c.ci_low)}, {fmt(c.ci_high)}]")
