"""SAE checkpoints of three formats → one in-memory `SAE` with our own encode/decode.

Formats (auto-detected from the files in the folder, or named explicitly):
- "saelens":   cfg.json + sae_weights.safetensors, read through sae-lens itself;
- "sparsify":  cfg.json + sae.safetensors (EleutherAI sparsify), or a parent folder
               holding one such subfolder per hook point, chosen by `hook`;
- "batchtopk": config.json + sae.pt (bartbussmann/BatchTopK, as used by FaithfulSAE).

Hub repos (SAELens, sparsify or BatchTopK subfolders): `hub_sae_folder` downloads one SAE
folder into the Hugging Face cache; pass that folder to `load_sae`.

The SAE and its encode/decode live in `model`, the format loaders in `formats`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from faithcase.run.errors import FaithcaseError
from faithcase.saes.formats import (
    BATCHTOPK_FILES,
    BATCHTOPK_TYPES,
    FORMAT_ALIASES,
    FORMAT_FILES,
    FORMATS,
    SAELENS_ARCHITECTURES,
    SAELENS_FILES,
    SPARSIFY_FILES,
    _existing_folder,
    _has_files,
    _load_batchtopk,
    _load_saelens,
    _load_sparsify,
    _normalize_format,
    _require_files,
    _sparsify_folder,
    _sparsify_subfolders,
    select_hook_subfolder,
    sparsify_names_for_hook,
)
from faithcase.saes.hub import hub_sae_folder
from faithcase.model.hooks import layer_from_hook
from faithcase.saes.model import STANDARDIZE_EPS, SAE, standardize, topk_relu


def load_sae(
    path: str | Path,
    format: str | None = None,
    hook: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SAE:
    """Load the SAE in folder `path`; `format` overrides detection, `hook` picks a
    sparsify per-hook subfolder (see `select_hook_subfolder`; other formats ignore it:
    their hook is read from their config into `hook_name`/`hook_layer`)."""
    folder = _existing_folder(path)
    fmt = _normalize_format(format) if format else detect_format(folder)
    if fmt == "saelens":
        _require_files(folder, fmt)
        sae = _load_saelens(folder)
    elif fmt == "sparsify":
        sae = _load_sparsify(_sparsify_folder(folder, hook))
    else:
        _require_files(folder, fmt)
        sae = _load_batchtopk(folder)
    return sae.to(device=device, dtype=dtype)


def detect_format(folder: Path) -> str:
    """The format whose files the folder holds; FaithcaseError listing them if none."""
    for fmt in FORMATS:
        if _has_files(folder, FORMAT_FILES[fmt]):
            return fmt
    if _sparsify_subfolders(folder):
        return "sparsify"
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise FaithcaseError(
        f"no known SAE format in {folder}: expected SAELens (cfg.json + sae_weights.safetensors),"
        f" sparsify (cfg.json + sae.safetensors, or one such subfolder per hook)"
        f" or BatchTopK (config.json + sae.pt); found: {found}"
    )


# ---------------------------------------------------------------------------------------
# Compatibility, saving


def check_compatible(sae1: SAE, sae2: SAE) -> None:
    """Two SAEs can be matched only if they read vectors of the same width."""
    if sae1.d_in != sae2.d_in:
        raise FaithcaseError(
            f"d_in mismatch: sae1 has {sae1.d_in}, sae2 has {sae2.d_in}; both SAEs must read the same model and hook"
        )


def save_saelens(sae: SAE, folder: str | Path) -> Path:
    """Write `sae` as a SAELens folder (cfg.json + sae_weights.safetensors) via sae-lens' own
    classes; load_sae of the folder gives back the same SAE."""
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    common = dict(
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        dtype=str(sae.dtype).removeprefix("torch."),
        device="cpu",
        apply_b_dec_to_input=sae.apply_b_dec_to_input,
        normalize_activations="layer_norm" if sae.input_unit_norm else "none",
        metadata=SAEMetadata(hook_name=sae.hook_name, hook_layer=sae.hook_layer),
    )
    state = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.activation == "topk":
        cfg = sae_lens.TopKSAEConfig(k=sae.k, rescale_acts_by_decoder_norm=sae.rescale_acts_by_decoder_norm, **common)
        lens = sae_lens.TopKSAE(cfg)
    elif sae.rescale_acts_by_decoder_norm:
        raise FaithcaseError("rescale_acts_by_decoder_norm is a SAELens TopK option; this SAE is not TopK")
    elif sae.activation == "relu":
        lens = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(**common))
    elif sae.activation == "jumprelu":
        lens = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(**common))
        state["threshold"] = sae.threshold
    else:
        raise FaithcaseError(f"cannot save activation {sae.activation!r} in SAELens format")
    lens.load_state_dict({name: t.detach().cpu() for name, t in state.items()})
    out = Path(folder)
    lens.save_model(out)
    return out


__all__ = [
    "SAE",
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
    "hub_sae_folder",
    "select_hook_subfolder",
    "sparsify_names_for_hook",
    "layer_from_hook",
    "check_compatible",
    "save_saelens",
    "standardize",
    "topk_relu",
]
