"""The calibration of a case study: what each explainer achieves on the features of known meaning
(hit rate, AUROC) beside the true answer's AUROC on the same documents, and the sentences that
place the matched pairs on that scale. Every sentence is written from the numbers it states."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from faithcase.artifacts import KNOWN, EmbedArtifact, ExplainArtifact
from faithcase.calibration import (
    TRUTH,
    Calibration,
    ExplainerCalibration,
    KnownArtifact,
    KnownCase,
)
from faithcase.case_study import GroupSummary
from faithcase.numerics.explanation_checks import names_peak_token
from faithcase.numerics.statistics import mean_or_none

HIT_RULE = ("an explanation names its concept when one of its words and the concept's name or one "
            "of its listed words share a form (the known-answer rule's normalisation: lower-cased, "
            "letters and digits, the word or the word minus one suffix s/es/ed/ing/ly, forms of at "
            "least 3 characters); a synonym counts only when it is listed")
SEPARABLE_RULE = ("the true answer separates the documents when the bootstrap 95% interval of its "
                  "mean AUROC over the scored known features lies above 0.5")


def names_concept(text: str | None, name: str, words: list[str]) -> bool | None:
    """HIT_RULE; None without a text."""
    return names_peak_token(text, [name, *words])


def known_cases(known: KnownArtifact, explain: ExplainArtifact, embed: EmbedArtifact,
                names: list[str]) -> list[KnownCase]:
    """One case per known feature scored by embed: each explainer's text, hit and AUROC."""
    cases = []
    for feature, scored in sorted(embed.features.get(KNOWN, {}).items(), key=lambda kv: int(kv[0])):
        concept = known.concept(feature)
        by = scored.eleuther.get(KNOWN, {})
        explained = explain.features.get(KNOWN, {}).get(feature)
        texts = {name: by[name].explanation for name in names if name in by}
        truth = by.get(TRUTH)
        cases.append(KnownCase(
            concept=concept.name, words=concept.words, index=concept.index,
            n_occurrences=concept.n_occurrences, n_firing=concept.n_firing, f1=concept.f1,
            scored=truth is not None and truth.auroc is not None,
            unscored=None if truth is None or truth.auroc is not None else truth.reason,
            failed=bool(explained and explained.failed),
            scale=explained.scale if explained else None,
            explanations=texts,
            hits={name: names_concept(text, concept.name, concept.words)
                  for name, text in texts.items()},
            aurocs={name: by[name].auroc for name in texts}))
    return cases


def _interval(values: list[float], n_bootstrap: int, seed: int) -> list[float] | None:
    if len(values) < 2:
        return None
    data = np.asarray(values, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(data), (n_bootstrap, len(data)))
    means = data[draws].mean(axis=1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def explainer_row(cases: list[KnownCase], name: str, control: bool,
                  best: float | None) -> ExplainerCalibration:
    hits = [c.hits.get(name) for c in cases if c.hits.get(name) is not None]
    both = [c for c in cases if c.aurocs.get(name) is not None and c.aurocs.get(TRUTH) is not None]
    passed = [not c.failed for c in cases] if name == "self" else []
    return ExplainerCalibration(
        explainer=name, control=control, n=len(hits), n_hits=sum(hits),
        hit_rate=sum(hits) / len(hits) if hits else None, n_scored=len(both),
        mean_auroc=mean_or_none(c.aurocs[name] for c in both),
        truth_auroc=mean_or_none(c.aurocs[TRUTH] for c in both),
        pass_rate=sum(passed) / len(passed) if passed else None, best_auroc=best)


def calibrate(known: KnownArtifact, cases: list[KnownCase], controls: Mapping[str, bool],
              best: Mapping[str, float | None], n_bootstrap: int = 2000,
              seed: int = 0) -> Calibration:
    """The calibration over the known cases. `controls`: explainer -> is a control (embed.json
    order); `best`: explainer -> its mean own AUROC on the best matched pairs."""
    truth = [c.aurocs[TRUTH] for c in cases if c.aurocs.get(TRUTH) is not None]
    interval = _interval(truth, n_bootstrap, seed)
    rows = [explainer_row(cases, name, control, best.get(name))
            for name, control in controls.items() if name != TRUTH]
    calibration = Calibration(
        enabled=True, hit_rule=HIT_RULE, n_concepts=len(known.concepts),
        n_features=len(known.features()), n_scored=len(truth),
        truth_auroc=mean_or_none(truth), truth_interval=interval,
        separable=None if interval is None else interval[0] > 0.5,
        explainers=rows, cases=cases,
        rules={"direction": known.direction_rule, "activation": known.activation_rule,
               "hit": HIT_RULE, "separable": SEPARABLE_RULE,
               "min_activating": known.min_activating})
    calibration.sentences = sentences(calibration)
    return calibration


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def sentences(calibration: Calibration) -> list[str]:
    """One sentence per explainer under test, then one on the true answer; each from the numbers
    of `calibration` it states."""
    found = [f"The true answer scores a mean AUROC of {_f(calibration.truth_auroc)} on "
             f"{calibration.n_scored} scored known features of {calibration.n_features}"
             + (f" (95% interval {_f(calibration.truth_interval[0])}–"
                f"{_f(calibration.truth_interval[1])})" if calibration.truth_interval else "")
             + _verdict(calibration)]
    for row in calibration.explainers:
        if row.control:
            continue
        said = (f"The {row.explainer} explainer names {row.n_hits} of {row.n} known concepts"
                if row.n else f"The {row.explainer} explainer gave no text for a known concept")
        if row.n_scored:
            said += (f" (AUROC {_f(row.mean_auroc)} vs the true answer's {_f(row.truth_auroc)} "
                     f"on {row.n_scored} scored)")
        if row.best_auroc is not None:
            said += f"; on the best matched pairs it scores {_f(row.best_auroc)}"
        found.append(said + ".")
    return found


def _verdict(calibration: Calibration) -> str:
    if calibration.separable is None:
        return ": too few scored known features to say whether the embedding score can separate "\
               "these documents."
    if not calibration.separable:
        return (": the embedding score cannot separate these documents, so the explainers' "
                "AUROCs are not findings.")
    return ": the embedding score can tell these documents apart."


def known_group(cases: list[KnownCase], names: list[str]) -> GroupSummary:
    """The known features as a group of the group table: own AUROC means per explainer over the
    scored ones (a known feature has no partner: no cross score), the failure-test pass rate."""
    firing = [c for c in cases if c.n_firing > 0]
    failed = [c.failed for c in firing]
    return GroupSummary(
        n_pairs=len(cases), n_left_out=len(cases) - len(firing), n_features=len(firing),
        n_scored=sum(c.scored for c in firing), mean_similarity=None, mean_pearson=None,
        mean_jaccard=None,
        eleuther={"own": {n: mean_or_none(c.aurocs.get(n) for c in firing) for n in names},
                  "cross": {n: None for n in names}},
        pass_rate=1 - sum(failed) / len(failed) if failed else None,
        mean_explanation_similarity=None)
