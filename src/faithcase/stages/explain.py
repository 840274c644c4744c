"""The explain stage: self-explanation of SAE features by activation steering.

Method (Kharlapenko, Neverix, Nanda, Conmy, "Self-explaining SAE features", 2024; in the
spirit of SelfIE and Patchscopes): the model is asked `What is the meaning of the word "X"?`
and its answer is prefilled with `The meaning of the word "X" is "`. During the prompt pass the
residual at every `X` position, at `blocks.{insert_layer}.hook_resid_pre`, is replaced by (or has
added) the feature's unit decoder direction × scale × the median residual norm of that layer, so
scales are relative and one grid fits any model. The model then continues greedily, and its words
up to the closing quote are the explanation.

Each scale is scored by two curves, both measured against scale 0 (replace mode: the zeroed
placeholder; add mode: the unsteered prompt):
- self-similarity: cosine between the residual at the last prompt position after the read layer
  (`blocks.{read_layer}.hook_resid_post`; default the block at 80% depth, see default_read_layer)
  and the feature direction;
- entropy of the next-token distribution at the last prompt position.
Both are min-max normalized over the feature's grid, score = w_s · selfsim − w_e · entropy,
and the best eligible scale(s) are generated from.

All features × scales of one SAE run as batched forwards (the prompts are identical, so rows are
stacked without padding; the tokens before the first placeholder are run once and their KV cache
shared) and all generations as batched KV-cached `generate` calls.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from faithcase.artifacts import (
    ExplainArtifact,
    ExplainBaseline,
    ExplainSettings,
    FeatureExplanation,
    Meta,
    SweepPoint,
)
from faithcase.config import ExplainConfig
from faithcase.errors import FaithcaseError

CLOSING_QUOTE = '"'
SAMPLING_SEED = 0
READ_DEPTH = 0.8  # default read layer, as a share of the depth

Progress = Callable[[str, int, int], None]  # (what, done, total)


# ---------------------------------------------------------------- prompt


@dataclass(frozen=True)
class PromptSpec:
    tokens: list[int]  # the prompt's token ids, BOS included when the model uses one
    positions: list[int]  # indices of the placeholder tokens in `tokens`
    text: str  # the rendered prompt text
    placeholder_id: int

    def batch(self, n_rows: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens [n, T], attention_mask [n, T], placeholder mask [n, T]) for n identical rows."""
        tokens = torch.tensor(self.tokens, dtype=torch.long, device=device).expand(n_rows, -1)
        attention = torch.ones_like(tokens)
        mask = torch.zeros(len(self.tokens), dtype=torch.bool, device=device)
        mask[self.positions] = True
        return tokens, attention, mask.expand(n_rows, -1)


def _occurrences(text: str, needle: str, offset: int) -> list[tuple[int, int]]:
    spans, start = [], text.find(needle)
    while start >= 0:
        spans.append((offset + start, offset + start + len(needle)))
        start = text.find(needle, start + len(needle))
    return spans


