"""Features of known meaning: occurrences, the direction and threshold rule, the encoder, the hit
rule, and a planted concept whose every number is known, run through windows and the embedding
score."""

from __future__ import annotations

import re
from itertools import product

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from faithcase.calibration import KnownArtifact, KnownCase, KnownConcept
from faithcase.config import CalibrationConfig, EmbedConfig, WindowsConfig
from faithcase.numerics.calibration_stats import calibrate, names_concept
from faithcase.numerics.concepts import best_threshold, occurrences
from faithcase.stages.embed import documents, eleuther
from faithcase.stages.known import description, known_features
from faithcase.stages.windows import top_activated_windows

from other_device import OTHER, OtherDevice

# ---------------------------------------------------------------- a planted concept

DOG_WORDS = ["dog", "dogs", "puppy"]
DOG_SENTENCES = ["the dog ran to the park", "my puppy loves the dogs next door",
                 "a dog barked at the mail", "we walked the puppy by the river"]
OTHER_SENTENCES = ["the tax rate rose again this year", "we cook rice with salt and oil",
                   "the train left the station late", "she paid the bill at the bank",
                   "rain fell on the old city", "he wrote the report by noon"]
SEQ_LEN, D_MODEL, CONCEPT_AXIS = 61, 16, 3


class WordTokenizer:
    """One token per word; `encode(" dog")` and `encode("dog")` both give the word's id."""

    def __init__(self, words: list[str]):
        self.vocab = ["<bos>", *dict.fromkeys(words)]
        self.ids = {w: i for i, w in enumerate(self.vocab)}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.ids[w] for w in text.split() if w in self.ids]

    def texts(self, ids: list[int]) -> list[str]:
        return [" " + self.vocab[i] for i in ids]


def planted_corpus(n_sequences: int = 48, seed: int = 0):
    """Sequences of whole sentences, half about dogs; the residual is noise (sd 0.1) plus 1.0 on
    one axis at exactly the concept's words: (tokenizer, tokens [B, T], resid [B, T, D], words)."""
    rng = np.random.default_rng(seed)
    words = [w for s in DOG_SENTENCES + OTHER_SENTENCES for w in s.split()]
    tokenizer = WordTokenizer(words)
    dog_ids = {tokenizer.ids[w] for w in DOG_WORDS}
    rows = []
    for n in range(n_sequences):
        pool = DOG_SENTENCES if n % 2 == 0 else OTHER_SENTENCES
        ids: list[int] = [0]
        while len(ids) < SEQ_LEN:
            ids += tokenizer.encode(pool[rng.integers(len(pool))])
        rows.append(ids[:SEQ_LEN])
    tokens = torch.tensor(rows)
    is_word = torch.isin(tokens, torch.tensor(sorted(dog_ids)))
    resid = torch.from_numpy(rng.normal(0, 0.1, (n_sequences, SEQ_LEN, D_MODEL))).float()
    resid[..., CONCEPT_AXIS] += is_word.float()
    return tokenizer, tokens, resid, is_word


def batches(tokens, resid, size: int = 16):
    return lambda: iter([(torch.arange(i, i + size), tokens[i:i + size], resid[i:i + size], None)
                         for i in range(0, len(tokens), size)])


def test_occurrences_match_a_brute_force_scan():
    tokens = torch.tensor([[5, 1, 2, 1, 2, 2], [1, 2, 3, 9, 1, 1]])
    patterns = [[1, 2], [9], [2, 3, 9]]
    found = occurrences(tokens, patterns)
    expected = torch.zeros_like(found)
    for row, start, pattern in product(range(2), range(6), patterns):
        if tokens[row, start:start + len(pattern)].tolist() == pattern:
            expected[row, start:start + len(pattern)] = True
    assert torch.equal(found, expected)


