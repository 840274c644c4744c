"""How the activation of each selected feature spreads over one corpus pass, streamed: its aligned
windows with and without activation (what the embedding score's rules count) and its summed
activation by token id (single-token features). Memory: features × the largest token id seen."""

from __future__ import annotations

from collections.abc import Callable

import torch

from faithcase.artifacts import ActivationSpread
from faithcase.numerics.exact_sum import CompensatedSum

SPREAD_METHOD = (
    "windows: each sequence's positions 1..T-1 cut into aligned, disjoint chunks of `window` "
    "tokens (short tail dropped), the chunks the scoring contexts are sampled from, all counted "
    "over the whole pass: activating when the feature's max activation in it is > 0, else "
    "non-activating; single-token: the feature's activation summed per token id over the kept "
    "tokens, and the top id's share of the total > windows.single_token_share")


class TokenSpread:
    """Per feature: activating and non-activating window counts, activation summed by token id."""

    def __init__(self, n_features: int, window: int, device: torch.device):
        self.window = window
        self.n_activating = torch.zeros(n_features, dtype=torch.long, device=device)
        self.n_non_activating = torch.zeros(n_features, dtype=torch.long, device=device)
        self.by_token = CompensatedSum((0, n_features), device)

    def update(self, acts: torch.Tensor, tokens: torch.Tensor) -> None:
        """acts [B, L, F] (>= 0, excluded positions 0) at positions 1..T-1; tokens [B, L]."""
        batch, usable, n_features = acts.shape
        n_chunks = usable // self.window
        chunks = acts[:, : n_chunks * self.window].reshape(batch, n_chunks, self.window, n_features)
        chunk_max = chunks.amax(2)
        self.n_activating += (chunk_max > 0).sum((0, 1))
        self.n_non_activating += (chunk_max == 0).sum((0, 1))
        ids = tokens.reshape(-1).long()
        if not ids.numel():
            return
        present, where = ids.unique(return_inverse=True)
        partial = acts.new_zeros(len(present), n_features, dtype=torch.float64)
        partial.index_add_(0, where, acts.reshape(-1, n_features).double())
        self._grow(int(present[-1]) + 1)
        self.by_token.add_at(present, partial)

    def _grow(self, needed: int) -> None:
        rows = self.by_token.hi.shape[0]
        if needed > rows:  # doubling, to the largest id seen
            self.by_token.grow(max(needed, 2 * rows))

    def state(self) -> dict:
        return {"n_activating": self.n_activating.cpu(),
                "n_non_activating": self.n_non_activating.cpu(), "by_token": self.by_token.state()}

    def merge_state(self, state: dict) -> None:
        device = self.n_activating.device
        self.n_activating += state["n_activating"].to(device)
        self.n_non_activating += state["n_non_activating"].to(device)
        other = CompensatedSum.from_state(state["by_token"])
        rows = max(other.hi.shape[0], self.by_token.hi.shape[0])
        self._grow(rows)
        other.grow(self.by_token.hi.shape[0])
        self.by_token.merge(other)

    def finish(self, texts: Callable[[list[int]], list[str]],
               threshold: float) -> list[ActivationSpread]:
        by_token = self.by_token.value.cpu()
        n_features = self.n_activating.numel()
        totals = by_token.sum(0) if len(by_token) else torch.zeros(n_features, dtype=torch.float64)
        tops = by_token.max(0) if len(by_token) else None
        found = []
        for f, (active, silent) in enumerate(zip(self.n_activating.tolist(),
                                                 self.n_non_activating.tolist())):
            total = float(totals[f])
            top = int(tops.indices[f]) if tops is not None and total > 0 else None
            share = float(tops.values[f]) / total if top is not None else None
            found.append(ActivationSpread(
                n_windows=active + silent, n_activating_windows=active,
                n_non_activating_windows=silent, total=total, top_token=top,
                texts=texts([top]) if top is not None else [],
                top_token_share=share, single_token=share is not None and share > threshold))
        return found
