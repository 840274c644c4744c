"""SAE checkpoints of three formats → one in-memory `SAE` with our own encode/decode.

Formats (auto-detected from the files in the folder, or named explicitly):
- "saelens":   cfg.json + sae_weights.safetensors, read through sae-lens itself;
- "sparsify":  cfg.json + sae.safetensors (EleutherAI sparsify), or a parent folder
               holding one such subfolder per hook point, chosen by `hook`;
- "batchtopk": config.json + sae.pt (bartbussmann/BatchTopK, as used by FaithfulSAE).

`SAE.encode` is plain torch written from the weights, matching each format's definition:
    x' = standardize(x)        if input_unit_norm (BatchTopK input_unit_norm, SAELens layer_norm)
    x' = x' - b_dec            if apply_b_dec_to_input
    pre = x' @ W_enc + b_enc   (× decoder row norms if rescale_acts_by_decoder_norm, SAELens TopK)
    relu:     relu(pre)
    topk:     keep the k largest `pre` per token, relu them, zero the rest
    jumprelu: relu(pre) where pre > threshold, else 0

The ReLU/top-k order differs between the libraries (SAELens: top-k then ReLU; sparsify and
BatchTopK: ReLU then top-k) but gives the same dense result: every positive value kept by one
is kept by the other, and the rest are zeros either way.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from faithcase.errors import FaithcaseError

FORMATS = ("saelens", "sparsify", "batchtopk")
FORMAT_ALIASES = {"sae_lens": "saelens", "sae-lens": "saelens", "eleuther": "sparsify"}

# The files that identify each format (the weights and the config).
SAELENS_FILES = ("cfg.json", "sae_weights.safetensors")
SPARSIFY_FILES = ("cfg.json", "sae.safetensors")
BATCHTOPK_FILES = ("config.json", "sae.pt")
FORMAT_FILES = {"saelens": SAELENS_FILES, "sparsify": SPARSIFY_FILES, "batchtopk": BATCHTOPK_FILES}

SAELENS_ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
BATCHTOPK_TYPES = ("topk", "batchtopk", "vanilla", "jumprelu")

# BatchTopK's input_unit_norm (and SAELens' "layer_norm"): (x - mean) / (std + 1e-5).
STANDARDIZE_EPS = 1e-5


@dataclass
class SAE:
    """One sparse autoencoder, whatever the file format it came from."""

    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor  # [d_sae]
    W_dec: torch.Tensor  # [d_sae, d_in]
    b_dec: torch.Tensor  # [d_in]
    activation: str  # "topk" | "relu" | "jumprelu"
    k: int | None = None
    threshold: torch.Tensor | None = None  # jumprelu thresholds [d_sae]
    input_unit_norm: bool = False
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False  # SAELens TopK option
    hook_name: str | None = None
    hook_layer: int | None = None
    format: str = ""  # "saelens" | "sparsify" | "batchtopk" ("" when built in memory)
    path: str = ""  # the folder the weights came from

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., d_sae] of inputs x [..., d_in]."""
        self._check_input(x)
        flat = x.reshape(-1, self.d_in).to(self.dtype)  # 2-D for one fused addmm
        if self.input_unit_norm:
            flat, _, _ = standardize(flat)
        if self.apply_b_dec_to_input:
            flat = flat - self.b_dec
        pre = torch.addmm(self.b_enc, flat, self.W_enc)
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        return self._activate(pre).reshape(*x.shape[:-1], self.d_sae)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction [..., d_in] of activations z [..., d_sae].

        An SAE with input_unit_norm reconstructs in standardized space; pass the original
        input x so its mean and std can be restored, as the format's forward pass does.
        """
        flat = z.reshape(-1, self.d_sae).to(self.dtype)
        if self.rescale_acts_by_decoder_norm:
            flat = flat * (1 / self.W_dec.norm(dim=-1))
        out = torch.addmm(self.b_dec, flat, self.W_dec).reshape(*z.shape[:-1], self.d_in)
        if self.input_unit_norm:
            if x is None:
                raise ValueError("this SAE standardizes its input: pass the input x to decode(z, x)")
            _, mean, std = standardize(x.to(self.dtype))
            out = out * std + mean
        return out

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)), the SAE's forward pass."""
        return self.decode(self.encode(x), x)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SAE:
        """A copy with every tensor on `device` and/or in `dtype`."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(
            self,
            W_enc=move(self.W_enc),
            b_enc=move(self.b_enc),
            W_dec=move(self.W_dec),
            b_dec=move(self.b_dec),
            threshold=move(self.threshold),
        )

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return pre.relu()
        if self.activation == "jumprelu":
            return torch.where(pre > self.threshold, pre, 0.0).relu_()
        if self.activation == "topk":
            return topk_relu(pre, self.k)
        raise ValueError(f"unknown activation {self.activation!r}")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise FaithcaseError(
                f"SAE input has {x.shape[-1]} features but the SAE expects d_in={self.d_in}"
                f" ({self.path or 'in-memory SAE'}); check the model and hook"
            )


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest values per row (last dim), ReLU them, zero the rest."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu_())


def standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x - mean) / (std + eps) over the last dim, with the mean and (unbiased) std used."""
    mean = x.mean(dim=-1, keepdim=True)
    centered = x - mean
    std = centered.std(dim=-1, keepdim=True)
    return centered / (std + STANDARDIZE_EPS), mean, std


# ---------------------------------------------------------------------------------------
# Loading


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


def layer_from_hook(hook_name: str | None) -> int | None:
    """The layer number in a hook name: blocks.12.hook_resid_pre → 12, model.layers.3 → 3."""
    if not hook_name:
        return None
    match = re.search(r"(?:^|\.)(?:blocks|layers|layer|h)\.(\d+)(?:\.|$)", hook_name)
    return int(match.group(1)) if match else None


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
    "load_sae",
    "detect_format",
    "select_hook_subfolder",
    "sparsify_names_for_hook",
    "layer_from_hook",
    "check_compatible",
    "save_saelens",
    "standardize",
    "topk_relu",
]
