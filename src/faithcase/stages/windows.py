"""windows stage: one streaming pass over the corpus, for the selected features of one SAE.

Per feature it keeps the top non-overlapping windows under three criteria (`mean`, `density`, `max`),
exact activation statistics with a histogram, and reservoir samples of aligned contexts for the embed
stage. Memory is bounded by the settings, never by the corpus size.

Conventions. Position 0 of every sequence is BOS and is never part of a window, a context or a
statistic; the usable positions are 1..T-1. Excluded positions (BOS, massive activations) count as
activation 0 and are left out of n_tokens. SAE activations are non-negative (ReLU, TopK, JumpReLU
encoders); a negative value is clamped to 0, so "active" means "> 0".

Streaming the windows. Windows of different sequences never overlap, so the global greedy choice
(take the best window, drop the candidates overlapping it, repeat) equals the best `top` of the union
of per-sequence greedy lists. Each batch runs the per-sequence greedy vectorized over [B, F]
(`top` rounds of argmax-and-mask) and merges its candidates into a bounded per-feature pool.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import torch

from faithcase.render.tables import console, fmt, table
from faithcase.artifacts import (
    CRITERIA,
    Context,
    FeatureStats,
    FeatureWindows,
    Histogram,
    Window,
    WindowsArtifact,
)
from faithcase.config import WindowsConfig
from faithcase.run.errors import FaithcaseError
from faithcase.model.outliers import counted_positions

TokenTexts = Callable[[list[int]], list[str]]

FINE_BINS = 1024  # streaming histogram resolution; a power of two, so a value's fine bin is exact
HASH_MASK = (1 << 31) - 1  # sampling keys are 31-bit hashes computed without int64 overflow
HASH_MULTIPLIER = 0x45D9F3B
ACTIVATING_SALT, NON_ACTIVATING_SALT = 0x1F2E3D, 0x4C5B6A
WINDOW_ORDER = [("primary", True), ("secondary", True), ("seq", False), ("pos", False)]
CONTEXT_ORDER = [("key", False), ("seq", False), ("start", False)]
MAX_ENCODE_ELEMENTS = 1 << 26  # encode at most this many d_sae activations at once

QUANTILE_METHOD = (
    "reservoir: each sequence's positions 1..T-1 are cut into aligned, disjoint chunks of `window` tokens "
    "(short tail dropped); per feature a uniform sample (bottom-k of seeded hash keys) of up to `reservoir` "
    "activating chunks (max activation > 0) and `n_negative` all-zero chunks is kept while streaming; "
    "the sampled activating chunks, sorted by max activation, are split into `n_quantiles` equal-count "
    "groups (0 = weakest), from each of which `per_quantile` are drawn by the same seeded keys"
)
HISTOGRAM_METHOD = (
    f"exact counts: while streaming, {FINE_BINS} equal-width bins over [0, 2^e) with 2^e > the running max "
    "(adjacent bins merged when the max doubles); at the end n_hist_bins equal-width bins, each a whole number "
    f"of fine bins, over [0, E] with max < E <= (1 + n_hist_bins / {FINE_BINS // 2}) max"
)


class Encoder(Protocol):
    d_sae: int

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...


# ---------------------------------------------------------------- small tensor helpers


def _lexsort(keys: list[torch.Tensor]) -> torch.Tensor:
    """Row order [N, F] sorting each column ascending by keys[0], then keys[1], ... (stable sorts)."""
    order = torch.arange(keys[0].shape[0], device=keys[0].device).unsqueeze(1).expand_as(keys[0])
    for key in reversed(keys):
        order = order.gather(0, key.gather(0, order).sort(dim=0, stable=True).indices)
    return order


def _hash31(x: torch.Tensor) -> torch.Tensor:
    """Mix int64 values in [0, 2^31) to pseudo-random values in [0, 2^31); products stay below 2^58."""
    for _ in range(3):
        x = (((x >> 16) ^ x) * HASH_MULTIPLIER) & HASH_MASK
    return (x >> 16) ^ x


def _sampling_keys(seed: int, salt: int, features: torch.Tensor, seq_ids: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """Uniform-looking keys [B, C, F] in [0, 1), a function of (seed, salt, seq_id, chunk, feature) only:
    the samples do not depend on batch sizes, batch order or which other features are selected."""
    base = _hash31(torch.tensor([(seed ^ salt) & HASH_MASK], device=features.device))
    per_feature = _hash31((base + features) & HASH_MASK)  # [F]
    seq = (seq_ids & HASH_MASK) ^ ((seq_ids >> 31) & HASH_MASK)
    per_seq = _hash31((per_feature[None, :] + seq[:, None]) & HASH_MASK)  # [B, F]
    chunks = torch.arange(n_chunks, device=features.device)
    keys = _hash31((per_seq[:, None, :] + chunks[None, :, None]) & HASH_MASK)  # [B, C, F]
    return keys.double() / float(1 << 31)


def _window_data(acts, tokens, row, offset, feature, window: int):
    """Activations and token ids [..., W] of the windows starting at `offset` of batch row `row` (index tensors
    of one shape)."""
    positions = offset.unsqueeze(-1) + torch.arange(window, device=acts.device)
    rows = row.unsqueeze(-1).expand_as(positions)
    return acts[rows, positions, feature.unsqueeze(-1).expand_as(positions)], tokens[rows, positions]


def _new_pool(capacity: int, n_features: int, window: int, fields: dict[str, tuple[torch.dtype, float]], device):
    """A fixed-capacity, unordered per-feature set of windows: the given fields [capacity, F] filled with
    their 'empty slot' value (which sorts after every real entry), plus acts and tokens [capacity, F, W]."""
    pool = {name: torch.full((capacity, n_features), fill, dtype=dtype, device=device) for name, (dtype, fill) in fields.items()}
    pool["acts"] = torch.zeros(capacity, n_features, window, dtype=torch.float32, device=device)
    pool["tokens"] = torch.zeros(capacity, n_features, window, dtype=torch.long, device=device)
    return pool


def _sort_keys(pool: dict, order_by) -> list[torch.Tensor]:
    return [-pool[name] if descending else pool[name] for name, descending in order_by]


def _merge_into(pool: dict, candidates: dict, order_by, acts, tokens, window: int) -> None:
    """Keep in `pool` the best rows per feature of pool ∪ candidates under `order_by` [(field, descending)].
    Each entering candidate takes the slot of an evicted row; window data is gathered for those only."""
    capacity, n_features = pool["acts"].shape[:2]
    fields = [name for name in candidates if name not in ("row", "offset")]
    merged = {name: torch.cat([pool[name], candidates[name]]) for name in fields}
    best = _lexsort(_sort_keys(merged, order_by))[:capacity]
    kept = torch.zeros(capacity + candidates[fields[0]].shape[0], n_features, dtype=torch.bool, device=acts.device)
    kept.scatter_(0, best, True)
    evicted, entering = ~kept[:capacity], kept[capacity:]  # equal counts per feature
    n_moves = entering.sum(0)
    moves = int(n_moves.max())
    if moves == 0:
        return
    # pair the j-th evicted slot with the j-th entering candidate of each feature
    slots = evicted.byte().sort(dim=0, descending=True, stable=True).indices[:moves]
    rows = entering.byte().sort(dim=0, descending=True, stable=True).indices[:moves]
    valid = torch.arange(moves, device=acts.device).unsqueeze(1) < n_moves
    feature = torch.arange(n_features, device=acts.device).expand(moves, n_features)[valid]
    slot, row = slots[valid], rows[valid]
    for name in fields:
        pool[name][slot, feature] = candidates[name][row, feature]
    pool["acts"][slot, feature], pool["tokens"][slot, feature] = _window_data(
        acts, tokens, candidates["row"][row, feature], candidates["offset"][row, feature], feature, window
    )


def _greedy_per_sequence(primary, secondary, candidate_start, top, window):
    """Per (sequence, feature): up to `top` rounds of taking the best candidate, then masking every candidate
    whose window overlaps the taken one. primary/secondary [B, N, F] float64: secondary breaks ties of
    primary, argmax's first index breaks the rest (lower start / peak position). candidate_start [N] is the
    start offset of each candidate's window. Returns candidate index, primary, secondary: [B, rounds, F]."""
    # masked in place: work on [B, F, N] copies (always copies; reductions over the last dimension are fast)
    primary = primary.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    secondary = None if secondary is None else secondary.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    picks, firsts, seconds = [], [], []
    for _ in range(top):
        if secondary is None:
            index = primary.argmax(-1, keepdim=True)
        else:
            best = primary.amax(-1, keepdim=True)
            index = secondary.masked_fill(primary != best, -math.inf).argmax(-1, keepdim=True)
        first = primary.gather(-1, index)
        if not bool((first > 0).any()):
            break  # only silent windows remain
        picks.append(index)
        firsts.append(first)
        seconds.append(torch.zeros_like(first) if secondary is None else secondary.gather(-1, index))
        overlap = (candidate_start - candidate_start[index]).abs() < window
        primary.masked_fill_(overlap, -math.inf)
        if secondary is not None:
            secondary.masked_fill_(overlap, -math.inf)
    if not picks:
        return None
    return tuple(torch.cat(parts, -1).transpose(1, 2) for parts in (picks, firsts, seconds))


