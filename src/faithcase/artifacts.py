"""Pydantic models of every stage's artifact; atomic orjson read/write; input fingerprints."""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from faithcase import __version__
from faithcase.errors import FaithcaseError

PairKind = Literal["best", "worst", "random"]
PAIR_KINDS: tuple[PairKind, ...] = ("best", "worst", "random")
Criterion = Literal["mean", "density", "max"]
CRITERIA: tuple[Criterion, ...] = ("mean", "density", "max")
SAE_KEYS = ("sae1", "sae2")

# the files of a run folder
MATCH_FILE = "match.json"
MATCH_PLOT = "match_histogram.png"
EXPLAIN_FILE = "explain.json"
EMBED_FILE = "embed.json"
CASE_STUDY_FILE = "case_study.json"
SUMMARY_FILE = "summary.json"
REPORT_DIR = "report"
REPORT_INDEX = "report/index.html"
LEDGER_FILE = "stages.json"


def windows_file(sae: str) -> str:
    return f"windows_{sae}.json"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Meta(Model):
    stage: str
    fingerprint: str
    version: str = __version__
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    seconds: float | None = None
    upstream: dict[str, str] = {}  # upstream artifact file name -> its fingerprint when this one was made


class Artifact(Model):
    meta: Meta


# ---------------------------------------------------------------- match


class SAEInfo(Model):
    path: str
    format: str
    d_in: int
    d_sae: int
    hook_name: str | None
    sha256: str


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
    top1_ratio: float  # share of alive SAE1 features whose best SAE2 cosine > threshold
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


class Pair(Model):
    kind: PairKind
    rank: int
    index1: int
    index2: int
    similarity: float


class Assignment(Model):
    """index1[i] (an SAE 1 feature) is matched to index2[i] with cosine similarity[i], sorted by index1."""

    index1: list[int]
    index2: list[int]
    similarity: list[float]


class Matching(Model):
    """The optimal one-to-one matching of the alive features of two SAEs, with the paper's statistics."""

    stats: MatchStats
    solver: SolverInfo
    assignment: Assignment


class MatchArtifact(Artifact, Matching):
    sae1: SAEInfo
    sae2: SAEInfo
    pairs: dict[PairKind, list[Pair]]

    def all_pairs(self) -> list[Pair]:
        """Best, then worst, then random; by rank within each kind."""
        return [p for kind in PAIR_KINDS for p in sorted(self.pairs.get(kind, []), key=lambda p: p.rank)]

    def selected_features(self) -> dict[str, list[int]]:
        """Sorted distinct feature indices of each SAE over all selected pairs."""
        pairs = self.all_pairs()
        return {"sae1": sorted({p.index1 for p in pairs}), "sae2": sorted({p.index2 for p in pairs})}


# ---------------------------------------------------------------- explain


class SweepPoint(Model):
    scale: float
    selfsim: float  # cosine(read residual, direction) minus its value at scale 0
    entropy: float  # next-token entropy minus its value at scale 0
    score: float | None = None


class FeatureExplanation(Model):
    feature: int
    fingerprint: str  # per-feature cache key (settings + SAE hash + direction)
    explanations: list[str]  # greedy first, then samples
    scale: float | None  # the chosen scale (None when no scale could be chosen)
    scales: list[float] = []  # every scale explanations were generated at (best first)
    sweep: list[SweepPoint]
    failed: bool
    best_selfsim: float


class ExplainBaseline(Model):
    """What the model says with the placeholder zeroed (replace mode) and unsteered (add mode)."""

    replace_zero: str
    add_zero: str
    selfsim_zero: float
    entropy_zero: float


class ExplainSettings(Model):
    prompt_text: str
    placeholder_token_id: int
    placeholder_positions: list[int]
    insert_layer: int
    read_layer: int
    mode: str
    residual_norm: float  # median residual norm at the insert layer, the unit of the scales
    scales: list[float]


