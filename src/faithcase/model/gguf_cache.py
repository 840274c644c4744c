"""A GGUF model, dequantized once into a plain Hugging Face folder.

transformers reads a GGUF file by parsing and dequantizing every tensor: ~8 s for the tokenizer and
~20 s for the model of the demo, in every process (each stage command, each worker). The first
load writes the dequantized float32 weights (safetensors), config and tokenizer into
`$FAITHCASE_CACHE/gguf/<key>/` (default `~/.cache/faithcase`); later loads read that folder in
well under a second. The weights, logits and token ids are exactly those of the GGUF load
(tests/test_lm.py). The key is the file's SHA-256 and the transformers version; the folder is
written beside its final name and renamed into place, so a killed or concurrent writer never
leaves a folder that reads as complete. Where the cache cannot be written (read-only, full disk),
the GGUF file is read directly, as before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from functools import lru_cache
from pathlib import Path

from faithcase.run.paths import CACHE_ENV, cache_dir  # noqa: F401 - CACHE_ENV for callers

COMPLETE = "faithcase-complete"
FORMAT = 1


def cache_root() -> Path:
    return cache_dir() / "gguf"


def cache_folder(file: Path) -> Path:
    import transformers

    stat = file.stat()
    key = f"{_sha256(str(file), stat.st_size, stat.st_mtime_ns)[:20]}-tf{transformers.__version__}"
    return cache_root() / f"{file.stem}-{key}-v{FORMAT}"


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256, once per process for a file as it is (size and time as the key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def dequantized_folder(file: Path) -> Path | None:
    """The cached plain folder of GGUF `file`, written on first use; None where it cannot be."""
    try:
        folder = cache_folder(file)
    except OSError:
        return None
    if (folder / COMPLETE).is_file():
        return folder
    try:
        _write(file, folder)
    except OSError:
        return None
    return folder if (folder / COMPLETE).is_file() else None


def _write(file: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        kwargs = {"gguf_file": file.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(file.parent), dtype=torch.float32,
                                                     **kwargs)
        model.hf_quantizer = None  # dequantized: plain float32 tensors
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / COMPLETE).write_text(f"{file}\n")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep its folder
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
