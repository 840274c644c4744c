"""Scores: a number per feature (or per explanation of a feature) that the case study carries, the
summary averages per group and the report shows. Each is one module declaring `SCORE`
(`faithcase.plugins` loads them); nothing else names it.

A score reads a `FeatureView`: the feature's windows, its scored documents (embed.json), its
self-explanation record, and (for a score `by_explainer`) one explainer's text. It lands at
`case_study.json[i].scores["<name>"]` ([sae1, sae2]) or `["<name>.<explainer>"]`, and its group
mean at `summary.json groups.<group>.scores` under the same key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FeatureView:
    sae: str
    feature: int
    windows: Any  # FeatureWindows: top windows, stats, scoring contexts
    scored: Any  # ScoredFeature: documents and every explanation's AUROC on them
    explained: Any  # FeatureExplanation: the self-explanation's record
    explainer: str | None = None  # the explainer whose text `explanation` is
    explanation: str | None = None


@dataclass(frozen=True)
class Score:
    """`value(view)`: the score of one feature (None: none). `by_explainer`: one value per
    explainer's explanation of it."""

    name: str
    doc: str
    value: Callable[[FeatureView], float | None]
    by_explainer: bool = False
    digits: int = 3


def column(score: Score, explainer: str | None = None) -> str:
    """The key of a score's values in a case and a group: "<name>" or "<name>.<explainer>"."""
    return f"{score.name}.{explainer}" if score.by_explainer else score.name
