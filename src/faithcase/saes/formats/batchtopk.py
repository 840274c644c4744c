"""BatchTopK (bartbussmann/BatchTopK, as used by FaithfulSAE): config.json + sae.pt.

The SAE encodes in the config's declared `dtype` (e.g. "torch.bfloat16"; the repository builds
its SAE with `.to(cfg["dtype"])`); absent or unknown: float32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from faithcase.model.hooks import layer_from_hook
from faithcase.run.errors import FaithcaseError
from faithcase.saes.helpers import (
    check_shapes,
    declared_dtype,
    read_json,
    read_torch_state,
    require_keys,
)
from faithcase.saes.model import SAE
from faithcase.saes.registry import SAEFormat

BATCHTOPK_FILES = ("config.json", "sae.pt")
BATCHTOPK_TYPES = ("topk", "batchtopk", "vanilla", "jumprelu")


def load(folder: Path, hook: str | None = None) -> SAE:
    """The BatchTopK SAE in `folder`; `hook` is ignored (read from config.json)."""
    cfg = read_json(folder / "config.json")
    sae_type = _check_batchtopk_cfg(cfg, folder)
    weights = read_torch_state(folder / "sae.pt")
    required = ["W_enc", "b_enc", "W_dec", "b_dec"]
    if sae_type == "jumprelu":
        required.append("jumprelu.log_threshold")
    require_keys(weights, required, f"BatchTopK weights {folder / 'sae.pt'}")
    _check_batchtopk_sizes(cfg, weights["W_enc"], folder)
    hook_name = cfg.get("hook_point")
    layer = cfg.get("layer")
    sae = SAE(
        W_enc=weights["W_enc"],
        b_enc=_batchtopk_encoder_bias(cfg, sae_type, weights["b_enc"]),
        W_dec=weights["W_dec"],
        b_dec=weights["b_dec"],
        activation={"vanilla": "relu", "jumprelu": "jumprelu"}.get(sae_type, "topk"),
        k=_batchtopk_k(cfg, folder) if sae_type in ("topk", "batchtopk") else None,
        threshold=weights["jumprelu.log_threshold"].exp() if sae_type == "jumprelu" else None,
        input_unit_norm=bool(cfg.get("input_unit_norm", False)),
        # the repo's JumpReLU forward does not subtract b_dec (use_pre_enc_bias=False)
        apply_b_dec_to_input=sae_type != "jumprelu",
        hook_name=hook_name,
        hook_layer=layer if isinstance(layer, int) else layer_from_hook(hook_name),
        format="batchtopk",
        path=str(folder),
        declared_dtype=declared_dtype(cfg.get("dtype")),
    )
    return check_shapes(sae, folder)


def _check_batchtopk_cfg(cfg: dict[str, Any], folder: Path) -> str:
    """The config's sae_type, once the config is one our encode reproduces."""
    sae_type = cfg.get("sae_type")
    if sae_type not in BATCHTOPK_TYPES:
        raise FaithcaseError(
            f"BatchTopK SAE {folder} has sae_type={sae_type!r};"
            f" supported: {', '.join(BATCHTOPK_TYPES)}"
        )
    if cfg.get("tied_weights"):
        raise FaithcaseError(
            f"BatchTopK SAE {folder} has tied_weights=true, which is not supported"
        )
    if cfg.get("activation", "relu") != "relu":
        raise FaithcaseError(
            f"BatchTopK SAE {folder} uses activation {cfg['activation']!r};"
            f" only 'relu' is supported"
        )
    return sae_type


def _batchtopk_encoder_bias(
    cfg: dict[str, Any], sae_type: str, b_enc: torch.Tensor
) -> torch.Tensor:
    """TopK/BatchTopK encoders add no b_enc (older repo versions: only with use_encoder_bias)."""
    if sae_type in ("topk", "batchtopk") and not cfg.get("use_encoder_bias", False):
        return torch.zeros_like(b_enc)
    return b_enc


def _batchtopk_k(cfg: dict[str, Any], folder: Path) -> int:
    k = cfg.get("top_k")
    if not isinstance(k, int) or isinstance(k, bool):
        raise FaithcaseError(
            f"BatchTopK SAE {folder}: config.json needs an integer top_k, got {k!r}"
        )
    return k


def _check_batchtopk_sizes(cfg: dict[str, Any], W_enc: torch.Tensor, folder: Path) -> None:
    expected = (cfg.get("act_size"), cfg.get("dict_size"))
    if None not in expected and tuple(W_enc.shape) != expected:
        raise FaithcaseError(
            f"BatchTopK SAE {folder}: W_enc has shape {tuple(W_enc.shape)} but config.json says"
            f" act_size={expected[0]}, dict_size={expected[1]}"
        )


FORMAT = SAEFormat(
    name="batchtopk",
    title="BatchTopK",
    files=BATCHTOPK_FILES,
    load=load,
)
