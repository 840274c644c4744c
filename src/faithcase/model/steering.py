"""Steered passes over the explanation prompt: scale sweeps, generation, and likelihoods of texts.

A steering vector replaces (or is added to) the residual at every placeholder position of the
prompt, at `blocks.{layer}.hook_resid_pre`, during the prompt pass only. Rows of a batch share the
tokens before the first placeholder, which steering cannot reach (causal attention), so their
keys/values are computed once and each batch runs only the remaining tokens.

Two reference rows anchor every sweep (Kharlapenko, Neverix, Nanda, Conmy 2024, and their code,
`sprint/scale_tuning_gemma.py`):
- scale 0 (a zero vector: the zeroed placeholder in replace mode, the unsteered prompt in add
  mode): self-similarity and entropy are measured relative to it;
- the neutral placeholder: the unit-norm mean token embedding. The cross-entropy curve is
  H(p_steered, p_neutral) = -sum p_steered log p_neutral of the next-token distributions at the
  last prompt position, as the reference computes it, minus its value at the neutral row, so it is
  0 there (the offset leaves the min-max normalised scale score unchanged).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from faithcase.run.errors import FaithcaseError
from faithcase.model.hooks import resid_pre, resid_post, steered_at
from faithcase.model.prompt import PromptSpec

CLOSING_QUOTE = '"'
Progress = Callable[[str, int, int], None]  # (what, done, total)


def neutral_vector(lm) -> torch.Tensor:
    """The neutral placeholder: the mean token embedding, scaled to unit norm (float32, on the
    model's device)."""
    mean = lm.hf_model.get_input_embeddings().weight.detach().float().mean(0)
    return mean / mean.norm()


def _entropy(log_probs: torch.Tensor) -> torch.Tensor:
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def _prefix_cache(lm, tokens: list[int], hooks: list | None = None):
    """(KV cache, log-probs of the next token) of one row of tokens, or None when the model's cache
    cannot be copied per row."""
    with lm.bridge.hooks(fwd_hooks=hooks or []):
        hidden, cache = lm.decoder_pass(torch.tensor([tokens], device=lm.device))
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    return cache, lm.logits(hidden[0, -1]).log_softmax(-1)


def _repeat(cache, rows: int):
    copied = copy.deepcopy(cache)
    copied.batch_repeat_interleave(rows)
    return copied


class SteeredRunner:
    """Runs steered copies of the prompt; per row, the read residual at the last position and the
    log-probabilities of the next token. Without a shareable cache (or with share_prefix off) each
    batch is one plain `lm.run_with_steering` forward."""

    def __init__(self, lm, prompt: PromptSpec, layer: int, read: str, mode: str,
                 share_prefix: bool = True):
        self.lm, self.prompt, self.layer, self.read, self.mode = lm, prompt, layer, read, mode
        lm.check_hook(read)
        self.prefix_len = 0
        self.prefix = None
        if share_prefix and prompt.positions[0] >= 2:
            self.prefix = _prefix_cache(lm, prompt.tokens[:prompt.positions[0]])
            self.prefix_len = prompt.positions[0] if self.prefix else 0

    @torch.no_grad()
    def run(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(read residual at the last position [R, d], next-token log-probs [R, V]) for vectors
        [R, d]."""
        tokens, _, mask = self.prompt.batch(len(vectors), self.lm.device)
        if self.prefix is None:
            logits, cache = self.lm.run_with_steering(tokens, self.layer, mask, vectors,
                                                      mode=self.mode, read_hooks=[self.read],
                                                      last_position_only=True)
            return cache[self.read][:, -1].float(), logits.float().log_softmax(-1)
        cache, _ = self.prefix
        start = self.prefix_len
        captured: dict[str, torch.Tensor] = {}

        def read_last(tensor, hook):
            captured["resid"] = tensor[:, -1].detach()
            return tensor

        hooks = [steered_at(self.layer, mask[:, start:], vectors, self.mode),
                 (self.read, read_last)]
        with self.lm.bridge.hooks(fwd_hooks=hooks):
            hidden, _ = self.lm.decoder_pass(tokens[:, start:], _repeat(cache, len(vectors)))
        return captured["resid"].float(), self.lm.logits(hidden[:, -1]).log_softmax(-1)


@dataclass
class Sweep:
    """Curves [F, S] of every direction over the scales, and the reference rows' values."""

    selfsim: torch.Tensor  # cosine(read residual, direction) minus its scale-0 value
    entropy: torch.Tensor  # next-token entropy minus its scale-0 value
    ce: torch.Tensor  # H(p_steered, p_neutral) minus H(p_neutral)
    selfsim_zero: torch.Tensor  # [F]
    entropy_zero: float
    entropy_neutral: float


@torch.no_grad()
def sweep(lm, prompt: PromptSpec, directions: torch.Tensor, scales: Sequence[float], layer: int,
          read_layer: int, mode: str, residual_norm: float, batch_size: int,
          progress: Progress | None = None, share_prefix: bool = True) -> Sweep:
    """Row (f, s) steers with directions[f] × scales[s] × residual_norm (unit directions [F, d])."""
    if len(scales) == 0 or not all(math.isfinite(s) and s >= 0 for s in scales):
        raise FaithcaseError(f"sweep needs a non-empty list of scales >= 0, got {list(scales)}.")
    directions = directions.to(lm.device, torch.float32)
    n_features, n_scales = len(directions), len(scales)
    runner = SteeredRunner(lm, prompt, layer, resid_post(read_layer), mode, share_prefix)
    resid_ref, logp_ref = runner.run(torch.stack([torch.zeros(lm.d_model, device=lm.device),
                                                  neutral_vector(lm)]))
    logp_neutral = logp_ref[1]
    entropy_zero, entropy_neutral = (float(v) for v in _entropy(logp_ref))
    scale_t = torch.tensor(scales, device=lm.device) * float(residual_norm)
    vectors = (directions[:, None, :] * scale_t[None, :, None]).reshape(n_features * n_scales, -1)
    residuals, entropies, ces = [], [], []
    for start in range(0, len(vectors), batch_size):
        resid, logp = runner.run(vectors[start:start + batch_size])
        residuals.append(resid)
        entropies.append(_entropy(logp))
        ces.append(-(logp.exp() * logp_neutral).sum(-1) - entropy_neutral)
        if progress:
            progress("sweep", min(start + batch_size, len(vectors)), len(vectors))
    resid = torch.cat(residuals) if residuals else torch.zeros(0, lm.d_model, device=lm.device)
    selfsim0 = F.cosine_similarity(resid_ref[:1], directions, dim=-1)  # [F]
    cosine = F.cosine_similarity(resid, directions.repeat_interleave(n_scales, dim=0), dim=-1)
    shape = (n_features, n_scales)

    def curve(parts: list[torch.Tensor]) -> torch.Tensor:
        joined = torch.cat(parts) if parts else torch.zeros(0, device=lm.device)
        return joined.reshape(shape).cpu()

    return Sweep(selfsim=(cosine.reshape(shape) - selfsim0[:, None]).cpu(),
                 entropy=curve(entropies) - entropy_zero, ce=curve(ces),
                 selfsim_zero=selfsim0.cpu(), entropy_zero=entropy_zero,
                 entropy_neutral=entropy_neutral)


# ---------------------------------------------------------------- generation


@dataclass
class Text:
    text: str  # the continuation up to the closing quote, stripped
    ids: list[int]  # its tokens, the closing quote's token included when there is one
    logprobs: list[float]  # log p of each token under the steered prompt


def explanation_text(lm, new_tokens: list[int]) -> str:
    """Decoded continuation up to the closing quote, stripped (special tokens such as EOS
    dropped)."""
    text = lm.tokenizer.decode(new_tokens, skip_special_tokens=True)
    return text.split(CLOSING_QUOTE, 1)[0].strip()


_STOP_TOKENS: dict[int, torch.Tensor] = {}


def stop_tokens(lm) -> torch.Tensor:
    """Token ids that end an explanation: EOS, and every token holding the closing quote (cached
    per tokenizer)."""
    key = id(lm.tokenizer)
    if key not in _STOP_TOKENS:
        vocab = len(lm.tokenizer)
        ids = [i for i in range(vocab) if CLOSING_QUOTE in lm.tokenizer.decode([i])]
        ids += [lm.eos_token_id]
        _STOP_TOKENS[key] = torch.tensor(sorted(set(ids)), device=lm.device)
    return _STOP_TOKENS[key]


@torch.no_grad()
def generate(lm, prompt: PromptSpec, vectors: torch.Tensor, layer: int, mode: str,
             max_new_tokens: int, batch_size: int, temperature: float | None = None,
             seed: int = 0, steer_mask: torch.Tensor | None = None,
             progress: Progress | None = None) -> list[Text]:
    """One text per row of vectors [R, d]: greedy (temperature None) or sampled at `temperature`
    (seeded, no top-k or top-p). Steering acts on the prompt pass only; steer_mask [R] (bool) turns
    it off for rows where it is False (the unsteered baseline). Rows share the prompt's prefix
    cache, and a row leaves the batch as soon as it writes a stop token (`stop_tokens`), so every
    decoding step runs only the rows still writing."""
    stops = stop_tokens(lm)
    generator = torch.Generator(device=lm.device).manual_seed(seed)
    first = prompt.positions[0]
    prefix = _prefix_cache(lm, prompt.tokens[:first]) if first >= 1 else None
    start = first if prefix else 0
    texts: list[Text] = []
    for begin in range(0, len(vectors), batch_size):
        chunk = vectors[begin:begin + batch_size].to(lm.device, torch.float32)
        tokens, _, mask = prompt.batch(len(chunk), lm.device)
        if steer_mask is not None:
            mask = mask & steer_mask[begin:begin + batch_size].to(lm.device)[:, None]
        hook = steered_at(layer, mask[:, start:], chunk, mode)
        with lm.bridge.hooks(fwd_hooks=[hook]):
            shared = _repeat(prefix[0], len(chunk)) if prefix else None
            hidden, cache = lm.decoder_pass(tokens[:, start:], shared)
        rows = _decode(lm, lm.logits(hidden[:, -1]), cache, stops, max_new_tokens, temperature,
                       generator)
        texts += [Text(explanation_text(lm, ids), ids, logprobs) for ids, logprobs in rows]
        if progress:
            progress("generate", min(begin + batch_size, len(vectors)), len(vectors))
    return texts


def _decode(lm, logits: torch.Tensor, cache, stops: torch.Tensor, max_new_tokens: int,
            temperature: float | None,
            generator: torch.Generator) -> list[tuple[list[int], list[float]]]:
    """Token by token from the prompt's last logits [R, V]: each row's tokens, up to and including
    its stop token, and their log-probabilities (temperature 1)."""
    rows: list[tuple[list[int], list[float]]] = [([], []) for _ in range(len(logits))]
    alive = torch.arange(len(logits), device=logits.device)
    for step in range(max_new_tokens):
        log_probs = logits.float().log_softmax(-1)
        if temperature is None:
            token = log_probs.argmax(-1)
        else:
            probs = (log_probs / temperature).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        chosen = log_probs.gather(-1, token[:, None]).squeeze(-1)
        for row, t, lp in zip(alive.tolist(), token.tolist(), chosen.tolist()):
            rows[row][0].append(t)
            rows[row][1].append(lp)
        writing = ~torch.isin(token, stops)
        if step == max_new_tokens - 1 or not bool(writing.any()):
            break
        if not bool(writing.all()):
            keep = writing.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            alive, token = alive[keep], token[keep]
        hidden, cache = lm.decoder_pass(token[:, None], cache, plain=True)
        logits = lm.logits(hidden[:, -1])
    return rows


@torch.no_grad()
def neutral_logprobs(lm, prompt: PromptSpec, id_lists: list[list[int]], layer: int, mode: str,
                     batch_size: int) -> list[list[float]]:
    """log p of each token of each continuation after the prompt with the neutral placeholder: the
    prompt runs once, each batch runs only its continuations on a copy of the prompt's cache."""
    neutral = neutral_vector(lm)[None]
    _, _, mask = prompt.batch(1, lm.device)
    prefix = _prefix_cache(lm, prompt.tokens, [steered_at(layer, mask, neutral, mode)])
    if prefix is None:
        return [_neutral_row(lm, prompt, ids, layer, mode, neutral) for ids in id_lists]
    cache, first = prefix
    # similar lengths share a batch
    order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i]))
    results: list[list[float]] = []
    for start in range(0, len(order), batch_size):
        chunk = [id_lists[i] for i in order[start:start + batch_size]]
        width = max((len(ids) for ids in chunk), default=0)
        later = None
        if width > 1:
            padded = torch.tensor([ids + [lm.pad_token_id] * (width - len(ids)) for ids in chunk],
                                  device=lm.device)
            hidden, _ = lm.decoder_pass(padded[:, :-1], _repeat(cache, len(chunk)), plain=True)
            later = lm.logits(hidden).log_softmax(-1).gather(-1, padded[:, 1:, None]).squeeze(-1)
        for row, ids in enumerate(chunk):
            head = [float(first[ids[0]])] if ids else []
            results.append(head + (later[row, :len(ids) - 1].tolist() if later is not None else []))
    unsorted: list[list[float]] = [[] for _ in id_lists]
    for position, i in enumerate(order):
        unsorted[i] = results[position]
    return unsorted


