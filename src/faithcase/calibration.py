"""Features of known meaning (the `known` stage, known.json) and the calibration they give the case
study (summary.json `calibration`): what each explainer achieves on features whose meaning is
known, beside what the embedding score achieves with the true answer itself."""

from __future__ import annotations

from typing import Any

import torch

from faithcase.artifacts import KNOWN, Artifact, Model
from faithcase.saes.model import SAE

TRUTH = "truth"  # the explainer whose text is a known feature's concept: the true answer


class KnownConcept(Model):
    """One concept: its words, where they occur, and its feature (direction, threshold)."""

    index: int  # the feature's index in the known set (known.json order)
    name: str
    words: list[str]
    description: str  # the true answer: "name; word, word, …"
    patterns: list[list[int]]  # the token-id sequences looked for
    n_occurrences: int  # kept positions covered by a word
    n_firing: int = 0  # kept positions where the feature fires
    threshold: float | None = None
    precision: float | None = None  # of firing against word positions
    recall: float | None = None
    f1: float | None = None
    direction: list[float] = []  # unit, d_model; empty when the words never occur
    reason: str | None = None  # why it is no feature (absent from the corpus)


class KnownArtifact(Artifact):
    enabled: bool
    hook: str = ""
    direction_rule: str = ""
    activation_rule: str = ""
    n_tokens: int = 0  # kept positions of the pass
    min_activating: int | None = None  # scoring rule of the known features (None: embed's)
    concepts: list[KnownConcept] = []

    def features(self) -> list[int]:
        """The concepts that are features (their words occur): indices in the known set."""
        return [c.index for c in self.concepts if c.direction]

    def selection(self) -> dict[str, list[int]]:
        """{"known": its features} for the stages' feature sets, or {} without any."""
        return {KNOWN: self.features()} if self.enabled and self.features() else {}

    def encoders(self, device: str | torch.device = "cpu") -> dict[str, SAE]:
        """{"known": the features as an SAE} beside the stages' SAEs, or {} without any: a ReLU
        SAE whose encoder columns and decoder rows are the directions and whose encoder bias is
        minus the thresholds (ACTIVATION_RULE); a concept without a direction never fires."""
        if not self.selection():
            return {}
        d_model = max(len(c.direction) for c in self.concepts)
        directions = torch.tensor([c.direction or [0.0] * d_model for c in self.concepts],
                                  dtype=torch.float32)
        thresholds = torch.tensor([c.threshold if c.threshold is not None else float("inf")
                                   for c in self.concepts], dtype=torch.float32)
        sae = SAE(W_enc=directions.T.contiguous(), b_enc=-thresholds, W_dec=directions,
                  b_dec=torch.zeros(d_model), activation="relu", apply_b_dec_to_input=False,
                  hook_name=self.hook, format="concepts")
        return {KNOWN: sae.to(device)}

    def concept(self, feature: int | str) -> KnownConcept:
        return self.concepts[int(feature)]


class KnownCase(Model):
    """A known feature in the case study: each explainer's text, whether it names the concept
    (`hits`), and its AUROC on the feature's documents."""

    concept: str
    words: list[str]
    index: int
    n_occurrences: int
    n_firing: int
    f1: float | None
    scored: bool  # the true answer has an AUROC on its documents
    unscored: str | None = None  # why not (delphi's rules, documents of one label)
    failed: bool  # the self-explanation fails the failure test
    scale: float | None
    explanations: dict[str, str | None]
    hits: dict[str, bool | None]  # explainer -> names the concept or a word (None: no text)
    aurocs: dict[str, float | None]


class ExplainerCalibration(Model):
    """One explainer on the known features: its hit rate over those with a text, its mean AUROC
    and the true answer's over the scored ones where both have one, and the failure-test pass rate
    (self only)."""

    explainer: str
    control: bool
    n: int  # known features with a text
    n_hits: int
    hit_rate: float | None
    n_scored: int  # known features where this explainer and the true answer both have an AUROC
    mean_auroc: float | None
    truth_auroc: float | None  # the true answer's mean over the same features
    pass_rate: float | None = None
    best_auroc: float | None = None  # the explainer's mean own AUROC on the best matched pairs


class Calibration(Model):
    enabled: bool
    hit_rule: str = ""
    n_concepts: int = 0
    n_features: int = 0  # concepts whose words occur
    n_scored: int = 0  # of them, scored under delphi's rules
    truth_auroc: float | None = None  # mean over the scored known features
    truth_interval: list[float] | None = None  # its bootstrap 95% interval
    separable: bool | None = None  # the interval lies above 0.5
    explainers: list[ExplainerCalibration] = []
    sentences: list[str] = []
    cases: list[KnownCase] = []
    rules: dict[str, Any] = {}
