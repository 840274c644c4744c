"""The embed stage: the Eleuther embedding score of an explanation.

Paulo et al. 2024, "Automatically Interpreting Millions of Features in LLMs", §3.3.4:
the explanation is a retrieval query, the feature's contexts are documents, a
sentence-embedding model gives query-document cosine similarities, and the score is the
AUROC of separating activating from non-activating contexts. A context's label is the
list it came from (activating / non-activating), i.e. from activations only.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from faithcase.artifacts import (
    SAE_KEYS,
    Context,
    CrossScore,
    EmbedArtifact,
    ExplainArtifact,
    FeatureExplanation,
    FeatureScore,
    FeatureWindows,
    Meta,
    Pair,
    ScoredContext,
    WindowsArtifact,
)
from faithcase.config import EmbedConfig
from faithcase.errors import FaithcaseError
from faithcase.lm import resolve_device
from faithcase.paths import resolve_path

PLACEHOLDER = "{explanation}"


# ---------------------------------------------------------------- embedder


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class Embedder:
    """A sentence-transformers model with a per-run cache: each distinct text is encoded once."""

    def __init__(self, model: Any, name: str, batch_size: int = 64) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self._cache: dict[bytes, np.ndarray] = {}
        self.n_encoded_texts = 0  # texts sent to the model
        self.n_calls = 0  # model.encode invocations

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def clear_cache(self) -> None:
        self._cache.clear()

    def _encode(self, texts: list[str]) -> np.ndarray:
        self.n_calls += 1
        self.n_encoded_texts += len(texts)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed(self, texts: Sequence[str], use_cache: bool = True) -> np.ndarray:
        """Unit-norm embeddings, shape (len(texts), dim); one batched encode of the texts not yet cached."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if not use_cache:
            return self._encode(texts)
        keys = [_text_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts):
            if key not in self._cache and key not in missing:
                missing[key] = text
        if missing:
            vectors = self._encode(list(missing.values()))
            self._cache.update(zip(missing.keys(), vectors))
        return np.stack([self._cache[k] for k in keys])


def _resolve_model_spec(spec: str, base_dir: Path | None) -> tuple[str, bool]:
    """(what to hand SentenceTransformer, whether it is a local folder).

    `pkg:` specs and strings that look like paths (or exist) are local folders;
    anything else is a model name for the Hugging Face hub.
    """
    if spec.startswith("pkg:"):
        try:
            return str(resolve_path(spec)), True
        except FaithcaseError as err:
            raise FaithcaseError(f"embedding model not found: {spec} ({err})") from None
    local = resolve_path(spec, base_dir)
    looks_local = local.exists() or spec.startswith(("/", "./", "../", "~")) or os.path.isabs(spec)
    return (str(local), True) if looks_local else (spec, False)


def load_embedder(
    spec: str = EmbedConfig().model, device: str = "auto", batch_size: int = EmbedConfig().batch_size,
    base_dir: Path | None = None,
) -> Embedder:
    """Load a sentence-transformers model from a name, a local folder or `pkg:<package>/<folder>`."""
    target, is_local = _resolve_model_spec(spec, base_dir)
    hint = "give a sentence-transformers model name or folder"
    if is_local and not Path(target).is_dir():
        raise FaithcaseError(f"embedding model not found: {target} ({hint})")
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(target, device=resolve_device(device), local_files_only=is_local)
    except Exception as err:  # noqa: BLE001 - any load failure is the user's model spec
        detail = (str(err).splitlines() or [""])[0][:200]
        raise FaithcaseError(f"embedding model not found: {spec} ({hint}; {type(err).__name__}: {detail})") from None
    return Embedder(model, name=spec, batch_size=batch_size)


# ---------------------------------------------------------------- explanations


def explanation_texts(
    features: Mapping[str, FeatureExplanation], skip_failed: bool = False
) -> dict[str, str | None]:
    """One explanation per feature (the greedy one, listed first); None when there is none."""
    texts: dict[str, str | None] = {}
    for key, feature in features.items():
        first = next((e for e in feature.explanations if e.strip()), None)
        texts[key] = None if (skip_failed and feature.failed) else first
    return texts


def baseline_explanations(
    windows: Mapping[str, FeatureWindows], criterion: str = "max", n_tokens: int = 5
) -> dict[str, str]:
    """A bag-of-tokens explanation: the tokens carrying the most activation in the feature's top windows.

    Features whose top windows activate on no token are left out (they score as "no explanation").
    """
    baselines: dict[str, str] = {}
    for key, feature in windows.items():
        weight: Counter[str] = Counter()
        for window in feature.windows.get(criterion, []):  # type: ignore[call-overload]
            for text, act in zip(window.texts, window.acts):
                token = text.strip()
                if act > 0 and token:
                    weight[token] += act
        top = [token for token, _ in weight.most_common(n_tokens)]
        if top:
            baselines[key] = ", ".join(top)
    return baselines


