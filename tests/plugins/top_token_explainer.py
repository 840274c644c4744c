"""A toy explainer from one module: the text of the token that carries most of the feature's
activation over the corpus (tests/test_plugins.py)."""

from faithcase.explainers import Explainer, Sources, Texts


def texts(sources: Sources, sae: str) -> Texts:
    found = sources.windows[sae].features
    out = {}
    for f in sources.features(sae):
        spread = found[f].stats.spread
        out[f] = "".join(spread.texts).strip() or None if spread and spread.texts else None
    return out


EXPLAINER = Explainer("top_token", "the token carrying most of the feature's activation", texts)