def _render(lm, cfg: ExplainConfig) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text and the character spans of the placeholder in it (only where the user's
    template put it, never inside the chat template's own text)."""
    placeholder = cfg.placeholder
    if not placeholder:
        raise FaithcaseError("explain.placeholder is empty; use a one-token word such as X.")
    if not lm.has_chat_template:
        if placeholder not in cfg.plain_template:
            raise FaithcaseError(f"explain.plain_template has no placeholder {placeholder!r}; "
                                 f"put it where the feature direction should go.")
        return cfg.plain_template, _occurrences(cfg.plain_template, placeholder, 0)
    if placeholder not in cfg.user_prompt and placeholder not in cfg.answer_prefix:
        raise FaithcaseError(f"the explain prompt has no placeholder {placeholder!r}; "
                             f"put it in explain.user_prompt or explain.answer_prefix.")
    rendered = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": cfg.user_prompt}], add_generation_prompt=True, tokenize=False)
    user_at = rendered.rfind(cfg.user_prompt)
    if user_at < 0:
        raise FaithcaseError("the model's chat template changes the user message, so the placeholder "
                             "cannot be located; use a model without a chat template or another prompt.")
    spans = _occurrences(cfg.user_prompt, placeholder, user_at)
    spans += _occurrences(cfg.answer_prefix, placeholder, len(rendered))
    return rendered + cfg.answer_prefix, spans


def _tokenize_with_offsets(lm, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    try:
        encoded = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError, KeyError):  # slow tokenizers have no offsets
        return lm.tokenizer.encode(text, add_special_tokens=False), None


def _placeholder_index(lm, ids: list[int], offsets, span: tuple[int, int], text: str, placeholder: str) -> int:
    start, end = span
    covering = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    if len(covering) == 1:
        a, b = offsets[covering[0]]
        if text[a:b].strip() == placeholder:
            return covering[0]
    pieces = [lm.tokenizer.decode([ids[i]]) for i in covering]
    raise FaithcaseError(f"placeholder {placeholder!r} is not one token in the prompt: it becomes "
                         f"{len(pieces)} token(s) {pieces}; choose a single-token placeholder.")


def _placeholder_indices_without_offsets(lm, ids: list[int], text: str, spans, placeholder: str) -> list[int]:
    """Fallback for tokenizers without offsets: tokenize the text piece by piece and require the
    concatenation to equal the whole-text tokenization."""
    pieces, cursor = [], 0
    for start, end in spans:
        pieces += [text[cursor:start], text[start:end]]
        cursor = end
    pieces.append(text[cursor:])
    joined, positions = [], []
    for k, piece in enumerate(pieces):
        piece_ids = lm.tokenizer.encode(piece, add_special_tokens=False) if piece else []
        if k % 2 == 1:
            if len(piece_ids) != 1:
                tokens = [lm.tokenizer.decode([i]) for i in piece_ids]
                raise FaithcaseError(f"placeholder {placeholder!r} is not one token in the prompt: it becomes "
                                     f"{len(tokens)} token(s) {tokens}; choose a single-token placeholder.")
            positions.append(len(joined))
        joined += piece_ids
    if joined != ids:
        raise FaithcaseError(f"placeholder {placeholder!r} merges with the text around it when tokenized; "
                             f"surround it with quotes or spaces, or choose another placeholder.")
    return positions


def _bos_to_prepend(lm, ids: list[int]) -> int | None:
    """The BOS id to put in front of the prompt, or None. A chat prompt gets the tokenizer's BOS
    when the tokenizer adds one itself and the rendered template lacks it; a plain prompt gets the
    model's BOS, as corpus sequences do."""
    if not lm.has_chat_template:
        bos = lm.bos_token_id
    else:
        bos = lm.tokenizer.bos_token_id
        probe = lm.tokenizer("a")["input_ids"]
        if bos is None or not probe or probe[0] != bos:
            return None
    return None if ids and ids[0] == bos else bos


def build_prompt(lm, cfg: ExplainConfig) -> PromptSpec:
    """Render the explanation prompt and locate the placeholder tokens (each must be one token)."""
    text, spans = _render(lm, cfg)
    ids, offsets = _tokenize_with_offsets(lm, text)
    if offsets is not None:
        positions = [_placeholder_index(lm, ids, offsets, span, text, cfg.placeholder) for span in spans]
    else:
        positions = _placeholder_indices_without_offsets(lm, ids, text, spans, cfg.placeholder)
    bos = _bos_to_prepend(lm, ids)
    if bos is not None:
        ids = [bos] + ids
        positions = [p + 1 for p in positions]
    placeholder_ids = {ids[p] for p in positions}
    if len(placeholder_ids) != 1:
        raise FaithcaseError(f"placeholder {cfg.placeholder!r} tokenizes differently at its positions "
                             f"({sorted(placeholder_ids)}); put it in the same context each time.")
    return PromptSpec(tokens=ids, positions=positions, text=text, placeholder_id=placeholder_ids.pop())


# ---------------------------------------------------------------- directions and norms


def unit_directions(sae, features: Iterable[int]) -> dict[int, torch.Tensor]:
    """Unit decoder directions {feature: W_dec[feature] / ||W_dec[feature]||} (float32)."""
    directions = {}
    for feature in features:
        feature = int(feature)
        if not 0 <= feature < sae.d_sae:
            raise FaithcaseError(f"feature index {feature} out of range; the SAE has features 0..{sae.d_sae - 1}.")
        row = sae.W_dec[feature].detach().float()
        norm = row.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise FaithcaseError(f"feature {feature} has a zero or non-finite decoder row (a dead feature); "
                                 f"it cannot be explained.")
        directions[feature] = row / norm
    return directions


@torch.no_grad()
def median_residual_norm(lm, token_batches: Iterable[torch.Tensor], layer: int,
                         excluded_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Median residual norm at `blocks.{layer}.hook_resid_pre` over corpus tokens; excluded_fn(resid)
    gives a bool mask [B, T] of positions to leave out (BOS, massive activations)."""
    hook = f"blocks.{layer}.hook_resid_pre"
    norms = []
    for tokens in token_batches:
        resid = lm.activations(tokens, hook)
        keep = torch.ones(resid.shape[:2], dtype=torch.bool, device=resid.device)
        if excluded_fn is not None:
            keep &= ~excluded_fn(resid).to(resid.device)
        norms.append(resid.float().norm(dim=-1)[keep].cpu())
    values = torch.cat(norms) if norms else torch.empty(0)
    if values.numel() == 0:
        raise FaithcaseError("no corpus tokens left to measure the residual norm; use a larger corpus.")
    return float(values.median())


# ---------------------------------------------------------------- scales and layers


def scale_grid(cfg: ExplainConfig) -> list[float]:
    """The scales to sweep: cfg.scales as given, or n_scales geometric steps min_scale..max_scale."""
    if cfg.scales == "auto":
        if not cfg.min_scale < cfg.max_scale:
            raise FaithcaseError(f"explain.min_scale ({cfg.min_scale}) must be below explain.max_scale "
                                 f"({cfg.max_scale}).")
        ratio = math.log(cfg.max_scale / cfg.min_scale) / (cfg.n_scales - 1)
        return [round(cfg.min_scale * math.exp(ratio * i), 6) for i in range(cfg.n_scales)]
    return check_scales(cfg.scales)


def check_scales(scales: Sequence[float]) -> list[float]:
    if len(scales) == 0:
        raise FaithcaseError("explain.scales is empty; give positive scales such as [1, 2, 4] or 'auto'.")
    bad = [s for s in scales if not (math.isfinite(s) and s > 0)]
    if bad:
        raise FaithcaseError(f"explain.scales must be positive, got {bad}; "
                             f"scale 0 (the baseline) is always measured.")
    return [float(s) for s in scales]


def eligible_scales(cfg: ExplainConfig, n_scales: int) -> list[bool]:
    """Which grid scales may be chosen: an auto grid skips its skip_lowest lowest; a list is used as given."""
    skip = min(cfg.skip_lowest, n_scales - 1) if cfg.scales == "auto" else 0
    return [i >= skip for i in range(n_scales)]


def insert_layer(cfg: ExplainConfig, sae_layer: int | None = None) -> int:
    """The layer whose `hook_resid_pre` is steered: explain.insert_layer, or the SAE's layer for "sae"."""
    if cfg.insert_layer != "sae":
        return int(cfg.insert_layer)
    if sae_layer is None:
        raise FaithcaseError("explain.insert_layer is 'sae' but the SAE's hook layer is unknown; "
                             "set explain.insert_layer to a layer number.")
    return int(sae_layer)


def resolve_layers(lm, cfg: ExplainConfig, sae_layer: int | None = None) -> tuple[int, int]:
    """(insert_layer, read_layer). The read residual is `blocks.{read_layer}.hook_resid_post`."""
    insert = insert_layer(cfg, sae_layer)
    read = default_read_layer(lm.n_layers) if cfg.read_layer is None else int(cfg.read_layer)
    for name, layer in (("insert_layer", insert), ("read_layer", read)):
        if not 0 <= layer < lm.n_layers:
            raise FaithcaseError(f"explain.{name} {layer} out of range; "
                                 f"{lm.name} has layers 0..{lm.n_layers - 1}.")
    return insert, read


def default_read_layer(n_layers: int) -> int:
    """The block at 80% depth. The last block's output mostly encodes the next-token prediction:
    on the demo model, planted word directions read there gave self-similarity down to -0.05
    (Paris) while blocks 21 and 24-26 gave 0.05-0.11 for all seven planted words tried."""
    return min(n_layers - 1, int(READ_DEPTH * n_layers))


def read_hook(read_layer: int) -> str:
    return f"blocks.{read_layer}.hook_resid_post"


# ---------------------------------------------------------------- sweep


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


class SteeredRunner:
    """Runs steered copies of the prompt and returns, per row, the read residual at the last
    position and the next-token entropy.

    Every row shares the tokens before the first placeholder, and steering cannot reach them
    (causal attention), so with share_prefix their keys/values are computed once and each batch
    runs only the remaining tokens. Without it (or when the model's cache cannot be copied),
    each batch is one plain `lm.run_with_steering` forward.
    """

    def __init__(self, lm, prompt: PromptSpec, layer: int, read: str, mode: str, share_prefix: bool = True):
        self.lm, self.prompt, self.layer, self.read, self.mode = lm, prompt, layer, read, mode
        lm.check_hook(read)
        self.prefix_len = 0
        self.prefix_cache = None
        if share_prefix and prompt.positions[0] >= 2:
            self._cache_prefix(prompt.positions[0])

    @torch.no_grad()
    def _cache_prefix(self, length: int) -> None:
        model = self.lm.hf_model
        tokens = torch.tensor([self.prompt.tokens[:length]], device=self.lm.device)
        out = model(input_ids=tokens, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            return  # a cache type we cannot copy per row: plain forwards
        self.prefix_cache, self.prefix_len = cache, length
        takes_cache = "cache" in inspect.signature(model.forward).parameters  # transformers >= 5 name
        self._cache_kwarg = "cache" if takes_cache else "past_key_values"

    @torch.no_grad()
    def run(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(read residual at the last position [R, d], entropy [R]) for one batch of vectors [R, d]."""
        tokens, _, mask = self.prompt.batch(len(vectors), self.lm.device)
        if self.prefix_cache is None:
            logits, cache = self.lm.run_with_steering(tokens, self.layer, mask, vectors, mode=self.mode,
                                                      read_hooks=[self.read], last_position_only=True)
            return cache[self.read][:, -1].float(), _entropy(logits)
        from faithcase.lm import steering_hook

        start = self.prefix_len
        kv = copy.deepcopy(self.prefix_cache)
        kv.batch_repeat_interleave(len(vectors))
        captured: dict[str, torch.Tensor] = {}

        def read_last(tensor, hook):
            captured["resid"] = tensor[:, -1].detach()
            return tensor

        hooks = [(f"blocks.{self.layer}.hook_resid_pre", steering_hook(mask[:, start:], vectors, self.mode)),
                 (self.read, read_last)]
        with self.lm.bridge.hooks(fwd_hooks=hooks):
            out = self.lm.hf_model(input_ids=tokens[:, start:], use_cache=True, logits_to_keep=1,
                                   **{self._cache_kwarg: kv})
        return captured["resid"].float(), _entropy(out.logits[:, -1])


def _steered_last(runner: SteeredRunner, vectors: torch.Tensor, batch_size: int,
                  progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    residuals, entropies = [], []
    total = len(vectors)
    for start in range(0, total, batch_size):
        resid, entropy = runner.run(vectors[start:start + batch_size])
        residuals.append(resid)
        entropies.append(entropy)
        if progress:
            progress("sweep", min(start + batch_size, total), total)
    return torch.cat(residuals), torch.cat(entropies)


@torch.no_grad()
def sweep(lm, prompt: PromptSpec, directions: torch.Tensor, scales: Sequence[float], layer: int,
          read_layer: int, mode: str, residual_norm: float, batch_size: int,
          progress: Progress | None = None, share_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Self-similarity and entropy deltas [F, S] for unit directions [F, d] at each scale.

    Row (f, s) steers with directions[f] × scales[s] × residual_norm. The scale-0 row (zero vector:
    the zeroed placeholder in replace mode, the unsteered prompt in add mode) is the baseline:
    returns (selfsim - selfsim0, entropy - entropy0, {"selfsim_zero": [F], "entropy_zero": float}).
    """
    if len(scales) == 0 or not all(math.isfinite(s) and s >= 0 for s in scales):
        raise FaithcaseError(f"sweep needs a non-empty list of scales >= 0, got {list(scales)}.")
    directions = directions.to(lm.device, torch.float32)
    n_features, n_scales = len(directions), len(scales)
    runner = SteeredRunner(lm, prompt, layer, read_hook(read_layer), mode, share_prefix)
    scale_t = torch.tensor(scales, device=lm.device) * float(residual_norm)
    vectors = (directions[:, None, :] * scale_t[None, :, None]).reshape(n_features * n_scales, -1)
    zero = torch.zeros(1, lm.d_model, device=lm.device)
    resid, entropy = _steered_last(runner, torch.cat([zero, vectors]), batch_size, progress)
    resid0, entropy0 = resid[0], float(entropy[0])
    selfsim0 = F.cosine_similarity(resid0[None], directions, dim=-1)  # [F]
    cosine = F.cosine_similarity(resid[1:], directions.repeat_interleave(n_scales, dim=0), dim=-1)
    selfsim = cosine.reshape(n_features, n_scales) - selfsim0[:, None]
    entropy = entropy[1:].reshape(n_features, n_scales) - entropy0
    return selfsim.cpu(), entropy.cpu(), {"selfsim_zero": selfsim0.cpu(), "entropy_zero": entropy0}


def _min_max(values: torch.Tensor) -> torch.Tensor:
    low = values.min(dim=-1, keepdim=True).values
    span = values.max(dim=-1, keepdim=True).values - low
    return torch.where(span > 0, (values - low) / span.clamp_min(1e-12), torch.zeros_like(values))


def score_sweep(selfsim: torch.Tensor, entropy: torch.Tensor, selfsim_weight: float,
                entropy_weight: float) -> torch.Tensor:
    """Per feature, both curves min-max normalized over the grid; score = w_s·selfsim − w_e·entropy."""
    return selfsim_weight * _min_max(selfsim) - entropy_weight * _min_max(entropy)


def best_scales(scores: torch.Tensor, eligible: Sequence[bool], n_best: int) -> list[list[int]]:
    """Indices of the n_best highest-scoring eligible scales per feature, best first."""
    allowed = torch.tensor(eligible, dtype=torch.bool)
    masked = torch.where(allowed[None, :], scores, torch.full_like(scores, -math.inf))
    k = min(n_best, int(allowed.sum()))
    return masked.topk(k, dim=-1).indices.tolist()


# ---------------------------------------------------------------- generation


def explanation_text(lm, new_tokens: list[int]) -> str:
    """Decoded continuation up to the closing quote, stripped."""
    text = lm.tokenizer.decode(new_tokens, skip_special_tokens=True)
    return text.split(CLOSING_QUOTE, 1)[0].strip()


@torch.no_grad()
def generate_explanations(lm, prompt: PromptSpec, vectors: torch.Tensor, layer: int, mode: str,
                          max_new_tokens: int, batch_size: int, temperature: float | None = None,
                          seed: int = SAMPLING_SEED, steer_mask: torch.Tensor | None = None,
                          progress: Progress | None = None) -> list[str]:
    """One explanation per row of vectors [R, d]: greedy (temperature None) or sampled, batched
    with a KV cache; the steering acts on the prompt pass only. steer_mask [R] (bool) turns
    steering off for rows where it is False (the unsteered baseline)."""
    from faithcase.lm import steering_hook

    texts: list[str] = []
    total = len(vectors)
    generator_state = torch.random.fork_rng(devices=[lm.device] if lm.device.type == "cuda" else [])
    with generator_state:
        torch.manual_seed(seed)
        for start in range(0, total, batch_size):
            chunk = vectors[start:start + batch_size].to(lm.device)
            tokens, attention, mask = prompt.batch(len(chunk), lm.device)
            if steer_mask is not None:
                mask = mask & steer_mask[start:start + batch_size].to(lm.device)[:, None]
            if temperature is None:
                rows = lm.generate_steered(tokens, attention, layer, mask, chunk, mode, max_new_tokens,
                                           stop_strings=[CLOSING_QUOTE])
            else:
                hook = steering_hook(mask, chunk, mode)
                with lm.bridge.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook)]):
                    rows = _sample(lm, tokens, attention, max_new_tokens, temperature)
            texts += [explanation_text(lm, row) for row in rows]
            if progress:
                progress("generate", min(start + batch_size, total), total)
    return texts


def _sample(lm, tokens: torch.Tensor, attention: torch.Tensor, max_new_tokens: int,
            temperature: float) -> list[list[int]]:
    from transformers import GenerationConfig

    stop = lm.eos_token_id
    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens, eos_token_id=[stop], pad_token_id=stop,
                              stop_strings=[CLOSING_QUOTE])
    out = lm.hf_model.generate(input_ids=tokens, attention_mask=attention, generation_config=config,
                               tokenizer=lm.tokenizer)
    rows = out[:, tokens.shape[1]:].tolist()
    return [row[:row.index(stop)] if stop in row else row for row in rows]