# ---------------------------------------------------------------- scoring


def context_text(context: Context) -> str:
    """The document for a context: its token texts joined, plain (no activation markers)."""
    return "".join(context.texts)


def make_query(template: str, explanation: str) -> str:
    return template.replace(PLACEHOLDER, explanation)


def _check_template(template: str) -> None:
    if PLACEHOLDER not in template:
        raise FaithcaseError(f"embed.query_template must contain {PLACEHOLDER}, got {template!r}")


@dataclass
class _Job:
    """One feature to score: its contexts, and (when scorable) its query."""

    key: str
    feature: FeatureWindows
    explanation: str | None
    reason: str | None
    query: str | None = None

    @property
    def contexts(self) -> list[Context]:
        return [*self.feature.activating, *self.feature.non_activating]

    @property
    def labels(self) -> np.ndarray:
        return np.array([1] * len(self.feature.activating) + [0] * len(self.feature.non_activating))


def _plan(
    windows: Mapping[str, FeatureWindows],
    explanations: Mapping[str, str | None],
    query_template: str,
    min_activating: int,
    min_non_activating: int,
) -> list[_Job]:
    jobs = []
    for key, feature in windows.items():
        explanation = explanations.get(key)
        if explanation is not None and not explanation.strip():
            explanation = None
        n_act, n_non = len(feature.activating), len(feature.non_activating)
        if explanation is None:
            reason = "no explanation"
        elif n_act < min_activating:
            reason = f"only {n_act} activating contexts (need {min_activating})"
        elif n_non < min_non_activating:
            reason = f"only {n_non} non-activating contexts (need {min_non_activating})"
        else:
            reason = None
        query = make_query(query_template, explanation) if reason is None else None
        jobs.append(_Job(key, feature, explanation, reason, query))
    return jobs


def _auroc(labels: np.ndarray, sims: np.ndarray) -> float | None:
    if labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, sims))


def _quantile_aurocs(job: _Job, sims: np.ndarray, n_quantiles: int | None) -> list[float | None]:
    """Per activation quantile: that quantile's activating contexts vs all non-activating ones."""
    quantiles = [c.quantile for c in job.feature.activating]
    known = [q for q in quantiles if q is not None]
    count = n_quantiles if n_quantiles is not None else (max(known) + 1 if known else 0)
    n_act = len(job.feature.activating)
    non_sims = sims[n_act:]
    result: list[float | None] = []
    for q in range(count):
        rows = [i for i, qi in enumerate(quantiles) if qi == q]
        if not rows or len(non_sims) == 0:
            result.append(None)
            continue
        labels = np.array([1] * len(rows) + [0] * len(non_sims))
        result.append(_auroc(labels, np.concatenate([sims[rows], non_sims])))
    return result


def _score(
    job: _Job, query_vec: np.ndarray | None, doc_vecs: np.ndarray | None, n_quantiles: int | None
) -> FeatureScore:
    feature = job.feature
    base = dict(
        feature=feature.feature,
        explanation=job.explanation,
        n_activating=len(feature.activating),
        n_non_activating=len(feature.non_activating),
    )
    if job.reason is not None or query_vec is None or doc_vecs is None:
        return FeatureScore(**base, auroc=None, reason=job.reason)
    sims = doc_vecs @ query_vec
    labels = job.labels
    contexts = [
        ScoredContext(text=context_text(c), label=int(label), similarity=float(sim), quantile=c.quantile)
        for c, label, sim in zip(job.contexts, labels, sims)
    ]
    return FeatureScore(
        **base,
        auroc=_auroc(labels, sims),
        auroc_per_quantile=_quantile_aurocs(job, sims, n_quantiles),
        contexts=contexts,
    )


def _score_jobs(jobs: list[_Job], embedder: Embedder, n_quantiles: int | None) -> dict[str, FeatureScore]:
    """The real path: every query and document of every feature in one cached, batched embed call."""
    scorable = [j for j in jobs if j.reason is None]
    texts: list[str] = []
    spans: dict[str, tuple[int, int]] = {}  # key -> (query row, first doc row)
    for job in scorable:
        spans[job.key] = (len(texts), len(texts) + 1)
        texts.append(job.query or "")
        texts.extend(context_text(c) for c in job.contexts)
    vectors = embedder.embed(texts)
    scores = {}
    for job in jobs:
        if job.key in spans:
            q_row, d_row = spans[job.key]
            docs = vectors[d_row : d_row + len(job.contexts)]
            scores[job.key] = _score(job, vectors[q_row], docs, n_quantiles)
        else:
            scores[job.key] = _score(job, None, None, n_quantiles)
    return scores


