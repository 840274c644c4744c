"""A toy score from one module: the number of words of each explanation (tests/test_plugins.py)."""

from faithcase.scores import FeatureView, Score


def words(view: FeatureView) -> float | None:
    return None if view.explanation is None else len(view.explanation.split())


SCORE = Score("length", "words in the explanation", words, by_explainer=True, digits=1)
