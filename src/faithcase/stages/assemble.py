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
from collections.abc import Sequence
from typing import Any

from faithcase.artifacts import (
    CASE_STUDY_FILE,
    CRITERIA,
    EMBED_FILE,
    KNOWN,
    EXPLAIN_FILE,
    PAIR_KINDS,
    SAE_KEYS,
    SIDES,
    SUMMARY_FILE,
    Correlation,
    EmbedArtifact,
    ExplainArtifact,
    MatchArtifact,
    Pair,
    PairsArtifact,
    ScanArtifact,
    WindowsArtifact,
    windows_file,
)
from faithcase.case_study import CaseStudySummary, CaseWindow, GroupSummary, PairCase
from faithcase.calibration import KnownArtifact
from faithcase.numerics.calibration_stats import calibrate, known_cases, known_group
from faithcase import plugins
from faithcase.config import AssembleConfig
from faithcase.run.store import StagedFiles, read_artifact, serialize
from faithcase.run.errors import FaithcaseError
from faithcase.run.graph import Stage
from faithcase.numerics.group_checks import feature_checks, group_checks
from faithcase.render.summary_print import print_summary  # noqa: F401 - the stage's printer
from faithcase.numerics.overlap import shared_pairs
from faithcase.numerics.statistics import (
    detectable_difference,
    group_difference,
    mean_or_none,
    paired_comparison,
    spearman,
)
from faithcase.scores import FeatureView, Score, column
from faithcase.window_artifacts import DescribeArtifact




# ---------------------------------------------------------------- completeness


def check_complete(pairs: PairsArtifact, explain: ExplainArtifact,
                   windows: dict[str, WindowsArtifact], embed: EmbedArtifact) -> None:
    """Refuse artifacts that lack a selected pair or feature, naming the stage to rerun (freshness
    is the graph's job: `graph.py`)."""
    for sae in SAE_KEYS:
        name = windows_file(sae)
        if sae not in windows:
            raise FaithcaseError(f"{name} is missing: run `faithcase windows`")
        if windows[sae].sae != sae:
            raise FaithcaseError(f"{name} holds the windows of {windows[sae].sae}: "
                                 "run `faithcase windows --force`")
    for sae, features in pairs.selected_features().items():
        for feature in features:
            key, which = str(feature), f"feature {feature} of {sae}"
            if key not in explain.features.get(sae, {}):
                raise FaithcaseError(f"{EXPLAIN_FILE} lacks {which}: run `faithcase explain`")
            if key not in windows[sae].features:
                raise FaithcaseError(f"{windows_file(sae)} lacks {which}: run `faithcase windows`")
            if key not in embed.features.get(sae, {}):
                raise FaithcaseError(f"{EMBED_FILE} lacks {which}: run `faithcase embed`")
            scored = embed.features[sae][key].eleuther
            for explanation_of in SAE_KEYS:
                if set(scored.get(explanation_of, {})) != set(pair_explainers(embed)):
                    raise FaithcaseError(f"{EMBED_FILE} lacks the scores of {explanation_of}'s "
                                         f"explanations on {which}: run `faithcase embed`")
    for pair in pairs.all_pairs():
        if find_similarity(embed, pair) is None:
            raise FaithcaseError(f"{EMBED_FILE} lacks {pair.kind} pair {pair.rank} "
                                 f"({pair.index1}, {pair.index2}): run `faithcase embed`")


def pair_explainers(embed: EmbedArtifact) -> list[str]:
    """The explainers of the SAE features (the true answer explains known features only)."""
    return [name for name, record in embed.explainers.items() if record.explains(SAE_KEYS[0])]


def find_similarity(embed: EmbedArtifact, pair: Pair):
    for item in embed.pairs:
        if ((item.kind, item.rank, item.index1, item.index2)
                == (pair.kind, pair.rank, pair.index1, pair.index2)):
            return item
    return None


# ---------------------------------------------------------------- cases


