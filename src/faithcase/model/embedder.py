"""The sentence embedder of the embed stage: a sentence-transformers model with a per-run text
cache.

`resolve_embedder` checks, without loading weights, that the model can be loaded (the local
folder exists; offline, a hub id is in the Hugging Face cache; code it ships is trusted), so a
run fails on it before any corpus pass. Models whose config has the xformers-only attention
options (stella_en_400M_v5, gte-*-v1.5) load with both off on CPU or without xformers, as the
stella model card says: `config_kwargs={"use_memory_efficient_attention": False,
"unpad_inputs": False}`; `Embedder.config_kwargs` records what was passed.

Models with remote code go through `faithcase.model.remote_code` (transformers 5 compatibility, the
pinned code revision); `Embedder.remote_code` records what it did. `load_embedder` then runs a
self-test (`self_test` / `check_self_test`): plain query/document pairs whose own document must rank
first, so a model that loads but embeds wrongly stops the run. A load failure says its real cause;
"not found" is only for a missing folder or hub id.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from faithcase.config import EmbedConfig
from faithcase.model.lm import resolve_device
from faithcase.model.remote_code import (
    RemoteCodeReport,
    code_revision,
    make_compatible,
    use_pinned_code,
)
from faithcase.run.errors import FaithcaseError
from faithcase.run.paths import resolve_path


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class Embedder:
    """A sentence-transformers model with a per-run cache: each distinct text is encoded once."""

    def __init__(self, model: Any, name: str, batch_size: int = 64,
                 config_kwargs: dict[str, Any] | None = None,
                 remote_code: RemoteCodeReport | None = None) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self.config_kwargs = dict(config_kwargs or {})  # model config overrides used at load
        self.remote_code = remote_code  # what the transformers 5 layer did, for remote code
        self._cache: dict[bytes, np.ndarray] = {}
        self.n_encoded_texts = 0  # texts sent to the model
        self.n_calls = 0  # model.encode invocations

    @property
    def dim(self) -> int:
        get_dim = (getattr(self.model, "get_embedding_dimension", None)
                   or self.model.get_sentence_embedding_dimension)
        return int(get_dim())

    def clear_cache(self) -> None:
        self._cache.clear()

    def _encode(self, texts: list[str], prompt_name: str | None = None,
                count: bool = True) -> np.ndarray:
        if count:
            self.n_calls += 1
            self.n_encoded_texts += len(texts)
        extra = {"prompt_name": prompt_name} if prompt_name else {}
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
            **extra,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed(self, texts: Sequence[str], use_cache: bool = True,
              prompt_name: str | None = None) -> np.ndarray:
        """Unit-norm embeddings, shape (len(texts), dim); one batched encode of the texts not yet
        cached.
        `prompt_name` names one of the model's own prompts (sentence-transformers), for queries."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if not use_cache:
            return self._encode(texts, prompt_name)
        keys = [_text_key(f"{prompt_name or ''}\x00{t}") for t in texts]
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts):
            if key not in self._cache and key not in missing:
                missing[key] = text
        if missing:
            vectors = self._encode(list(missing.values()), prompt_name)
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


# xformers-only options of stella/gte remote code, and the values that work without xformers
ATTENTION_OFF = {"use_memory_efficient_attention": False, "unpad_inputs": False}
NOT_FOUND_HINT = "give a sentence-transformers model name or folder"


@dataclass(frozen=True)
class EmbedderSource:
    """Where an embedding model loads from, checked without loading it."""

    target: str  # what SentenceTransformer loads: a folder or a hub id
    local: bool  # a local folder: never the network
    folder: Path | None  # its files: the folder, a hub id's cached snapshot, or None (not cached)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def _cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The hub repo's snapshot folder (at `revision`, default main) in the local Hugging Face
    cache, or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a valid repo id
        return None


def _model_config(folder: Path | None) -> dict[str, Any]:
    """The transformers config.json of a sentence-transformers folder ({} if none)."""
    path = folder / "config.json" if folder else None
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_remote_code(spec: str, folder: Path, trust_remote_code: bool) -> None:
    """A model that ships its own code (config.json `auto_map`) needs trust_remote_code and,
    offline, that code at hand: its .py files, or the other hub repo it names, cached."""
    auto_map = _model_config(folder).get("auto_map") or {}
    if not auto_map:
        return
    if not trust_remote_code:
        raise FaithcaseError(f"embedding model {spec} ships its own code (auto_map in "
                             f"{folder / 'config.json'}): set embed.trust_remote_code: true")
    revision = code_revision(auto_map)  # the pinned commit of the repo holding the code
    for reference in auto_map.values():
        reference = reference[0] if isinstance(reference, list) else reference
        if not isinstance(reference, str):
            continue
        repo, _, module = reference.rpartition("--")
        code = _cached_snapshot(repo, revision) if repo else folder
        if _offline() and (code is None or not (code / f"{module.split('.')[0]}.py").is_file()):
            at = f" at revision {revision}" if repo and revision else ""
            raise FaithcaseError(f"embedding model {spec}: its code {reference}{at} is not in the "
                                 f"local Hugging Face cache and HF_HUB_OFFLINE=1 is set; load it "
                                 f"once online, or give a local folder holding it")


