"""How the activation of each selected feature spreads over one corpus pass, streamed: its aligned
windows with and without activation (what the embedding score's rules count) and its summed
activation by token id (single-token features). Memory: features × the largest token id seen."""

from __future__ import annotations

import torch

from faithcase.artifacts import ActivationSpread
from faithcase.model.tokens import TokenTexts

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
        self.by_token = torch.zeros(0, n_features, dtype=torch.float64, device=device)

    def update(self, acts: torch.Tensor, tokens: torch.Tensor) -> None:
        """acts [B, L, F] (>= 0, excluded positions 0) at positions 1..T-1; tokens [B, L]."""
        batch, usable, n_features = acts.shape
        n_chunks = usable // self.window
        chunks = acts[:, : n_chunks * self.window].reshape(batch, n_chunks, self.window, n_features)
        chunk_max = chunks.amax(2)
        self.n_activating += (chunk_max > 0).sum((0, 1))
        self.n_non_activating += (chunk_max == 0).sum((0, 1))
        ids = tokens.reshape(-1).long()
        needed = int(ids.max()) + 1 if ids.numel() else 0
        if needed > self.by_token.shape[0]:  # grow (doubling) to the largest id seen
            size = max(needed, 2 * self.by_token.shape[0])
            grown = self.by_token.new_zeros(size, n_features)
            grown[: self.by_token.shape[0]] = self.by_token
            self.by_token = grown
        self.by_token.index_add_(0, ids, acts.reshape(-1, n_features).double())

    def finish(self, texts: TokenTexts, threshold: float) -> list[ActivationSpread]:
        by_token = self.by_token.cpu()
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