def _unpack(batch: Any):
    if isinstance(batch, Mapping):
        return batch["seq_ids"], batch["tokens"], batch["resid"], batch.get("excluded")
    return tuple(batch)


def _default_token_texts(ids: list[int]) -> list[str]:
    return [str(token) for token in ids]


# ---------------------------------------------------------------- the collector


class WindowCollector:
    """Streams batches of one corpus pass for one SAE; `finish` turns the bounded state into FeatureWindows."""

    def __init__(self, sae: Encoder, features: list[int], settings: WindowsConfig | None = None):
        settings = settings or WindowsConfig()
        d_sae = int(sae.d_sae)
        self.sae = sae
        self.features = list(dict.fromkeys(int(f) for f in features))
        for feature in self.features:
            if not 0 <= feature < d_sae:
                raise FaithcaseError(f"feature index {feature} is out of range: the SAE has {d_sae} features")
        self.window, self.top, self.seed = settings.window, settings.top, settings.seed
        self.n_quantiles, self.per_quantile = settings.n_quantiles, settings.per_quantile
        self.n_negative, self.reservoir, self.n_hist_bins = settings.n_negative, settings.reservoir, settings.n_hist_bins
        # corpus totals (the same for every feature)
        self.n_sequences = 0
        self.n_tokens = 0  # counted positions: 1..T-1 and not excluded
        self.n_excluded = 0  # positions not counted, BOS included
        self.seq_len: int | None = None
        self._device: torch.device | None = None

    # -------------------------------------------------------- streaming

    def _allocate(self, device: torch.device) -> None:
        n = len(self.features)
        self._device = device
        self._feature_ids = torch.tensor(self.features, dtype=torch.long, device=device)
        self._n_active = torch.zeros(n, dtype=torch.long, device=device)
        self._sum_active = torch.zeros(n, dtype=torch.float64, device=device)
        self._max = torch.zeros(n, dtype=torch.float32, device=device)
        self._hist = torch.zeros(n, FINE_BINS, dtype=torch.long, device=device)
        self._hist_exponent = [None] * n  # fine bins cover [0, 2^exponent)
        lowest, highest = -math.inf, torch.iinfo(torch.long).max
        window_fields = {
            "primary": (torch.float64, lowest),  # window sum, non-zero count, or peak activation
            "secondary": (torch.float64, lowest),  # window sum breaking density ties; 0 otherwise
            "seq": (torch.long, highest),
            "pos": (torch.long, highest),  # window start, or the peak position for `max`
            "start": (torch.long, highest),
        }
        context_fields = {
            "key": (torch.float64, math.inf),
            "seq": (torch.long, highest),
            "start": (torch.long, highest),
            "max_act": (torch.float32, 0.0),
        }
        self._pools = {c: _new_pool(self.top, n, self.window, window_fields, device) for c in CRITERIA}
        self._activating = _new_pool(self.reservoir, n, self.window, context_fields, device)
        self._non_activating = _new_pool(self.n_negative, n, self.window, context_fields, device)

    @torch.no_grad()
    def _encode_selected(self, resid: torch.Tensor) -> torch.Tensor:
        """Exact full encode (TopK needs every pre-activation), then keep the selected columns: [N, F]."""
        rows = max(1, MAX_ENCODE_ELEMENTS // max(1, int(self.sae.d_sae)))
        columns = None
        parts = []
        for chunk in resid.split(rows):
            encoded = self.sae.encode(chunk)
            if columns is None:
                columns = self._feature_ids.to(encoded.device)
            parts.append(encoded.index_select(-1, columns).float())
        return torch.cat(parts)

    @torch.no_grad()
    def update(self, seq_ids: torch.Tensor, tokens: torch.Tensor, resid: torch.Tensor, excluded: torch.Tensor | None) -> None:
        batch, length = tokens.shape
        usable, window = length - 1, self.window
        if usable < window:
            raise FaithcaseError(
                f"corpus sequences have {usable} tokens after BOS, shorter than the {window}-token window; "
                "raise corpus.seq_len"
            )
        if self._device is None:
            self._allocate(resid.device)
        device = self._device
        self.n_sequences += batch
        self.seq_len = length if self.seq_len is None else max(self.seq_len, length)
        counted = counted_positions(excluded, (batch, length))[:, 1:].to(device)
        n_counted = int(counted.sum())
        self.n_tokens += n_counted
        self.n_excluded += batch * length - n_counted
        if not self.features:
            return

        # activations of the selected features at positions 1..T-1: [B, L, F], excluded ones set to 0
        flat = resid[:, 1:].reshape(batch * usable, resid.shape[-1])
        acts = self._encode_selected(flat).to(device).view(batch, usable, -1).clamp_min(0)
        acts = acts * counted.unsqueeze(-1)
        tokens = tokens[:, 1:].to(device)
        seq_ids = seq_ids.to(device=device, dtype=torch.long)

        self._update_stats(acts)
        self._update_windows(acts, tokens, seq_ids)
        self._update_contexts(acts, tokens, seq_ids)

    def _update_stats(self, acts: torch.Tensor) -> None:
        active = acts > 0
        self._n_active += active.sum((0, 1))
        self._sum_active += acts.double().sum((0, 1))
        batch_max = acts.amax((0, 1))
        self._max = torch.maximum(self._max, batch_max)
        # widen each feature's fine-bin range to a power of two above its max; merging bin pairs is exact
        exponents = torch.frexp(batch_max).exponent.tolist()  # batch_max < 2^exponent
        for f, (value, exponent) in enumerate(zip(batch_max.tolist(), exponents)):
            if value <= 0:
                continue
            old = self._hist_exponent[f]
            if old is not None and exponent > old:
                factor = 1 << min(exponent - old, FINE_BINS.bit_length() - 1)
                merged = self._hist[f].view(-1, factor).sum(1)
                self._hist[f].zero_()
                self._hist[f, : merged.numel()] = merged
            if old is None or exponent > old:
                self._hist_exponent[f] = exponent
        scale = torch.tensor(
            [math.ldexp(1.0, FINE_BINS.bit_length() - 1 - (e if e is not None else 0)) for e in self._hist_exponent],
            dtype=torch.float64,
            device=acts.device,
        )
        fine = (acts.double() * scale).floor().long().clamp(max=FINE_BINS - 1)
        flat_bins = fine + torch.arange(len(self.features), device=acts.device) * FINE_BINS
        self._hist += torch.bincount(flat_bins[active], minlength=len(self.features) * FINE_BINS).view(-1, FINE_BINS)

    def _update_windows(self, acts: torch.Tensor, tokens: torch.Tensor, seq_ids: torch.Tensor) -> None:
        batch, usable, _ = acts.shape
        window, device = self.window, acts.device
        n_starts = usable - window + 1
        # window sums and non-zero counts from cumulative sums (float64: exact for float32 inputs in practice)
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
            found = _greedy_per_sequence(primary, secondary, candidate_start, self.top, window)
            if found is None:
                continue
            index, first, second = found  # [B, r, F]
            rounds = index.shape[1]
            row = torch.arange(batch, device=device).view(-1, 1, 1).expand_as(index)
            offset = candidate_start[index]

            def flat(values: torch.Tensor) -> torch.Tensor:
                return values.reshape(batch * rounds, -1)

            candidates = {
                "primary": flat(first),
                "secondary": flat(second),
                "seq": flat(seq_ids[row]),
                "pos": flat(index + 1),  # window start, or the peak position for `max`
                "start": flat(offset + 1),
                "row": flat(row),
                "offset": flat(offset),
            }
            _merge_into(self._pools[criterion], candidates, WINDOW_ORDER, acts, tokens, window)

    def _update_contexts(self, acts: torch.Tensor, tokens: torch.Tensor, seq_ids: torch.Tensor) -> None:
        batch, usable, n_features = acts.shape
        window, device = self.window, acts.device
        n_chunks = usable // window
        chunk_max = acts[:, : n_chunks * window].reshape(batch, n_chunks, window, n_features).amax(2)  # [B, C, F]
        chunk_index = torch.arange(n_chunks, device=device)

        def candidates(salt: int, eligible: torch.Tensor) -> dict:
            keys = _sampling_keys(self.seed, salt, self._feature_ids, seq_ids, n_chunks)
            keys = keys.masked_fill(~eligible, math.inf)
            shape = (batch * n_chunks, n_features)
            offset = (chunk_index * window).view(1, -1, 1).expand(batch, n_chunks, n_features)
            row = torch.arange(batch, device=device).view(-1, 1, 1).expand(batch, n_chunks, n_features)
            return {
                "key": keys.reshape(shape),
                "seq": seq_ids[row].reshape(shape),
                "start": (offset + 1).reshape(shape),
                "max_act": chunk_max.reshape(shape),
                "row": row.reshape(shape),
                "offset": offset.reshape(shape),
            }

        _merge_into(self._activating, candidates(ACTIVATING_SALT, chunk_max > 0), CONTEXT_ORDER, acts, tokens, window)
        if self.n_negative:
            _merge_into(
                self._non_activating, candidates(NON_ACTIVATING_SALT, chunk_max == 0), CONTEXT_ORDER, acts, tokens, window
            )

    # -------------------------------------------------------- finish

    def finish(self, token_texts: TokenTexts | None = None) -> dict[int, FeatureWindows]:
        if self.n_sequences == 0:
            raise FaithcaseError("the corpus gave no sequences; check corpus.source and corpus.max_tokens")
        token_texts = token_texts or _default_token_texts
        if not self.features:
            return {}
        pools = {name: _to_cpu(pool) for name, pool in self._pools.items()}
        orders = {name: _lexsort(_sort_keys(pool, WINDOW_ORDER)) for name, pool in pools.items()}
        activating, non_activating = _to_cpu(self._activating), _to_cpu(self._non_activating)
        n_active = self._n_active.tolist()
        sum_active = self._sum_active.tolist()
        maxima = self._max.tolist()
        hist = self._hist.cpu()
        result = {}
        for f, feature in enumerate(self.features):
            windows = {
                criterion: self._windows_of(pools[criterion], orders[criterion][:, f].tolist(), criterion, f, token_texts)
                for criterion in CRITERIA
            }
            stats = FeatureStats(
                n_tokens=self.n_tokens,
                n_active=n_active[f],
                frequency=n_active[f] / self.n_tokens if self.n_tokens else 0.0,
                max=maxima[f],
                mean_nonzero=sum_active[f] / n_active[f] if n_active[f] else 0.0,
                histogram=self._histogram(hist[f], self._hist_exponent[f]),
            )
            result[feature] = FeatureWindows(
                feature=feature,
                windows=windows,
                stats=stats,
                activating=self._activating_contexts(activating, f, token_texts),
                non_activating=self._non_activating_contexts(non_activating, f, token_texts),
            )
        return result

    def _windows_of(self, pool: dict, order: list[int], criterion: str, f: int, token_texts: TokenTexts) -> list[Window]:
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
                    texts=token_texts(ids),
                    acts=pool["acts"][k, f].tolist(),
                    seq_id=int(pool["seq"][k, f]),
                    start=int(pool["start"][k, f]),
                    value=primary * scale,
                )
            )
        return windows

    def _histogram(self, fine: torch.Tensor, exponent: int | None) -> Histogram:
        n = self.n_hist_bins
        if exponent is None:  # never active: zero counts over [0, 1]
            return Histogram(edges=[k / n for k in range(n + 1)], counts=[0] * n)
        fine_width = math.ldexp(1.0, exponent - (FINE_BINS.bit_length() - 1))
        highest = int(fine.nonzero().max())
        group = highest // n + 1  # n bins of `group` fine bins cover every non-empty fine bin
        padded = torch.zeros(n * group, dtype=torch.long)
        padded[: min(FINE_BINS, n * group)] = fine[: n * group]
        return Histogram(
            edges=[k * group * fine_width for k in range(n + 1)], counts=padded.view(n, group).sum(1).tolist()
        )

    def _contexts(self, pool: dict, f: int) -> list[dict]:
        """The sampled chunks of feature f, as dicts (empty reservoir slots dropped)."""
        keep = torch.isfinite(pool["key"][:, f]).nonzero().flatten()
        columns = {name: pool[name][keep, f].tolist() for name in ("key", "seq", "start", "max_act", "tokens", "acts")}
        return [
            {"key": key, "seq_id": seq, "start": start, "max_act": max_act, "tokens": ids, "acts": acts}
            for key, seq, start, max_act, ids, acts in zip(*columns.values())
        ]

    def _activating_contexts(self, pool: dict, f: int, token_texts: TokenTexts) -> list[Context]:
        sample = self._contexts(pool, f)
        sample.sort(key=lambda c: (c["max_act"], c["key"], c["seq_id"], c["start"]))
        groups: list[list[dict]] = [[] for _ in range(self.n_quantiles)]
        for rank, chunk in enumerate(sample):
            groups[rank * self.n_quantiles // len(sample)].append(chunk)
        chosen = []
        for quantile, group in enumerate(groups):
            drawn = sorted(group, key=lambda c: (c["key"], c["seq_id"], c["start"]))[: self.per_quantile]
            chosen += [(quantile, chunk) for chunk in sorted(drawn, key=lambda c: (c["seq_id"], c["start"]))]
        return [_context(chunk, token_texts, quantile) for quantile, chunk in chosen]

    def _non_activating_contexts(self, pool: dict, f: int, token_texts: TokenTexts) -> list[Context]:
        sample = sorted(self._contexts(pool, f), key=lambda c: (c["seq_id"], c["start"]))
        return [_context(chunk, token_texts, None) for chunk in sample]


def _to_cpu(pool: dict) -> dict:
    return {name: values.cpu() for name, values in pool.items()}


def _context(chunk: dict, token_texts: TokenTexts, quantile: int | None) -> Context:
    return Context(
        tokens=chunk["tokens"],
        texts=token_texts(chunk["tokens"]),
        acts=chunk["acts"],
        seq_id=chunk["seq_id"],
        start=chunk["start"],
        max_act=chunk["max_act"],
        quantile=quantile,
    )


# ---------------------------------------------------------------- one pass


def collect_windows(
    collectors: Mapping[str, WindowCollector], batches: Iterable[Any], token_texts: TokenTexts | None = None
) -> dict[str, dict[int, FeatureWindows]]:
    """One model pass feeding several SAEs that read the same hook site. A batch is
    (seq_ids, tokens, resid, excluded) or a mapping with those keys."""
    for batch in batches:
        seq_ids, tokens, resid, excluded = _unpack(batch)
        for collector in collectors.values():
            collector.update(seq_ids, tokens, resid, excluded)
    return {name: collector.finish(token_texts) for name, collector in collectors.items()}


def top_activated_windows(
    saes: Encoder | Mapping[str, Encoder],
    features: Iterable[int] | Mapping[str, Iterable[int]],
    batches: Iterable[Any],
    window: int | None = None,
    settings: WindowsConfig | None = None,
    token_text: TokenTexts | None = None,
) -> WindowsArtifact | dict[str, WindowsArtifact]:
    """Top-activating windows (mean, density, max), statistics and scoring contexts of SAE features.

    One pass over `batches` (see `collect_windows`). `saes` is one SAE, with `features` its feature
    indices, giving one artifact; or a mapping {name: SAE} with `features` {name: indices}, fed by
    the same pass, giving {name: artifact}. `window` overrides settings.window.
    """
    settings = settings or WindowsConfig()
    if window is not None:
        settings = settings.model_copy(update={"window": window})
    single = not isinstance(saes, Mapping)
    if single:
        saes, features = {"sae": saes}, {"sae": features}
    collectors = {key: WindowCollector(sae, list(features[key]), settings) for key, sae in saes.items()}
    found = collect_windows(collectors, batches, token_text)
    artifacts = {
        key: WindowsArtifact(
            sae=key, n_sequences=c.n_sequences, n_tokens=c.n_tokens,
            seq_len=int(c.seq_len or 0), window=settings.window, excluded_positions=c.n_excluded,
            quantile_method=QUANTILE_METHOD, features={str(f): fw for f, fw in sorted(found[key].items())})
        for key, c in collectors.items()
    }
    return artifacts["sae"] if single else artifacts


# ---------------------------------------------------------------- printing


def print_windows(found, inputs: dict) -> None:
    for key, artifact in found.items():
        console.print(f"{key}: {len(artifact.features)} features, {artifact.n_tokens:,} tokens")
