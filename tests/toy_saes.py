"""Tiny synthetic SAEs and corpora shared by the collector tests (scan, shards, windows, matrix)."""

from __future__ import annotations

import numpy as np
import torch

from faithcase.saes import SAE

D_IN, D_SAE, K = 12, 20, 3


def topk_sae(seed: int, **options) -> SAE:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.nn.functional.normalize(torch.randn(D_SAE, D_IN, generator=g), dim=-1)
    return SAE(W_enc=W_dec.T.contiguous(), b_enc=torch.zeros(D_SAE), W_dec=W_dec, b_dec=0.1 * torch.randn(D_IN, generator=g),
               activation="topk", k=K, hook_name="blocks.3.hook_resid_pre", **options)


def corpus(n_seq: int = 6, length: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    resid = torch.randn(n_seq, length, D_IN, generator=g) * 2
    tokens = torch.randint(0, 50, (n_seq, length), generator=g)
    excluded = torch.zeros(n_seq, length, dtype=torch.bool)
    excluded[:, 0] = True
    excluded[1, 4] = excluded[3, 7] = True  # massive activations
    return resid, tokens, excluded


def batches(resid, tokens, excluded, sizes):
    start = 0
    for size in sizes:
        yield torch.arange(start, start + size), tokens[start:start + size], resid[start:start + size], \
            excluded[start:start + size]
        start += size


class TopKSAE:
    """TopK over relu(x @ W + b): whether a feature survives depends on every pre-activation."""

    def __init__(self, d_in: int, d_sae: int, k: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(d_in, d_sae, generator=gen)
        self.bias = torch.randn(d_sae, generator=gen) * 0.1
        self.d_sae, self.k = d_sae, k

    def pre(self, x):
        return torch.relu(x @ self.weight + self.bias)

    def encode(self, x):
        pre = self.pre(x)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)


def tagged(ids: list[int]) -> list[str]:
    """A stand-in tokenizer: token ids to texts a test can predict."""
    return [f"<t{i}>" for i in ids]


class IdentitySAE:
    """encode(x) = relu(x): feature f's activation is exactly resid[..., f]."""

    def __init__(self, d: int):
        self.d_sae = d

    def encode(self, x):
        return torch.relu(x)


def quantized_corpus(n_seq=9, length=41, d=5, density=0.15, seed=0):
    """Sparse activations that are multiples of 0.25: float sums are exact and ties are frequent."""
    rng = np.random.default_rng(seed)
    acts = rng.integers(1, 9, size=(n_seq, length, d)) * 0.25
    acts *= rng.random((n_seq, length, d)) < density
    acts[:, 0] = 7.0  # BOS: never counted
    tokens = rng.integers(0, 500, size=(n_seq, length))
    excluded = np.zeros((n_seq, length), dtype=bool)
    excluded[:, 0] = True
    return torch.tensor(acts, dtype=torch.float32), torch.tensor(tokens), torch.tensor(excluded)


def batches_of(resid, tokens, excluded, sizes, seq_ids=None):
    seq_ids = torch.arange(len(tokens)) if seq_ids is None else seq_ids
    out, start = [], 0
    for size in sizes:
        sl = slice(start, start + size)
        out.append((seq_ids[sl], tokens[sl], resid[sl], excluded[sl]))
        start += size
    assert start == len(tokens)
    return out