def test_the_threshold_is_the_best_f1_of_every_cut():
    rng = np.random.default_rng(1)
    values = np.round(rng.normal(0, 1, 300), 1)  # ties: a cut never splits them
    labels = (values + rng.normal(0, 0.8, 300)) > 1.0
    threshold, quality = best_threshold(torch.from_numpy(values), torch.from_numpy(labels))
    cuts = np.unique(values)
    scores = [f1_score(labels, values > c - 1e-9) for c in cuts]
    best = max(scores)
    assert quality["f1"] == pytest.approx(best, abs=1e-12)
    assert f1_score(labels, values > threshold) == pytest.approx(best, abs=1e-12)
    assert not np.any(np.isclose(values, threshold))  # halfway between two values


def test_a_planted_concept_gets_its_direction_and_fires_exactly_on_its_words():
    tokenizer, tokens, resid, is_word = planted_corpus()
    known = known_features(batches(tokens, resid), tokenizer, {"dogs": DOG_WORDS, "cats": ["cat"]})
    dogs, cats = known.concepts
    kept = torch.ones_like(is_word)
    kept[:, 0] = False  # BOS
    flat, words = resid[kept].double().numpy(), is_word[kept].numpy()
    direction = flat[words].mean(0) - flat.mean(0)
    direction /= np.linalg.norm(direction)
    assert np.allclose(dogs.direction, direction, atol=1e-6)
    assert abs(direction[CONCEPT_AXIS]) > 0.99
    assert dogs.n_occurrences == int(words.sum()) and known.n_tokens == int(kept.sum())
    assert (dogs.precision, dogs.recall, dogs.f1) == (1.0, 1.0, 1.0)
    assert dogs.n_firing == dogs.n_occurrences
    assert cats.direction == [] and cats.reason == "its words never occur in the corpus"
    assert known.features() == [0]
    encoder = known.encoders()["known"]
    acts = encoder.encode(resid)[..., 0]
    expected = torch.relu(resid.double() @ torch.tensor(direction) - dogs.threshold)
    assert torch.allclose(acts.double(), expected, atol=1e-5)
    assert torch.equal((acts > 0) & kept, is_word)


def test_the_planted_concepts_documents_and_true_answer_auroc():
    """Windows and contexts of the planted feature, then the embedding score of its true answer
    ('dogs; dog, puppy') and of a wrong one, recomputed by sklearn on the recorded documents."""
    from faithcase.model.embedder import load_embedder

    tokenizer, tokens, resid, is_word = planted_corpus()
    known = known_features(batches(tokens, resid), tokenizer, {"dogs": DOG_WORDS})
    settings = WindowsConfig(top=2, n_quantiles=2, per_quantile=5, n_negative=10)
    windows = top_activated_windows(known.encoders(), {"known": [0]}, batches(tokens, resid)(),
                                    settings=settings, tokenizer=tokenizer.texts)["known"]
    feature = windows.features["0"]
    docs = documents(feature)
    assert sum(d.label for d in docs) == 10 and len(docs) == 20
    for context in feature.activating:  # a context activates exactly when it holds a dog word
        assert any(w.strip() in DOG_WORDS for w in context.texts)
    for context in feature.non_activating:
        assert not any(w.strip() in DOG_WORDS for w in context.texts)
    embedder = load_embedder(device="cpu", batch_size=32)
    rules = EmbedConfig(min_activating=5, min_non_activating=5)
    truth = description("dogs", DOG_WORDS)
    assert truth == "dogs; dog, puppy"
    scores = eleuther({"0": feature}, {"0": truth}, embedder, rules)
    labels = [d.label for d in docs]
    assert scores["0"].auroc == pytest.approx(roc_auc_score(labels, scores["0"].similarities),
                                              abs=1e-12)
    assert scores["0"].auroc > 0.9  # the true answer separates the dog contexts
    wrong = eleuther({"0": feature}, {"0": "taxes and train stations"}, embedder, rules)["0"]
    assert wrong.auroc < scores["0"].auroc


# ---------------------------------------------------------------- the encoder on another device


