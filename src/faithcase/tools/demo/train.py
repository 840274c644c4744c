"""A small, exact, reproducible TopK SAE trainer on cached activations.

Why not SAELens' trainer: it streams activations from a HookedTransformer-style model and a
dataset while it trains, and is not set up for the demo's GGUF model wrapped by a
TransformerBridge. The demo corpus is small (a few hundred thousand tokens), so its
activations are computed once, cached as one tensor, and both seeds train on that tensor.

Method (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"):
- encoder  z = TopK(ReLU)((x - b_dec) @ W_enc + b_enc), decoder x̂ = z @ W_dec + b_dec;
- decoder rows kept at unit norm (gradient projected, rows renormalized after each step);
- W_enc initialized to W_dec.T, b_dec to the data mean;
- loss: normalized MSE + aux_coef × AuxK loss, where the AuxK loss reconstructs the residual
  error x - x̂ with the top-aux_k latents among the dead ones (not fired in the last
  `dead_after_tokens` training tokens), which keeps latents from dying;
- Adam, constant learning rate then a linear decay to 0 over the last `lr_decay_fraction`.

Inputs are scaled by s so that their mean squared norm is d_in (training is then independent
of the model's residual scale). The scale is folded into the saved weights
(see `fold_input_scale`), so the returned SAE works on raw activations.

Determinism: initialization and shuffling use their own torch.Generator seeded by `seed`, and
the number of threads is fixed while training: the same seed and data give identical weights.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from faithcase.run.errors import FaithcaseError
from faithcase.saes import SAE, layer_from_hook

ProgressFn = Callable[[int, int, dict], None]  # (step, total_steps, metrics)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def input_scale(acts: torch.Tensor) -> float:
    """s such that the mean squared norm of s·x is d_in."""
    mean_sq_norm = acts.double().pow(2).sum(-1).mean().item()
    if not mean_sq_norm > 0:
        raise FaithcaseError("cannot train an SAE on activations that are all zero")
    return math.sqrt(acts.shape[-1] / mean_sq_norm)


def fold_input_scale(scaled: SAE, scale: float) -> SAE:
    """An SAE on raw activations x equivalent to `scaled` (trained on s·x).

    TopK and ReLU are positively homogeneous, so with z' = scaled.encode(s·x):
        z' / s = TopK((x - b_dec/s) @ W_enc + b_enc/s)
        x̂ = scaled.decode(z') / s = (z'/s) @ W_dec + b_dec/s
    The decoder keeps unit-norm rows; activations come out in raw residual units.
    """
    return SAE(
        W_enc=scaled.W_enc.clone(),
        b_enc=scaled.b_enc / scale,
        W_dec=scaled.W_dec.clone(),
        b_dec=scaled.b_dec / scale,
        activation="topk",
        k=scaled.k,
        apply_b_dec_to_input=True,
        hook_name=scaled.hook_name,
        hook_layer=scaled.hook_layer,
    )


def _encode_topk(x: torch.Tensor, W_enc, b_enc, b_dec, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k values after ReLU, their latent indices) — the SAE.encode rule.

    (x - b_dec) @ W_enc + b_enc is computed as x @ W_enc + (b_enc - b_dec @ W_enc): the same
    value, but b_dec's gradient then costs a vector-matrix product instead of a
    [B, d_sae] × [d_sae, d_in] one.
    """
    pre = torch.addmm(b_enc - b_dec @ W_enc, x, W_enc)
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return values.relu(), indices


