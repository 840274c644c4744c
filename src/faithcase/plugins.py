"""The registry of explainers and scores: the built-in modules below, then the plugins a run names
(the config's `plugins`, then FAITHCASE_PLUGINS, comma-separated). A plugin is an importable
module name or a `.py` file that declares `EXPLAINER` (an Explainer) and/or `SCORE` (a Score):
adding one touches no other file. Fingerprints cover every module's source (`signature`), so a
changed explainer or score recomputes what it feeds."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from types import ModuleType

from faithcase.explainers import Explainer, ordered
from faithcase.run.errors import FaithcaseError
from faithcase.scores import Score

BUILTIN = ("faithcase.explainers.self_explanation", "faithcase.explainers.window",
           "faithcase.explainers.baseline", "faithcase.explainers.null",
           "faithcase.explainers.truth")
PLUGINS_ENV = "FAITHCASE_PLUGINS"


def plugin_names(configured: tuple[str, ...] | list[str] = ()) -> list[str]:
    env = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    return list(dict.fromkeys([*configured, *env]))


def _load(name: str, base_dir: Path | None) -> ModuleType:
    if name.endswith(".py"):
        path = Path(name) if Path(name).is_absolute() else (base_dir or Path.cwd()) / name
        if not path.is_file():
            raise FaithcaseError(f"plugin file not found: {path}")
        key = f"faithcase_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if key not in sys.modules:
            spec = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            try:
                spec.loader.exec_module(module)
            except Exception as err:
                del sys.modules[key]
                raise FaithcaseError(f"plugin {path} failed to load: {err}") from None
        return sys.modules[key]
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise FaithcaseError(f"plugin {name!r} cannot be imported ({err}): give a module on "
                             "the Python path or a .py file") from None


def modules(configured=(), base_dir: Path | None = None) -> list[ModuleType]:
    found = [_load(name, None) for name in BUILTIN]
    plugins = [_load(name, base_dir) for name in plugin_names(configured)]
    for name, module in zip(plugin_names(configured), plugins):
        if not hasattr(module, "EXPLAINER") and not hasattr(module, "SCORE"):
            raise FaithcaseError(f"plugin {name!r} declares neither EXPLAINER nor SCORE")
    return found + plugins


def explainers(configured=(), base_dir: Path | None = None) -> list[Explainer]:
    """Every explainer, explainers before controls; FaithcaseError on a name given twice."""
    found = [m.EXPLAINER for m in modules(configured, base_dir) if hasattr(m, "EXPLAINER")]
    _unique([e.name for e in found], "explainer")
    return ordered(found)


def scores(configured=(), base_dir: Path | None = None) -> list[Score]:
    found = [m.SCORE for m in modules(configured, base_dir) if hasattr(m, "SCORE")]
    _unique([s.name for s in found], "score")
    return found


def signature(configured=(), base_dir: Path | None = None,
              declaring: str | None = None) -> dict[str, str]:
    """Each module's name -> a hash of its source (only those declaring `declaring`, e.g.
    "EXPLAINER", when given): what the fingerprints of embed and assemble cover."""
    out = {}
    for module in modules(configured, base_dir):
        if declaring and not hasattr(module, declaring):
            continue
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):
            source = repr(sorted(vars(module)))
        out[module.__name__] = hashlib.sha256(source.encode()).hexdigest()[:16]
    return out


def _unique(names: list[str], what: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise FaithcaseError(f"two plugins declare the {what} {name!r}: rename one")
        seen.add(name)