def build_case(pair: Pair, position: dict[int, int], scan: ScanArtifact, explain: ExplainArtifact,
               windows: dict[str, WindowsArtifact], embed: EmbedArtifact,
               describe: DescribeArtifact | None = None, scores: Sequence[Score] = ()) -> PairCase:
    """One pair's entry; `position`: SAE 1 feature -> its row of the match assignment (the matched
    pairs' agreement; an orphan's is its nearest neighbour's, ScanArtifact.pair_agreement).
    Its AUROCs are those embed.json holds at
    `features[documents_of][feature].eleuther[explanation_of][explainer]`."""
    indices = {"sae1": pair.index1, "sae2": pair.index2}
    explained = [explain.features[sae][str(indices[sae])] for sae in SAE_KEYS]
    featured = [windows[sae].features[str(indices[sae])] for sae in SAE_KEYS]
    scored = [embed.features[sae][str(indices[sae])] for sae in SAE_KEYS]
    names = pair_explainers(embed)

    def auroc(slot: int, side: str, name: str) -> float | None:
        of = SAE_KEYS[slot if side == "own" else 1 - slot]
        return scored[slot].eleuther[of][name].auroc

    similarity = find_similarity(embed, pair)
    texts = {name: [f.eleuther[sae][name].explanation for sae, f in zip(SAE_KEYS, scored)]
             for name in names if name != "self"}
    return PairCase(
        kind=pair.kind,
        rank=pair.rank,
        orphan=pair.orphan,
        similarity=pair.similarity,
        indices=[pair.index1, pair.index2],
        agreement=scan.pair_agreement(pair, position),
        silent=[scan.firing[sae][indices[sae]] == 0 for sae in SAE_KEYS],
        self_explanations=[e.explanations[0] if e.explanations else None for e in explained],
        eleuthers=[auroc(slot, "own", "self") for slot in range(2)],
        explanations=texts,
        aurocs={name: {side: [auroc(slot, side, name) for slot in range(2)]
                       for side in SIDES if (name, side) != ("self", "own")} for name in names},
        explanation_similarity=similarity.explanation_similarity if similarity else None,
        windows=[{criterion: [CaseWindow(tokens=w.tokens, texts=w.texts, acts=w.acts,
                                         seq_id=w.seq_id, start=w.start)
                              for w in f.windows.get(criterion, [])] for criterion in CRITERIA}
                 for f in featured],
        scales=[e.scale for e in explained],
        failed=[e.failed for e in explained],
        stats=[f.stats for f in featured],
        checks=[feature_checks(e, f, s, window_uninformative(describe, sae, indices[sae]))
                for sae, e, f, s in zip(SAE_KEYS, explained, featured, scored)],
        scores=case_scores(scores, featured, scored, explained, names, indices),
    )


def window_uninformative(describe: DescribeArtifact | None, sae: str, feature: int) -> str | None:
    """Why a feature's window explanation is uninformative (describe.json), else None."""
    if describe is None or not describe.enabled:
        return None
    found = describe.features.get(sae, {}).get(str(feature))
    return found.uninformative if found else None


def case_scores(scores: Sequence[Score], featured, scored, explained, names,
                indices) -> dict[str, list[float | None]]:
    """Every registered score of the pair's two features: "<name>" or "<name>.<explainer>" (of
    the explanation text embed scored on the feature's documents)."""
    out: dict[str, list[float | None]] = {}
    for score in scores:
        for name in (names if score.by_explainer else [None]):
            values = []
            for slot, sae in enumerate(SAE_KEYS):
                text = scored[slot].eleuther[sae][name].explanation if name else None
                view = FeatureView(sae=sae, feature=indices[sae], windows=featured[slot],
                                   scored=scored[slot], explained=explained[slot],
                                   explainer=name, explanation=text)
                value = score.value(view)
                values.append(None if value is None else float(value))
            out[column(score, name)] = values
    return out


def group_kinds(cases: list[PairCase]) -> list[str]:
    """The group table's pair kinds: the four matched kinds, and orphan when there are orphans."""
    return [k for k in PAIR_KINDS if k != "orphan" or any(c.kind == k for c in cases)]


