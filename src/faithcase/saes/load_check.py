"""The load check of an SAE on a corpus pass: FVU, L0 and never-firing features, and loud
one-line warnings when the SAE does not fit the model's activations at this hook."""

from __future__ import annotations

from faithcase.artifacts import SAEQuality
from faithcase.config import ScanConfig
from faithcase.model.hooks import same_site
from faithcase.numerics.pass_sums import PassSums

CAUSES = ("input normalisation (an SAE trained on normalised inputs loaded without it, or the "
          "reverse)",
          "the wrong hook (the config's hook is not the site the SAE was trained on)",
          "the wrong activation function (e.g. a TopK SAE loaded as ReLU)")


def sae_quality(sums: PassSums, key: str, settings: ScanConfig, hook: str | None) -> SAEQuality:
    """The load check of one SAE of a pass: FVU, L0, never-firing features and warnings."""
    sae = sums.saes[key]
    fvu, l0 = sums.fvu(key), sums.l0(key)
    k = sae.k if sae.activation == "topk" else None
    return SAEQuality(fvu=fvu, l0=l0, k=k, n_silent=int((sums.firing[key] == 0).sum()),
                      warnings=load_warnings(key, sae, fvu, l0, settings, hook))


def load_warnings(key: str, sae, fvu: float, l0: float, settings: ScanConfig,
                  hook: str | None) -> list[str]:
    """Loud, one-line warnings when an SAE does not fit the model's activations at this hook."""
    causes = "likely causes: " + "; ".join(CAUSES)
    warnings = []
    if not fvu <= settings.max_fvu:
        unit_norm = bool(getattr(sae, "input_unit_norm", False))
        warnings.append(f"{key}: FVU {fvu:.3f} > {settings.max_fvu} on the corpus: the SAE does "
                        f"not reconstruct these activations; most likely input normalisation: it "
                        f"encodes {'with' if unit_norm else 'without'} it, try "
                        f"`input_unit_norm: {str(not unit_norm).lower()}` in its config entry; "
                        f"{causes}")
    if sae.activation == "topk" and sae.k and abs(l0 - sae.k) > settings.l0_tolerance * sae.k:
        warnings.append(f"{key}: L0 {l0:.1f} is far from the SAE's k={sae.k}; {causes}")
    if sae.activation != "topk" and l0 > 0.1 * sae.d_sae:
        warnings.append(f"{key}: L0 {l0:.1f} is over 10% of its {sae.d_sae} features for a "
                        f"{sae.activation} SAE; {causes}")
    trained_at = getattr(sae, "hook_name", None)
    if hook and trained_at and not same_site(trained_at, hook):
        warnings.append(f"{key}: the SAE was trained at {trained_at}, the config reads {hook}; "
                        f"{causes}")
    return warnings