def eleuther(
    windows: Mapping[str, FeatureWindows],
    explanations: Mapping[str, str | None],
    embedder: Embedder,
    settings: EmbedConfig | None = None,
    n_quantiles: int | None = None,
) -> dict[str, FeatureScore]:
    """The Eleuther embedding score of every feature of one SAE, keyed like `windows`.

    Features with no explanation or too few contexts get auroc None and a reason.
    `n_quantiles` fixes the length of `auroc_per_quantile` (default: highest quantile seen + 1).
    """
    settings = settings or EmbedConfig()
    _check_template(settings.query_template)
    jobs = _plan(windows, explanations, settings.query_template, settings.min_activating,
                 settings.min_non_activating)
    return _score_jobs(jobs, embedder, n_quantiles)


def _feature_windows(windows: Mapping[str, FeatureWindows], index: int, sae: str) -> FeatureWindows:
    try:
        return windows[str(index)]
    except KeyError:
        raise FaithcaseError(
            f"the windows of {sae} have no feature {index}: rerun `faithcase windows --force`"
        ) from None


def cross_scores(
    pairs: Iterable[Pair],
    windows1: Mapping[str, FeatureWindows],
    windows2: Mapping[str, FeatureWindows],
    explanations1: Mapping[str, str | None],
    explanations2: Mapping[str, str | None],
    embedder: Embedder,
    settings: EmbedConfig | None = None,
    n_quantiles: int | None = None,
) -> list[CrossScore]:
    """Each pair's SAE1 explanation scored on SAE2's feature's contexts, and vice versa."""
    pairs = list(pairs)
    # keyed by pair position: the same feature may sit in several pairs
    swapped_windows1, swapped_windows2 = {}, {}
    explanations_on_2, explanations_on_1 = {}, {}
    for i, pair in enumerate(pairs):
        key = str(i)
        swapped_windows2[key] = _feature_windows(windows2, pair.index2, "sae2")
        swapped_windows1[key] = _feature_windows(windows1, pair.index1, "sae1")
        explanations_on_2[key] = explanations1.get(str(pair.index1))
        explanations_on_1[key] = explanations2.get(str(pair.index2))
    one_on_two = eleuther(swapped_windows2, explanations_on_2, embedder, settings, n_quantiles)
    two_on_one = eleuther(swapped_windows1, explanations_on_1, embedder, settings, n_quantiles)
    return [
        CrossScore(
            kind=pair.kind,
            rank=pair.rank,
            index1=pair.index1,
            index2=pair.index2,
            sae1_on_sae2=one_on_two[str(i)],
            sae2_on_sae1=two_on_one[str(i)],
        )
        for i, pair in enumerate(pairs)
    ]


def explanation_similarity(embedder: Embedder, text1: str | None, text2: str | None) -> float | None:
    """Cosine of the two explanations' embeddings (None when either is missing)."""
    if not text1 or not text2:
        return None
    vectors = embedder.embed([text1, text2])
    return float(vectors[0] @ vectors[1])


def embed_case_study(pairs: list[Pair], explain: ExplainArtifact, windows: Mapping[str, WindowsArtifact],
                     embedder: Embedder, settings: EmbedConfig | None = None,
                     n_quantiles: int | None = None) -> EmbedArtifact:
    """Every selected feature scored by its own explanation, and each pair's explanations across;
    `n_quantiles` is windows.n_quantiles (the length of each auroc_per_quantile)."""
    settings = settings or EmbedConfig()
    texts = {key: explanation_texts(explain.features[key]) for key in SAE_KEYS}
    scores = {key: eleuther(windows[key].features, texts[key], embedder, settings, n_quantiles) for key in SAE_KEYS}
    cross = cross_scores(pairs, windows["sae1"].features, windows["sae2"].features, texts["sae1"], texts["sae2"],
                         embedder, settings, n_quantiles)
    for item in cross:
        item.explanation_similarity = explanation_similarity(
            embedder, texts["sae1"].get(str(item.index1)), texts["sae2"].get(str(item.index2)))
    baseline = None
    if settings.baseline:
        baseline = {key: eleuther(windows[key].features, baseline_explanations(windows[key].features), embedder,
                                  settings, n_quantiles) for key in SAE_KEYS}
    return EmbedArtifact(meta=Meta(stage="embed", fingerprint=""), embedder=settings.model,
                         query_template=settings.query_template, scores=scores, cross=cross, baseline=baseline)

