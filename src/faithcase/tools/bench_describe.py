"""`faithcase bench describe`: the window explainer on the plain (unhooked) model against the same
weights inside the bridge, on the same prompts, in the same run."""

from __future__ import annotations

import time

import torch

from faithcase.model.window_explainer import LocalExplainer
from faithcase.model.window_prompt import examples_block, messages


def corpus_prompts(rt, n_features: int, n_windows: int, window: int = 30, seed: int = 0):
    """Chats built from corpus windows with seeded sparse activations: the window explainer's
    prompt at its real length."""
    sequences = rt.sequences
    texts = rt.token_text
    gen = torch.Generator().manual_seed(seed)
    chats = []
    for f in range(n_features):
        rows = torch.randint(len(sequences), (n_windows,), generator=gen)
        block = []
        for row in rows.tolist():
            ids = sequences[row, 1:1 + window].tolist()
            acts = (torch.rand(len(ids), generator=gen) < 0.1).float().tolist()
            block.append((texts(ids), acts))
        chats.append(messages(examples_block(block)))
    return chats


def bench_describe(rt, n_features: int = 16, n_windows: int = 8, max_new_tokens: int = 24) -> dict:
    lm = rt.lm
    chats = corpus_prompts(rt, n_features, n_windows)
    anchor = [messages(a) for a in ("A", "B")]
    times, replies = {}, {}
    for name, model in (("plain", lm.plain_model()), ("bridge", lm.hf_model)):
        explainer = LocalExplainer(model, lm.tokenizer, lm.name, max_new_tokens,
                                   rt.cfg.describe.batch_size)
        start = time.perf_counter()
        replies[name] = explainer.replies(chats, anchor)
        times[name] = time.perf_counter() - start
    return {"features": n_features, "windows": n_windows, "max_new_tokens": max_new_tokens,
            "batch_size": rt.cfg.describe.batch_size, "plain_s": times["plain"],
            "bridge_s": times["bridge"], "speedup": times["bridge"] / times["plain"],
            "same_replies": sum(a == b for a, b in zip(replies["plain"], replies["bridge"]))}
