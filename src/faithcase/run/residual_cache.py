"""The corpus pass, kept on disk: the residuals truncated at a hook, batch by batch.

The scan stage writes it while it runs the model; the windows stage (and a later run with more
pairs, or the stages run as separate commands) reads it back, so a run passes the corpus through
the model once. It lives in `<run folder>/.cache/residuals/<key>/`, keyed by what the pass depends
on (model, device, corpus, outlier rule, hook), written into a temporary folder and renamed into
place once complete. Each batch file's SHA-256 is in the folder's manifest and is checked as it
is read: a damaged batch is dropped with a warning and the model recomputes the pass from there.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import torch

MANIFEST = "manifest.json"
FORMAT = 1
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # ids, tokens, resid, mask


class ResidualCache:
    def __init__(self, run_dir: Path, key: dict, warn=print, device: str = "cpu"):
        digest = hashlib.sha256(orjson.dumps({"format": FORMAT, **key},
                                             option=orjson.OPT_SORT_KEYS)).hexdigest()
        self.root = run_dir / ".cache" / "residuals"
        self.dir = self.root / digest[:20]
        self.warn = warn
        self.device = device  # where batches are loaded: the model's device, as a fresh pass gives

    # ---------------------------------------------------------------- reading

    def complete(self) -> bool:
        return (self.dir / MANIFEST).is_file()

    def batches(self) -> list[dict]:
        return orjson.loads((self.dir / MANIFEST).read_bytes())["batches"]

    def read(self, start: int = 0) -> Iterator[tuple[int, Batch | None]]:
        """(index, batch) for each cached batch from `start`; batch None where the file is
        missing or damaged (the cache is then removed: the caller recomputes from there)."""
        try:
            entries = self.batches()
        except (OSError, ValueError, KeyError):
            entries = None
        if entries is None:
            self._discard("its manifest is unreadable")
            yield start, None
            return
        for index in range(start, len(entries)):
            entry = entries[index]
            try:
                data = (self.dir / entry["file"]).read_bytes()
            except OSError:
                data = None
            if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                self._discard(f"batch {index} is missing or damaged")
                yield index, None
                return
            saved = torch.load(io.BytesIO(data), weights_only=True, map_location=self.device)
            yield index, (saved["seq_ids"], saved["tokens"], saved["resid"], saved["excluded"])

    def _discard(self, why: str) -> None:
        self.warn(f"the cached corpus pass in {self.dir} is not usable ({why}): removed; "
                  "the model recomputes it")
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---------------------------------------------------------------- writing

    def writer(self, expected_bytes: int) -> "CacheWriter | None":
        """A writer into a fresh temporary folder, or None (with a warning) when the disk lacks
        room for the pass or the folder cannot be written."""
        self.remove_stale()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.root).free
        except OSError as err:
            self.warn(f"not caching the corpus pass ({err.strerror}: {self.root}); "
                      "a later stage runs the model again")
            return None
        if free < expected_bytes * 1.05 + 2**28:
            self.warn(f"not caching the corpus pass: it needs {expected_bytes / 2**30:.1f} GiB, "
                      f"{free / 2**30:.1f} GiB free on {self.root}; a later stage runs the model "
                      "again")
            return None
        return CacheWriter(self, self.dir.with_name(f"{self.dir.name}.tmp-{os.getpid()}"))

    def remove_stale(self) -> None:
        """Temporary folders left by a killed run (the run lock excludes a live writer)."""
        if self.root.is_dir():
            for stale in self.root.glob("*.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)


class CacheWriter:
    def __init__(self, cache: ResidualCache, tmp: Path):
        self.cache, self.tmp, self.entries, self.failed = cache, tmp, [], False
        tmp.mkdir(parents=True)

    def add(self, batch: Batch) -> None:
        if self.failed:
            return
        seq_ids, tokens, resid, excluded = batch
        buffer = io.BytesIO()
        torch.save({"seq_ids": seq_ids.cpu(), "tokens": tokens.cpu(),
                    "resid": resid.detach().cpu(), "excluded": excluded.cpu()}, buffer)
        data = buffer.getvalue()
        name = f"batch-{len(self.entries):06d}.pt"
        try:
            (self.tmp / name).write_bytes(data)
        except OSError as err:
            self.abandon("the disk is full" if err.errno == errno.ENOSPC else err.strerror)
            return
        self.entries.append({"file": name, "sha256": hashlib.sha256(data).hexdigest()})

    def finish(self) -> None:
        if self.failed:
            return
        try:
            manifest = orjson.dumps({"format": FORMAT, "batches": self.entries})
            (self.tmp / MANIFEST).write_bytes(manifest)
            shutil.rmtree(self.cache.dir, ignore_errors=True)
            os.replace(self.tmp, self.cache.dir)
        except OSError as err:
            self.abandon(err.strerror)

    def abandon(self, why: str | None = None) -> None:
        if why:
            self.cache.warn(f"not caching the corpus pass ({why}); a later stage runs the model "
                            "again")
        self.failed = True
        shutil.rmtree(self.tmp, ignore_errors=True)
