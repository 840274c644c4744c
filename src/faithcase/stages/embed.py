"""The embed stage: the Eleuther embedding score of an explanation, with its controls.

Paulo et al. 2024, "Automatically Interpreting Millions of Features in LLMs", §3.3.4, as delphi's
`scorers/embedding` does it: the explanation is a retrieval query, the feature's contexts (its
activating contexts across activation quantiles and random non-activating ones) are documents,
plain text; a sentence-embedding model gives query-document cosine similarities, and the score is
the AUROC of separating activating from non-activating contexts. A context's label comes from
activations only. The query template is the embedder's own (`config.default_query_template`):
delphi's retrieval instruction for embedders trained with one, the bare explanation otherwise.

Every feature's documents are scored by each registered explainer's text (`faithcase.explainers`:
its self-explanation, its window explanation, a top-token baseline and a null, plus any plugin);
and by the same explainers' texts of its matched partner in the other SAE (cross scores). A score
is at `features[documents_of][feature].eleuther[explanation_of][explainer]` of embed.json.

delphi's rules, stated in embed.json `rules`: a feature with fewer than `min_activating` (200)
activating or `min_non_activating` (50) non-activating windows in the whole corpus pass (aligned
`windows.window`-token chunks, `numerics/token_spread.py`) is not scored: auroc None and a reason
("rare: …", "dense: …"), its counts at `features[sae][feature].scoring`. Beside the scores: whether
the explanation (and the null) names one of the feature's peak tokens (`known_answer`), and the
explanation similarity of random non-matched pairs (`similarity_null`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from faithcase.render.tables import console, fmt, table
from faithcase.artifacts import (
    KNOWN,
    SAE_KEYS,
    Context,
    Document,
    ExplainerRecord,
    EmbedArtifact,
    ExplainArtifact,
    ExplanationScore,
    FeatureScoring,
    FeatureWindows,
    KnownAnswer,
    Pair,
    PairSimilarity,
    ScoredFeature,
    SimilarityNull,
    WindowsArtifact,
)
from faithcase.config import (
    BARE_TEMPLATE,
    QUERY_PLACEHOLDER as PLACEHOLDER,
    RETRIEVAL_INSTRUCTION,
    EmbedConfig,
)
from faithcase import plugins
from faithcase.explainers import Explainer, Sources
from faithcase.run.errors import FaithcaseError
from faithcase.run.graph import Stage
from faithcase.model.embedder import Embedder
from faithcase.numerics.explanation_checks import (
    KNOWN_ANSWER_RULE,
    names_peak_token,
    peak_tokens,
)
from faithcase.numerics.token_spread import SPREAD_METHOD
from faithcase.window_artifacts import DescribeArtifact
from faithcase.calibration import KnownArtifact

SIMILARITY_NULL_METHOD = (
    "cosine of the explanation embeddings of up to embed.n_similarity_null random (SAE 1, SAE 2) "
    "pairs of selected features that are not a selected pair, both explained, drawn without "
    "replacement (seeded)")

# ---------------------------------------------------------------- explanations


# ---------------------------------------------------------------- scoring


def context_text(context: Context) -> str:
    """The document for a context: its token texts joined, plain (no activation markers)."""
    return "".join(context.texts)


def documents(feature: FeatureWindows) -> list[Document]:
    """A feature's documents: its activating contexts (label 1), then its non-activating ones
    (label 0)."""
    return ([Document(text=context_text(c), label=1, quantile=c.quantile)
             for c in feature.activating]
            + [Document(text=context_text(c), label=0) for c in feature.non_activating])


def make_query(template: str, explanation: str) -> str:
    return template.replace(PLACEHOLDER, explanation)


def _auroc(labels: np.ndarray, sims: np.ndarray) -> float | None:
    if len(labels) == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, sims))


def window_counts(feature: FeatureWindows) -> tuple[int, int]:
    """(activating, non-activating) windows the scoring rules count: the feature's aligned windows
    over the whole corpus pass (windows.json `stats.spread`); for windows made without that
    record, its contexts."""
    spread = feature.stats.spread
    if spread is None:
        return len(feature.activating), len(feature.non_activating)
    return spread.n_activating_windows, spread.n_non_activating_windows


def rule_reason(n_activating: int, n_non_activating: int, settings: EmbedConfig) -> str | None:
    """delphi's rules: why a feature with these window counts gets no score (None: it does)."""
    if n_activating < settings.min_activating:
        return f"rare: {n_activating} activating windows < {settings.min_activating}"
    if n_non_activating < settings.min_non_activating:
        share = n_activating / max(n_activating + n_non_activating, 1)
        return (f"dense: active in {share:.0%} of windows ({n_non_activating} non-activating "
                f"< {settings.min_non_activating})")
    return None


