"""Compare two run folders: every number and text of their JSON artifacts.

What only records how a run went is ignored: timestamps, durations, fingerprints, versions and
paths. A key only the second run has is not a difference, so a newer version that records more
still agrees with an older one on everything they share. Artifacts of an older layout are read
through RENAMES first, so a run from before a rename compares number by number.
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
        _walk(upgrade(name, _read(Path(first) / name)), upgrade(name, _read(other)), name,
              tolerance, differences)
    return differences


# the layout changes since 0.x, old -> new, applied before comparing (one field per number)
RENAMES = {
    "case_study.json": ["eleuther[docs][of][explainer] -> eleuthers (self, own) and "
                        "aurocs[explainer][own|cross][slot]",
                        "window_explanations -> explanations.window",
                        "window_eleuthers -> aurocs.window.own"],
    "embed.json": ["nulls -> explainers.null.record.partners"],
}


def upgrade(name: str, data: Any) -> Any:
    """An artifact in the current layout (RENAMES); one already current is returned as is."""
    if name == "case_study.json" and isinstance(data, list):
        return [_upgrade_case(entry) if isinstance(entry, dict) else entry for entry in data]
    if name == "embed.json" and isinstance(data, dict) and "nulls" in data:
        data = dict(data)
        nulls = data.pop("nulls")
        data.setdefault("explainers", {}).setdefault("null", {}).setdefault("record", {})[
            "partners"] = nulls
    return data


def _upgrade_case(entry: dict) -> dict:
    if "eleuther" not in entry:
        return entry
    entry = dict(entry)
    grid = entry.pop("eleuther")
    keys = list(grid)
    names = list(grid[keys[0]][keys[0]]) if keys else []
    entry["aurocs"] = {name: {side: [grid[docs][docs if side == "own" else keys[1 - slot]][name]
                                     for slot, docs in enumerate(keys)]
                              for side in ("own", "cross") if (name, side) != ("self", "own")}
                       for name in names}
    window = entry.pop("window_explanations", [])
    entry.pop("window_eleuthers", None)
    if window:
        entry["explanations"] = {**entry.get("explanations", {}), "window": window}
    return entry


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
