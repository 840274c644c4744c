"""Pydantic models of every stage's artifact and the run folder's file names."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from faithcase import __version__
from faithcase.evidence import (ActivationSpread, Document, ExplanationScore, FeatureChecks,  # noqa
    Correlation, FeatureScoring, GroupChecks, KnownAnswer, PairedComparison, Sensitivity,
    SimilarityNull, UninformativeRule)

PairKind = Literal["best", "worst", "random", "stratified", "orphan"]
PAIR_KINDS: tuple[PairKind, ...] = ("best", "worst", "random", "stratified", "orphan")
GROUPS = (*PAIR_KINDS, "known")  # the group table's rows: the pair kinds, the known features
Criterion = Literal["mean", "density", "max"]
CRITERIA: tuple[Criterion, ...] = ("mean", "density", "max")
SAE_KEYS = ("sae1", "sae2")
KNOWN = "known"  # the features of known meaning (calibration), a feature set beside the SAEs

# the files of a run folder
MATCH_FILE, MATCH_PLOT = "match.json", "match_histogram.png"
SCAN_FILE = "scan.json"
PAIRS_FILE = "pairs.json"
EXPLAIN_FILE = "explain.json"
EMBED_FILE = "embed.json"
CASE_STUDY_FILE, SUMMARY_FILE = "case_study.json", "summary.json"
REPORT_DIR, REPORT_INDEX = "report", "report/index.html"
LEDGER_FILE = "stages.json"


def windows_file(sae: str) -> str:
    return f"windows_{sae}.json"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Meta(Model):
    """Stamped by the run graph when a stage commits: what made the artifact, and from what."""

    stage: str
    fingerprint: str
    version: str = __version__
    created: str = Field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    seconds: float | None = None
    upstream: dict[str, str] = {}  # upstream stage name -> its fingerprint when this one was made


class Artifact(Model):
    meta: Meta | None = None  # None until the graph commits it (public functions leave it unset)


# ---------------------------------------------------------------- match

class SAEInfo(Model):
    path: str
    format: str
    d_in: int
    d_sae: int
    hook_name: str | None
    sha256: str
    dtype: str | None = None  # the dtype it encoded in, e.g. "bfloat16" (None: not recorded)
    declared_dtype: str | None = None  # the checkpoint's own (differs where slow, run/machine.py)


class Histogram(Model):
    edges: list[float]
    counts: list[int]


class MatchStats(Model):
    threshold: float
    n_features1: int
    n_features2: int
    n_alive1: int
    n_alive2: int
    n_dead1: int
    n_dead2: int
    n_matched: int
    shared_ratio: float  # share of matched pairs with similarity > threshold
    top1_ratio: float  # FaithfulSAE: share of alive SAE 2 features with best SAE 1 cos > threshold
    top1_ratio_sae1: float  # the other way: alive SAE 1 features with best SAE 2 cosine > threshold
    mean_similarity: float
    histogram: Histogram
    dead1: list[int] = []  # indices of dead features (zero or non-finite decoder rows)
    dead2: list[int] = []


class SolverInfo(Model):
    """How the assignment was found, and how close to optimal it is proven to be."""

    name: str  # "dense" or "sparse"
    exact: bool  # optimal for the full similarity matrix (dense: always; sparse: when certified)
    certified: bool  # sparse only: optimality proven by LP dual potentials checked on every pair
    total: float  # sum of matched similarities
    upper_bound: float | None = None  # sum of row maxima over the smaller side
    dual_bound: float | None = None  # sparse: LP dual objective (+ n * tolerance)
    relative_gap: float | None = None  # (best proven bound - total) / |total|; 0 for dense
    iterations: int = 1
    candidate_edges: int | None = None
    seconds: float
    tolerance: float = 0.0
    message: str = ""


class Assignment(Model):
    """index1[i] (an SAE 1 feature) matches index2[i] at cosine similarity[i], sorted by index1."""

    index1: list[int]
    index2: list[int]
    similarity: list[float]


class EncoderMatching(Model):
    """The assignment on unit encoder directions beside the decoder's (numerics/overlap.py); lists
    align with `Assignment.index1`. Without a usable encoder: `reason`, None elsewhere."""
    reason: str | None = None
    faithfulsae: float  # = MatchStats.shared_ratio
    paulo_belrose: float | None = None  # same partner in both, both cosines > threshold
    agreement: float | None = None  # share of decoder pairs the encoder assignment also makes
    mean_similarity: float | None = None  # of the encoder assignment
    solver: SolverInfo | None = None
    index2: list[int | None] | None = None  # each feature's encoder partner
    similarity: list[float | None] | None = None  # and its encoder cosine


class Matching(Model):
    """The optimal one-to-one matching of two SAEs' alive features, with the paper's statistics."""

    stats: MatchStats
    solver: SolverInfo
    assignment: Assignment
    encoder: EncoderMatching | None = None  # None: not computed


class MatchArtifact(Artifact, Matching):
    sae1: SAEInfo
    sae2: SAEInfo


# ---------------------------------------------------------------- scan


class SAEQuality(Model):
    """The load check: how well the SAE reconstructs the model's activations on the corpus."""

    fvu: float  # sum of squared errors / total variance of the kept tokens
    l0: float  # mean number of active features per kept token
    k: int | None  # the SAE's TopK k, None for other activations
    n_silent: int  # features that never fire on the corpus
    warnings: list[str] = []