def feature_scoring(feature: FeatureWindows, settings: EmbedConfig) -> FeatureScoring:
    n_activating, n_non_activating = window_counts(feature)
    reason = rule_reason(n_activating, n_non_activating, settings)
    return FeatureScoring(n_activating_windows=n_activating,
                          n_non_activating_windows=n_non_activating, scored=reason is None,
                          reason=reason)


def unscorable_reason(explanation: str | None, docs: list[Document], settings: EmbedConfig,
                      counts: tuple[int, int] | None = None) -> str | None:
    """Why a feature's documents cannot be scored by an explanation, or None when they can: the
    scoring rules on `counts` (`window_counts`; default: the documents), then no explanation."""
    n_act = sum(d.label for d in docs)
    reason = rule_reason(*(counts or (n_act, len(docs) - n_act)), settings)
    if reason is not None:
        return reason
    if explanation is None or not explanation.strip():
        return "no explanation"
    if not 0 < n_act < len(docs):
        return "documents of one label only"
    return None


def score(docs: list[Document], doc_vecs: np.ndarray, explanation: str | None,
          query_vec: np.ndarray | None, reason: str | None,
          n_quantiles: int | None) -> ExplanationScore:
    """AUROC of the query's similarities separating activating from non-activating documents,
    overall and per activation quantile (that quantile's activating documents vs every
    non-activating one)."""
    if reason is not None or query_vec is None:
        return ExplanationScore(explanation=explanation, auroc=None, reason=reason)
    sims = doc_vecs @ query_vec
    labels = np.array([d.label for d in docs])
    known = [d.quantile for d in docs if d.quantile is not None]
    count = n_quantiles if n_quantiles is not None else (max(known) + 1 if known else 0)
    negatives = labels == 0
    per_quantile = []
    for q in range(count):
        rows = np.array([d.quantile == q for d in docs]) | negatives
        chosen = labels[rows]
        per_quantile.append(_auroc(chosen, sims[rows])
                            if chosen.any() and negatives.any() else None)
    return ExplanationScore(explanation=explanation, auroc=_auroc(labels, sims),
                            auroc_per_quantile=per_quantile,
                            similarities=[float(s) for s in sims])


class _Batch:
    """Queries and documents of many scores, embedded together (each distinct text once)."""

    def __init__(self, embedder: Embedder, settings: EmbedConfig, template: str):
        self.embedder, self.settings, self.template = embedder, settings, template
        self.jobs: list[tuple[list[Document], str | None, str | None]] = []

    def add(self, docs: list[Document], explanation: str | None,
            counts: tuple[int, int] | None = None, rules: EmbedConfig | None = None) -> int:
        why = unscorable_reason(explanation, docs, rules or self.settings, counts)
        self.jobs.append((docs, explanation, why))
        return len(self.jobs) - 1

    def run(self, n_quantiles: int | None) -> list[ExplanationScore]:
        queries = [make_query(self.template, e) for _, e, why in self.jobs if why is None]
        texts = list(dict.fromkeys(d.text for docs, _, why in self.jobs if why is None
                                   for d in docs))
        query_vecs = iter(self.embedder.embed(queries, prompt_name=self.settings.prompt_name))
        doc_vecs = dict(zip(texts, self.embedder.embed(texts)))
        return [score(docs, np.stack([doc_vecs[d.text] for d in docs]) if why is None else None, e,
                      next(query_vecs) if why is None else None, why, n_quantiles)
                for docs, e, why in self.jobs]


