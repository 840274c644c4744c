"""The SAE format registry: every module of the `faithcase.saes.formats` package declares one
format, `FORMAT = SAEFormat(...)`, so a new format is one new file there.

Discovery iterates the package's modules (pkgutil over `formats.__path__`, skipping names that
start with "_") once, on first use; `clear_cache()` forgets the result. Order: the built-in
saelens, sparsify, batchtopk, then the others by name. Detection asks every format, in that
order, whether the folder holds its identifying files; only when none does is each format's
`detect` asked, in the same order (e.g. sparsify's: a folder of per-hook subfolders), so a
format's own files always win over another format's wider layout.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch

from faithcase.run.errors import FaithcaseError
from faithcase.run.machine import choose_dtype
from faithcase.saes.helpers import existing_folder, has_files, listing, one_line, require_files
from faithcase.saes.model import SAE

FORMATS_PACKAGE = "faithcase.saes.formats"
BUILTIN_ORDER = ("saelens", "sparsify", "batchtopk")

Loader = Callable[[Path, Optional[str]], SAE]


@dataclass(frozen=True)
class SAEFormat:
    """One checkpoint format.

    name:        what `format:` in the config and `SAE.format` say (lowercase);
    files:       the files that identify a folder of this format;
    load:        load(folder, hook) -> SAE, for an existing folder (`hook` chooses among
                 several SAEs in one folder; formats that read it from their config ignore it),
                 its weights as stored and `declared_dtype` the checkpoint's (None: float32);
    aliases:     other accepted spellings of `name`;
    detect:      detect(folder) -> bool, whether the folder holds this format (default: all
                 of `files`); asked only when no format's files are there;
    title:       the name in messages (default `name`);
    expects:     the layout in messages (default the files, "a + b");
    check_files: load_sae checks `files` before `load` (False: `load` resolves the layout).
    """

    name: str
    files: tuple[str, ...]
    load: Loader = field(repr=False, compare=False)
    aliases: tuple[str, ...] = ()
    detect: Callable[[Path], bool] | None = field(default=None, repr=False, compare=False)
    title: str = ""
    expects: str = ""
    check_files: bool = True

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower():
            raise ValueError(f"SAE format name {self.name!r} must be a non-empty lowercase string")
        if not self.files or not all(isinstance(f, str) and f for f in self.files):
            raise ValueError(f"SAE format {self.name!r} needs its identifying file names")
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "aliases", tuple(alias.lower() for alias in self.aliases))
        if self.detect is None:
            object.__setattr__(self, "detect", partial(has_files, names=self.files))

    def has_files(self, folder: Path) -> bool:
        """Whether `folder` holds every identifying file of this format."""
        return has_files(folder, self.files)

    @property
    def description(self) -> str:
        """E.g. "SAELens (cfg.json + sae_weights.safetensors)"."""
        return f"{self.title or self.name} ({self.expects or ' + '.join(self.files)})"


# ---------------------------------------------------------------------------------------
# Discovery

_CACHE: tuple[SAEFormat, ...] | None = None


def registered_formats() -> tuple[SAEFormat, ...]:
    """Every declared format, in detection order (discovered on first use)."""
    global _CACHE
    if _CACHE is None:
        _CACHE = _discover()
    return _CACHE


def clear_cache() -> None:
    """Forget the discovered formats: the next use iterates the package again."""
    global _CACHE
    _CACHE = None


def format_names() -> tuple[str, ...]:
    """The registered format names, in detection order."""
    return tuple(fmt.name for fmt in registered_formats())


def _discover() -> tuple[SAEFormat, ...]:
    package = importlib.import_module(FORMATS_PACKAGE)
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            found.append(_declared_format(f"{FORMATS_PACKAGE}.{info.name}"))
    ordered = tuple(sorted(found, key=_order))
    _check_unique(ordered)
    return ordered


def _declared_format(module_name: str) -> SAEFormat:
    try:
        module = importlib.import_module(module_name)
    except FaithcaseError:
        raise
    except Exception as exc:
        raise FaithcaseError(
            f"cannot import SAE format module {module_name}: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    declared = getattr(module, "FORMAT", None)
    if not isinstance(declared, SAEFormat):
        raise FaithcaseError(
            f"SAE format module {module_name} ({module.__file__}) declares no"
            f" FORMAT = SAEFormat(...); name helper modules with a leading underscore"
        )
    return declared


def _order(fmt: SAEFormat) -> tuple[int, str]:
    builtin = BUILTIN_ORDER.index(fmt.name) if fmt.name in BUILTIN_ORDER else len(BUILTIN_ORDER)
    return builtin, fmt.name


def _check_unique(formats: tuple[SAEFormat, ...]) -> None:
    seen: dict[str, str] = {}
    for fmt in formats:
        for spelling in (fmt.name, *fmt.aliases):
            if spelling in seen:
                raise FaithcaseError(
                    f"SAE format name {spelling!r} is declared twice ({seen[spelling]}, {fmt.name})"
                )
            seen[spelling] = fmt.name


# ---------------------------------------------------------------------------------------
# Lookup, detection, loading


def get_format(name: str) -> SAEFormat:
    """The format called `name` (or one of its aliases, any case); FaithcaseError listing the
    registered names if there is none."""
    key = name.lower()
    for fmt in registered_formats():
        if key == fmt.name or key in fmt.aliases:
            return fmt
    raise FaithcaseError(f"unknown SAE format {name!r}; choose one of {', '.join(format_names())}")


def find_format(folder: Path) -> SAEFormat:
    """The format of the SAE in `folder`; FaithcaseError listing every layout if none."""
    formats = registered_formats()
    for fmt in formats:
        if fmt.has_files(folder):
            return fmt
    for fmt in formats:
        if fmt.detect(folder):
            return fmt
    descriptions = [fmt.description for fmt in formats]
    expected = ", ".join(descriptions[:-1]) + (" or " if len(descriptions) > 1 else "")
    raise FaithcaseError(
        f"no known SAE format in {folder}: expected {expected}{descriptions[-1]};"
        f" found: {listing(folder)}"
    )


def detect_format(folder: Path) -> str:
    """The name of the format whose files the folder holds; FaithcaseError listing them if none."""
    return find_format(Path(folder)).name


def load_sae(
    path: str | Path,
    format: str | None = None,
    hook: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> SAE:
    """Load the SAE in folder `path`; `format` overrides detection, `hook` picks a
    sparsify per-hook subfolder (see `select_hook_subfolder`; other formats ignore it:
    their hook is read from their config into `hook_name`/`hook_layer`). The weights are cast
    once, from the stored tensors, to `dtype`, or when None (auto) to the checkpoint's declared
    dtype (`SAE.declared_dtype`; None: float32), except half precision on a CPU where it is slow
    (run/machine.py; `SAE.dtype_note` says why)."""
    folder = existing_folder(path)
    fmt = get_format(format) if format else find_format(folder)
    if fmt.check_files:
        require_files(folder, fmt.name, fmt.files)
    sae = fmt.load(folder, hook)
    choice = choose_dtype(sae.declared_dtype, device, dtype)
    return replace(sae.to(device=device, dtype=choice.used), dtype_note=choice.reason)