def group_summary(cases: list[PairCase]) -> dict[str, GroupSummary]:
    """Per pair kind, over the pairs whose features both fire (the others are counted in
    n_left_out). `eleuther[side][explainer]` is the mean over both features of those pairs: own, a
    feature's documents by its own SAE's explanation; cross, by its partner's; only scored features
    have an AUROC (n_scored of n_features). `checks`: the explanation checks (group_checks)."""
    groups = {}
    names = cases[0].explainer_names() if cases else ["self"]
    columns = list(cases[0].scores) if cases else []
    for kind in group_kinds(cases):
        everyone = [c for c in cases if c.kind == kind]
        members = [c for c in everyone if not any(c.silent)]
        failed = [f for c in members for f in c.failed]
        groups[kind] = GroupSummary(
            n_pairs=len(everyone), n_left_out=len(everyone) - len(members),
            n_features=2 * len(members),
            n_scored=sum(ch.scored for c in members for ch in c.checks),
            mean_similarity=mean_or_none([c.similarity for c in members]),
            mean_pearson=mean_or_none([c.agreement.pearson for c in members]),
            mean_jaccard=mean_or_none([c.agreement.jaccard for c in members]),
            eleuther={side: {name: mean_or_none([a for c in members for a in c.auroc(side, name)])
                             for name in names} for side in SIDES},
            pass_rate=1 - sum(failed) / len(failed) if failed else None,
            mean_explanation_similarity=mean_or_none([c.explanation_similarity for c in members]),
            checks=group_checks(members, names),
            scores={key: mean_or_none([v for c in members for v in c.scores.get(key, [])])
                    for key in columns})
    return groups


def comparisons(cases: list[PairCase], settings: AssembleConfig | None = None
                ) -> dict[str, list]:
    """Self-explanation vs window explanation on the same documents (own and cross), over the
    scored features of the pairs that fire: all pairs, then each group."""
    settings = settings or AssembleConfig()
    kept = [c for c in cases if not any(c.silent)]
    groups = {"all": kept} | {kind: [c for c in kept if c.kind == kind]
                              for kind in group_kinds(cases)}
    out = {}
    for name, members in groups.items():
        rows = [paired_comparison([a for c in members for a in c.auroc(side, "self")],
                                  [a for c in members for a in c.auroc(side, "window")],
                                  side, settings.n_bootstrap, settings.seed)
                for side in SIDES]
        if any(r.n for r in rows):  # a group the window explainer did not describe is left out
            out[name] = rows
    return out


def sensitivity(cases: list[PairCase], window: bool) -> list:
    """The smallest difference in mean own AUROC the run's comparisons would detect (80% power):
    self vs window on the same features (paired, when the window explainer ran), and best vs worst
    and vs random pairs' self-explanations (two groups)."""
    kept = [c for c in cases if not any(c.silent)]
    rows = []
    if window:
        rows.append(detectable_difference(
            "self − window, own AUROC, every pair (paired)",
            [a for c in kept for a in c.auroc("own", "self")],
            [a for c in kept for a in c.auroc("own", "window")], paired=True))
    for other in ("worst", "random"):
        rows.append(detectable_difference(
            f"best − {other} pairs, own self AUROC (two groups)",
            [a for c in kept if c.kind == "best" for a in c.auroc("own", "self")],
            [a for c in kept if c.kind == other for a in c.auroc("own", "self")], paired=False))
    return rows