class PairAgreement(Model):
    """Activation agreement of a matched pair on the same kept corpus tokens (the ground truth)."""

    pearson: float | None  # correlation of the two activations (None when one never varies)
    jaccard: float | None  # |fires in both| / |fires in either| (None when neither fires)
    p2_given_1: float | None  # P(SAE 2's feature fires | SAE 1's fires)
    p1_given_2: float | None
    frequency1: float  # share of kept tokens on which each feature fires
    frequency2: float


class AgreementTable(Model):
    """Agreement of every matched pair, aligned with match.json's assignment."""

    pearson: list[float | None]
    jaccard: list[float | None]
    p2_given_1: list[float | None]
    p1_given_2: list[float | None]
    n1: list[int]  # tokens on which SAE 1's feature fires
    n2: list[int]
    n_both: list[int]

    def pair(self, i: int, n_tokens: int, swapped: bool = False) -> PairAgreement:
        """Row i; `swapped`: the row's second feature is the pair's SAE 1 feature."""
        p21, p12 = self.p2_given_1[i], self.p1_given_2[i]
        f1, f2 = self.n1[i] / max(n_tokens, 1), self.n2[i] / max(n_tokens, 1)
        if swapped:
            p21, p12, f1, f2 = p12, p21, f2, f1
        return PairAgreement(pearson=self.pearson[i], jaccard=self.jaccard[i], p2_given_1=p21,
                             p1_given_2=p12, frequency1=f1, frequency2=f2)

    def rows(self, start: int, stop: int | None) -> "AgreementTable":
        return AgreementTable(**{name: values[start:stop] for name, values in self})


class NearestTable(Model):
    """Each alive feature of one SAE with its nearest decoder neighbour in the other (highest
    cosine, matched or not) and their activation agreement (rows: feature, then neighbour)."""

    feature: list[int]
    partner: list[int]
    similarity: list[float]
    agreement: AgreementTable


class ScanArtifact(Artifact):
    n_sequences: int
    n_tokens: int  # kept tokens: positions 1..T-1, BOS and massive activations left out
    excluded_positions: int
    quality: dict[str, SAEQuality]
    firing: dict[str, list[int]]  # per SAE, the kept tokens each feature fires on
    agreement: AgreementTable
    nearest: dict[str, NearestTable] = {}  # per SAE: its features' nearest neighbours (orphans)

    def pair_agreement(self, pair: "Pair", position: dict[int, int]) -> PairAgreement:
        """A selected pair's agreement: its matched row (`position`: SAE 1 feature -> row of the
        assignment), or an orphan's with its nearest neighbour."""
        if pair.orphan is None:
            return self.agreement.pair(position[pair.index1], self.n_tokens)
        table = self.nearest[pair.orphan]
        row = table.feature.index(pair.index1 if pair.orphan == "sae1" else pair.index2)
        return table.agreement.pair(row, self.n_tokens, swapped=pair.orphan == "sae2")


# ---------------------------------------------------------------- pairs


class Pair(Model):
    kind: PairKind
    rank: int
    index1: int
    index2: int
    similarity: float
    orphan: str | None = None  # an orphan pair: the SAE ("sae1" or "sae2") of the orphan feature


class PairsArtifact(Artifact):
    pairs: dict[PairKind, list[Pair]]
    n_eligible: int  # matched pairs worst, random and stratified pairs were drawn from
    strata_edges: list[float]  # equal-width bins of the matched cosines the stratified pairs span

    def all_pairs(self) -> list[Pair]:
        """Best, worst, random, then stratified; by rank within each kind."""
        return [p for kind in PAIR_KINDS
                for p in sorted(self.pairs.get(kind, []), key=lambda p: p.rank)]

    def selected_features(self) -> dict[str, list[int]]:
        """Sorted distinct feature indices of each SAE over all selected pairs."""
        pairs = self.all_pairs()
        return {"sae1": sorted({p.index1 for p in pairs}),
                "sae2": sorted({p.index2 for p in pairs})}


# ---------------------------------------------------------------- explain

class SweepPoint(Model):
    scale: float
    selfsim: float  # cosine(read residual, direction) minus its value at scale 0
    entropy: float  # next-token entropy minus its value at scale 0
    ce: float | None = None  # H(p_steered, p_neutral) minus its value at the neutral baseline
    score: float | None = None


class RankedText(Model):
    text: str
    scale: float
    greedy: bool
    logprob: float | None = None  # mean per-token log p(text | steered), closing quote included
    specificity: float | None  # mean log p(text | steered) - mean log p(text | neutral placeholder)


