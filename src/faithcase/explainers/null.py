"""The null: another selected feature's self-explanation, by a seeded cyclic shift of a random
order of the SAE's features (no feature is its own null; with one feature there is none)."""

from collections.abc import Sequence

import numpy as np

from faithcase.explainers import Explainer, Sources, Texts
from faithcase.run.errors import FaithcaseError


def null_partners(features: Sequence[str], seed: int) -> dict[str, str]:
    order = [features[i] for i in np.random.default_rng(seed).permutation(len(features))]
    return ({order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
            if len(order) > 1 else {})


def partners(sources: Sources, sae: str) -> dict[str, str]:
    keys = list(sources.windows)
    if sae not in keys:
        raise FaithcaseError(f"no windows of {sae}")
    return null_partners(sources.features(sae), sources.settings.seed + keys.index(sae))


def texts(sources: Sources, sae: str) -> Texts:
    own = sources.texts("self", sae)
    paired = partners(sources, sae)
    return {f: own.get(paired[f]) if f in paired else None for f in sources.features(sae)}


def record(sources: Sources) -> dict:
    """The partner whose self-explanation is each feature's null: {sae: {feature: partner}}."""
    return {"partners": {sae: {f: int(g) for f, g in partners(sources, sae).items()}
                         for sae in sources.windows}}


EXPLAINER = Explainer("null", "another selected feature's self-explanation (a control)", texts,
                      control=True, record=record)
