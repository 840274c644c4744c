"""The in-memory `SAE` and its encode/decode.

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

An SAE encodes in the dtype of its weights (the checkpoint's declared dtype unless slow here, see
`load_sae`) on the device of its weights: inputs are moved and cast to them first, here and
nowhere else. In float32 the matmul and bias are one fused addmm; in bfloat16 and
float16 the product is rounded before the bias is added, as SAELens and BatchTopK compute it
(sparsify's nn.Linear fuses them: `fused_bias`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from faithcase.run.errors import FaithcaseError

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
    fused_bias: bool = False  # the format's own encode adds b_enc inside the matmul (sparsify)
    declared_dtype: torch.dtype | None = None  # the checkpoint's own (load_sae: see run/machine.py)
    dtype_note: str = ""  # why the dtype used differs from the declared one

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
        flat = self._own(x.reshape(-1, self.d_in))  # 2-D for one matmul
        if self.input_unit_norm:
            flat, _, _ = standardize(flat)
        if self.apply_b_dec_to_input:
            flat = flat - self.b_dec
        pre = self._affine(flat, self.W_enc, self.b_enc)
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        return self._activate(pre).reshape(*x.shape[:-1], self.d_sae)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction [..., d_in] of activations z [..., d_sae].

        An SAE with input_unit_norm reconstructs in standardized space; pass the original
        input x so its mean and std can be restored, as the format's forward pass does.
        """
        flat = self._own(z.reshape(-1, self.d_sae))
        if self.rescale_acts_by_decoder_norm:
            flat = flat * (1 / self.W_dec.norm(dim=-1))
        out = self._affine(flat, self.W_dec, self.b_dec).reshape(*z.shape[:-1], self.d_in)
        if self.input_unit_norm:
            if x is None:
                raise ValueError(
                    "this SAE standardizes its input: pass the input x to decode(z, x)"
                )
            _, mean, std = standardize(self._own(x))
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

    def _own(self, x: torch.Tensor) -> torch.Tensor:
        """x on this SAE's device and in its dtype."""
        return x.to(device=self.device, dtype=self.dtype)

    def _affine(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """x @ W + b in the SAE's dtype, rounded as the format's own code rounds it."""
        if self.fused_bias or self.dtype in (torch.float32, torch.float64):
            return torch.addmm(b, x, W)
        return x @ W + b

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
