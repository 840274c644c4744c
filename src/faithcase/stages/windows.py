"""windows stage: one streaming pass over the corpus, for the selected features of one SAE.

Per feature it keeps the top non-overlapping windows under three criteria (`mean`, `density`,
`max`), exact activation statistics with a histogram, reservoir samples of aligned contexts for
the embed stage, and how many aligned contexts activate and its activation by token id
(`numerics/token_spread.py`: the scoring rules and single-token features). Memory is bounded by
the settings and the vocabulary, never by the corpus size. Window and context texts are the model
tokenizer's strings of their tokens, never token ids.

Conventions. Position 0 of every sequence is BOS and is never part of a window, a context or a
statistic; the usable positions are 1..T-1. Excluded positions (BOS, massive activations) count as
activation 0 and are left out of n_tokens. SAE activations are non-negative (ReLU, TopK, JumpReLU
encoders); a negative value is clamped to 0, so "active" means "> 0".

Streaming the windows. Windows of different sequences never overlap, so the global greedy choice
(take the best window, drop the candidates overlapping it, repeat) equals the best `top` of the
union of per-sequence greedy lists. Each batch runs the per-sequence greedy vectorized over [B, F]
(`top` rounds of argmax-and-mask) and merges its candidates into a bounded per-feature pool (the
pools are `numerics/topk_pools.py`'s, the statistics `numerics/activation_stats.py`'s).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import torch

from faithcase.render.tables import console
from faithcase.artifacts import (
    CRITERIA,
    Context,
    FeatureWindows,
    Window,
    WindowsArtifact,
)
from faithcase.config import WindowsConfig
from faithcase.artifacts import KNOWN, SAE_KEYS, windows_file
from faithcase.run.errors import FaithcaseError
from faithcase.run.graph import Stage
from faithcase.run.shards import merge_across
from faithcase.numerics.outliers import counted_positions
from faithcase.model.tokens import TokenTexts, token_texts
from faithcase.model.window_prompt import overlaps
from faithcase.numerics.activation_stats import FINE_BINS, HISTOGRAM_METHOD, ActivationStats
from faithcase.numerics.chunks import row_chunks
from faithcase.numerics.token_spread import TokenSpread
from faithcase.numerics.window_state import (
    CONTEXT_FIELDS,
    CONTEXT_ORDER,
    WINDOW_FIELDS,
    WINDOW_ORDER,
    MergeableWindows,
)
from faithcase.numerics.topk_pools import (
    greedy_per_sequence,
    merge_into,
    new_pool,
    pool_order,
    pool_to_cpu,
    sampling_keys,
)

__all__ = ["FINE_BINS", "HISTOGRAM_METHOD", "QUANTILE_METHOD", "WindowCollector",
           "collect_windows", "top_activated_windows"]

ACTIVATING_SALT, NON_ACTIVATING_SALT = 0x1F2E3D, 0x4C5B6A
QUANTILE_METHOD = (
    "reservoir: each sequence's positions 1..T-1 are cut into aligned, disjoint chunks of "
    "`window` tokens (short tail dropped); per feature a uniform sample (bottom-k of seeded hash "
    "keys) of up to `reservoir` activating chunks (max activation > 0) and `n_negative` all-zero "
    "chunks is kept while streaming; the sampled activating chunks, sorted by max activation, are "
    "split into `n_quantiles` equal-count groups (0 = weakest), from each of which `per_quantile` "
    "are drawn by the same seeded keys. Chunks overlapping one of the feature's top `max` or "
    "`mean` windows (what the window explainer may see) are left out of both samples first"
)
# spare non-activating slots: each of the 2 × top shown windows overlaps at most 2 aligned chunks
SPARE_PER_WINDOW = 4


class Encoder(Protocol):
    d_sae: int
    # where its activations come out (the collector's state lives there; default: the input's)
    device: torch.device

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...


def _unpack(batch: Any):
    if isinstance(batch, Mapping):
        return batch["seq_ids"], batch["tokens"], batch["resid"], batch.get("excluded")
    return tuple(batch)


def _batch_rows(batch: int, shape: torch.Size, device) -> torch.Tensor:
    """The batch row of every entry of a [B, ...] grid (B = batch) of the given shape."""
    return torch.arange(batch, device=device).view(-1, 1, 1).expand(shape)


# ---------------------------------------------------------------- the collector


class WindowCollector(MergeableWindows):
    """Streams batches of one corpus pass for one SAE; `finish` turns the bounded state into
    FeatureWindows."""

    def __init__(self, sae: Encoder, features: list[int], settings: WindowsConfig | None = None):
        settings = settings or WindowsConfig()
        d_sae = int(sae.d_sae)
        self.sae = sae
        self.features = list(dict.fromkeys(int(f) for f in features))
        for feature in self.features:
            if not 0 <= feature < d_sae:
                raise FaithcaseError(f"feature index {feature} is out of range: "
                                     f"the SAE has {d_sae} features")
        self.window, self.top, self.seed = settings.window, settings.top, settings.seed
        self.n_quantiles, self.per_quantile = settings.n_quantiles, settings.per_quantile
        self.n_negative, self.reservoir = settings.n_negative, settings.reservoir
        self.n_hist_bins = settings.n_hist_bins
        self.single_token_share = settings.single_token_share
        # corpus totals (the same for every feature)
        self.n_sequences = 0
        self.n_tokens = 0  # counted positions: 1..T-1 and not excluded
        self.n_excluded = 0  # positions not counted, BOS included
        self.seq_len: int | None = None
        self._device: torch.device | None = None

    # -------------------------------------------------------- streaming

    def _allocate(self, device: torch.device) -> None:
        n, window = len(self.features), self.window
        self._device = device
        self._feature_ids = torch.tensor(self.features, dtype=torch.long, device=device)
        self._stats = ActivationStats(n, device)
        self._spread = TokenSpread(n, window, device)
        self._pools = {c: new_pool(self.top, n, window, WINDOW_FIELDS, device) for c in CRITERIA}
        self._activating = new_pool(self.reservoir, n, window, CONTEXT_FIELDS, device)
        self._non_activating = new_pool(self.n_negative + SPARE_PER_WINDOW * self.top, n,
                                        window, CONTEXT_FIELDS, device)

    @torch.no_grad()
    def _encode_selected(self, resid: torch.Tensor) -> torch.Tensor:
        """Exact full encode (TopK needs every pre-activation), then keep the selected columns:
        [N, F]."""
        parts = []
        for chunk in row_chunks(resid, self.sae.d_sae):
            encoded = self.sae.encode(chunk)
            parts.append(encoded.index_select(-1, self._feature_ids).float())
        return torch.cat(parts)

    @torch.no_grad()
    def update(self, seq_ids: torch.Tensor, tokens: torch.Tensor, resid: torch.Tensor,
               excluded: torch.Tensor | None) -> None:
        batch, length = tokens.shape
        usable, window = length - 1, self.window
        if usable < window:
            raise FaithcaseError(
                f"corpus sequences have {usable} tokens after BOS, shorter than the "
                f"{window}-token window; raise corpus.seq_len"
            )
        if self._device is None:
            self._allocate(torch.device(getattr(self.sae, "device", resid.device)))
        device = self._device
        self.n_sequences += batch
        self.seq_len = length if self.seq_len is None else max(self.seq_len, length)
        counted = counted_positions(excluded, (batch, length))[:, 1:]
        n_counted = int(counted.sum())
        counted = counted.to(device)
        self.n_tokens += n_counted
        self.n_excluded += batch * length - n_counted
        if not self.features:
            return

        # activations of the selected features at positions 1..T-1: [B, L, F], excluded ones 0
        flat = resid[:, 1:].reshape(batch * usable, resid.shape[-1])
        acts = self._encode_selected(flat).view(batch, usable, -1).clamp_min(0)
        acts = acts * counted.unsqueeze(-1)
        tokens = tokens[:, 1:].to(device)
        seq_ids = seq_ids.to(device=device, dtype=torch.long)

        self._stats.update(acts)
        self._spread.update(acts, tokens)
        self._update_windows(acts, tokens, seq_ids)
        self._update_contexts(acts, tokens, seq_ids)

    def _update_windows(self, acts: torch.Tensor, tokens: torch.Tensor,
                        seq_ids: torch.Tensor) -> None:
        batch, usable, _ = acts.shape
        window, device = self.window, acts.device
        n_starts = usable - window + 1
        # window sums and non-zero counts from cumulative sums (float64: exact for float32 inputs
        # in practice)
        sums = torch.nn.functional.pad(acts.double().cumsum(1), (0, 0, 1, 0))
        window_sums = sums[:, window:] - sums[:, :n_starts]
        counts = torch.nn.functional.pad((acts > 0).long().cumsum(1), (0, 0, 1, 0))
        window_counts = (counts[:, window:] - counts[:, :n_starts]).double()
        starts = torch.arange(n_starts, device=device)
        peak_starts = (torch.arange(usable, device=device) - window // 2).clamp(0, usable - window)
        searches = {
            "mean": (window_sums, None, starts),
            "density": (window_counts, window_sums, starts),
            "max": (acts.double(), None, peak_starts),
        }
        for criterion, (primary, secondary, candidate_start) in searches.items():
            found = greedy_per_sequence(primary, secondary, candidate_start, self.top, window)
            if found is None:
                continue
            index, first, second = found  # [B, r, F]
            row = _batch_rows(batch, index.shape, device)
            offset = candidate_start[index]
            candidates = {
                "primary": first,
                "secondary": second,
                "seq": seq_ids[row],
                "pos": index + 1,  # window start, or the peak position for `max`
                "start": offset + 1,
                "row": row,
                "offset": offset,
            }
            candidates = {name: values.reshape(-1, index.shape[-1])  # [B * r, F]
                          for name, values in candidates.items()}
            merge_into(self._pools[criterion], candidates, WINDOW_ORDER, acts, tokens, window)

    def _update_contexts(self, acts: torch.Tensor, tokens: torch.Tensor,
                         seq_ids: torch.Tensor) -> None:
        batch, usable, n_features = acts.shape
        window, device = self.window, acts.device
        n_chunks = usable // window
        grid = (batch, n_chunks, n_features)
        chunk_max = acts[:, : n_chunks * window].reshape(batch, n_chunks, window, n_features)
        chunk_max = chunk_max.amax(2)  # [B, C, F]
        offset = (torch.arange(n_chunks, device=device) * window).view(1, -1, 1).expand(grid)
        row = _batch_rows(batch, grid, device)

        def candidates(salt: int, eligible: torch.Tensor) -> dict:
            keys = sampling_keys(self.seed, salt, self._feature_ids, seq_ids, n_chunks)
            fields = {
                "key": keys.masked_fill(~eligible, math.inf),
                "seq": seq_ids[row],
                "start": offset + 1,
                "max_act": chunk_max,
                "row": row,
                "offset": offset,
            }
            return {name: values.reshape(batch * n_chunks, n_features)
                    for name, values in fields.items()}

        activating = candidates(ACTIVATING_SALT, chunk_max > 0)
        merge_into(self._activating, activating, CONTEXT_ORDER, acts, tokens, window)
        if self.n_negative:
            silent = candidates(NON_ACTIVATING_SALT, chunk_max == 0)
            merge_into(self._non_activating, silent, CONTEXT_ORDER, acts, tokens, window)

    # -------------------------------------------------------- finish

    def finish(self, tokenizer: Any) -> dict[int, FeatureWindows]:
        """Per feature: its windows, statistics and contexts. `tokenizer` (a Hugging Face
        tokenizer, a model carrying one, or a function of token ids) gives the texts."""
        if self.n_sequences == 0:
            raise FaithcaseError("the corpus gave no sequences; "
                                 "check corpus.source and corpus.max_tokens")
        texts = token_texts(tokenizer)
        if not self.features:
            return {}
        pools = {name: pool_to_cpu(pool) for name, pool in self._pools.items()}
        orders = {name: pool_order(pool, WINDOW_ORDER) for name, pool in pools.items()}
        activating = pool_to_cpu(self._activating)
        non_activating = pool_to_cpu(self._non_activating)
        stats = self._stats.finish(self.n_tokens, self.n_hist_bins)
        spread = self._spread.finish(texts, self.single_token_share)
        result = {}
        for f, feature in enumerate(self.features):
            windows = {c: self._windows_of(pools[c], orders[c][:, f].tolist(), c, f, texts)
                       for c in CRITERIA}
            shown = [w for c in ("max", "mean") for w in windows[c]]
            result[feature] = FeatureWindows(
                feature=feature,
                windows=windows,
                stats=stats[f].model_copy(update={"spread": spread[f]}),
                activating=self._activating_contexts(activating, f, texts, shown),
                non_activating=self._non_activating_contexts(non_activating, f, texts, shown),
            )
        return result

    def _windows_of(self, pool: dict, order: list[int], criterion: str, f: int,
                    texts: TokenTexts) -> list[Window]:
        scale = 1.0 if criterion == "max" else 1.0 / self.window
        windows = []
        for k in order:
            primary = float(pool["primary"][k, f])
            if not primary > 0:
                break  # in order: the rest are silent or empty slots
            ids = pool["tokens"][k, f].tolist()
            windows.append(
                Window(
                    tokens=ids,
                    texts=texts(ids),
                    acts=pool["acts"][k, f].tolist(),
                    seq_id=int(pool["seq"][k, f]),
                    start=int(pool["start"][k, f]),
                    value=primary * scale,
                )
            )
        return windows

    def _contexts(self, pool: dict, f: int, shown: list[Window]) -> list[dict]:
        """The sampled chunks of feature f that overlap no shown window, as dicts (empty reservoir
        slots dropped)."""
        keep = torch.isfinite(pool["key"][:, f]).nonzero().flatten()
        names = ("key", "seq", "start", "max_act", "tokens", "acts")
        columns = {name: pool[name][keep, f].tolist() for name in names}
        return [
            {"key": key, "seq_id": seq, "start": start, "max_act": max_act, "tokens": ids,
             "acts": acts}
            for key, seq, start, max_act, ids, acts in zip(*columns.values())
            if not any(overlaps(seq, start, w.seq_id, w.start, self.window, len(w.tokens))
                       for w in shown)
        ]

    def _activating_contexts(self, pool: dict, f: int, texts: TokenTexts,
                             shown: list[Window]) -> list[Context]:
        sample = self._contexts(pool, f, shown)
        sample.sort(key=lambda c: (c["max_act"], c["key"], c["seq_id"], c["start"]))
        groups: list[list[dict]] = [[] for _ in range(self.n_quantiles)]
        for rank, chunk in enumerate(sample):
            groups[rank * self.n_quantiles // len(sample)].append(chunk)
        chosen = []
        for quantile, group in enumerate(groups):
            drawn = sorted(group, key=lambda c: (c["key"], c["seq_id"], c["start"]))
            drawn = sorted(drawn[: self.per_quantile], key=lambda c: (c["seq_id"], c["start"]))
            chosen += [(quantile, chunk) for chunk in drawn]
        return [_context(chunk, texts, quantile) for quantile, chunk in chosen]

    def _non_activating_contexts(self, pool: dict, f: int, texts: TokenTexts,
                                 shown: list[Window]) -> list[Context]:
        sample = sorted(self._contexts(pool, f, shown), key=lambda c: (c["key"], c["seq_id"]))
        sample = sorted(sample[: self.n_negative], key=lambda c: (c["seq_id"], c["start"]))
        return [_context(chunk, texts, None) for chunk in sample]


def _context(chunk: dict, texts: TokenTexts, quantile: int | None) -> Context:
    return Context(
        tokens=chunk["tokens"],
        texts=texts(chunk["tokens"]),
        acts=chunk["acts"],
        seq_id=chunk["seq_id"],
        start=chunk["start"],
        max_act=chunk["max_act"],
        quantile=quantile,
    )


# ---------------------------------------------------------------- one pass


def collect_windows(collectors: Mapping[str, WindowCollector], batches: Iterable[Any],
                    tokenizer: Any) -> dict[str, dict[int, FeatureWindows]]:
    """One model pass feeding several SAEs that read the same hook site. A batch is
    (seq_ids, tokens, resid, excluded) or a mapping with those keys. `tokenizer`: a Hugging Face
    tokenizer, a model carrying one (`.tokenizer`), or a function of token ids to their texts."""
    texts = token_texts(tokenizer)  # before the pass: without a tokenizer it fails at once
    for batch in batches:
        seq_ids, tokens, resid, excluded = _unpack(batch)
        for collector in collectors.values():
            collector.update(seq_ids, tokens, resid, excluded)
    for collector in collectors.values():
        merge_across(collector)  # a pass split over processes (run/shards.py)
    return {name: collector.finish(texts) for name, collector in collectors.items()}


def top_activated_windows(
    saes: Encoder | Mapping[str, Encoder],
    features: Iterable[int] | Mapping[str, Iterable[int]],
    batches: Iterable[Any],
    window: int | None = None,
    settings: WindowsConfig | None = None,
    *,
    tokenizer: Any = None,
) -> WindowsArtifact | dict[str, WindowsArtifact]:
    """Top-activating windows (mean, density, max), statistics and scoring contexts of SAE
    features.

    One pass over `batches` (see `collect_windows`). `saes` is one SAE, with `features` its
    feature indices, giving one artifact; or a mapping {name: SAE} with `features` {name:
    indices}, fed by the same pass, giving {name: artifact}. `window` overrides settings.window.
    `tokenizer` is required: the model's Hugging Face tokenizer, the model itself (anything with
    `.tokenizer`, e.g. rt.lm), or a function of token ids to their texts.
    """
    texts = token_texts(tokenizer)  # a one-line error without one, before the pass
    settings = settings or WindowsConfig()
    if window is not None:
        settings = settings.model_copy(update={"window": window})
    single = not isinstance(saes, Mapping)
    if single:
        saes, features = {"sae": saes}, {"sae": features}
    collectors = {key: WindowCollector(sae, list(features[key]), settings)
                  for key, sae in saes.items()}
    found = collect_windows(collectors, batches, texts)
    artifacts = {
        key: WindowsArtifact(
            sae=key, n_sequences=c.n_sequences, n_tokens=c.n_tokens,
            seq_len=int(c.seq_len or 0), window=settings.window, excluded_positions=c.n_excluded,
            quantile_method=QUANTILE_METHOD,
            features={str(f): fw for f, fw in sorted(found[key].items())})
        for key, c in collectors.items()
    }
    return artifacts["sae"] if single else artifacts


# ---------------------------------------------------------------- printing


def print_windows(found, inputs: dict) -> None:
    for key, artifact in found.items():
        console.print(f"{key}: {len(artifact.features)} features, {artifact.n_tokens:,} tokens")


# ---------------------------------------------------------------- the stage


def _compute(job) -> dict[str, WindowsArtifact]:
    rt, known = job.ctx, job.inputs["known"]
    features = job.inputs["pairs"].selected_features() | known.selection()
    saes = {key: rt.sae_for_model(key) for key in SAE_KEYS} | known.encoders(rt.device)
    passes = rt.activation_batches(description=f"windows of {' + '.join(saes)}")
    found = top_activated_windows(saes, features, passes,
                                  settings=job.settings, tokenizer=rt.lm.tokenizer)
    for key, artifact in found.items():
        job.write(windows_file(key), artifact)
    return found


def _load(job) -> dict[str, WindowsArtifact]:
    """The SAEs' windows, and the known features' when this run recorded them."""
    keys = [*SAE_KEYS, *([KNOWN] if job.trusted(windows_file(KNOWN)) else [])]
    return {key: job.read(windows_file(key), WindowsArtifact) for key in keys}


STAGE = Stage(
    "windows", _compute, inputs=("pairs", "known"), section="windows", uses=("model", "corpus"),
    load=_load, printer=print_windows,
    doc="Top-activating windows (mean, density, max), statistics and scoring contexts: one "
        "pass for both SAEs.")
