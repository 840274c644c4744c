"""The window explainer: an instruction-tuned model's reading of the feature's top windows
(delphi's prompt; the describe stage writes them)."""

from faithcase.explainers import Explainer, Sources, Texts


def texts(sources: Sources, sae: str) -> Texts:
    described = sources.describe
    found = described.features.get(sae, {}) if described is not None and described.enabled else {}
    return {f: found[f].explanation if f in found else None for f in sources.features(sae)}


def missing(sources: Sources, sae: str, feature: str) -> str:
    described = sources.describe
    if described is None or not described.enabled:
        return "window explainer off"
    found = described.features.get(sae, {}).get(feature)
    return found.reason or "no explanation" if found else "not described (describe.kinds)"


EXPLAINER = Explainer("window", "an LLM's explanation of the feature's top windows (describe "
                                "stage, delphi's prompt)", texts, missing=missing)
