"""The sentence embedder of the embed stage: a sentence-transformers model with a per-run text
cache.

`resolve_embedder` checks, without loading weights, that the model can be loaded (the local
folder exists; offline, a hub id is in the Hugging Face cache; code it ships is trusted), so a
run fails on it before any corpus pass. Models whose config has the xformers-only attention
options (stella_en_400M_v5, gte-*-v1.5) load with both off on CPU or without xformers, as the
stella model card says: `config_kwargs={"use_memory_efficient_attention": False,
"unpad_inputs": False}`; `Embedder.config_kwargs` records what was passed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faithcase.config import EmbedConfig
from faithcase.model.lm import resolve_device
from faithcase.run.errors import FaithcaseError
from faithcase.run.paths import resolve_path


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class Embedder:
    """A sentence-transformers model with a per-run cache: each distinct text is encoded once."""

    def __init__(self, model: Any, name: str, batch_size: int = 64,
                 config_kwargs: dict[str, Any] | None = None) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self.config_kwargs = dict(config_kwargs or {})  # model config overrides used at load
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

    def _encode(self, texts: list[str], prompt_name: str | None = None) -> np.ndarray:
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


def _cached_snapshot(repo_id: str) -> Path | None:
    """The hub repo's snapshot folder in the local Hugging Face cache, or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
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
    for reference in auto_map.values():
        reference = reference[0] if isinstance(reference, list) else reference
        if not isinstance(reference, str):
            continue
        repo, _, module = reference.rpartition("--")
        code = _cached_snapshot(repo) if repo else folder
        if _offline() and (code is None or not (code / f"{module.split('.')[0]}.py").is_file()):
            raise FaithcaseError(f"embedding model {spec}: its code {reference} is not in the "
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


def load_embedder(
    spec: str = EmbedConfig().model, device: str = "auto",
    batch_size: int = EmbedConfig().batch_size, base_dir: Path | None = None,
    trust_remote_code: bool = False,
) -> Embedder:
    """Load a sentence-transformers model from a name, a local folder or
    `pkg:<package>/<folder>` (checked first by `resolve_embedder`)."""
    source = resolve_embedder(spec, base_dir, trust_remote_code)
    config_kwargs = attention_kwargs(source, device)
    hint = NOT_FOUND_HINT
    if not source.local and _offline():
        hint = "HF_HUB_OFFLINE=1 is set: download it once online, or give a local folder"
    from sentence_transformers import SentenceTransformer

    extra = {"config_kwargs": config_kwargs} if config_kwargs else {}
    try:
        model = SentenceTransformer(source.target, device=resolve_device(device),
                                    local_files_only=source.local,
                                    trust_remote_code=trust_remote_code, **extra)
    except Exception as err:  # noqa: BLE001 - any load failure is the user's model spec
        detail = " ".join(str(err).split())[:200]
        raise FaithcaseError(f"embedding model not found: {spec} "
                             f"({hint}; {type(err).__name__}: {detail})") from None
    return Embedder(model, name=spec, batch_size=batch_size, config_kwargs=config_kwargs)
