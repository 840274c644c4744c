"""Artifact files: atomic orjson writes, validated reads, fingerprints and content hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from faithcase import __version__
from faithcase.run.errors import FaithcaseError

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