def resolve_embedder(spec: str, base_dir: Path | None = None,
                     trust_remote_code: bool = False) -> EmbedderSource:
    """Where `spec` loads from; FaithcaseError (one line) when it cannot load: a missing folder,
    a hub id not in the local cache while HF_HUB_OFFLINE is set, remote code not trusted."""
    target, is_local = _resolve_model_spec(spec, base_dir)
    if is_local:
        if not Path(target).is_dir():
            raise FaithcaseError(f"embedding model not found: {target} ({NOT_FOUND_HINT})")
        folder: Path | None = Path(target)
    else:
        folder = _cached_snapshot(target)
        if folder is None and _offline():
            raise FaithcaseError(f"embedding model {spec} is not in the local Hugging Face cache "
                                 f"and HF_HUB_OFFLINE=1 is set: download it once online, or give "
                                 f"a local folder")
    if folder is not None:
        _check_remote_code(spec, folder, trust_remote_code)
    return EmbedderSource(target, is_local, folder)


def attention_kwargs(source: EmbedderSource, device: str) -> dict[str, Any]:
    """config_kwargs turning off the xformers-only attention options, for a model whose config
    has them (or, not cached yet, is stella) on CPU or without xformers; else {}."""
    config = _model_config(source.folder)
    declares = any(key in config for key in ATTENTION_OFF)
    if not declares and (config or "stella" not in source.target.lower()):
        return {}
    if resolve_device(device) != "cpu" and importlib.util.find_spec("xformers") is not None:
        return {}
    return dict(ATTENTION_OFF)


def _hub_config(repo_id: str) -> dict[str, Any]:
    """config.json of a hub model not cached yet, fetched when online ({} if it cannot be)."""
    if _offline():
        return {}
    from huggingface_hub import hf_hub_download

    try:
        return _model_config(Path(hf_hub_download(repo_id, "config.json")).parent)
    except Exception:  # noqa: BLE001 - the load itself will say what is wrong
        return {}


def _auto_map(source: EmbedderSource) -> dict[str, Any]:
    """The auto_map of the model's config.json ({} for a plain model)."""
    config = _model_config(source.folder) if source.folder else _hub_config(source.target)
    auto_map = config.get("auto_map")
    return auto_map if isinstance(auto_map, dict) else {}