def eleuther(windows: Mapping[str, FeatureWindows], explanations: Mapping[str, str | None],
             embedder: Embedder, settings: EmbedConfig | None = None,
             n_quantiles: int | None = None) -> dict[str, ExplanationScore]:
    """The Eleuther embedding score of each feature of `windows` (keyed like it) by its explanation.

    Similarities are in the order of `documents(windows[key])`. Features with no explanation, or
    with fewer activating or non-activating windows in the corpus than the scoring rules ask
    (`window_counts`, `rule_reason`), get auroc None and a reason. `n_quantiles` fixes the length
    of auroc_per_quantile (default: highest quantile seen + 1).
    """
    settings = settings or EmbedConfig()
    batch = _Batch(embedder, settings, settings.template)
    jobs = {key: batch.add(documents(feature), explanations.get(key), window_counts(feature))
            for key, feature in windows.items()}
    scores = batch.run(n_quantiles)
    return {key: scores[job] for key, job in jobs.items()}


def explanation_similarity(embedder: Embedder, text1: str | None,
                           text2: str | None) -> float | None:
    """Cosine of the two explanations' embeddings (None when either is missing)."""
    if not text1 or not text2:
        return None
    vectors = embedder.embed([text1, text2])
    return float(vectors[0] @ vectors[1])


def embed_case_study(pairs: list[Pair], explain: ExplainArtifact,
                     windows: Mapping[str, WindowsArtifact], embedder: Embedder,
                     settings: EmbedConfig | None = None, n_quantiles: int | None = None,
                     describe: DescribeArtifact | None = None,
                     explainers: Sequence[Explainer] | None = None,
                     known: KnownArtifact | None = None) -> EmbedArtifact:
    """Every selected feature's documents scored by each explainer's text of it (default: the
    registered explainers, `faithcase.plugins`) and by those of its matched partner;
    `n_quantiles` is windows.n_quantiles. A score sits at
    `features[documents_of][feature].eleuther[explanation_of][explainer]`. The known features
    (windows["known"], from `known`) are scored by their own explainers' texts only, with the true
    answer among them, under known.min_activating when it is set."""
    settings = settings or EmbedConfig()
    explainers = list(explainers) if explainers is not None else plugins.explainers()
    keys = [*SAE_KEYS, *([KNOWN] if KNOWN in windows else [])]
    found = {key: windows[key].features for key in keys}
    for pair in pairs:
        for key, index in (("sae1", pair.index1), ("sae2", pair.index2)):
            if str(index) not in found[key]:
                raise FaithcaseError(f"the windows of {key} have no feature {index}: "
                                     "rerun `faithcase windows --force`")
    sources = Sources(explain=explain, windows={key: windows[key] for key in keys},
                      describe=describe, settings=settings,
                      registry={e.name: e for e in explainers}, known=known)
    names = {key: [e.name for e in explainers if e.only in (None, key)] for key in keys}
    texts = {key: {f: {name: sources.texts(name, key).get(f) for name in names[key]}
                   for f in found[key]} for key in keys}
    explained = {key: {f: by.get("self") for f, by in texts[key].items()} for key in keys}
    tokens = {key: {f: peak_tokens(w.windows.get("max", []), settings.n_peak_tokens)
                    for f, w in found[key].items()} for key in keys}
    docs = {key: {f: documents(w) for f, w in found[key].items()} for key in keys}
    rules = {key: settings for key in keys}
    if KNOWN in rules and known is not None and known.min_activating is not None:
        rules[KNOWN] = settings.model_copy(update={"min_activating": known.min_activating})
    scoring = {key: {f: feature_scoring(w, rules[key]) for f, w in found[key].items()}
               for key in keys}
    whose = _explainers(pairs, found)
    features = _score_features(embedder, rules, docs, scoring, texts, whose, n_quantiles, names)
    _annotate(features, scoring, texts, tokens, whose, explainers, sources)
    similarities = [PairSimilarity(kind=p.kind, rank=p.rank, index1=p.index1, index2=p.index2,
                                   explanation_similarity=explanation_similarity(
                                       embedder, explained["sae1"].get(str(p.index1)),
                                       explained["sae2"].get(str(p.index2)))) for p in pairs]
    informative = {key: {f: e.uninformative is None for f, e in explain.features[key].items()}
                   for key in SAE_KEYS}
    return EmbedArtifact(
        embedder=settings.model, query_template=settings.template, features=features,
        pairs=similarities,
        explainers={e.name: ExplainerRecord(doc=e.doc, control=e.control, only=e.only,
                                            record=e.record(sources) if e.record else {})
                    for e in explainers},
        templates=_template_check(embedder, settings, docs, scoring, explained, n_quantiles)
        if settings.compare_templates else {},
        rules=scoring_rules(settings),
        similarity_null=similarity_null(embedder, pairs, explained, informative, settings))


