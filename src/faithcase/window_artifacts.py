"""The artifact of the window explainer (describe.json)."""

from __future__ import annotations

from faithcase.artifacts import Artifact, Model

DESCRIBE_FILE = "describe.json"


class ShownWindow(Model):
    """A window the explainer saw: where it is in the corpus."""

    seq_id: int
    start: int
    length: int


class WindowExplanation(Model):
    feature: int
    explanation: str | None  # None: the reply held no explanation (`reason`)
    reason: str | None = None
    reply: str
    prompt: str  # the last user turn: the feature's highlighted windows
    shown: list[ShownWindow]
    fingerprint: str
    uninformative: str | None = None  # why it is (the stock rule of explain), else None


class DescribeArtifact(Artifact):
    enabled: bool
    explainer: str  # the model or endpoint that wrote the explanations
    method: str  # the prompt, its source and the changes made to it
    system: str
    few_shot: list[list[str]]  # [user, assistant] turns
    prefill: str | None
    separation: str  # how the explainer's windows and the scoring contexts are kept apart
    uninformative_rule: dict = {}
    features: dict[str, dict[str, WindowExplanation]] = {}  # sae key -> str(feature)

