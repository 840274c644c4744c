"""The three checkpoint formats: their files, config checks and loaders into `SAE`."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from faithcase.run.errors import FaithcaseError
from faithcase.model.hooks import layer_from_hook
from faithcase.saes.model import SAE

FORMATS = ("saelens", "sparsify", "batchtopk")
FORMAT_ALIASES = {"sae_lens": "saelens", "sae-lens": "saelens", "eleuther": "sparsify"}

# The files that identify each format (the weights and the config).
SAELENS_FILES = ("cfg.json", "sae_weights.safetensors")
SPARSIFY_FILES = ("cfg.json", "sae.safetensors")
BATCHTOPK_FILES = ("config.json", "sae.pt")
FORMAT_FILES = {"saelens": SAELENS_FILES, "sparsify": SPARSIFY_FILES, "batchtopk": BATCHTOPK_FILES}

SAELENS_ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
BATCHTOPK_TYPES = ("topk", "batchtopk", "vanilla", "jumprelu")


def _existing_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FaithcaseError(f"SAE folder not found: {folder}")
    if not folder.is_dir():
        raise FaithcaseError(f"SAE path is a file, not a folder: {folder}; give the folder that holds it")
    return folder


def _normalize_format(format: str) -> str:
    fmt = FORMAT_ALIASES.get(format.lower(), format.lower())
    if fmt not in FORMATS:
        raise FaithcaseError(f"unknown SAE format {format!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def _has_files(folder: Path, names: tuple[str, ...]) -> bool:
    return all((folder / name).is_file() for name in names)


def _require_files(folder: Path, fmt: str) -> None:
    missing = [name for name in FORMAT_FILES[fmt] if not (folder / name).is_file()]
    if missing:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise FaithcaseError(
            f"{folder} is not a {fmt} SAE folder: missing {', '.join(missing)}"
            f" ({fmt} expects {' + '.join(FORMAT_FILES[fmt])}); found: {found}"
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


@contextmanager
def _reading(what: str, path: Path) -> Iterator[None]:
    """Turn any failure while reading a checkpoint into one FaithcaseError line."""
    try:
        yield
    except FaithcaseError:
        raise
    except Exception as exc:
        raise FaithcaseError(f"cannot read {what} {path}: {type(exc).__name__}: {_one_line(exc)}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    with _reading("SAE config", path):
        data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise FaithcaseError(f"SAE config {path} is not a JSON object")
    return data


def _check_shapes(sae: SAE, path: Path) -> SAE:
    d_in, d_sae = sae.W_enc.shape
    expected = {
        "b_enc": (sae.b_enc, (d_sae,)),
        "W_dec": (sae.W_dec, (d_sae, d_in)),
        "b_dec": (sae.b_dec, (d_in,)),
    }
    if sae.threshold is not None:
        expected["threshold"] = (sae.threshold, (d_sae,))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise FaithcaseError(
                f"SAE weights in {path} are inconsistent: {name} has shape {tuple(tensor.shape)},"
                f" expected {shape} for W_enc {(d_in, d_sae)}"
            )
    if sae.activation == "topk" and not (sae.k and 0 < sae.k <= d_sae):
        raise FaithcaseError(f"SAE in {path} has top-k k={sae.k}, which must be between 1 and d_sae={d_sae}")
    return sae


# --- SAELens ---------------------------------------------------------------------------


def _load_saelens(folder: Path) -> SAE:
    cfg = _read_json(folder / "cfg.json")
    _check_saelens_cfg(cfg, folder)
    from sae_lens import SAE as LensSAE  # slow import (~6 s): only when needed

    with _reading("SAELens SAE", folder):
        lens = LensSAE.load_from_disk(folder, device="cpu")
    architecture = lens.cfg.architecture()
    if architecture not in SAELENS_ARCHITECTURES:
        raise _unsupported_architecture(architecture, folder)
    hook_name = lens.cfg.metadata.hook_name
    hook_layer = layer_from_hook(hook_name)
    if hook_layer is None and isinstance(lens.cfg.metadata.hook_layer, int):
        hook_layer = lens.cfg.metadata.hook_layer
    sae = SAE(
        W_enc=lens.W_enc.detach().clone(),
        b_enc=lens.b_enc.detach().clone(),
        W_dec=lens.W_dec.detach().clone(),
        b_dec=lens.b_dec.detach().clone(),
        activation=SAELENS_ARCHITECTURES[architecture],
        k=int(lens.cfg.k) if architecture == "topk" else None,
        threshold=lens.threshold.detach().clone() if architecture == "jumprelu" else None,
        input_unit_norm=lens.cfg.normalize_activations == "layer_norm",
        apply_b_dec_to_input=bool(lens.cfg.apply_b_dec_to_input),
        rescale_acts_by_decoder_norm=bool(getattr(lens.cfg, "rescale_acts_by_decoder_norm", False)),
        hook_name=hook_name,
        hook_layer=hook_layer,
        format="saelens",
        path=str(folder),
    )
    return _check_shapes(sae, folder)


def _check_saelens_cfg(cfg: dict[str, Any], folder: Path) -> None:
    """Reject, before loading, what our encode does not reproduce exactly."""
    architecture = cfg.get("architecture")
    if architecture is not None and architecture not in SAELENS_ARCHITECTURES:
        raise _unsupported_architecture(architecture, folder)
    normalize = cfg.get("normalize_activations") or "none"
    if normalize not in ("none", "layer_norm"):
        raise FaithcaseError(
            f"SAELens SAE {folder} has normalize_activations={normalize!r}, which faithcase does not"
            f" support; fold the normalization into the weights (e.g. sae.fold_activation_norm_scaling_factor)"
            f" and save it with normalize_activations='none'"
        )
    if cfg.get("reshape_activations", "none") not in (None, "none"):
        raise FaithcaseError(
            f"SAELens SAE {folder} has reshape_activations={cfg['reshape_activations']!r} (attention hook_z SAEs);"
            f" only residual-style SAEs with inputs [..., d_in] are supported"
        )


def _unsupported_architecture(architecture: str, folder: Path) -> FaithcaseError:
    return FaithcaseError(
        f"SAELens architecture {architecture!r} of {folder} is not supported;"
        f" supported: {', '.join(SAELENS_ARCHITECTURES)}"
    )


# --- sparsify --------------------------------------------------------------------------


def _sparsify_subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _has_files(p, SPARSIFY_FILES))


def _sparsify_folder(folder: Path, hook: str | None) -> Path:
    """The folder holding the sparsify SAE: `folder` itself or its subfolder for `hook`."""
    if _has_files(folder, SPARSIFY_FILES):
        return folder
    subfolders = _sparsify_subfolders(folder)
    if not subfolders:
        _require_files(folder, "sparsify")
    return folder / select_hook_subfolder([p.name for p in subfolders], hook, folder)


def sparsify_names_for_hook(hook: str) -> set[str]:
    """sparsify hook-point names equivalent to a TransformerLens residual hook.

    sparsify hooks module outputs, so `layers.N` holds the residual stream after block N:
    blocks.N.hook_resid_post = blocks.(N+1).hook_resid_pre = HF hidden_states[N+1].
    """
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook)
    if not match:
        return set()
    layer = int(match.group(1)) - (1 if match.group(2) == "pre" else 0)
    return {f"layers.{layer}"} if layer >= 0 else set()


def select_hook_subfolder(names: list[str], hook: str | None, parent: Path) -> str:
    """Pick a per-hook subfolder. Rule: a subfolder named exactly `hook`; otherwise, for a
    TransformerLens residual hook, the sparsify subfolder of the same site, `layers.N` (or
    `<prefix>.layers.N`) for blocks.N.hook_resid_post / blocks.(N+1).hook_resid_pre;
    with no hook, the only subfolder. Anything else (no match, several) is an error."""
    if hook is None:
        if len(names) == 1:
            return names[0]
        raise _hook_error(parent, names, "several per-hook subfolders; set the SAE's hook to choose one")
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
        f" (sparsify layers.N = blocks.N.hook_resid_post = blocks.N+1.hook_resid_pre)"
    )


def _load_sparsify(folder: Path) -> SAE:
    cfg = _read_json(folder / "cfg.json")
    _check_sparsify_cfg(cfg, folder)
    weights = _read_safetensors(folder / "sae.safetensors")
    required = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
    missing = [key for key in required if key not in weights]
    if missing:
        raise FaithcaseError(
            f"sparsify weights {folder / 'sae.safetensors'} lack {', '.join(missing)}; found: {', '.join(sorted(weights))}"
        )
    if "W_skip" in weights:
        raise FaithcaseError(f"sparsify SAE {folder} has a skip connection (W_skip), which is not supported")
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
    )
    return _check_shapes(sae, folder)


def _check_sparsify_cfg(cfg: dict[str, Any], folder: Path) -> None:
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise FaithcaseError(f"sparsify SAE {folder} uses activation {activation!r}; only 'topk' is supported")
    if cfg.get("transcode"):
        raise FaithcaseError(f"sparsify checkpoint {folder} is a transcoder (transcode=true), not an SAE")
    if cfg.get("skip_connection"):
        raise FaithcaseError(f"sparsify SAE {folder} has skip_connection=true, which is not supported")
    # multi_topk only changes a training loss, not the encoder: accepted.


def _sparsify_hook_name(folder_name: str) -> str:
    """TransformerLens name of a sparsify hook point: `[prefix.]layers.N` is the residual
    stream after block N; other names are kept as they are."""
    match = re.fullmatch(r"(?:.*\.)?layers\.(\d+)", folder_name)
    return f"blocks.{match.group(1)}.hook_resid_post" if match else folder_name


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    with _reading("SAE weights", path):
        return load_file(str(path), device="cpu")


# --- BatchTopK (FaithfulSAE) ------------------------------------------------------------


def _load_batchtopk(folder: Path) -> SAE:
    cfg = _read_json(folder / "config.json")
    sae_type = cfg.get("sae_type")
    if sae_type not in BATCHTOPK_TYPES:
        raise FaithcaseError(
            f"BatchTopK SAE {folder} has sae_type={sae_type!r}; supported: {', '.join(BATCHTOPK_TYPES)}"
        )
    if cfg.get("tied_weights"):
        raise FaithcaseError(f"BatchTopK SAE {folder} has tied_weights=true, which is not supported")
    if cfg.get("activation", "relu") != "relu":
        raise FaithcaseError(f"BatchTopK SAE {folder} uses activation {cfg['activation']!r}; only 'relu' is supported")
    weights = _read_torch_state(folder / "sae.pt")
    required = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["jumprelu.log_threshold"] if sae_type == "jumprelu" else [])
    missing = [key for key in required if key not in weights]
    if missing:
        raise FaithcaseError(f"BatchTopK weights {folder / 'sae.pt'} lack {', '.join(missing)}; found: {', '.join(sorted(weights))}")
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
    )
    return _check_shapes(sae, folder)


def _read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    with _reading("SAE weights", path):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FaithcaseError(f"SAE weights {path} are not a state dict of tensors")
    return state


def _batchtopk_encoder_bias(cfg: dict[str, Any], sae_type: str, b_enc: torch.Tensor) -> torch.Tensor:
    """TopK/BatchTopK encoders add no b_enc (older repo versions: only with use_encoder_bias)."""
    if sae_type in ("topk", "batchtopk") and not cfg.get("use_encoder_bias", False):
        return torch.zeros_like(b_enc)
    return b_enc


def _batchtopk_k(cfg: dict[str, Any], folder: Path) -> int:
    k = cfg.get("top_k")
    if not isinstance(k, int) or isinstance(k, bool):
        raise FaithcaseError(f"BatchTopK SAE {folder}: config.json needs an integer top_k, got {k!r}")
    return k


def _check_batchtopk_sizes(cfg: dict[str, Any], W_enc: torch.Tensor, folder: Path) -> None:
    expected = (cfg.get("act_size"), cfg.get("dict_size"))
    if None not in expected and tuple(W_enc.shape) != expected:
        raise FaithcaseError(
            f"BatchTopK SAE {folder}: W_enc has shape {tuple(W_enc.shape)} but config.json says"
            f" act_size={expected[0]}, dict_size={expected[1]}"
        )