def _annotate(features, scoring, texts, tokens, whose, explainers, sources) -> None:
    """Each scored feature's rule counts, known answer, and why an explainer gave no text."""
    for key, group in features.items():
        for f, scored in group.items():
            scored.scoring = scoring[key][f]
            said = {name: names_peak_token(texts[key][f].get(name), tokens[key][f])
                    for name in ("self", "null", "window")}
            scored.known_answer = KnownAnswer(peak_tokens=tokens[key][f],
                                              explanation=said["self"], null=said["null"],
                                              window=said["window"])
            for of, by in scored.eleuther.items():
                for explainer in [e for e in explainers if e.name in by]:
                    if by[explainer.name].reason == "no explanation":
                        by[explainer.name].reason = explainer.why_missing(
                            sources, of, str(whose[key, f][of]))


def scoring_rules(settings: EmbedConfig) -> dict[str, Any]:
    """The rules embed.json's scores follow, stated."""
    return {"scored": (f"a feature's documents are scored only with at least "
                       f"{settings.min_activating} activating and "
                       f"{settings.min_non_activating} non-activating windows in the corpus pass "
                       "(delphi's rules; below: 'rare', 'dense'): no AUROC otherwise, a reason"),
            "min_activating": settings.min_activating,
            "min_non_activating": settings.min_non_activating, "counted": SPREAD_METHOD,
            "known_answer": KNOWN_ANSWER_RULE, "n_peak_tokens": settings.n_peak_tokens,
            "explanation_similarity_null": SIMILARITY_NULL_METHOD}


def similarity_null(embedder: Embedder, pairs: list[Pair], explained, informative,
                    settings: EmbedConfig) -> SimilarityNull:
    """Explanation similarity of random non-matched (SAE 1, SAE 2) pairs of selected features
    (SIMILARITY_NULL_METHOD); `informative[sae][feature]`: its explanation is informative."""
    matched = {(p.index1, p.index2) for p in pairs}
    candidates = [(a, b) for a in sorted({p.index1 for p in pairs})
                  for b in sorted({p.index2 for p in pairs})
                  if (a, b) not in matched and explained["sae1"].get(str(a))
                  and explained["sae2"].get(str(b))]
    n = min(settings.n_similarity_null, len(candidates))
    drawn = np.random.default_rng(settings.seed).choice(len(candidates), n, replace=False) \
        if n else []
    chosen = [candidates[i] for i in sorted(int(i) for i in drawn)]
    texts = [(explained["sae1"][str(a)], explained["sae2"][str(b)]) for a, b in chosen]
    distinct = list(dict.fromkeys(t for pair in texts for t in pair))
    vectors = dict(zip(distinct, embedder.embed(distinct))) if distinct else {}
    sims = [float(vectors[t1] @ vectors[t2]) for t1, t2 in texts]
    flags = [informative["sae1"].get(str(a), True) and informative["sae2"].get(str(b), True)
             for a, b in chosen]
    kept = [x for x, ok in zip(sims, flags) if ok]
    return SimilarityNull(
        method=SIMILARITY_NULL_METHOD, seed=settings.seed, pairs=[[a, b] for a, b in chosen],
        similarities=sims, informative=flags, mean=float(np.mean(sims)) if sims else None,
        mean_informative=float(np.mean(kept)) if kept else None,
        q95=float(np.quantile(sims, 0.95)) if sims else None)


def _explainers(pairs: list[Pair], found: Mapping[str, Mapping[str, Any]]
                ) -> dict[tuple[str, str], dict[str, str]]:
    """(documents_of, feature) -> explanation_of -> the feature whose explanations score these
    documents: the feature itself, and its matched partner in the other SAE when it has one."""
    whose = {(key, f): {key: f} for key in found for f in found[key]}
    for p in pairs:
        whose["sae1", str(p.index1)]["sae2"] = str(p.index2)
        whose["sae2", str(p.index2)]["sae1"] = str(p.index1)
    return whose