class FeatureExplanation(Model):
    feature: int
    fingerprint: str  # per-feature cache key (settings + SAE hash + direction)
    explanations: list[str]  # each generated text, ranked (`ranking`): the first is the explanation
    ranking: list[RankedText] = []
    scale: float | None  # the chosen scale (None when no scale could be chosen)
    scales: list[float] = []  # every scale explanations were generated at (best first)
    sweep: list[SweepPoint]
    failed: bool  # best self-similarity <= the failure threshold
    best_selfsim: float
    selfsim_zero: float | None = None  # its raw self-similarity at scale 0
    uninformative: str | None = None  # why the explanation says nothing (a baseline, stock text)


class ExplainBaseline(Model):
    """What the model says with the placeholder zeroed (replace), unsteered (add) and neutral."""

    replace_zero: str
    add_zero: str
    neutral: str = ""  # the placeholder holding the unit mean token embedding
    selfsim_zero: float
    entropy_zero: float


class NullDistribution(Model):
    """Best self-similarities of random unit directions through the same prompt and sweep."""

    key: str  # what it was computed from (settings, model, residual norm)
    n: int
    seed: int
    best_selfsim: list[float]
    quantiles: dict[str, float]  # q05, q25, q50, q75, q95, max


class ExplainSettings(Model):
    prompt_text: str
    prompt_tokens: list[tuple[int, str]] = []  # the rendered prompt token by token: (id, text)
    placeholder_token_id: int
    placeholder_positions: list[int]
    insert_layer: int
    read_layer: int
    mode: str
    residual_norm: float  # median residual norm at the insert layer, the unit of the scales
    scales: list[float]
    criterion: str = "ce"


class ExplainArtifact(Artifact):
    settings: ExplainSettings
    baseline: ExplainBaseline
    null: NullDistribution | None = None
    threshold: float | None = None  # failed = best self-similarity <= threshold
    threshold_source: str = ""  # "null q0.95" or "fixed"
    uninformative: UninformativeRule | None = None
    features: dict[str, dict[str, FeatureExplanation]]  # sae key -> str(feature) -> explanation


# ---------------------------------------------------------------- windows


class ActExample(Model):
    tokens: list[int]
    texts: list[str]
    acts: list[float]


class Window(ActExample):
    seq_id: int
    start: int
    value: float  # the criterion's value for this window


class Context(ActExample):
    seq_id: int
    start: int
    max_act: float
    quantile: int | None = None  # 0 = weakest decile of activating contexts; None if non-activating


class FeatureStats(Model):
    n_tokens: int
    n_active: int
    frequency: float
    max: float
    mean_nonzero: float
    histogram: Histogram
    spread: ActivationSpread | None = None  # windows with activation, mass by token id


class FeatureWindows(Model):
    feature: int
    windows: dict[Criterion, list[Window]]
    stats: FeatureStats
    activating: list[Context]
    non_activating: list[Context]


class WindowsArtifact(Artifact):
    sae: str  # "sae1" or "sae2"
    n_sequences: int
    n_tokens: int
    seq_len: int
    window: int
    excluded_positions: int  # BOS and massive-activation positions, never counted as activations
    quantile_method: str
    features: dict[str, FeatureWindows]


# ---------------------------------------------------------------- embed

# an explainer's name: self, window, baseline, null, or a plugin's (faithcase.plugins)
Explainer = str
SAEKey = Literal["sae1", "sae2", "known"]
Side = Literal["own", "cross"]  # a feature's documents by its own SAE's explanation / its partner's
SIDES: tuple[Side, ...] = ("own", "cross")


class ScoredFeature(Model):
    """One feature's documents (its activating and non-activating contexts) scored by explanations
    at `EmbedArtifact.features[documents_of][str(feature)].eleuther[explanation_of][explainer]`: its
    own SAE's key holds its own explanations, the other SAE's (in a selected pair) its partner's."""

    feature: int
    documents: list[Document]
    eleuther: dict[SAEKey, dict[Explainer, ExplanationScore]]  # explanation_of -> explainer
    scoring: FeatureScoring | None = None
    known_answer: KnownAnswer | None = None


class PairSimilarity(Model):
    kind: PairKind
    rank: int
    index1: int
    index2: int
    explanation_similarity: float | None  # cosine of the two explanations' embeddings


class ExplainerRecord(Model):
    """An explainer the embed stage scored: what it is, and what it recorded of its texts (the
    null: `partners[sae][feature]`, the feature whose self-explanation is the null)."""

    doc: str
    control: bool  # a reference (baseline, null), not an explainer under test
    record: dict[str, Any] = {}
    only: str | None = None  # the one feature set it explains ("known": the true answer)

    def explains(self, feature_set: str) -> bool:
        return self.only is None or self.only == feature_set


class EmbedArtifact(Artifact):
    embedder: str
    query_template: str
    features: dict[str, dict[str, ScoredFeature]]  # sae key -> str(feature)
    pairs: list[PairSimilarity]
    explainers: dict[str, ExplainerRecord]  # in order: explainers, then controls
    templates: dict[str, float | None] = {}  # query template -> mean own AUROC of self-explanations
    rules: dict[str, Any] = {}  # the scoring rules and what they count
    similarity_null: SimilarityNull | None = None
