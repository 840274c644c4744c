"""The self-explanation: what the model says of a feature's direction steered into its own
residual stream (the explain stage); the first non-empty ranked text."""

from faithcase.explainers import Explainer, Sources, Texts
from faithcase.numerics.explanation_checks import first_text


def texts(sources: Sources, sae: str) -> Texts:
    explained = sources.explain.features.get(sae, {})
    return {f: first_text(explained[f].explanations) if f in explained else None
            for f in sources.features(sae)}


EXPLAINER = Explainer("self", "the model's own words for the feature's direction, steered into "
                              "its residual stream (explain stage)", texts)