def test_cpu_inputs_meet_known_features_on_another_device():
    concepts = [KnownConcept(index=i, name=n, words=[n], description=n, patterns=[[i]],
                             n_occurrences=1, threshold=0.5, direction=torch.eye(4)[i].tolist())
                for i, n in enumerate(("a", "b"))]
    encoder = KnownArtifact(enabled=True, concepts=concepts).encoders(OTHER)["known"]
    with OtherDevice():
        out = encoder.encode(torch.ones(3, 4))
    assert out.device == OTHER and out.shape == (3, 2)
    on_cpu = KnownArtifact(enabled=True, concepts=concepts).encoders()["known"]
    assert torch.equal(on_cpu.encode(torch.eye(4)[:2] * 2), torch.tensor([[1.5, 0.0], [0.0, 1.5]]))


# ---------------------------------------------------------------- the hit rule and the summary


def independent_hit(text: str | None, name: str, words: list[str]) -> bool | None:
    """HIT_RULE written again: lower-cased letter/digit runs, a word or it minus one suffix."""
    if text is None or not text.strip():
        return None

    def forms(word: str) -> set[str]:
        found = {word} | {word[: -len(s)] for s in ("ing", "es", "ed", "ly", "s") if word.endswith(s)}
        return {f for f in found if len(f) >= 3}

    said = set().union(*(forms(w) for w in re.findall(r"[a-z0-9]+", text.lower())))
    return any(forms(w.lower()) & said for w in [name, *words])


@pytest.mark.parametrize("text", ["Dogs and their owners", "a puppy's toy", "singing birds",
                                  "music", "the song of", "", None, "DOG"])
def test_the_hit_rule_matches_an_independent_reading(text):
    for name, words in (("dogs", DOG_WORDS), ("music", ["song", "singing", "melody"])):
        assert names_concept(text, name, words) == independent_hit(text, name, words)


def _case(concept: str, texts: dict, aurocs: dict, failed: bool = False) -> KnownCase:
    return KnownCase(concept=concept, words=[concept], index=0, n_occurrences=9, n_firing=9,
                     f1=0.9, scored=aurocs.get("truth") is not None, failed=failed, scale=1.0,
                     explanations=texts, aurocs=aurocs,
                     hits={n: independent_hit(t, concept, [concept]) for n, t in texts.items()})


def test_the_calibration_sentences_state_the_numbers_of_the_summary():
    cases = [_case("music", {"self": "music", "window": "x"}, {"self": 0.8, "window": 0.6,
                                                               "truth": 0.9}),
             _case("food", {"self": "food", "window": "food"}, {"self": 0.7, "window": None,
                                                                "truth": 0.8}, failed=True),
             _case("sea", {"self": "boats", "window": None}, {"self": None, "window": None,
                                                              "truth": None})]
    known = KnownArtifact(enabled=True, concepts=[])
    result = calibrate(known, cases, {"self": False, "window": False, "baseline": True,
                                      "truth": True}, {"self": 0.55, "window": 0.5},
                       n_bootstrap=200)
    self_row = next(r for r in result.explainers if r.explainer == "self")
    assert (self_row.n_hits, self_row.n, self_row.n_scored) == (2, 3, 2)
    assert self_row.mean_auroc == pytest.approx(0.75) and self_row.truth_auroc == pytest.approx(0.85)
    assert self_row.pass_rate == pytest.approx(2 / 3)
    window_row = next(r for r in result.explainers if r.explainer == "window")
    assert (window_row.n_hits, window_row.n, window_row.n_scored) == (1, 2, 1)
    assert result.truth_auroc == pytest.approx(0.85) and result.n_scored == 2
    check_sentences(result)


def check_sentences(calibration) -> None:
    """Every number a calibration sentence states is the summary's own (to 2 decimals)."""
    truth, *rows = calibration.sentences
    assert f"{calibration.truth_auroc:.2f}" in truth and f" {calibration.n_scored} scored" in truth
    if calibration.separable is False:
        assert "cannot separate" in truth
    tested = [r for r in calibration.explainers if not r.control]
    assert len(rows) == len(tested)
    for row, sentence in zip(tested, rows):
        if row.n:
            assert f"names {row.n_hits} of {row.n} known concepts" in sentence
        numbers = re.findall(r"AUROC (\S+) vs the true answer's (\S+) on (\d+) scored", sentence)
        if row.n_scored:
            assert numbers == [(f"{row.mean_auroc:.2f}", f"{row.truth_auroc:.2f}",
                                str(row.n_scored))]
        if row.best_auroc is not None:
            assert f"scores {row.best_auroc:.2f}" in sentence


