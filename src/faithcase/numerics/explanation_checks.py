"""Checks of explanations that need no model: normalized texts, uninformative explanations (a
baseline answer, or a stock text many unrelated features share), a feature's peak tokens, and
whether an explanation names one of them (the known-answer check)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from faithcase.artifacts import (
    ExplainBaseline,
    FeatureExplanation,
    UninformativeRule,
)

K = TypeVar("K")
T = TypeVar("T")
WORD = re.compile(r"[^\W_]+")  # runs of letters and digits
SUFFIXES = ("ing", "es", "ed", "ly", "s")
MIN_FORM = 3  # shorter forms never match

UNINFORMATIVE_RULE = (
    "normalized (lower-cased, every run of punctuation and whitespace one space, stripped), the "
    "explanation has no words, equals a baseline answer of explain.json (zeroed placeholder, "
    "unsteered, neutral placeholder), or is a stock text: the same normalized text as more than "
    "stock_share of the features explained in the artifact (both SAEs) and at least stock_min")
KNOWN_ANSWER_RULE = (
    "the explanation names a peak token when one of its words and one of the feature's top "
    "n_peak_tokens distinct peak tokens (the baseline's tokens; both lower-cased, letters and "
    "digits only) share a form: the word itself or the word minus one suffix (s, es, ed, ing, "
    "ly); forms shorter than 3 characters never match")


def normalize(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def first_text(explanations: Sequence[str]) -> str | None:
    """A feature's explanation: its first ranked non-empty text (None when there is none)."""
    return next((e for e in explanations if e.strip()), None)


# ---------------------------------------------------------------- uninformative


def baseline_answers(baseline: ExplainBaseline) -> dict[str, str]:
    """The baseline answers explain records, by name (empty answers left out)."""
    answers = {"zeroed placeholder": baseline.replace_zero, "unsteered": baseline.add_zero,
               "neutral placeholder": baseline.neutral}
    return {name: normalize(text) for name, text in answers.items() if normalize(text)}


def uninformative_reasons(texts: Mapping[K, str | None], answers: Mapping[str, str],
                          share: float, minimum: int) -> tuple[dict[K, str | None], dict[str, int]]:
    """Per key, why its text is uninformative (None: it is not, or there is no text), and the stock
    texts with how many keys give each. `answers`: baseline name -> normalized answer."""
    normal = {key: normalize(text) for key, text in texts.items() if text is not None}
    counts = Counter(normal.values())
    stock = {text: n for text, n in counts.items()
             if text and n >= minimum and n > share * len(normal)}
    by_answer = {text: name for name, text in answers.items()}
    reasons: dict[K, str | None] = {}
    for key in texts:
        text = normal.get(key)
        if text is None:
            reasons[key] = None
        elif not text:
            reasons[key] = "no words"
        elif text in by_answer:
            reasons[key] = f"the {by_answer[text]} answer"
        elif text in stock:
            reasons[key] = f"stock text: given by {stock[text]} of {len(normal)} features"
        else:
            reasons[key] = None
    return reasons, stock


def of_class(groups: Mapping[str, Mapping[str, T]], known: bool) -> dict[tuple[str, str], T]:
    """{(feature set, feature): item} of the known features, or of the SAEs' (stock texts are
    counted within each class, so the known features never change an SAE feature's flag)."""
    return {(name, key): item for name, group in groups.items() if (name == "known") == known
            for key, item in group.items()}


def flag_uninformative(features: Mapping[str, Mapping[str, FeatureExplanation]],
                       baseline: ExplainBaseline, share: float,
                       minimum: int) -> UninformativeRule:
    """Sets `uninformative` on every feature of an explain artifact: the known features', then the
    SAEs' together (the rule returned)."""
    answers = baseline_answers(baseline)
    for known in (True, False):
        texts = {k: first_text(f.explanations) for k, f in of_class(features, known).items()}
        reasons, stock = uninformative_reasons(texts, answers, share, minimum)
        for (sae, key), reason in reasons.items():
            features[sae][key].uninformative = reason
    return UninformativeRule(
        rule=UNINFORMATIVE_RULE, baselines=answers, stock_share=share, stock_min=minimum,
        n_explained=sum(t is not None for t in texts.values()), stock=stock,
        n_uninformative=sum(r is not None for r in reasons.values()))


# ---------------------------------------------------------------- known answer


def peak_tokens(windows: Iterable, n_tokens: int = 3) -> list[str]:
    """The tokens at the peak of a feature's top `max` windows (stripped, visible, active): the n
    most frequent, ties broken by the larger summed peak activation, then first seen."""
    count: Counter[str] = Counter()
    weight: Counter[str] = Counter()
    for window in windows:
        if not window.acts:
            continue
        peak = max(range(len(window.acts)), key=window.acts.__getitem__)
        token = window.texts[peak].strip()
        if window.acts[peak] > 0 and token:
            count[token] += 1
            weight[token] += window.acts[peak]
    return sorted(count, key=lambda t: (-count[t], -weight[t]))[:n_tokens]


def forms(word: str) -> set[str]:
    """A word and the word minus one common suffix, each at least MIN_FORM characters."""
    found = {word} | {word[: -len(s)] for s in SUFFIXES if word.endswith(s)}
    return {form for form in found if len(form) >= MIN_FORM}


def names_peak_token(explanation: str | None, tokens: Sequence[str]) -> bool | None:
    """Whether the explanation names one of the tokens (KNOWN_ANSWER_RULE); None without an
    explanation or without tokens."""
    if explanation is None or not explanation.strip() or not tokens:
        return None
    said = set().union(*(forms(w) for w in WORD.findall(explanation.lower())))
    return any(forms("".join(WORD.findall(t.lower()))) & said for t in tokens)