def _neutral_row(lm, prompt: PromptSpec, ids: list[int], layer: int, mode: str,
                 neutral: torch.Tensor) -> list[float]:
    """One continuation's neutral log-probs by a plain forward of prompt + continuation."""
    if not ids:
        return []
    n = len(prompt.tokens)
    tokens = torch.tensor([prompt.tokens + ids], device=lm.device)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, prompt.positions] = True
    logits, _ = lm.run_with_steering(tokens, layer, mask, neutral, mode)
    log_probs = logits[0].float().log_softmax(-1)
    return log_probs[n - 1:n - 1 + len(ids)].gather(-1, tokens[0, n:, None]).squeeze(-1).tolist()


@torch.no_grad()
def median_residual_norm(lm, token_batches: Iterable[torch.Tensor], layer: int,
                         excluded_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         ) -> float:
    """Median residual norm at `blocks.{layer}.hook_resid_pre` over corpus tokens;
    excluded_fn(resid) gives a bool mask [B, T] of positions to leave out (BOS, massive
    activations)."""
    hook = resid_pre(layer)
    norms = []
    for tokens in token_batches:
        resid = lm.activations(tokens, hook)
        keep = torch.ones(resid.shape[:2], dtype=torch.bool, device=resid.device)
        if excluded_fn is not None:
            keep &= ~excluded_fn(resid).to(resid.device)
        norms.append(resid.float().norm(dim=-1)[keep].cpu())
    values = torch.cat(norms) if norms else torch.empty(0)
    if values.numel() == 0:
        raise FaithcaseError("no corpus tokens left to measure the residual norm; use a larger "
                             "corpus.")
    return float(values.median())