def _counts(scoring: FeatureScoring) -> tuple[int, int]:
    return scoring.n_activating_windows, scoring.n_non_activating_windows


def _score_features(embedder: Embedder, rules: Mapping[str, EmbedConfig], docs, scoring, texts,
                    whose: dict[tuple[str, str], dict[str, str]], n_quantiles: int | None,
                    names: Mapping[str, Sequence[str]]) -> dict[str, dict[str, ScoredFeature]]:
    """One batch of every (documents, explanation) score, keyed by feature set then feature;
    `rules[key]`: the scoring rules of that set's documents, `names[key]`: its explainers."""
    first = next(iter(rules.values()))
    batch = _Batch(embedder, first, first.template)
    jobs = {(key, f, of, name): batch.add(docs[key][f], texts[of][g][name],
                                          _counts(scoring[key][f]), rules[key])
            for (key, f), sources in whose.items() for of, g in sources.items()
            for name in names[of]}
    scores = batch.run(n_quantiles)
    return {key: {f: ScoredFeature(
        feature=int(f), documents=docs[key][f],
        eleuther={of: {n: scores[jobs[key, f, of, n]] for n in names[of]}
                  for of in docs if of in whose[key, f]})
        for f in sorted(docs[key], key=int)} for key in docs}


def _template_check(embedder: Embedder, settings: EmbedConfig, docs, scoring, explained,
                    n_quantiles) -> dict[str, float | None]:
    """Mean own AUROC of the self-explanations with the bare explanation and with the retrieval
    instruction as the query (the embedder's default is one of them)."""
    means: dict[str, float | None] = {}
    for template in dict.fromkeys([settings.template, BARE_TEMPLATE, RETRIEVAL_INSTRUCTION]):
        batch = _Batch(embedder, settings, template)
        for key in SAE_KEYS:
            for f, feature_docs in docs[key].items():
                batch.add(feature_docs, explained[key].get(f), _counts(scoring[key][f]))
        aurocs = [s.auroc for s in batch.run(n_quantiles) if s.auroc is not None]
        means[template] = float(np.mean(aurocs)) if aurocs else None
    return means


# ---------------------------------------------------------------- printing


def print_embed(artifact, inputs: dict) -> None:
    """Per pair: each feature's documents by its own SAE's explanations, then by the partner's
    ("cross 1→2": SAE 1's explanations on SAE 2's feature's documents)."""
    pairs = inputs["pairs"]
    names = list(artifact.explainers)
    grid = table(f"embedding scores (AUROC): {' / '.join(names)}",
                 ["kind", "rank", "sae1", "sae2", "own 1", "own 2", "cross 1→2", "cross 2→1"])

    def three(feature, explanation_of: str) -> str:
        scores = feature.eleuther.get(explanation_of, {})
        return " / ".join(fmt(scores[name].auroc if name in scores else None, 2)
                          for name in names)

    for p in pairs.all_pairs():
        f1 = artifact.features["sae1"][str(p.index1)]
        f2 = artifact.features["sae2"][str(p.index2)]
        grid.add_row(p.kind, str(p.rank), str(p.index1), str(p.index2), three(f1, "sae1"),
                     three(f2, "sae2"), three(f2, "sae1"), three(f1, "sae2"))
    console.print(grid)


# ---------------------------------------------------------------- the stage


def _compute(job) -> EmbedArtifact:
    rt, up = job.ctx, job.inputs
    with rt.console.status("embedding explanations and contexts …"):
        artifact = embed_case_study(up["pairs"].all_pairs(), up["explain"], up["windows"],
                                    rt.embedder, job.settings, rt.cfg.windows.n_quantiles,
                                    up["describe"], rt.explainers, up["known"])
    job.write(job.stage.file, artifact)
    return artifact


STAGE = Stage(
    "embed", _compute, inputs=("pairs", "explain", "windows", "describe", "known"), section="embed",
    uses=("explainers",), artifact=EmbedArtifact, printer=print_embed,
    doc="Eleuther embedding score (AUROC) of every explanation, its baseline and null, own and "
        "across the pair.")