# ---------------------------------------------------------------- the stage


def _stack(directions: dict[int, torch.Tensor], d_model: int) -> tuple[list[int], torch.Tensor]:
    features = list(directions)
    if not features:
        return [], torch.zeros(0, d_model)
    matrix = torch.stack([directions[f].detach().float().cpu().reshape(-1) for f in features])
    if matrix.shape[1] != d_model:
        raise FaithcaseError(f"feature directions have {matrix.shape[1]} dimensions but the model's "
                             f"residual stream has {d_model}; the SAE does not fit this model.")
    norms = matrix.norm(dim=-1, keepdim=True)
    if not torch.isfinite(norms).all() or (norms == 0).any():
        raise FaithcaseError("a feature direction is zero or non-finite; dead features cannot be explained.")
    return features, matrix / norms


def _check_norm(residual_norm: float) -> float:
    if not (math.isfinite(residual_norm) and residual_norm > 0):
        raise FaithcaseError(f"the median residual norm must be positive, got {residual_norm}.")
    return float(residual_norm)


def explain_features(lm, directions: dict[int, torch.Tensor], cfg: ExplainConfig, residual_norm: float,
                     progress: Progress | None = None, sae_layer: int | None = None,
                     fingerprints: dict[int, str] | None = None,
                     ) -> tuple[dict[int, FeatureExplanation], ExplainBaseline, ExplainSettings]:
    """Sweep, score, and generate the self-explanations of the given unit directions.

    Returns ({feature: FeatureExplanation}, baseline, settings). `fingerprint` of each explanation
    is fingerprints[feature] ("" when not given). explanations = greedy texts at the chosen
    scales (best first), then n_samples sampled texts per chosen scale (best first).
    """
    residual_norm = _check_norm(residual_norm)
    insert, read = resolve_layers(lm, cfg, sae_layer)
    scales = scale_grid(cfg)
    prompt = build_prompt(lm, cfg)
    features, matrix = _stack(directions, lm.d_model)
    eligible = eligible_scales(cfg, len(scales))
    fingerprints = fingerprints or {}

    selfsim, entropy, base = sweep(lm, prompt, matrix, scales, insert, read, cfg.mode, residual_norm,
                                   cfg.batch_size, progress)
    scores = score_sweep(selfsim, entropy, cfg.selfsim_weight, cfg.entropy_weight)
    chosen = best_scales(scores, eligible, cfg.n_best_scales) if features else []

    # greedy rows: one per (feature, chosen scale), best scale first, then the scale-0 baselines
    row_vectors = [matrix[i] * scales[j] * residual_norm for i, picks in enumerate(chosen) for j in picks]
    vectors = torch.stack(row_vectors) if row_vectors else torch.zeros(0, lm.d_model)
    greedy, baseline = _greedy_with_baselines(lm, prompt, vectors, insert, cfg, base, progress)
    samples: list[str] = []
    if cfg.n_samples and len(vectors):
        repeated = vectors.repeat_interleave(cfg.n_samples, dim=0)
        samples = generate_explanations(lm, prompt, repeated, insert, cfg.mode, cfg.max_new_tokens,
                                        cfg.batch_size, temperature=cfg.temperature, progress=progress)

    results: dict[int, FeatureExplanation] = {}
    row = 0
    allowed = torch.tensor(eligible)
    for i, feature in enumerate(features):
        n_picked = len(chosen[i])
        texts = greedy[row:row + n_picked]
        texts += samples[row * cfg.n_samples:(row + n_picked) * cfg.n_samples]
        row += n_picked
        best_selfsim = float(selfsim[i][allowed].max())
        results[feature] = FeatureExplanation(
            feature=feature, fingerprint=fingerprints.get(feature, ""), explanations=texts,
            scale=scales[chosen[i][0]] if chosen[i] else None,
            scales=[scales[j] for j in chosen[i]],
            sweep=[SweepPoint(scale=s, selfsim=float(selfsim[i, j]), entropy=float(entropy[i, j]),
                              score=float(scores[i, j]) if eligible[j] else None)
                   for j, s in enumerate(scales)],
            failed=best_selfsim < cfg.failed_selfsim, best_selfsim=best_selfsim)
    settings = ExplainSettings(prompt_text=prompt.text, placeholder_token_id=prompt.placeholder_id,
                               placeholder_positions=prompt.positions, insert_layer=insert, read_layer=read,
                               mode=cfg.mode, residual_norm=residual_norm, scales=scales)
    return results, baseline, settings


