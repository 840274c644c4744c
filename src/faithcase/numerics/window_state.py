"""The windows collector's bounded state, as shards merge it (run/shards.py): the pool orders
and fields, and the state / reset / merge_state of `WindowCollector`."""

from __future__ import annotations

import math

import torch

from faithcase.artifacts import CRITERIA
from faithcase.numerics.topk_pools import merge_pools, pool_to_cpu

WINDOW_ORDER = [("primary", True), ("secondary", True), ("seq", False), ("pos", False)]
CONTEXT_ORDER = [("key", False), ("seq", False), ("start", False)]
LOWEST, HIGHEST = -math.inf, torch.iinfo(torch.long).max  # empty pool slots sort last
WINDOW_FIELDS = {
    "primary": (torch.float64, LOWEST),  # window sum, non-zero count, or peak activation
    "secondary": (torch.float64, LOWEST),  # window sum breaking density ties; 0 otherwise
    "seq": (torch.long, HIGHEST),
    "pos": (torch.long, HIGHEST),  # window start, or the peak position for `max`
    "start": (torch.long, HIGHEST),
}
CONTEXT_FIELDS = {
    "key": (torch.float64, math.inf),
    "seq": (torch.long, HIGHEST),
    "start": (torch.long, HIGHEST),
    "max_act": (torch.float32, 0.0),
}


class MergeableWindows:
    """State, reset and merge of a WindowCollector (its `_allocate`, pools and statistics)."""

    def state(self) -> dict:
        """Everything streamed so far, on the CPU (what `merge_state` adds)."""
        if self._device is None:
            return {"counts": [0, 0, 0, None]}
        pools = {"windows": self._pools, "activating": self._activating,
                 "non_activating": self._non_activating}
        return {"counts": [self.n_sequences, self.n_tokens, self.n_excluded, self.seq_len],
                "stats": self._stats.state(), "spread": self._spread.state(),
                "pools": {name: (pool_to_cpu(pool) if name != "windows" else
                                 {c: pool_to_cpu(p) for c, p in pool.items()})
                          for name, pool in pools.items()}}

    def reset(self) -> None:
        self.n_sequences = self.n_tokens = self.n_excluded = 0
        self.seq_len = None
        if self._device is not None:
            self._allocate(self._device)

    def merge_state(self, state: dict) -> None:
        n_sequences, n_tokens, n_excluded, seq_len = state["counts"]
        if "stats" not in state:
            return
        if self._device is None:
            self._allocate(torch.device("cpu"))
        self.n_sequences += n_sequences
        self.n_tokens += n_tokens
        self.n_excluded += n_excluded
        self.seq_len = seq_len if self.seq_len is None else max(self.seq_len, seq_len)
        self._stats.merge_state(state["stats"])
        self._spread.merge_state(state["spread"])
        pools = state["pools"]
        for c in CRITERIA:
            self._pools[c] = merge_pools(self._pools[c], pools["windows"][c], WINDOW_ORDER)
        self._activating = merge_pools(self._activating, pools["activating"], CONTEXT_ORDER)
        self._non_activating = merge_pools(self._non_activating, pools["non_activating"],
                                           CONTEXT_ORDER)