def test_calibration_off_in_the_config():
    assert CalibrationConfig.model_validate(False).enabled is False
    assert CalibrationConfig.model_validate(None).enabled is False
    assert CalibrationConfig.model_validate({}).enabled is True
    with pytest.raises(ValueError, match="at least one non-empty word"):
        CalibrationConfig.model_validate({"concepts": {"music": []}})


# ---------------------------------------------------------------- through the whole chain


def test_the_tiny_runs_known_features_are_recomputed_from_its_artifacts(tiny_run):
    """The tiny run's three concepts: the summary's hits, AUROCs and true-answer AUROCs equal
    those recomputed from known.json, embed.json's recorded documents (sklearn) and the texts;
    its sentences state its numbers; the report shows the calibration and the known group."""
    import orjson

    from faithcase.artifacts import EmbedArtifact
    from faithcase.case_study import CaseStudySummary
    from faithcase.run.store import read_artifact

    _, out = tiny_run
    summary = read_artifact(out / "summary.json", CaseStudySummary)
    embed = read_artifact(out / "embed.json", EmbedArtifact)
    known = orjson.loads((out / "known.json").read_bytes())
    calibration = summary.calibration
    assert calibration is not None and calibration.n_concepts == 3
    assert [c.concept for c in calibration.cases] == ["time", "family", "people"]
    truths = []
    for case in calibration.cases:
        concept = known["concepts"][case.index]
        scored = embed.features["known"][str(case.index)]
        assert set(scored.eleuther) == {"known"}  # no partner: no cross score
        for name, text in case.explanations.items():
            assert case.hits[name] == independent_hit(text, concept["name"], concept["words"])
            score = scored.eleuther["known"][name]
            if score.auroc is not None:
                labels = [d.label for d in scored.documents]
                assert score.auroc == pytest.approx(roc_auc_score(labels, score.similarities),
                                                    abs=1e-12)
            assert case.aurocs[name] == score.auroc
        assert case.explanations["truth"] == concept["description"]
        if case.aurocs["truth"] is not None:
            truths.append(case.aurocs["truth"])
    assert truths and calibration.truth_auroc == pytest.approx(np.mean(truths), abs=1e-12)
    for row in calibration.explainers:
        hits = [c.hits[row.explainer] for c in calibration.cases
                if c.hits.get(row.explainer) is not None]
        assert (row.n_hits, row.n) == (sum(hits), len(hits))
    group = summary.groups["known"]
    assert group.eleuther["own"]["truth"] == pytest.approx(np.mean(truths), abs=1e-12)
    assert "truth" not in summary.groups["best"].eleuther["own"] or \
        summary.groups["best"].eleuther["own"]["truth"] is None
    check_sentences(calibration)
    page = (out / "report" / "index.html").read_text()
    assert 'id="calibration"' in page and 'id="known"' in page
    assert all(s.replace("'", "&#x27;") in page for s in calibration.sentences)


def test_known_features_are_fit_on_the_residuals_device():
    """Tokens from the CPU meet residuals on another device (meta stands for a GPU): the sums run
    there with no op mixing devices (OtherDevice raises on one, as CUDA does). Meta holds no data,
    so its counts read zero: no concept is found."""
    tokenizer, tokens, resid, _ = planted_corpus(n_sequences=4)
    batches_elsewhere = lambda: iter([(torch.arange(4), tokens, resid.to(OTHER), None)])
    with OtherDevice():
        known = known_features(batches_elsewhere, tokenizer, {"dogs": DOG_WORDS})
    assert known.enabled and known.n_tokens == 0
    with pytest.raises(RuntimeError), OtherDevice():  # what the stage would hit mixing devices
        torch.ones(2, 4) @ resid.to(OTHER)[0, :4].T
