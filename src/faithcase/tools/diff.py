"""Compare two run folders: every number and text of their JSON artifacts.

What only records how a run went is ignored: timestamps, durations, fingerprints, versions and
paths. A key only the second run has is not a difference, so a newer version that records more
still agrees with an older one on everything they share.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

from faithcase.artifacts import LEDGER_FILE
from faithcase.run.errors import FaithcaseError

IGNORED_KEYS = frozenset({"meta", "created", "seconds", "fingerprint", "upstream", "version",
                          "path", "base_dir", "out_dir"})


def compare_runs(first: Path, second: Path, tolerance: float = 0.0) -> list[str]:
    """Differences between the JSON artifacts of two run folders, one line each (empty: they agree).

    Floats are equal when within `tolerance` relative (0: exactly equal)."""
    for folder in (first, second):
        if not Path(folder).is_dir():
            raise FaithcaseError(f"run folder not found: {folder}")
    names = sorted(p.name for p in Path(first).glob("*.json") if p.name != LEDGER_FILE)
    if not names:
        raise FaithcaseError(f"no JSON artifacts in {first}")
    differences: list[str] = []
    for name in names:
        other = Path(second) / name
        if not other.is_file():
            differences.append(f"{name}: missing in {second}")
            continue
        _walk(_read(Path(first) / name), _read(other), name, tolerance, differences)
    return differences


def _read(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as err:
        raise FaithcaseError(f"{path} is not valid JSON ({err})") from None


def _walk(a: Any, b: Any, where: str, tolerance: float, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            if key in IGNORED_KEYS:
                continue
            if key not in b:
                out.append(f"{where}.{key}: missing in the second run")
            else:
                _walk(a[key], b[key], f"{where}.{key}", tolerance, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} items vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{where}[{i}]", tolerance, out)
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        if not _floats_agree(a, b, tolerance):
            out.append(f"{where}: {a!r} vs {b!r}")
    elif a != b:
        out.append(f"{where}: {_short(a)} vs {_short(b)}")


def _floats_agree(a: float, b: float, tolerance: float) -> bool:
    """Equal, within `tolerance` relative, or both NaN."""
    return (a == b or math.isclose(a, b, rel_tol=tolerance, abs_tol=0.0)
            or (math.isnan(a) and math.isnan(b)))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
