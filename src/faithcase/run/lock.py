"""One writer per run folder: an OS file lock held for the whole command."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from faithcase.run.errors import FaithcaseError
from faithcase.run.store import FILE_MODE, remove_temporaries

LOCK_FILE = ".faithcase.lock"


class RunLock:
    """Exclusive lock on `folder`: a second writer waits (saying for whom) or, with wait=False,
    fails at once. Under the lock, leftover temporary files of earlier runs are removed."""

    def __init__(self, folder: Path, wait: bool = True, report: Callable[[str], None] = print):
        self.folder, self.wait, self.report = Path(folder), wait, report
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            self._acquire(fd)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        remove_temporaries(self.folder)
        return self

    def _acquire(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        if not self.wait:
            raise FaithcaseError(f"another faithcase run (pid {holder}) is writing {self.folder}: "
                                 "wait for it to finish, or run without --no-wait")
        self.report(f"waiting for the run in progress (pid {holder}) on {self.folder} …")
        fcntl.flock(fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None
