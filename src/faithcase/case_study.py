"""The case study (assemble stage): one entry per pair (case_study.json) and the run's summary
(summary.json)."""

from __future__ import annotations

from typing import Any

from faithcase.calibration import Calibration
from faithcase.evidence import GroupDifference
from faithcase.artifacts import (
    ActExample,
    Artifact,
    Correlation,
    Criterion,
    ExplainerRecord,
    Explainer,
    FeatureChecks,
    FeatureStats,
    GroupChecks,
    MatchStats,
    Model,
    PairAgreement,
    PairedComparison,
    PairKind,
    SAEInfo,
    SAEQuality,
    Sensitivity,
    Side,
    SimilarityNull,
)



class CaseWindow(ActExample):  # a top-activating window in the case study, with where it starts
    seq_id: int
    start: int


class PairCase(Model):
    """A selected pair; lists of two are [sae1, sae2]. `eleuthers`: each SAE's self-explanation on
    its own feature's documents. `aurocs[explainer][side]`: every other AUROC, [on sae1's
    documents, on sae2's], by their own SAE's explanation (own) or the partner's (cross); the
    self-explanation's own AUROCs are `eleuthers`, not repeated there. `explanations`: every
    explainer's texts but the self-explanation's (`self_explanations`). `scores`: the registered
    scores (faithcase.scores), "<name>" or "<name>.<explainer>" -> [sae1, sae2]."""

    kind: PairKind
    rank: int
    similarity: float
    indices: list[int]
    orphan: str | None = None  # an orphan pair: the SAE whose feature is the orphan
    agreement: PairAgreement
    silent: list[bool]  # never fires on the corpus: the pair is left out of the group means
    self_explanations: list[str | None]
    eleuthers: list[float | None]
    explanations: dict[str, list[str | None]] = {}
    aurocs: dict[str, dict[Side, list[float | None]]] = {}
    explanation_similarity: float | None
    windows: list[dict[Criterion, list[CaseWindow]]]
    scales: list[float | None]
    failed: list[bool]
    stats: list[FeatureStats]
    checks: list[FeatureChecks] = []
    scores: dict[str, list[float | None]] = {}

    def auroc(self, side: Side, explainer: Explainer) -> list[float | None]:
        """[on sae1's documents, on sae2's], by their own SAE's explanation or the partner's."""
        if explainer == "self" and side == "own":
            return list(self.eleuthers)
        return list(self.aurocs.get(explainer, {}).get(side, [None, None]))

    def explainer_names(self) -> list[str]:
        return list(dict.fromkeys(["self", *self.aurocs]))

    def explanation(self, explainer: Explainer, slot: int) -> str | None:
        if explainer == "self":
            return self.self_explanations[slot]
        return self.explanations.get(explainer, [None, None])[slot]


class GroupSummary(Model):
    n_pairs: int
    n_left_out: int  # pairs with a feature that never fires
    n_features: int = 0  # features of the pairs kept (2 per pair)
    n_scored: int = 0  # of them, those whose documents pass the scoring rules: the AUROC means
    mean_similarity: float | None
    mean_pearson: float | None
    mean_jaccard: float | None
    eleuther: dict[Side, dict[Explainer, float | None]]  # own|cross -> explainer -> mean AUROC
    pass_rate: float | None  # share of explanations that pass the self-similarity test
    mean_explanation_similarity: float | None
    checks: GroupChecks | None = None
    scores: dict[str, float | None] = {}  # the registered scores' means (PairCase.scores keys)


class CaseStudySummary(Artifact):
    model: str
    hook: str
    sae1: SAEInfo
    sae2: SAEInfo
    match: MatchStats
    quality: dict[str, SAEQuality]
    groups: dict[str, GroupSummary]
    correlations: list[Correlation]
    failure: dict[str, Any]  # the self-similarity threshold, its source, the null's quantiles
    templates: dict[str, float | None]
    rules: dict[str, Any] = {}  # scoring rules, explanation checks, single-token rule
    similarity_null: SimilarityNull | None = None
    comparison: dict[str, list[PairedComparison]] = {}  # "all" or a group -> [own, cross]
    explainers: dict[str, ExplainerRecord] = {}  # what scored (embed.json), controls last
    sensitivity: list[Sensitivity] = []  # the smallest differences the comparisons can detect
    scores: dict[str, str] = {}  # each registered score's column -> what it measures
    calibration: Calibration | None = None  # the features of known meaning (calibration.py)
    orphans: list[GroupDifference] = []  # shared − orphan features, metric by metric
    n_left_out: int
    config: dict[str, Any]
