"""The true answer: a known feature's concept as an explanation ("music; song, songs, …"), scored
on the same documents as the explainers. It is what a perfect explainer would score with this
embedder on these documents: the ceiling of the calibration (SAE features have no true answer)."""

from faithcase.calibration import TRUTH
from faithcase.explainers import Explainer, Sources, Texts


def texts(sources: Sources, sae: str) -> Texts:
    known = sources.known
    if known is None or not known.enabled:
        return {f: None for f in sources.features(sae)}
    return {f: known.concept(f).description for f in sources.features(sae)}


def missing(sources: Sources, sae: str, feature: str) -> str:
    return "calibration off" if sources.known is None else "no concept"


EXPLAINER = Explainer(TRUTH, "the known feature's concept and words, the true answer (calibration)",
                      texts, control=True, missing=missing, only="known")
