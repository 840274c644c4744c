"""The top-token baseline: the tokens at the peak of the feature's top `max` windows, the
`embed.n_peak_tokens` most frequent joined by ", " (ties: larger summed peak, then first seen)."""

from faithcase.explainers import Explainer, Sources, Texts
from faithcase.numerics.explanation_checks import peak_tokens


def texts(sources: Sources, sae: str) -> Texts:
    found = sources.windows[sae].features
    n = sources.settings.n_peak_tokens
    return {f: ", ".join(peak_tokens(found[f].windows.get("max", []), n)) or None
            for f in sources.features(sae)}


EXPLAINER = Explainer("baseline", "the feature's most frequent peak tokens (a control)", texts,
                      control=True)
