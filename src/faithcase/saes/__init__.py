"""SAE checkpoints of every registered format → one in-memory `SAE` with our own encode/decode.

Formats (auto-detected from the files in the folder, or named explicitly), one module each in
`faithcase.saes.formats`, found by the registry (`faithcase.saes.registry`):
- "saelens":   cfg.json + sae_weights.safetensors, read through sae-lens itself;
- "sparsify":  cfg.json + sae.safetensors (EleutherAI sparsify), or a parent folder
               holding one such subfolder per hook point, chosen by `hook`;
- "batchtopk": config.json + sae.pt (bartbussmann/BatchTopK, as used by FaithfulSAE);
- any other module of that package declaring `FORMAT = SAEFormat(...)`.

Hub repos (SAELens, sparsify or BatchTopK subfolders): `hub_sae_folder` downloads one SAE
folder into the Hugging Face cache; pass that folder to `load_sae`.

Each SAE encodes in its checkpoint's declared dtype (unknown: float32) unless `load_sae` is
given one. The SAE and its encode/decode live in `model`, the shared loader checks in `helpers`.
FORMATS, FORMAT_ALIASES and FORMAT_FILES are read from the registry when accessed.
"""

from __future__ import annotations

from typing import Any

from faithcase.model.hooks import layer_from_hook
from faithcase.run.errors import FaithcaseError
from faithcase.saes.formats.batchtopk import BATCHTOPK_FILES, BATCHTOPK_TYPES
from faithcase.saes.formats.saelens import SAELENS_ARCHITECTURES, SAELENS_FILES, save_saelens
from faithcase.saes.formats.sparsify import (
    SPARSIFY_FILES,
    select_hook_subfolder,
    sparsify_names_for_hook,
)
from faithcase.saes.hub import hub_sae_folder
from faithcase.saes.model import STANDARDIZE_EPS, SAE, standardize, topk_relu
from faithcase.saes.registry import (
    SAEFormat,
    detect_format,
    format_names,
    get_format,
    load_sae,
    registered_formats,
)


def check_compatible(sae1: SAE, sae2: SAE) -> None:
    """Two SAEs can be matched only if they read vectors of the same width."""
    if sae1.d_in != sae2.d_in:
        raise FaithcaseError(
            f"d_in mismatch: sae1 has {sae1.d_in}, sae2 has {sae2.d_in};"
            f" both SAEs must read the same model and hook"
        )


def __getattr__(name: str) -> Any:
    """The registry's current view, for the names that once were constants."""
    if name == "FORMATS":
        return format_names()
    if name == "FORMAT_ALIASES":
        return {alias: fmt.name for fmt in registered_formats() for alias in fmt.aliases}
    if name == "FORMAT_FILES":
        return {fmt.name: fmt.files for fmt in registered_formats()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SAE",
    "SAEFormat",
    "FORMATS",
    "FORMAT_ALIASES",
    "FORMAT_FILES",
    "SAELENS_FILES",
    "SPARSIFY_FILES",
    "BATCHTOPK_FILES",
    "SAELENS_ARCHITECTURES",
    "BATCHTOPK_TYPES",
    "STANDARDIZE_EPS",
    "load_sae",
    "detect_format",
    "format_names",
    "get_format",
    "registered_formats",
    "hub_sae_folder",
    "select_hook_subfolder",
    "sparsify_names_for_hook",
    "layer_from_hook",
    "check_compatible",
    "save_saelens",
    "standardize",
    "topk_relu",
]