def orphan_comparison(cases: list[PairCase], match: MatchArtifact, config: dict[str, Any],
                      settings: AssembleConfig) -> list:
    """Shared (the selected matched pairs shared under pairs.shared) against orphan features, on
    the pair's agreement and each feature's AUROCs (an orphan pair: its orphan's only)."""
    orphans = [c for c in cases if c.kind == "orphan" and not any(c.silent)]
    if not orphans:
        return []
    definition = (config.get("pairs") or {}).get("shared", "faithfulsae")
    mask = shared_pairs(match, definition)
    shared_ids = {f for f, s in zip(match.assignment.index1, mask)
                  if s} if mask is not None else set()
    shared = [c for c in cases if c.kind != "orphan" and not any(c.silent)
              and c.indices[0] in shared_ids]

    def values(group, metric):
        if metric == "pearson":
            return [c.agreement.pearson for c in group]
        side, explainer = metric
        return [v for c in group for slot, v in enumerate(c.auroc(side, explainer))
                if c.orphan is None or SAE_KEYS[slot] == c.orphan]

    metrics = {"activation Pearson with the partner": "pearson",
               "own self AUROC": ("own", "self"), "own window AUROC": ("own", "window"),
               "cross self AUROC (the partner's explanation)": ("cross", "self")}
    return [group_difference(name, values(shared, metric), values(orphans, metric),
                             settings.n_bootstrap, settings.seed)
            for name, metric in metrics.items()]


def correlations(cases: list[PairCase], match: MatchArtifact, scan: ScanArtifact,
                 settings: AssembleConfig | None = None) -> list[Correlation]:
    """Spearman's rho of decoder cosine with each score: over the stratified pairs (one score per
    pair: the mean over its two features where a score is per feature), and over every matched pair
    for the activation agreement."""
    settings = settings or AssembleConfig()
    boot = {"seed": settings.seed, "n_bootstrap": settings.n_bootstrap}
    stratified = [c for c in cases if c.kind == "stratified" and not any(c.silent)]
    cosine = [c.similarity for c in stratified]
    per_pair = {
        "activation correlation": [c.agreement.pearson for c in stratified],
        "activation Jaccard": [c.agreement.jaccard for c in stratified],
        "explanation similarity": [c.explanation_similarity for c in stratified],
        "own AUROC": [mean_or_none(c.auroc("own", "self")) for c in stratified],
        "cross AUROC": [mean_or_none(c.auroc("cross", "self")) for c in stratified],
    }
    rows = [spearman(cosine, values, score, "stratified", **boot)
            for score, values in per_pair.items()]
    everything = match.assignment.similarity
    rows.append(spearman(everything, scan.agreement.pearson, "activation correlation",
                         "all matched", **boot))
    rows.append(spearman(everything, scan.agreement.jaccard, "activation Jaccard", "all matched",
                         **boot))
    return rows


def assemble(
    match: MatchArtifact,
    scan: ScanArtifact,
    pairs: PairsArtifact,
    explain: ExplainArtifact,
    windows: dict[str, WindowsArtifact],
    embed: EmbedArtifact,
    config: dict[str, Any],
    settings: AssembleConfig | None = None,
    describe: DescribeArtifact | None = None,
    scores: Sequence[Score] | None = None,
    known: KnownArtifact | None = None,
) -> tuple[list[PairCase], CaseStudySummary]:
    """One PairCase per selected pair and the run's summary; FaithcaseError if an artifact lacks
    a pair. `scores`: the registered scores (default: faithcase.plugins'); `known`: the features
    of known meaning, measured in the summary's `calibration` and its group `known`."""
    check_complete(pairs, explain, windows, embed)
    scores = list(scores) if scores is not None else plugins.scores()
    position = {index: i for i, index in enumerate(match.assignment.index1)}
    cases = [build_case(p, position, scan, explain, windows, embed, describe, scores)
             for p in pairs.all_pairs()]
    model_section = config.get("model")
    model_name = model_section.get("name") if isinstance(model_section, dict) else model_section
    null = explain.null
    groups = group_summary(cases)
    settings = settings or AssembleConfig()
    calibration = None
    if known is not None and known.enabled:
        names = list(embed.explainers)
        found = known_cases(known, explain, embed, names)
        best = {n: groups["best"].eleuther["own"].get(n) for n in names}
        calibration = calibrate(known, found, {n: r.control for n, r in embed.explainers.items()},
                                best, settings.n_bootstrap, settings.seed)
        groups[KNOWN] = known_group(found, names)
    summary = CaseStudySummary(
        model=str(model_name or "unknown model"),
        hook=str(config.get("hook") or match.sae1.hook_name or "unknown hook"),
        sae1=match.sae1,
        sae2=match.sae2,
        match=match.stats,
        quality=scan.quality,
        groups=groups, calibration=calibration,
        correlations=correlations(cases, match, scan, settings),
        failure={"threshold": explain.threshold, "source": explain.threshold_source,
                 "null_quantiles": null.quantiles if null else None,
                 "n_null": null.n if null else 0},
        templates=embed.templates,
        rules=summary_rules(explain, embed, config),
        similarity_null=embed.similarity_null,
        comparison=comparisons(cases, settings) if describe and describe.enabled else {},
        explainers=embed.explainers,
        sensitivity=sensitivity(cases, bool(describe and describe.enabled)),
        orphans=orphan_comparison(cases, match, config, settings),
        scores={column(score, name): score.doc for score in scores
                for name in (pair_explainers(embed) if score.by_explainer else [None])},
        n_left_out=sum(any(c.silent) for c in cases),
        config=config,
    )
    return cases, summary


