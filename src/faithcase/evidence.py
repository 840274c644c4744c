"""Pydantic models of the evidence beside each score: the scoring rules a feature's documents pass
or not, the checks of its explanation (uninformative, known answer), how its activation spreads over
windows and token ids, and the embed stage's leaf models. `faithcase.artifacts` re-exports them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- windows


class ActivationSpread(Model):
    """How a feature's activation spreads over the whole corpus pass: aligned windows with and
    without activation (what the scoring rules count) and its activation mass by token id."""

    n_windows: int  # aligned `window`-token chunks of positions 1..T-1 (short tails dropped)
    n_activating_windows: int  # chunks whose max activation is > 0
    n_non_activating_windows: int  # all-zero chunks
    total: float  # the feature's summed activation over the kept tokens
    top_token: int | None  # the token id carrying the most of it (None: never fires)
    texts: list[str] = []  # the tokenizer's text of top_token, as every `texts` of the schema
    top_token_share: float | None  # that token id's share of the summed activation
    single_token: bool  # top_token_share > windows.single_token_share


# ---------------------------------------------------------------- explain


class UninformativeRule(Model):
    """Which explanations are uninformative, and the texts that made them so."""

    rule: str
    baselines: dict[str, str]  # baseline answer -> its normalized text
    stock_share: float
    stock_min: int
    n_explained: int  # features of the artifact with an explanation (both SAEs)
    stock: dict[str, int]  # normalized stock text -> features that give it
    n_uninformative: int


# ---------------------------------------------------------------- embed


class Document(Model):
    text: str
    label: int  # 1 activating, 0 non-activating: from activations only
    quantile: int | None = None


class ExplanationScore(Model):
    explanation: str | None
    auroc: float | None
    reason: str | None = None  # why auroc is None
    auroc_per_quantile: list[float | None] = []
    similarities: list[float] = []  # cosine of the query with each document, in document order


class FeatureScoring(Model):
    """Whether a feature's documents are scored at all: delphi's rules on its corpus windows."""

    n_activating_windows: int
    n_non_activating_windows: int
    scored: bool
    reason: str | None = None  # why not ("rare: …", "dense: …")


class KnownAnswer(Model):
    """Does the feature's own explanation (and, as its control, its null) name a peak token?"""

    peak_tokens: list[str]  # the top distinct peak tokens of its top `max` windows
    explanation: bool | None  # None: no explanation or no peak token
    null: bool | None  # the null explanation (another feature's) on the same peak tokens
    window: bool | None = None  # the window explainer's explanation


class SimilarityNull(Model):
    """Explanation similarity of unrelated features: random non-matched (SAE 1, SAE 2) pairs of
    selected features, seeded."""

    method: str
    seed: int
    pairs: list[list[int]]  # [SAE 1 feature, SAE 2 feature]
    similarities: list[float]
    informative: list[bool]  # both explanations informative
    mean: float | None
    mean_informative: float | None
    q95: float | None


# ---------------------------------------------------------------- assemble


class FeatureChecks(Model):
    """One feature of a pair: its scoring rule, its explanation's checks, its token spread."""

    scored: bool
    unscored: str | None = None  # why its documents get no AUROC
    n_activating_windows: int | None
    n_non_activating_windows: int | None
    uninformative: str | None = None  # why its self-explanation is uninformative
    peak_tokens: list[str] = []
    known_answer: bool | None = None  # its explanation names one of its peak tokens
    known_answer_null: bool | None = None  # its null explanation does
    known_answer_window: bool | None = None  # its window explanation does
    uninformative_window: str | None = None  # why its window explanation is uninformative
    top_token_share: float | None = None
    single_token: bool = False


class GroupChecks(Model):
    """A group's explanation checks, over the features of its pairs that fire (rates: None when
    over no feature)."""

    unscored: dict[str, int]  # rule ("rare", "dense") -> features it leaves without a score
    n_uninformative: int  # features whose self-explanation is uninformative
    # as GroupSummary.eleuther, over the scored features whose self-explanation (own: its own,
    # cross: its partner's) is informative; n_informative: how many self AUROCs that averages
    eleuther_informative: dict[str, dict[str, float | None]]
    n_informative: dict[str, int]
    explanation_similarity_informative: float | None  # pairs whose two explanations are
    n_similarity_informative: int  # informative, and how many
    known_answer_rate: float | None  # the explanation names one of the feature's peak tokens
    n_known_answer: int  # features with an explanation and a peak token
    known_answer_null_rate: float | None  # the null explanation (another feature's) does
    n_known_answer_null: int
    failure_rate_single_token: float | None  # explain's `failed` among single-token features
    n_single_token: int
    failure_rate_other: float | None  # and among the others that fire
    n_other: int
    n_uninformative_window: int = 0  # features whose window explanation is uninformative
    known_answer_window_rate: float | None = None  # the window explanation names a peak token
    n_known_answer_window: int = 0


class Sensitivity(Model):
    """The smallest difference in means a comparison would detect: (z(1 - alpha/2) + z(power))
    times the standard error of the mean difference (plug-in SDs, as the percentile bootstrap
    resamples them): a true difference of that size puts the bootstrap 95% interval above 0 with
    probability `power`. Paired: one difference per item; otherwise two independent groups."""

    comparison: str
    paired: bool
    n: int  # items (paired) or the first group's size
    n_other: int | None = None  # the second group's size (unpaired)
    standard_error: float | None
    detectable: float | None  # None: fewer than 2 items in a group
    power: float = 0.8
    alpha: float = 0.05


class PairedComparison(Model):
    """Self-explanation minus window explanation AUROC on the same documents, over the features
    scored by both: the mean with a bootstrap interval, and the share the self-explanation wins."""

    side: str  # own | cross
    n: int
    mean_self: float | None
    mean_window: float | None
    mean_difference: float | None
    ci_low: float | None  # 95% percentile bootstrap interval of the mean difference
    ci_high: float | None
    self_wins: float | None  # share of features where self > window (ties count half)
    n_bootstrap: int
    seed: int


class Correlation(Model):
    """Spearman's rho of decoder cosine with a score over some pairs, with a bootstrap interval."""

    score: str
    pairs: str  # which pairs
    n: int
    rho: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None


class GroupDifference(Model):
    """Shared minus orphan features on one metric: two independent groups (different features, no
    natural pairing), so each is resampled on its own (seeded percentile bootstrap, 95%)."""

    metric: str
    n_shared: int
    n_orphan: int
    mean_shared: float | None
    mean_orphan: float | None
    difference: float | None  # shared − orphan
    ci_low: float | None
    ci_high: float | None
    n_bootstrap: int
    seed: int
