"""Explainers: what writes a feature's explanation. Each is one module that declares `EXPLAINER`;
the embed stage scores every registered explainer's texts on the same documents, and the case
study, summary, report and comparison show whatever embed.json holds (`faithcase.plugins` lists
the built-ins and loads more).

An explainer reads what earlier stages wrote (`Sources`) and returns a text per feature. One that
needs heavy work of its own (the self-explanation's steering, the window explainer's LLM) has that
work done by a stage, and its explainer module reads the stage's artifact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Texts = dict[str, str | None]  # str(feature) -> explanation (None: none)


@dataclass
class Sources:
    """What explainers read: the run's artifacts (explain, windows by SAE, describe), the embed
    settings, and each other's texts (`texts`), computed once."""

    explain: Any
    windows: Mapping[str, Any]
    describe: Any
    settings: Any
    registry: Mapping[str, "Explainer"]
    known: Any = None  # the known features (known.json), when the run has them
    _texts: dict[tuple[str, str], Texts] = field(default_factory=dict)

    def features(self, sae: str) -> list[str]:
        """The features (str index, ascending) of `sae` whose documents are scored."""
        return sorted(self.windows[sae].features, key=int)

    def texts(self, name: str, sae: str) -> Texts:
        if (name, sae) not in self._texts:
            self._texts[name, sae] = self.registry[name].texts(self, sae)
        return self._texts[name, sae]


@dataclass(frozen=True)
class Explainer:
    """One explainer: its `texts(sources, sae)` for every feature of `sources.features(sae)`.

    `control`: a reference score (baseline, null), shown after the explainers. `missing(sources,
    sae, feature)`: why a feature has no text (default: "no explanation"). `record(sources)`: what
    embed.json keeps of how the texts were made (e.g. the null's partners). `only`: the one
    feature set it explains (e.g. "known" for the true answer); None: every set."""

    name: str
    doc: str
    texts: Callable[[Sources, str], Texts]
    control: bool = False
    missing: Callable[[Sources, str, str], str] | None = None
    record: Callable[[Sources], dict] | None = None
    only: str | None = None

    def why_missing(self, sources: Sources, sae: str, feature: str) -> str:
        return self.missing(sources, sae, feature) if self.missing else "no explanation"


def ordered(explainers: list[Explainer]) -> list[Explainer]:
    """Explainers first, then controls, each in registration order."""
    return [e for e in explainers if not e.control] + [e for e in explainers if e.control]