def _greedy_with_baselines(lm, prompt: PromptSpec, vectors: torch.Tensor, layer: int, cfg: ExplainConfig,
                           base: dict, progress: Progress | None = None) -> tuple[list[str], ExplainBaseline]:
    """Greedy texts of the steered rows and of both scale-0 baselines, in the same batches: the
    unsteered row has its steering masked off; the zeroed-placeholder row is a zero vector in
    replace mode (in add mode it needs one extra replace-mode generation)."""
    zero = torch.zeros(1, lm.d_model)
    rows = torch.cat([vectors.cpu(), zero, zero])
    steer = torch.ones(len(rows), dtype=torch.bool)
    steer[-1] = False  # the unsteered (add, scale 0) baseline
    texts = generate_explanations(lm, prompt, rows, layer, cfg.mode, cfg.max_new_tokens, cfg.batch_size,
                                  steer_mask=steer, progress=progress)
    greedy, zero_text, add_zero = texts[:-2], texts[-2], texts[-1]
    if cfg.mode == "replace":
        replace_zero = zero_text
    else:
        replace_zero = generate_explanations(lm, prompt, zero, layer, "replace", cfg.max_new_tokens, 1)[0]
    selfsim_zero = base["selfsim_zero"]
    baseline = ExplainBaseline(replace_zero=replace_zero, add_zero=add_zero,
                               selfsim_zero=float(selfsim_zero.mean()) if selfsim_zero.numel() else 0.0,
                               entropy_zero=base["entropy_zero"])
    return greedy, baseline


