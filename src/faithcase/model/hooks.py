"""Hook names of the residual stream, written and parsed in one place, and the steering hook.

TransformerLens names: `blocks.{L}.hook_resid_pre` is the residual entering block L (= HF
`hidden_states[L]`), `blocks.{L}.hook_resid_post` the residual leaving it
(= `blocks.{L+1}.hook_resid_pre`); `blocks.{L}.hook_mlp_out` is the output of block L's MLP
before it joins the residual (= the output of HF module `layers.{L}.mlp`, sparsify's
`layers.{L}.mlp`). The model reads any hook its TransformerBridge has (`LanguageModel.check_hook`).
"""

from __future__ import annotations

import re
from typing import Callable, Literal

import torch

from faithcase.run.errors import FaithcaseError

SteerMode = Literal["replace", "add"]
_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(\w+)$")
_ANY_LAYER = re.compile(r"(?:^|\.)(?:blocks|layers|layer|h)\.(\d+)(?:\.|$)")


def resid_pre(layer: int) -> str:
    return f"blocks.{int(layer)}.hook_resid_pre"


def resid_post(layer: int) -> str:
    return f"blocks.{int(layer)}.hook_resid_post"


def hook_layer(hook: str) -> int:
    """Layer L of a block hook `blocks.{L}.<point>`; FaithcaseError for anything else."""
    match = _BLOCK_HOOK.match(hook)
    if not match:
        raise FaithcaseError(f"{hook!r} is not a block hook: it must look like "
                             f"blocks.<layer>.<hook point> (e.g. {resid_pre(12)})")
    return int(match.group(1))


def layer_from_hook(hook: str | None) -> int | None:
    """The layer number in any hook-like name (blocks.12.hook_resid_pre, model.layers.3), or
    None."""
    match = _ANY_LAYER.search(hook or "")
    return int(match.group(1)) if match else None


def same_site(a: str, b: str) -> bool:
    """Two hook names of the same residual site (blocks.N.hook_resid_post =
    blocks.N+1.hook_resid_pre)."""
    def canonical(name: str) -> str:
        match = _BLOCK_HOOK.match(name)
        if match and match.group(2) == "hook_resid_post":
            return resid_pre(int(match.group(1)) + 1)
        return name
    return canonical(a) == canonical(b)


def different_sites(a: str | None, b: str | None) -> bool:
    """Two declared hook names that are residual-stream hooks of different sites (names without
    a layer, e.g. a sparsify folder's, are not compared)."""
    if not a or not b or layer_from_hook(a) is None or layer_from_hook(b) is None:
        return False
    return not same_site(a, b)


def steering_hook(positions_mask: torch.Tensor, vectors: torch.Tensor,
                  mode: SteerMode = "replace") -> Callable:
    """Hook fn for a `hook_resid_pre`: at positions where positions_mask [B, T] is True, set the
    residual to vectors [B, d_model] (replace) or add them (add).

    It acts only on a pass whose sequence length is the mask's T, so during KV-cached
    generation (one new token per step) it leaves the residual alone.
    """
    if mode not in ("replace", "add"):
        raise FaithcaseError(f"Unknown steering mode '{mode}'; use 'replace' or 'add'.")
    if positions_mask.ndim != 2 or vectors.ndim != 2 or vectors.shape[0] != positions_mask.shape[0]:
        raise ValueError("positions_mask must be [B, T] and vectors [B, d_model] with the same B")
    prompt_len = positions_mask.shape[1]

    def hook_fn(resid: torch.Tensor, hook=None) -> torch.Tensor:
        if resid.shape[1] != prompt_len:
            return resid
        mask = positions_mask.to(resid.device)[:, :, None]
        vec = vectors.to(device=resid.device, dtype=resid.dtype)[:, None, :]
        if mode == "replace":
            return torch.where(mask, vec, resid)
        return resid + mask.to(resid.dtype) * vec

    return hook_fn


def steered_at(layer: int, positions_mask: torch.Tensor, vectors: torch.Tensor,
               mode: SteerMode = "replace") -> tuple[str, Callable]:
    """The (hook name, hook fn) pair that steers the residual entering block `layer`."""
    return resid_pre(layer), steering_hook(positions_mask, vectors, mode)
