"""Bounded per-feature pools of the best windows, streamed batch by batch on tensors.

A pool holds, for each of F features, up to `capacity` windows: sort fields [capacity, F] and the
windows' activations and token ids [capacity, F, W]. `merge_into` keeps the best of pool and
candidates under a lexicographic order; `greedy_per_sequence` picks non-overlapping windows of
each sequence; `sampling_keys` are the seeded hash keys of bottom-k (reservoir) sampling.
"""

from __future__ import annotations

import math

import torch

HASH_MASK = (1 << 31) - 1  # sampling keys are 31-bit hashes computed without int64 overflow
HASH_MULTIPLIER = 0x45D9F3B

Order = list[tuple[str, bool]]  # [(field, descending)], the first field deciding first


def lexsort(keys: list[torch.Tensor]) -> torch.Tensor:
    """Row order [N, F] sorting each column ascending by keys[0], then keys[1], ... (stable)."""
    order = torch.arange(keys[0].shape[0], device=keys[0].device).unsqueeze(1).expand_as(keys[0])
    for key in reversed(keys):
        order = order.gather(0, key.gather(0, order).sort(dim=0, stable=True).indices)
    return order


def pool_order(pool: dict, order_by: Order) -> torch.Tensor:
    """Row order [capacity, F] of a pool (or of any fields [N, F]) under `order_by`."""
    return lexsort([-pool[name] if descending else pool[name] for name, descending in order_by])


def hash31(x: torch.Tensor) -> torch.Tensor:
    """Mix int64 values in [0, 2^31) to pseudo-random values in [0, 2^31); products stay below
    2^58."""
    for _ in range(3):
        x = (((x >> 16) ^ x) * HASH_MULTIPLIER) & HASH_MASK
    return (x >> 16) ^ x


def sampling_keys(seed: int, salt: int, features: torch.Tensor, seq_ids: torch.Tensor,
                  n_chunks: int) -> torch.Tensor:
    """Uniform-looking keys [B, C, F] in [0, 1), a function of (seed, salt, seq_id, chunk,
    feature) only: the samples do not depend on batch sizes, batch order or which other features
    are selected."""
    base = hash31(torch.tensor([(seed ^ salt) & HASH_MASK], device=features.device))
    per_feature = hash31((base + features) & HASH_MASK)  # [F]
    seq = (seq_ids & HASH_MASK) ^ ((seq_ids >> 31) & HASH_MASK)
    per_seq = hash31((per_feature[None, :] + seq[:, None]) & HASH_MASK)  # [B, F]
    chunks = torch.arange(n_chunks, device=features.device)
    keys = hash31((per_seq[:, None, :] + chunks[None, :, None]) & HASH_MASK)  # [B, C, F]
    return keys.double() / float(1 << 31)


def window_data(acts, tokens, row, offset, feature, window: int):
    """Activations and token ids [..., W] of the windows starting at `offset` of batch row `row`
    (index tensors of one shape)."""
    positions = offset.unsqueeze(-1) + torch.arange(window, device=acts.device)
    rows = row.unsqueeze(-1).expand_as(positions)
    features = feature.unsqueeze(-1).expand_as(positions)
    return acts[rows, positions, features], tokens[rows, positions]


def new_pool(capacity: int, n_features: int, window: int,
             fields: dict[str, tuple[torch.dtype, float]], device) -> dict[str, torch.Tensor]:
    """A fixed-capacity, unordered per-feature set of windows: the given fields [capacity, F]
    filled with their 'empty slot' value (which sorts after every real entry), plus acts and
    tokens [capacity, F, W]."""
    shape = (capacity, n_features)
    pool = {name: torch.full(shape, fill, dtype=dtype, device=device)
            for name, (dtype, fill) in fields.items()}
    pool["acts"] = torch.zeros(*shape, window, dtype=torch.float32, device=device)
    pool["tokens"] = torch.zeros(*shape, window, dtype=torch.long, device=device)
    return pool


def pool_to_cpu(pool: dict) -> dict:
    return {name: values.cpu() for name, values in pool.items()}


def merge_into(pool: dict, candidates: dict, order_by: Order, acts, tokens, window: int) -> None:
    """Keep in `pool` the best rows per feature of pool ∪ candidates under `order_by`.

    candidates: the pool's sort fields [N, F], plus `row` and `offset` locating each candidate's
    window in acts / tokens [B, L, F] / [B, L]. Each entering candidate takes the slot of an
    evicted row; window data is gathered for those only.
    """
    capacity, n_features = pool["acts"].shape[:2]
    fields = [name for name in candidates if name not in ("row", "offset")]
    merged = {name: torch.cat([pool[name], candidates[name]]) for name in fields}
    best = pool_order(merged, order_by)[:capacity]
    n_merged = capacity + candidates[fields[0]].shape[0]
    kept = torch.zeros(n_merged, n_features, dtype=torch.bool, device=acts.device)
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
    pool["acts"][slot, feature], pool["tokens"][slot, feature] = window_data(
        acts, tokens, candidates["row"][row, feature], candidates["offset"][row, feature], feature,
        window,
    )


def greedy_per_sequence(primary, secondary, candidate_start, top, window):
    """Per (sequence, feature): up to `top` rounds of taking the best candidate, then masking
    every candidate whose window overlaps the taken one.

    primary/secondary [B, N, F] float64: secondary breaks ties of primary, argmax's first index
    breaks the rest (lower start / peak position). candidate_start [N] is the start offset of
    each candidate's window. Returns candidate index, primary, secondary: [B, rounds, F], or None
    when no candidate is active.
    """
    # masked in place: work on [B, F, N] copies (reductions over the last dimension are fast)
    primary = _feature_major_copy(primary)
    secondary = None if secondary is None else _feature_major_copy(secondary)
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
        second = torch.zeros_like(first) if secondary is None else secondary.gather(-1, index)
        seconds.append(second)
        overlap = (candidate_start - candidate_start[index]).abs() < window
        primary.masked_fill_(overlap, -math.inf)
        if secondary is not None:
            secondary.masked_fill_(overlap, -math.inf)
    if not picks:
        return None
    return tuple(torch.cat(parts, -1).transpose(1, 2) for parts in (picks, firsts, seconds))


def _feature_major_copy(values: torch.Tensor) -> torch.Tensor:
    """[B, N, F] -> a contiguous [B, F, N] copy (always a copy: it is masked in place)."""
    return values.transpose(1, 2).clone(memory_format=torch.contiguous_format)


def merge_pools(pool: dict, other: dict, order_by: Order) -> dict:
    """The best rows per feature of two pools of one capacity (e.g. two shards' pools): exactly
    the pool a single stream of both shards' candidates keeps, when `order_by` is a total order."""
    capacity = pool["acts"].shape[0]
    other = {name: values.to(pool["acts"].device) for name, values in other.items()}
    merged = {name: torch.cat([pool[name], other[name]]) for name in pool}
    best = pool_order({name: merged[name] for name, _ in order_by}, order_by)[:capacity]
    kept = {}
    for name, values in merged.items():
        index = best.view(*best.shape, *([1] * (values.dim() - 2))).expand(
            capacity, *values.shape[1:])
        kept[name] = values.gather(0, index)
    return kept
