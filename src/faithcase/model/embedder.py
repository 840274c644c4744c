"""The sentence embedder of the embed stage: a sentence-transformers model with a per-run text
cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
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

    def __init__(self, model: Any, name: str, batch_size: int = 64) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
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


def load_embedder(
    spec: str = EmbedConfig().model, device: str = "auto",
    batch_size: int = EmbedConfig().batch_size, base_dir: Path | None = None,
    trust_remote_code: bool = False,
) -> Embedder:
    """Load a sentence-transformers model from a name, a local folder or
    `pkg:<package>/<folder>`."""
    target, is_local = _resolve_model_spec(spec, base_dir)
    hint = "give a sentence-transformers model name or folder"
    if is_local and not Path(target).is_dir():
        raise FaithcaseError(f"embedding model not found: {target} ({hint})")
    if not is_local and os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        hint = "HF_HUB_OFFLINE=1 is set: download it once online, or give a local folder"
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(target, device=resolve_device(device),
                                    local_files_only=is_local,
                                    trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - any load failure is the user's model spec
        detail = " ".join(str(err).split())[:200]
        raise FaithcaseError(f"embedding model not found: {spec} "
                             f"({hint}; {type(err).__name__}: {detail})") from None
    return Embedder(model, name=spec, batch_size=batch_size)
