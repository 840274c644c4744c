"""Artifact files: atomic orjson writes, validated reads, fingerprints and content hashes."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from faithcase import __version__
from faithcase.run.errors import FaithcaseError

def serialize(data: Any) -> bytes:
    """orjson bytes of a pydantic model, a list of them, or JSON-able data (bytes pass through)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list) and data and isinstance(data[0], BaseModel):
        data = [item.model_dump(mode="json") for item in data]
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)


def write_json(path: Path, data: Any) -> None:
    """Serialize with orjson and write atomically."""
    write_bytes_atomic(path, serialize(data))


def write_artifact(path: Path, artifact: BaseModel) -> None:
    write_bytes_atomic(path, serialize(artifact))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: 0644 under the usual umask 022
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # .<name>.<mkstemp's 8 characters>.tmp


def _write_payload(fh, payload: bytes) -> None:
    fh.write(payload)  # one place where the disk can fill up (tests inject ENOSPC here)


class StagedFiles:
    """Files written under temporary names beside their targets, renamed into place together.
    A temporary file gets the mode the umask allows (mkstemp alone gives owner-only)."""

    def __init__(self) -> None:
        self.items: dict[Path, tuple[Path, str]] = {}  # target -> (temporary file, sha256)

    def add(self, path: Path, payload: bytes) -> None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(err.filename or path.parent)) from err
        try:
            with os.fdopen(fd, "wb") as fh:
                _write_payload(fh, payload)
            os.chmod(tmp, FILE_MODE)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(err, OSError) and not err.filename:
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise
        if path in self.items:
            self.items[path][0].unlink(missing_ok=True)
        self.items[path] = (Path(tmp), hashlib.sha256(payload).hexdigest())

    def commit(self) -> dict[Path, str]:
        """Rename every file into place; {target: sha256}."""
        for target, (tmp, _) in self.items.items():
            os.replace(tmp, target)
        done = {target: digest for target, (_, digest) in self.items.items()}
        self.items = {}
        return done

    def discard(self) -> None:
        for tmp, _ in self.items.values():
            tmp.unlink(missing_ok=True)
        self.items = {}


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    staged = StagedFiles()
    try:
        staged.add(path, payload)
        staged.commit()
    except BaseException:
        staged.discard()
        raise


def remove_temporaries(folder: Path, depth: int = 2) -> list[Path]:
    """Delete faithcase's own leftover temporary files under `folder` (call under the run lock)."""
    removed = []
    if depth < 0 or not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            removed += remove_temporaries(path, depth - 1)
        elif _TEMP_NAME.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def read_artifact(path: Path, model: Any, stage_hint: str | None = None) -> Any:
    """Read and validate a JSON artifact as `model` (a pydantic model or any type pydantic
    validates, e.g. list[PairCase]); FaithcaseError naming the stage to rerun."""
    hint = f": run `faithcase {stage_hint}` first" if stage_hint else ""
    if not path.is_file():
        raise FaithcaseError(f"missing artifact {path}{hint}")
    try:
        return _adapter(model).validate_python(orjson.loads(path.read_bytes()))
    except (orjson.JSONDecodeError, ValidationError) as err:
        again = f": rerun `faithcase {stage_hint} --force`" if stage_hint else ""
        raise FaithcaseError(f"invalid artifact {path} ({type(err).__name__}){again}") from None


@functools.lru_cache(maxsize=None)
def _adapter(model: Any) -> TypeAdapter:
    return TypeAdapter(model)


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able inputs (config sections, file hashes, upstream fingerprints,
    version)."""
    blob = orjson.dumps([__version__, *parts],
                        option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
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


class Ledger:
    """The JSON record of a run folder's stages: {stage: {fingerprint, seconds, files, note}}, with
    each file's sha256. Re-read before every update: the run lock makes that the current state."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            entries = orjson.loads(self.path.read_bytes())
        except orjson.JSONDecodeError:
            return {}  # a damaged ledger only makes every stage rerun
        return entries if isinstance(entries, dict) else {}

    def fingerprint(self, stage: str) -> str | None:
        return self.entries.get(stage, {}).get("fingerprint")

    def note(self, stage: str) -> Any:
        return self.entries.get(stage, {}).get("note")

    def files(self, stage: str) -> dict[str, str]:
        files = self.entries.get(stage, {}).get("files")
        return files if isinstance(files, dict) else {}

    def resolve(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.path.parent / path

    def _relative(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.path.parent).as_posix()
        except ValueError:  # outside the ledger's folder: absolute (resolve reads it so)
            return str(Path(path).absolute())

    def changed_files(self, stage: str) -> list[str]:
        """The stage's files that are missing or differ from what the ledger recorded."""
        entry = self.entries.get(stage, {})
        if "files" not in entry:
            return ["its record (no content hashes)"]
        return [name for name, digest in self.files(stage).items()
                if not self.resolve(name).is_file() or sha256_file(self.resolve(name)) != digest]

    def trusted(self, stage: str, name: str) -> Path | None:
        """The path of the stage's file `name` when it is unchanged since it was recorded."""
        digest = self.files(stage).get(name)
        path = self.resolve(name)
        return path if digest and path.is_file() and sha256_file(path) == digest else None

    def forget(self, stage: str) -> None:
        self.entries = self._read()
        if self.entries.pop(stage, None) is not None:
            write_json(self.path, self.entries)

    def record(self, stage: str, fingerprint: str, seconds: float, files: dict[Path, str],
               note: Any = None) -> None:
        self.entries = self._read()
        self.entries[stage] = {"fingerprint": fingerprint, "seconds": round(seconds, 2),
                               "files": {self._relative(p): d for p, d in files.items()},
                               "note": note}
        write_json(self.path, self.entries)
