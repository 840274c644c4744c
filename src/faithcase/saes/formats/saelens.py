"""SAELens: cfg.json + sae_weights.safetensors, read (and written) through sae-lens itself.

The SAE encodes in the dtype sae-lens loads it in: cfg.json's `dtype` (default float32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faithcase.model.hooks import layer_from_hook
from faithcase.run.errors import FaithcaseError
from faithcase.saes.helpers import check_shapes, declared_dtype, read_json, reading
from faithcase.saes.model import SAE
from faithcase.saes.registry import SAEFormat

SAELENS_FILES = ("cfg.json", "sae_weights.safetensors")
SAELENS_ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}


def load(folder: Path, hook: str | None = None) -> SAE:
    """The SAELens SAE in `folder`; `hook` is ignored (read from cfg.json)."""
    cfg = read_json(folder / "cfg.json")
    _check_saelens_cfg(cfg, folder)
    from sae_lens import SAE as LensSAE  # slow import (~6 s): only when needed

    with reading("SAELens SAE", folder):
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
        declared_dtype=declared_dtype(lens.dtype),
    )
    return check_shapes(sae, folder)


def _check_saelens_cfg(cfg: dict[str, Any], folder: Path) -> None:
    """Reject, before loading, what our encode does not reproduce exactly."""
    architecture = cfg.get("architecture")
    if architecture is not None and architecture not in SAELENS_ARCHITECTURES:
        raise _unsupported_architecture(architecture, folder)
    normalize = cfg.get("normalize_activations") or "none"
    if normalize not in ("none", "layer_norm"):
        raise FaithcaseError(
            f"SAELens SAE {folder} has normalize_activations={normalize!r},"
            f" which faithcase does not support; fold the normalization into the weights"
            f" (e.g. sae.fold_activation_norm_scaling_factor)"
            f" and save it with normalize_activations='none'"
        )
    if cfg.get("reshape_activations", "none") not in (None, "none"):
        raise FaithcaseError(
            f"SAELens SAE {folder} has reshape_activations={cfg['reshape_activations']!r}"
            f" (attention hook_z SAEs); only residual-style SAEs with inputs [..., d_in]"
            f" are supported"
        )


def _unsupported_architecture(architecture: str, folder: Path) -> FaithcaseError:
    return FaithcaseError(
        f"SAELens architecture {architecture!r} of {folder} is not supported;"
        f" supported: {', '.join(SAELENS_ARCHITECTURES)}"
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
        cfg = sae_lens.TopKSAEConfig(
            k=sae.k, rescale_acts_by_decoder_norm=sae.rescale_acts_by_decoder_norm, **common
        )
        lens = sae_lens.TopKSAE(cfg)
    elif sae.rescale_acts_by_decoder_norm:
        raise FaithcaseError(
            "rescale_acts_by_decoder_norm is a SAELens TopK option; this SAE is not TopK"
        )
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


FORMAT = SAEFormat(
    name="saelens",
    title="SAELens",
    files=SAELENS_FILES,
    aliases=("sae_lens", "sae-lens"),
    load=load,
)