class ExplainArtifact(Artifact):
    settings: ExplainSettings
    baseline: ExplainBaseline
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
    quantile: int | None = None  # 0 = weakest decile of activating contexts; None for non-activating


class FeatureStats(Model):
    n_tokens: int
    n_active: int
    frequency: float
    max: float
    mean_nonzero: float
    histogram: Histogram


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


class ScoredContext(Model):
    text: str
    label: int  # 1 activating, 0 non-activating: from activations only
    similarity: float
    quantile: int | None = None


class FeatureScore(Model):
    feature: int
    explanation: str | None
    auroc: float | None
    reason: str | None = None  # why auroc is None
    n_activating: int
    n_non_activating: int
    auroc_per_quantile: list[float | None] = []
    contexts: list[ScoredContext] = []


class CrossScore(Model):
    kind: PairKind
    rank: int
    index1: int
    index2: int
    sae1_on_sae2: FeatureScore  # SAE1's explanation scored on SAE2's feature's contexts
    sae2_on_sae1: FeatureScore
    explanation_similarity: float | None = None  # cosine of the two explanations' embeddings


class EmbedArtifact(Artifact):
    embedder: str
    query_template: str
    scores: dict[str, dict[str, FeatureScore]]  # sae key -> str(feature) -> own score
    cross: list[CrossScore]
    baseline: dict[str, dict[str, FeatureScore]] | None = None


# ---------------------------------------------------------------- assemble


class PairCase(Model):
    kind: PairKind
    rank: int
    similarity: float
    indices: list[int]
    self_explanations: list[str | None]
    eleuthers: list[float | None]
    cross_eleuthers: list[float | None]
    explanation_similarity: float | None
    windows: list[dict[Criterion, list[ActExample]]]
    scales: list[float | None]
    failed: list[bool]
    stats: list[FeatureStats]


class CaseStudySummary(Artifact):
    model: str
    hook: str
    sae1: SAEInfo
    sae2: SAEInfo
    match: MatchStats
    groups: dict[str, dict[str, float | None]]
    config: dict[str, Any]


# ---------------------------------------------------------------- read / write

A = TypeVar("A", bound=BaseModel)


def write_json(path: Path, data: Any) -> None:
    """Serialize with orjson and write atomically."""
    write_bytes_atomic(path, orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: 0644 under the usual umask 022


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Write to a temp file in the same folder, then rename: never a half-written file. The file
    gets the mode the umask allows (mkstemp alone would leave it readable by its owner only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_artifact(path: Path, artifact: BaseModel) -> None:
    write_json(path, artifact.model_dump(mode="json"))


def read_artifact(path: Path, model: type[A], stage_hint: str | None = None) -> A:
    hint = f": run `faithcase {stage_hint}` first" if stage_hint else ""
    if not path.is_file():
        raise FaithcaseError(f"missing artifact {path}{hint}")
    try:
        return model.model_validate(orjson.loads(path.read_bytes()))
    except (orjson.JSONDecodeError, ValidationError) as err:
        raise FaithcaseError(f"invalid artifact {path} ({type(err).__name__}){hint} with --force") from None


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able inputs (config sections, file hashes, upstream fingerprints, version)."""
    blob = orjson.dumps([__version__, *parts], option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(paths: list[Path]) -> str:
    """One sha256 over several files: each file's name, then its contents, in name order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        _digest_file(digest, path)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """The plain sha256 of one file (what `sha256sum` prints)."""
    return _digest_file(hashlib.sha256(), path).hexdigest()


def _digest_file(digest, path: Path):
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def is_up_to_date(path: Path, expected_fingerprint: str) -> bool:
    """True when the artifact exists, parses, and was made from the same inputs."""
    if not path.is_file():
        return False
    try:
        meta = orjson.loads(path.read_bytes()).get("meta", {})
    except orjson.JSONDecodeError:
        return False
    return meta.get("fingerprint") == expected_fingerprint