# ---------------------------------------------------------------- the public entry point


def explain(lm, saes, features, settings: ExplainConfig | None = None, residual_norm: float | None = None,
            sae_layer: int | None = None, fingerprints: Mapping[str, Mapping[int, str]] | None = None,
            progress: Progress | None = None) -> ExplainArtifact:
    """Self-explanations of SAE features by steering, with the scale chosen per feature.

    `saes` is one SAE or a mapping {name: SAE}, `features` its feature indices (or a mapping with
    the same names); one SAE is stored under the name "sae". `residual_norm` is the median
    residual norm at the insert layer, the unit of the scales (`Runtime.residual_norm`).
    """
    settings = settings or ExplainConfig()
    if residual_norm is None:
        raise FaithcaseError("explain needs residual_norm: the median residual norm at the insert layer.")
    if not isinstance(saes, Mapping):
        saes, features = {"sae": saes}, {"sae": features}
    explained, baseline, run_settings = {}, None, None
    for key, sae in saes.items():
        directions = unit_directions(sae, features[key])
        results, baseline, run_settings = explain_features(
            lm, directions, settings, residual_norm, progress, sae_layer=sae_layer,
            fingerprints=(fingerprints or {}).get(key))
        explained[key] = {str(f): r for f, r in results.items()}
    if run_settings is None:
        raise FaithcaseError("explain needs at least one SAE.")
    return ExplainArtifact(meta=Meta(stage="explain", fingerprint=""), settings=run_settings, baseline=baseline,
                           features=explained)