def _one_line(text: object, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_not_found(source: EmbedderSource, err: BaseException) -> bool:
    """The folder or the model's hub repo is missing (not: it is there but does not load)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    if source.local:
        return not Path(source.target).is_dir()
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, RepositoryNotFoundError) and source.target in str(cause):
            return True  # this repo, not the one its code comes from
        cause = cause.__cause__ or cause.__context__
    return False


def load_embedder(
    spec: str = EmbedConfig().model, device: str = "auto",
    batch_size: int = EmbedConfig().batch_size, base_dir: Path | None = None,
    trust_remote_code: bool = False, self_test: bool = True,
) -> Embedder:
    """Load a sentence-transformers model from a name, a local folder or
    `pkg:<package>/<folder>` (checked first by `resolve_embedder`); remote code is made to work
    under transformers 5 (`remote_code.make_compatible`), and the model must pass its self-test
    (`check_self_test`) unless `self_test` is False. FaithcaseError (one line) when it cannot."""
    source = resolve_embedder(spec, base_dir, trust_remote_code)
    config_kwargs = attention_kwargs(source, device)
    auto_map = _auto_map(source) if trust_remote_code else {}
    revision = code_revision(auto_map)  # the pinned commit of the repo holding the code
    pin = {"code_revision": revision} if revision else {}
    from sentence_transformers import SentenceTransformer

    extra = {"config_kwargs": config_kwargs | pin} if config_kwargs or pin else {}
    try:
        if revision:
            use_pinned_code(source.target, auto_map, revision, local_files_only=_offline())
        model = SentenceTransformer(source.target, device=resolve_device(device),
                                    local_files_only=source.local,
                                    trust_remote_code=trust_remote_code, **extra)
        report = make_compatible(model) if trust_remote_code else None
    except Exception as err:  # noqa: BLE001 - any load failure is the user's model spec
        if _is_not_found(source, err):
            hint = NOT_FOUND_HINT
            if not source.local and _offline():
                hint = "HF_HUB_OFFLINE=1 is set: download it once online, or give a local folder"
            raise FaithcaseError(f"embedding model not found: {spec} ({hint})") from None
        raise FaithcaseError(f"embedding model {spec} failed to load: "
                             f"{type(err).__name__}: {_one_line(err)}") from None
    embedder = Embedder(model, name=spec, batch_size=batch_size, config_kwargs=config_kwargs,
                        remote_code=report)
    if self_test:
        check_self_test(embedder)
    return embedder


# ------------------------------------------------------------------------------------ self-test

# (query, its document): plain, unambiguous pairs; each query's own document must rank first
SELF_TEST_PAIRS: list[tuple[str, str]] = [
    ("What is the capital of France?",
     "Paris is the capital and largest city of France."),
    ("How do I bake bread at home?",
     "Mix flour, water, yeast and salt into a dough, let it rise, then bake it in a hot oven."),
    ("How do plants make their food?",
     "Plants turn sunlight, water and carbon dioxide into sugar by photosynthesis."),
    ("How do I fix a flat bicycle tire?",
     "Take the wheel off, find the hole in the inner tube, patch it and pump the tire up again."),
    ("What should I feed my puppy?",
     "Young dogs need puppy food several times a day and always fresh water."),
]
SELF_TEST_MIN_MARGIN = 0.01  # own document's cosine above the best other one; rejects ties


@dataclass(frozen=True)
class SelfTestRow:
    query: str
    expected: str  # the query's own document
    top: str  # the document it ranked first
    own_cosine: float
    best_other_cosine: float

    @property
    def margin(self) -> float:
        return self.own_cosine - self.best_other_cosine

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.margin)) and self.margin > SELF_TEST_MIN_MARGIN


@dataclass(frozen=True)
class SelfTestResult:
    """One embedder's self-test: a row per query, or the error encoding raised."""

    name: str
    rows: tuple[SelfTestRow, ...]
    error: str | None = None  # "ExceptionType: message" when encoding failed

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.rows) and all(row.passed for row in self.rows)

    @property
    def min_margin(self) -> float | None:
        return min((row.margin for row in self.rows), default=None)

    @property
    def summary(self) -> str:
        """One line: what passed, or what came out."""
        if self.error is not None:
            return f"encoding failed: {self.error}"
        failed = [row for row in self.rows if not row.passed]
        if not failed:
            return (f"{len(self.rows)}/{len(self.rows)} queries ranked their own document first "
                    f"(smallest margin {self.min_margin:.2f})")
        row = failed[0]
        return (f"{len(failed)} of {len(self.rows)} queries wrong, e.g. {_clip(row.query)!r} "
                f"ranked {_clip(row.top)!r} at or above its own document (cosine "
                f"{row.best_other_cosine:.3f} vs {row.own_cosine:.3f})")


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def self_test(embedder: Embedder) -> SelfTestResult:
    """Rank SELF_TEST_PAIRS' documents for each query by cosine; never raises for what the model
    does (an exception while encoding is recorded in `error`). Not cached, not counted."""
    queries = [query for query, _ in SELF_TEST_PAIRS]
    documents = [document for _, document in SELF_TEST_PAIRS]
    try:
        vectors = embedder._encode(queries + documents, count=False).astype(np.float64)
    except Exception as err:  # noqa: BLE001 - reported, not raised
        return SelfTestResult(embedder.name, (), f"{type(err).__name__}: {_one_line(err, 200)}")
    with np.errstate(invalid="ignore", divide="ignore"):
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = vectors[: len(queries)] @ vectors[len(queries):].T
    rows = []
    for i, query in enumerate(queries):
        others = np.where(np.arange(len(documents)) == i, -np.inf,
                          np.nan_to_num(cosines[i], nan=np.inf))
        rival = int(np.argmax(others))  # the best other document (a NaN counts as best)
        row = SelfTestRow(query, documents[i], documents[i], float(cosines[i, i]),
                          float(cosines[i, rival]))
        # top: the own document when it wins by the margin, else its rival (ties included)
        rows.append(row if row.passed else replace(row, top=documents[rival]))
    return SelfTestResult(embedder.name, tuple(rows))


def check_self_test(embedder: Embedder) -> SelfTestResult:
    """`self_test`, raising FaithcaseError (one line, naming the embedder) when it fails."""
    result = self_test(embedder)
    if not result.passed:
        raise FaithcaseError(f"embedding model {embedder.name} failed its self-test: "
                             f"{result.summary}; its embeddings are wrong: check the model's "
                             f"files and code, and that they suit the installed transformers")
    return result
