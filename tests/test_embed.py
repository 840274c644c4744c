"""The Eleuther embedding score on the embedded all-MiniLM-L6-v2 (loaded once for the module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from sklearn.metrics import roc_auc_score

from faithcase.artifacts import Context, FeatureStats, FeatureWindows, Histogram, Pair, Window
from faithcase.bench import embed_cache_speedup
from faithcase.config import EmbedConfig
from faithcase.errors import FaithcaseError
from faithcase.stages.embed import Embedder, baseline_explanations, cross_scores, eleuther, load_embedder

DOGS = [
    "My dog loves to chase the ball in the park.",
    "The puppy wagged its tail when we came home.",
    "She adopted a golden retriever from the shelter.",
    "Our beagle barks at every passing car.",
    "The vet said the puppies need their shots.",
    "He walks his two terriers every morning.",
]
OTHER = [
    "The tax code allows deductions for business expenses.",
    "Simmer the onions in butter until golden brown.",
    "Capital gains are taxed at a lower rate.",
    "Preheat the oven to 180 degrees and grease the pan.",
    "The court ruled the levy unconstitutional.",
    "Whisk the eggs with sugar and a pinch of salt.",
]
TEMPLATE = "Instruct: Retrieve sentences that could be related to the explanation.\nQuery: {explanation}"
SETTINGS = EmbedConfig(query_template=TEMPLATE)


def context(text: str, quantile: int | None = None, act: float = 1.0) -> Context:
    words = text.split(" ")
    texts = [words[0]] + [" " + w for w in words[1:]]  # "".join(texts) == text
    acts = [act if quantile is not None else 0.0] * len(texts)
    tokens = list(range(len(texts)))
    return Context(tokens=tokens, texts=texts, acts=acts, seq_id=0, start=0, max_act=max(acts), quantile=quantile)


def feature(
    index: int, activating: list[str], non_activating: list[str], quantiles: list[int] | None = None
) -> FeatureWindows:
    quantiles = quantiles or [i % 3 for i in range(len(activating))]
    histogram = Histogram(edges=[0, 1], counts=[10])
    stats = FeatureStats(n_tokens=100, n_active=10, frequency=0.1, max=1.0, mean_nonzero=0.5, histogram=histogram)
    return FeatureWindows(
        feature=index,
        windows={"mean": [], "density": [], "max": []},
        stats=stats,
        activating=[context(t, q, act=1.0 + q) for t, q in zip(activating, quantiles)],
        non_activating=[context(t) for t in non_activating],
    )


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    # one thread: on a shared 2-core box, OpenMP threads of an oversubscribed process spin (10x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_embedder(device="cpu", batch_size=32)
    torch.set_num_threads(threads)


@pytest.fixture
def fresh(embedder: Embedder) -> Embedder:
    """Same model, empty cache and zeroed counters."""
    return Embedder(embedder.model, embedder.name, batch_size=32)


def recomputed_auroc(contexts, keep=lambda c: True) -> float:
    chosen = [c for c in contexts if keep(c)]
    return roc_auc_score([c.label for c in chosen], [c.similarity for c in chosen])


def test_auroc_is_sklearns_on_the_recorded_contexts(embedder: Embedder) -> None:
    windows = {
        "3": feature(3, DOGS, OTHER, quantiles=[0, 0, 1, 1, 2, 2]),
        "7": feature(7, DOGS[:3] + OTHER[:3], OTHER[3:] + DOGS[3:], quantiles=[0, 1, 2, 0, 1, 2]),
    }
    scores = eleuther(windows, {"3": "pets", "7": "dogs"}, embedder,
                      SETTINGS.model_copy(update={"min_activating": 3, "min_non_activating": 3}))
    for key, score in scores.items():
        assert score.auroc is not None and score.reason is None
        assert score.auroc == pytest.approx(recomputed_auroc(score.contexts), abs=1e-12)
        assert len(score.contexts) == 12 and score.n_activating == 6 and score.n_non_activating == 6
        assert len(score.auroc_per_quantile) == 3
        for q, value in enumerate(score.auroc_per_quantile):
            expected = recomputed_auroc(score.contexts, lambda c, q=q: c.label == 0 or c.quantile == q)
            assert value == pytest.approx(expected, abs=1e-12)
        # the similarity is the cosine of normalized embeddings
        assert all(-1.0 - 1e-5 <= c.similarity <= 1.0 + 1e-5 for c in score.contexts)
    # a quantile without activating contexts is None, not 0.5
    padded = eleuther(windows, {"3": "pets"}, embedder,
                      SETTINGS.model_copy(update={"min_activating": 3, "min_non_activating": 3}), n_quantiles=5)
    assert padded["3"].auroc_per_quantile[3:] == [None, None]


def test_dogs_explanation_separates_dog_sentences(embedder: Embedder) -> None:
    windows = {"1": feature(1, DOGS, OTHER)}
    right = eleuther(windows, {"1": "dogs and puppies"}, embedder, SETTINGS)["1"]
    wrong = eleuther(windows, {"1": "tax law and cooking recipes"}, embedder, SETTINGS)["1"]
    assert right.auroc > 0.9
    assert wrong.auroc < right.auroc
    assert right.explanation == "dogs and puppies"
    assert [c.text for c in right.contexts] == DOGS + OTHER  # documents are the joined texts


def test_labels_come_from_activations_only(embedder: Embedder) -> None:
    weird = "zqx ### 0x7f ]]; vvv"
    windows = {"2": feature(2, DOGS[:5] + [weird], OTHER[:5] + [DOGS[5]])}
    score = eleuther(windows, {"2": "dogs and puppies"}, embedder, SETTINGS)["2"]
    by_text = {c.text: c for c in score.contexts}
    dog_sims = [c.similarity for c in score.contexts if c.text in DOGS]
    # the weird text is far from the query yet labelled activating; a dog sentence with no activation is 0
    assert by_text[weird].label == 1 and by_text[weird].similarity < min(dog_sims)
    assert by_text[DOGS[5]].label == 0
    assert [c.label for c in score.contexts] == [1] * 6 + [0] * 6
    assert score.auroc < 1.0  # the weird activating context is ranked below the dog non-activating one


def test_each_distinct_text_is_embedded_once(fresh: Embedder) -> None:
    shared_negatives = OTHER[:5]
    windows = {
        "1": feature(1, DOGS[:5], shared_negatives),
        "2": feature(2, DOGS[1:6], shared_negatives),
    }
    explanations = {"1": "dogs", "2": "dogs"}  # the same query twice
    eleuther(windows, explanations, fresh, SETTINGS)
    distinct = set(DOGS) | set(shared_negatives) | {TEMPLATE.replace("{explanation}", "dogs")}
    assert fresh.n_encoded_texts == len(distinct)
    assert fresh.n_calls == 1

    # a second call and cross-scoring reuse every embedding; only the new query is encoded
    eleuther(windows, {"1": "puppies"}, fresh, SETTINGS)
    pairs = [Pair(kind="best", rank=1, index1=1, index2=2, similarity=0.9)]
    cross_scores(pairs, windows, windows, explanations, {"2": "puppies"}, fresh, SETTINGS)
    assert fresh.n_encoded_texts == len(distinct) + 1
    assert fresh.n_calls == 2


def test_unscorable_features_get_none_and_a_reason(embedder: Embedder) -> None:
    windows = {
        "1": feature(1, DOGS[:2], OTHER),
        "2": feature(2, DOGS, OTHER[:1]),
        "3": feature(3, DOGS, OTHER),
        "4": feature(4, DOGS, OTHER),
    }
    scores = eleuther(windows, {"1": "dogs", "2": "dogs", "3": None, "4": "  "}, embedder, SETTINGS)
    assert scores["1"].auroc is None and "activating" in scores["1"].reason
    assert scores["2"].auroc is None and "non-activating" in scores["2"].reason
    assert scores["3"].auroc is None and scores["3"].reason == "no explanation"
    assert scores["4"].auroc is None and scores["4"].reason == "no explanation"
    assert all(s.contexts == [] and s.auroc_per_quantile == [] for s in scores.values())
    assert eleuther({"5": feature(5, DOGS, OTHER)}, {}, embedder, SETTINGS)["5"].reason == "no explanation"


def test_cross_scores_swap_explanations(embedder: Embedder) -> None:
    windows1 = {"10": feature(10, DOGS, OTHER)}
    windows2 = {"20": feature(20, OTHER, DOGS)}
    pairs = [Pair(kind="worst", rank=1, index1=10, index2=20, similarity=0.1)]
    (cross,) = cross_scores(pairs, windows1, windows2, {"10": "dogs"}, {"20": "taxes and recipes"}, embedder, SETTINGS)
    assert (cross.kind, cross.rank, cross.index1, cross.index2) == ("worst", 1, 10, 20)
    assert cross.sae1_on_sae2.feature == 20 and cross.sae1_on_sae2.explanation == "dogs"
    assert cross.sae2_on_sae1.feature == 10 and cross.sae2_on_sae1.explanation == "taxes and recipes"
    assert cross.sae1_on_sae2.auroc < 0.5 and cross.sae2_on_sae1.auroc < 0.5  # each explains the other's negatives
    with pytest.raises(FaithcaseError, match="no feature 99"):
        cross_scores([pairs[0].model_copy(update={"index2": 99})], windows1, windows2, {}, {}, embedder, SETTINGS)


def test_bad_template_and_unknown_model_are_user_errors(embedder: Embedder, tmp_path) -> None:
    with pytest.raises(FaithcaseError, match="query_template"):
        eleuther({"1": feature(1, DOGS, OTHER)}, {"1": "dogs"}, embedder,
                 EmbedConfig.model_construct(query_template="no placeholder", min_activating=5, min_non_activating=5))
    with pytest.raises(FaithcaseError, match="embedding model not found"):
        load_embedder(str(tmp_path / "no_such_model"), device="cpu")
    with pytest.raises(FaithcaseError, match="embedding model not found"):
        load_embedder("pkg:no_such_package_xyz/model", device="cpu")


def test_baseline_explanation_is_the_heaviest_active_tokens() -> None:
    fw = feature(1, DOGS, OTHER)
    fw.windows["max"] = [
        Window(tokens=[0, 1, 2], texts=["the", " dog", " barks"], acts=[0.0, 3.0, 1.0], seq_id=0, start=0, value=3.0),
        Window(tokens=[0, 1, 2], texts=["a", " dog", " sleeps"], acts=[0.5, 2.0, 0.0], seq_id=1, start=0, value=2.0),
    ]
    assert baseline_explanations({"1": fw}) == {"1": "dog, barks, a"}
    assert baseline_explanations({"2": feature(2, DOGS, OTHER)}) == {}


def test_bench_reports_both_paths(fresh: Embedder) -> None:
    windows = {str(i): feature(i, DOGS[i : i + 2], OTHER[:2]) for i in range(2)}
    settings = SETTINGS.model_copy(update={"min_activating": 2, "min_non_activating": 2})
    result = embed_cache_speedup(fresh, windows, {"0": "dogs", "1": "pets"}, settings)
    assert result["n_contexts"] == 16
    assert result["encoded_cached"] < result["encoded_uncached"]
    assert result["max_auroc_diff"] < 1e-5
    assert result["contexts_per_s_cached"] > 0 and result["contexts_per_s_uncached"] > 0
