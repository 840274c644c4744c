"""EleutherAI sparsify: cfg.json + sae.safetensors, or a parent folder holding one such
subfolder per hook point, chosen by `hook` (see `select_hook_subfolder`).

cfg.json declares no dtype: like sparsify's own `load_from_disk`, the SAE encodes in the dtype
its weights are stored in (encoder.weight's)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from faithcase.model.hooks import layer_from_hook
from faithcase.run.errors import FaithcaseError
from faithcase.saes.helpers import (
    check_shapes,
    declared_dtype,
    has_files,
    read_json,
    read_safetensors,
    require_files,
    require_keys,
)
from faithcase.saes.model import SAE
from faithcase.saes.registry import SAEFormat

SPARSIFY_FILES = ("cfg.json", "sae.safetensors")


def detect(folder: Path) -> bool:
    """A sparsify SAE folder, or a folder of per-hook sparsify subfolders."""
    return has_files(folder, SPARSIFY_FILES) or bool(_sparsify_subfolders(folder))


def load(folder: Path, hook: str | None = None) -> SAE:
    """The sparsify SAE in `folder`, or in its per-hook subfolder for `hook`."""
    return _load_sparsify(_sparsify_folder(folder, hook))


def _sparsify_subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and has_files(p, SPARSIFY_FILES))


def _sparsify_folder(folder: Path, hook: str | None) -> Path:
    """The folder holding the sparsify SAE: `folder` itself or its subfolder for `hook`."""
    if has_files(folder, SPARSIFY_FILES):
        return folder
    subfolders = _sparsify_subfolders(folder)
    if not subfolders:
        require_files(folder, "sparsify", SPARSIFY_FILES)
    return folder / select_hook_subfolder([p.name for p in subfolders], hook, folder)


def sparsify_names_for_hook(hook: str) -> set[str]:
    """sparsify hook-point names equivalent to a TransformerLens hook.

    sparsify hooks module outputs (a forward hook's `outputs`; its transcoders read `inputs`), so
    `layers.N` holds the residual stream after block N: blocks.N.hook_resid_post =
    blocks.(N+1).hook_resid_pre = HF hidden_states[N+1]; and `layers.N.mlp` the MLP's output
    before it joins the residual: blocks.N.hook_mlp_out.
    """
    mlp = re.fullmatch(r"blocks\.(\d+)\.hook_mlp_out", hook)
    if mlp:
        return {f"layers.{mlp.group(1)}.mlp"}
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook)
    if not match:
        return set()
    layer = int(match.group(1)) - (1 if match.group(2) == "pre" else 0)
    return {f"layers.{layer}"} if layer >= 0 else set()


def select_hook_subfolder(names: list[str], hook: str | None, parent: Path) -> str:
    """Pick a per-hook subfolder. Rule: a subfolder named exactly `hook`; otherwise, for a
    TransformerLens residual hook, the sparsify subfolder of the same site, `layers.N` (or
    `<prefix>.layers.N`) for blocks.N.hook_resid_post / blocks.(N+1).hook_resid_pre, and
    `layers.N.mlp` for blocks.N.hook_mlp_out; with no hook, the only subfolder. Anything else
    (no match, several) is an error."""
    if hook is None:
        if len(names) == 1:
            return names[0]
        raise _hook_error(
            parent, names, "several per-hook subfolders; set the SAE's hook to choose one"
        )
    if hook in names:
        return hook
    wanted = sparsify_names_for_hook(hook)
    matches = [n for n in names if any(n == w or n.endswith("." + w) for w in wanted)]
    if len(matches) == 1:
        return matches[0]
    problem = "several subfolders match" if matches else "no subfolder matches"
    raise _hook_error(parent, names, f"{problem} hook {hook!r}")


def _hook_error(parent: Path, names: list[str], problem: str) -> FaithcaseError:
    return FaithcaseError(
        f"{parent}: {problem}; available: {', '.join(names)}"
        f" (sparsify layers.N = blocks.N.hook_resid_post = blocks.N+1.hook_resid_pre;"
        f" layers.N.mlp = blocks.N.hook_mlp_out)"
    )


def _load_sparsify(folder: Path) -> SAE:
    cfg = read_json(folder / "cfg.json")
    _check_sparsify_cfg(cfg, folder)
    weights = read_safetensors(folder / "sae.safetensors")
    required = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
    require_keys(weights, required, f"sparsify weights {folder / 'sae.safetensors'}")
    if "W_skip" in weights:
        raise FaithcaseError(
            f"sparsify SAE {folder} has a skip connection (W_skip), which is not supported"
        )
    d_in = cfg.get("d_in")
    if d_in is not None and d_in != weights["encoder.weight"].shape[-1]:
        raise FaithcaseError(
            f"sparsify SAE {folder}: cfg.json d_in={d_in} but encoder.weight has shape"
            f" {tuple(weights['encoder.weight'].shape)}"
        )
    hook_name = _sparsify_hook_name(folder.name)
    sae = SAE(
        W_enc=weights["encoder.weight"].T.contiguous(),
        b_enc=weights["encoder.bias"],
        W_dec=weights["W_dec"],
        b_dec=weights["b_dec"],
        activation="topk",
        k=int(cfg.get("k", 0)),
        apply_b_dec_to_input=True,
        hook_name=hook_name,
        hook_layer=layer_from_hook(hook_name),
        format="sparsify",
        path=str(folder),
        fused_bias=True,  # nn.Linear: one addmm in every dtype
        declared_dtype=declared_dtype(weights["encoder.weight"].dtype),
    )
    return check_shapes(sae, folder)


def _check_sparsify_cfg(cfg: dict[str, Any], folder: Path) -> None:
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise FaithcaseError(
            f"sparsify SAE {folder} uses activation {activation!r}; only 'topk' is supported"
        )
    if cfg.get("transcode"):
        raise FaithcaseError(
            f"sparsify checkpoint {folder} is a transcoder (transcode=true), not an SAE"
        )
    if cfg.get("skip_connection"):
        raise FaithcaseError(
            f"sparsify SAE {folder} has skip_connection=true, which is not supported"
        )
    # multi_topk only changes a training loss, not the encoder: accepted.


def _sparsify_hook_name(folder_name: str) -> str:
    """TransformerLens name of a sparsify hook point: `[prefix.]layers.N` is the residual
    stream after block N, `[prefix.]layers.N.mlp` the output of its MLP; other names are kept
    as they are."""
    mlp = re.fullmatch(r"(?:.*\.)?layers\.(\d+)\.mlp", folder_name)
    if mlp:
        return f"blocks.{mlp.group(1)}.hook_mlp_out"
    match = re.fullmatch(r"(?:.*\.)?layers\.(\d+)", folder_name)
    return f"blocks.{match.group(1)}.hook_resid_post" if match else folder_name


FORMAT = SAEFormat(
    name="sparsify",
    files=SPARSIFY_FILES,
    aliases=("eleuther",),
    detect=detect,
    load=load,
    expects="cfg.json + sae.safetensors, or one such subfolder per hook",
    check_files=False,  # `load` finds the per-hook subfolder, or names the missing files
)