def summary_rules(explain: ExplainArtifact, embed: EmbedArtifact,
                  config: dict[str, Any]) -> dict[str, Any]:
    """The rules behind the group table: embed's scoring rules, explain's uninformative rule, the
    single-token threshold, and which means leave what out."""
    windows = config.get("windows") if isinstance(config.get("windows"), dict) else {}
    rule = explain.uninformative
    return {**embed.rules,
            "uninformative": rule.model_dump(mode="json") if rule else None,
            "single_token_share": windows.get("single_token_share"),
            "means": "AUROC means (eleuther) over the scored features of the pairs that fire; "
                     "checks.eleuther_informative and checks.explanation_similarity_informative "
                     "leave out the uninformative explanations as well; "
                     "mean_explanation_similarity keeps them"}


# ---------------------------------------------------------------- files


def summary_path(case_study: Path) -> Path:
    """The summary beside a case study: summary.json for case_study.json, else X.summary.json."""
    case_study = Path(case_study)
    if case_study.name == CASE_STUDY_FILE:
        return case_study.with_name(SUMMARY_FILE)
    return case_study.with_name(f"{case_study.stem}.summary.json")


def write_case_study(out_dir: Path, cases: list[PairCase], summary: CaseStudySummary,
                     cases_name: str = CASE_STUDY_FILE) -> tuple[Path, Path]:
    """Write the case study (the list) and its summary beside it, as one commit."""
    cases_path = Path(out_dir) / cases_name
    staged = StagedFiles()
    staged.add(cases_path, serialize(cases))
    staged.add(summary_path(cases_path), serialize(summary))
    staged.commit()
    return cases_path, summary_path(cases_path)


def read_case_study(out_dir: Path, cases_name: str | None = None
                    ) -> tuple[list[PairCase], CaseStudySummary]:
    """Read a case study and its summary back; FaithcaseError if missing or invalid."""
    cases_path = Path(out_dir) / (cases_name or CASE_STUDY_FILE)
    cases = read_artifact(cases_path, list[PairCase], "assemble")
    return cases, read_artifact(summary_path(cases_path), CaseStudySummary, "assemble")


# ---------------------------------------------------------------- the stage


def _compute(job) -> tuple[list[PairCase], CaseStudySummary]:
    up = job.inputs
    cases, summary = assemble(up["match"], up["scan"], up["pairs"], up["explain"], up["windows"],
                              up["embed"], job.ctx.cfg.model_dump(mode="json"), job.settings,
                              up["describe"], job.ctx.scores, up["known"])
    job.write(CASE_STUDY_FILE, cases)
    job.write(SUMMARY_FILE, summary)
    return cases, summary


def _load(job) -> tuple[list[PairCase], CaseStudySummary]:
    return read_case_study(job.folder)


STAGE = Stage(
    "assemble", _compute, inputs=("match", "scan", "pairs", "explain", "windows", "describe",
                                "embed", "known"),
    section="assemble", uses=("config", "plugins"), load=_load,
    printer=lambda value, inputs: print_summary(value[1]),
    doc="Join every stage into case_study.json (one entry per pair) and summary.json.")
