"""The explanation checks of a case study: per feature of a pair (its scoring rule, uninformative
flag, known answer, token spread) and per group of pairs (counts and rates beside the AUROCs)."""

from __future__ import annotations

from collections import Counter
from statistics import fmean

from faithcase.artifacts import (
    SAE_KEYS,
    SIDES,
    FeatureChecks,
    FeatureExplanation,
    FeatureWindows,
    GroupChecks,
    ScoredFeature,
)
from faithcase.case_study import PairCase


def _mean(values: list) -> tuple[float | None, int]:
    present = [float(v) for v in values if v is not None]
    return (fmean(present) if present else None), len(present)


def feature_checks(explained: FeatureExplanation, windows: FeatureWindows,
                   scored: ScoredFeature, window_uninformative: str | None = None) -> FeatureChecks:
    """One feature's checks from explain.json, windows_*.json, embed.json (and describe.json's
    uninformative flag). Without embed's `scoring` record, a feature is scored when any of its
    documents' scores has an AUROC."""
    spread, scoring, known = windows.stats.spread, scored.scoring, scored.known_answer
    scores = [s for by in scored.eleuther.values() for s in by.values()]
    if scoring is not None:
        is_scored, reason = scoring.scored, scoring.reason
    else:
        is_scored = any(s.auroc is not None for s in scores)
        reason = None if is_scored else next((s.reason for s in scores if s.reason), None)
    counted = scoring or spread
    return FeatureChecks(
        scored=is_scored, unscored=reason,
        n_activating_windows=counted.n_activating_windows if counted else None,
        n_non_activating_windows=counted.n_non_activating_windows if counted else None,
        uninformative=explained.uninformative,
        peak_tokens=known.peak_tokens if known else [],
        known_answer=known.explanation if known else None,
        known_answer_null=known.null if known else None,
        known_answer_window=known.window if known else None,
        uninformative_window=window_uninformative,
        top_token_share=spread.top_token_share if spread else None,
        single_token=bool(spread and spread.single_token))


def _informative_means(members: list[PairCase], names: list[str]) -> tuple[dict, dict]:
    """eleuther[side][explainer] over the scored features whose self-explanation on that side (own:
    the feature's, cross: its partner's) is informative; and how many self AUROCs each averages."""
    means: dict[str, dict[str, float | None]] = {}
    counts: dict[str, int] = {}
    for side in SIDES:
        values: dict[str, list] = {name: [] for name in names}
        for case in members:
            for slot in range(len(SAE_KEYS)):
                by = slot if side == "own" else 1 - slot
                if case.checks[by].uninformative is not None:
                    continue
                for name in names:
                    values[name].append(case.auroc(side, name)[slot])
        means[side] = {name: _mean(values[name])[0] for name in names}
        counts[side] = _mean(values["self"])[1]
    return means, counts


def group_checks(members: list[PairCase], names: list[str] | None = None) -> GroupChecks:
    """The checks of one group's pairs (those whose features both fire; each with its `checks`);
    `names`: the explainers (default: the first pair's)."""
    names = names or (members[0].explainer_names() if members else ["self"])
    members = [c for c in members if len(c.checks) == len(SAE_KEYS)]
    features = [(c, slot, c.checks[slot]) for c in members for slot in range(len(SAE_KEYS))]
    unscored = Counter((ch.unscored or "unscored").split(":")[0]
                       for _, _, ch in features if not ch.scored)
    informative, n_informative = _informative_means(members, names)
    similarity = _mean([c.explanation_similarity for c in members
                        if all(ch.uninformative is None for ch in c.checks)])
    known = _mean([ch.known_answer for _, _, ch in features])
    known_null = _mean([ch.known_answer_null for _, _, ch in features])
    known_window = _mean([ch.known_answer_window for _, _, ch in features])
    fires = [(c.failed[slot], ch.single_token) for c, slot, ch in features
             if ch.top_token_share is not None]
    single = _mean([failed for failed, one in fires if one])
    other = _mean([failed for failed, one in fires if not one])
    return GroupChecks(
        unscored=dict(sorted(unscored.items())),
        n_uninformative=sum(ch.uninformative is not None for _, _, ch in features),
        eleuther_informative=informative, n_informative=n_informative,
        explanation_similarity_informative=similarity[0], n_similarity_informative=similarity[1],
        known_answer_rate=known[0], n_known_answer=known[1],
        known_answer_null_rate=known_null[0], n_known_answer_null=known_null[1],
        failure_rate_single_token=single[0], n_single_token=single[1],
        failure_rate_other=other[0], n_other=other[1],
        n_uninformative_window=sum(ch.uninformative_window is not None for _, _, ch in features),
        known_answer_window_rate=known_window[0], n_known_answer_window=known_window[1])