def _decode_sparse(values: torch.Tensor, indices: torch.Tensor,
                   W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j values[:, j] · W_dec[indices[:, j]] without building the dense [B, d_sae] code."""
    return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")


def _normalized_mse(recon: torch.Tensor, target: torch.Tensor,
                    variance: torch.Tensor | float) -> torch.Tensor:
    return (recon - target).pow(2).sum(-1).mean() / variance


def lr_at(step: int, total_steps: int, lr: float, decay_fraction: float) -> float:
    """Constant lr, then linear decay to 0 over the last decay_fraction of the steps."""
    decay_steps = max(1, round(total_steps * decay_fraction)) if decay_fraction > 0 else 0
    remaining = total_steps - step
    if decay_steps == 0 or remaining >= decay_steps:
        return lr
    return lr * remaining / decay_steps


def train_topk_sae(
    acts: torch.Tensor,
    d_sae: int = 2304,
    k: int = 32,
    seed: int = 42,
    lr: float = 2e-3,
    batch_size: int = 2048,
    epochs: int = 8,
    aux_k: int | None = None,
    aux_coef: float = 1 / 32,
    dead_after_tokens: int = 50_000,
    lr_decay_fraction: float = 0.2,
    hook_name: str | None = None,
    threads: int | None = 2,
    progress: ProgressFn | None = None,
) -> SAE:
    """Train a TopK SAE on activations [N, d_in]; returns it folded to work on raw activations.

    aux_k defaults to d_in // 2 (as in Gao et al.). `progress(step, total_steps, metrics)` is
    called after every step with metrics {epoch, lr, loss, mse, aux, dead_fraction}.
    """
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise FaithcaseError("SAE training needs activations [tokens, d_in], "
                             f"got shape {tuple(acts.shape)}")
    if not 0 < k <= d_sae:
        raise FaithcaseError(f"k must be in 1..d_sae={d_sae}, got {k}")
    n_tokens, d_in = acts.shape
    aux_k = d_in // 2 if aux_k is None else aux_k
    batch_size = min(batch_size, n_tokens)
    steps_per_epoch = n_tokens // batch_size  # the ragged last batch is dropped
    total_steps = steps_per_epoch * epochs

    with _threads(threads):
        generator = torch.Generator().manual_seed(seed)
        scale = input_scale(acts)
        x_all = (acts.float() * scale).contiguous()
        run = _TopKRun.start(x_all, d_sae, generator, lr, k=k, aux_k=aux_k, aux_coef=aux_coef,
                             dead_after_tokens=dead_after_tokens)
        step = 0
        for epoch in range(epochs):
            order = torch.randperm(n_tokens, generator=generator)
            for batch_index in range(steps_per_epoch):
                x = x_all[order[batch_index * batch_size:(batch_index + 1) * batch_size]]
                losses = run.step(x, lr_at(step, total_steps, lr, lr_decay_fraction))
                step += 1
                if progress:
                    progress(step, total_steps, {"epoch": epoch, **run.metrics(losses)})
    return fold_input_scale(run.sae(hook_name), scale)


@dataclass
class _TopKRun:
    """The parameters (on scaled inputs), optimizer and dead-latent counts of one training run."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    optimizer: torch.optim.Optimizer
    variance: torch.Tensor  # of the scaled inputs: the MSE's normalizer
    tokens_since_fired: torch.Tensor
    k: int
    aux_k: int
    aux_coef: float
    dead_after_tokens: int

    @classmethod
    def start(cls, x_all: torch.Tensor, d_sae: int, generator: torch.Generator, lr: float,
              **rule) -> _TopKRun:
        """Unit-norm random decoder rows, W_enc = W_dec.T, b_enc = 0, b_dec = the data mean."""
        mean = x_all.mean(0)
        variance = (x_all - mean).pow(2).sum(-1).mean()
        W_dec = torch.randn(d_sae, x_all.shape[1], generator=generator)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        W_enc = W_dec.T.clone()
        b_enc = torch.zeros(d_sae)
        b_dec = mean.clone()
        params = [p.requires_grad_() for p in (W_enc, b_enc, W_dec, b_dec)]
        return cls(*params, optimizer=torch.optim.Adam(params, lr=lr), variance=variance,
                   tokens_since_fired=torch.zeros(d_sae, dtype=torch.long), **rule)

    def step(self, x: torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
        """One optimizer step on the batch x at learning rate lr; its losses and dead latents."""
        values, indices = _encode_topk(x, self.W_enc, self.b_enc, self.b_dec, self.k)
        recon = _decode_sparse(values, indices, self.W_dec) + self.b_dec
        mse = _normalized_mse(recon, x, self.variance)
        dead = self._dead_after(indices[values > 0], x.shape[0])
        aux = _aux_loss(x, x - recon.detach(), dead, self.W_enc, self.b_enc, self.W_dec,
                        self.b_dec, self.aux_k)
        loss = mse + self.aux_coef * aux
        self._update(loss, lr)
        return {"loss": loss, "mse": mse, "aux": aux, "dead": dead}

    def _dead_after(self, fired_ids: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """Count the batch's tokens; the latents not fired within dead_after_tokens."""
        fired = torch.zeros(self.tokens_since_fired.shape[0], dtype=torch.bool)
        fired[fired_ids] = True
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0
        return self.tokens_since_fired >= self.dead_after_tokens

    def _update(self, loss: torch.Tensor, lr: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W_dec = self.W_dec
            # keep W_dec rows on the unit sphere: drop the radial gradient, renormalize after
            W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            W_dec /= W_dec.norm(dim=-1, keepdim=True)

    def metrics(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"lr": self.optimizer.param_groups[0]["lr"], "loss": losses["loss"].item(),
                "mse": losses["mse"].item(), "aux": losses["aux"].item(),
                "dead_fraction": losses["dead"].float().mean().item()}

    def sae(self, hook_name: str | None) -> SAE:
        """The SAE on scaled inputs (fold the scale in before use on raw activations)."""
        return SAE(
            W_enc=self.W_enc.detach(), b_enc=self.b_enc.detach(), W_dec=self.W_dec.detach(),
            b_dec=self.b_dec.detach(), activation="topk", k=self.k, apply_b_dec_to_input=True,
            hook_name=hook_name, hook_layer=layer_from_hook(hook_name),
        )


def _aux_loss(x: torch.Tensor, error: torch.Tensor, dead: torch.Tensor, W_enc, b_enc, W_dec, b_dec,
              aux_k: int) -> torch.Tensor:
    """AuxK: normalized MSE of reconstructing the residual error with the top-aux_k dead latents.
    Only the dead latents' pre-activations are computed, so its cost follows their number."""
    dead_ids = dead.nonzero().squeeze(1)
    if len(dead_ids) == 0 or aux_k == 0:
        return x.new_zeros(())
    W_dead = W_enc[:, dead_ids]
    pre_dead = torch.addmm(b_enc[dead_ids] - b_dec @ W_dead, x, W_dead)
    values, local = pre_dead.topk(min(aux_k, len(dead_ids)), dim=-1, sorted=False)
    aux_recon = _decode_sparse(values.relu(), dead_ids[local], W_dec)
    error_variance = (error - error.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return _normalized_mse(aux_recon, error, error_variance)


@torch.no_grad()
def sae_quality(sae: SAE, acts: torch.Tensor, batch_size: int = 8192) -> dict:
    """{fvu, l0, dead_fraction, tokens} of `sae` on activations [N, d_in] (already filtered).

    FVU = sum ||x - x̂||² / sum ||x - mean(x)||² (x as given, before any cast to the SAE's dtype);
    l0 = mean number of non-zero latents per token; dead_fraction = share of latents that never
    fire on these activations; median_frequency = the median latent's share of tokens fired on.
    """
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise FaithcaseError("quality needs activations [tokens, d_in], "
                             f"got shape {tuple(acts.shape)}")
    mean = acts.double().mean(0)
    squared_error = total_variance = nonzero = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.long)
    for start in range(0, acts.shape[0], batch_size):
        target = acts[start:start + batch_size]
        x = target.to(sae.dtype)
        z = sae.encode(x)
        recon = sae.decode(z, x)
        squared_error += (target.double() - recon.double()).pow(2).sum().item()
        total_variance += (target.double() - mean).pow(2).sum().item()
        active = z != 0
        nonzero += active.sum().item()
        fired += active.sum(0).cpu()
    return {
        "fvu": squared_error / total_variance if total_variance > 0 else float("nan"),
        "l0": nonzero / acts.shape[0],
        "dead_fraction": 1.0 - (fired > 0).float().mean().item(),
        "median_frequency": (fired.double() / acts.shape[0]).median().item(),
        "tokens": int(acts.shape[0]),
    }
