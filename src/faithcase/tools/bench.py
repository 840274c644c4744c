"""Benchmarks, in one place: every timing is reported beside a baseline measured in the same run.

- `bench_model`: the pass truncated at the hook vs a full forward.
- `run_match_bench` (`bench_match.py`): faithcase's matching vs dense scipy on synthetic decoders.
- `bench_windows`: the windows stage vs a bare truncated pass and a naive per-feature loop.
- `bench_explain`: batched sweep and generation vs a per-(feature, scale) loop.
- `bench_embed`: the embed stage's text cache vs one encode per feature.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import torch

from faithcase.artifacts import SAE_KEYS
from faithcase.numerics.outliers import excluded_positions
from faithcase.tools.bench_match import run_match_bench, synthetic_decoders  # noqa: F401


def timed(fn: Callable, device: torch.device) -> tuple[object, float]:
    """(fn(), wall seconds), with CUDA work finished on both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


# ================================================================ model


def bench_model(lm, hook_name: str, n_tokens: int = 4096, batch: int = 8,
                seq_len: int = 64, seed: int = 0) -> dict:
    """Tokens/s of the truncated pass (up to hook_name) and of a full forward, measured in
    one run on the same random token batches, alternating the two to share any load."""
    generator = torch.Generator().manual_seed(seed)
    vocab = lm.hf_model.get_input_embeddings().num_embeddings
    n_batches = max(1, -(-n_tokens // (batch * seq_len)))
    batches = [torch.randint(0, vocab, (batch, seq_len), generator=generator)
               for _ in range(n_batches)]
    for tokens in batches:
        tokens[:, 0] = lm.bos_token_id
    lm.activations(batches[0], hook_name)  # warm-up both paths
    lm.full_logits(batches[0])
    seconds = {"truncated": 0.0, "full": 0.0}
    for tokens in batches:
        seconds["truncated"] += timed(lambda: lm.activations(tokens, hook_name), lm.device)[1]
        seconds["full"] += timed(lambda: lm.full_logits(tokens), lm.device)[1]
    total = n_batches * batch * seq_len
    truncated, full = total / seconds["truncated"], total / seconds["full"]
    return {"hook": hook_name, "layer": lm.hook_layer(hook_name), "n_layers": lm.n_layers,
            "device": str(lm.device), "tokens": total, "batch": batch, "seq_len": seq_len,
            "truncated_tokens_per_s": truncated, "full_tokens_per_s": full,
            "speedup": truncated / full}


# ================================================================ windows


def _sequences(rt, n_tokens: int) -> torch.Tensor:
    sequences = rt.sequences
    n = max(1, n_tokens // sequences.shape[1])
    return sequences[:n]


def _features(rt, n_features: int) -> dict[str, list[int]]:
    """The features a run would select: the match stage's pairs, topped up to n_features."""
    from faithcase.pipeline import open_run

    with open_run(rt) as graph:
        selected = graph.get("pairs").selected_features()
    out = {}
    for key in SAE_KEYS:
        chosen = list(selected[key])[:n_features]
        extra = [f for f in range(rt.sae(key).d_sae) if f not in chosen]
        out[key] = chosen + extra[: n_features - len(chosen)]
    return out


def bench_windows(rt, n_tokens: int = 20_000, n_features: int = 30) -> dict:
    """Bare truncated pass vs the windows stage (both SAEs, one pass) vs a naive baseline
    (full forward, one pass per SAE, a Python loop per feature), on the same sequences."""
    from faithcase.stages.windows import top_activated_windows

    sequences = _sequences(rt, n_tokens)
    features = _features(rt, n_features)
    hook, size = rt.cfg.hook, rt.cfg.corpus.batch_size
    tokens = sequences.numel()
    rt.lm.activations(sequences[:2], hook)  # warm-up

    start = time.perf_counter()
    for i in range(0, len(sequences), size):
        rt.lm.activations(sequences[i:i + size], hook)
    bare = time.perf_counter() - start

    start = time.perf_counter()
    top_activated_windows({k: rt.sae(k) for k in SAE_KEYS}, features,
                          rt.stream(sequences, hook, "windows stage"),
                          settings=rt.cfg.windows, tokenizer=rt.lm)
    stage = time.perf_counter() - start

    start = time.perf_counter()
    _naive_windows(rt, sequences, features)
    naive = time.perf_counter() - start
    return {"tokens": tokens, "features_per_sae": n_features,
            "bare_truncated_tokens_per_s": tokens / bare,
            "windows_stage_tokens_per_s": tokens / stage,
            "naive_tokens_per_s": tokens / naive, "stage_vs_bare": bare / stage,
            "stage_vs_naive": naive / stage,
            **_rss_flat(rt)}


def _naive_windows(rt, sequences: torch.Tensor, features: dict[str, list[int]],
                   window: int = 30) -> None:
    """The obvious way: full forward per batch, one corpus pass per SAE, a loop per feature."""
    size = rt.cfg.corpus.batch_size
    for key in SAE_KEYS:
        sae = rt.sae(key)
        best: dict[int, list] = {f: [] for f in features[key]}
        for i in range(0, len(sequences), size):
            tokens = sequences[i:i + size]
            _, cache = rt.lm.bridge.run_with_cache(tokens, names_filter=rt.cfg.hook)
            resid = cache[rt.cfg.hook]
            excluded = excluded_positions(resid, rt.cfg.outliers.norm_ratio,
                                          rt.cfg.outliers.exclude_bos)
            acts = sae.encode(resid)
            acts = acts.masked_fill(excluded[..., None].to(acts.device), 0)
            for f in features[key]:
                column = acts[..., f]
                sums = column.unfold(1, window, 1).mean(-1)
                values, starts = sums.max(dim=1)
                best[f].extend(zip(values.tolist(), starts.tolist()))
                best[f] = sorted(best[f], reverse=True)[:10]


def _rss_flat(rt) -> dict:
    """Peak RSS of the collector streaming 100k vs 1M synthetic tokens (model excluded: memory
    of the stage)."""
    out = {}
    for n_tokens in (100_000, 1_000_000):
        code = ("import sys, torch, resource; from faithcase.tools.bench import _stream_synthetic; "
                f"_stream_synthetic({n_tokens}); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
        out[f"peak_rss_mib_{n_tokens // 1000}k_tokens"] = int(done.stdout.split()[-1]) / 1024
    return out


def _stream_synthetic(n_tokens: int, d_in: int = 576, d_sae: int = 2304, k: int = 32,
                      seq_len: int = 64) -> None:
    from faithcase.saes import SAE
    from faithcase.stages.windows import WindowCollector

    g = torch.Generator().manual_seed(0)
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1)
    sae = SAE(W_enc=W_dec.T.contiguous(), b_enc=torch.zeros(d_sae), W_dec=W_dec,
              b_dec=torch.zeros(d_in), activation="topk", k=k)
    collector = WindowCollector(sae, list(range(30)))
    batch = 64
    for first in range(0, n_tokens // seq_len, batch):
        resid = torch.randn(batch, seq_len, d_in, generator=g)
        tokens = torch.randint(0, 1000, (batch, seq_len), generator=g)
        collector.update(torch.arange(first, first + batch), tokens, resid, None)
    collector.finish(lambda ids: [str(i) for i in ids])  # synthetic tokens: ids as texts


# ================================================================ explain


def bench_explain(rt, n_features: int = 4, n_scales: int = 8) -> dict:
    """`explain_speedup` on the first n_features selected features of SAE 1, with n_scales
    scales."""
    from faithcase.numerics.directions import unit_directions
    from faithcase.stages.explain import insert_layer

    cfg = rt.cfg.explain.model_copy(update={"n_scales": n_scales})
    features = _features(rt, n_features)["sae1"][:n_features]
    norm = rt.residual_norm(insert_layer(cfg, rt.cfg.hook_layer))
    return explain_speedup(rt.lm, unit_directions(rt.sae("sae1").W_dec, features), cfg, norm,
                           rt.cfg.hook_layer)


def explain_speedup(lm, directions: dict[int, torch.Tensor], cfg, residual_norm: float,
                    sae_layer: int | None = None) -> dict:
    """The explain stage's steered passes, batched (shared prefix cache, batched sweep, batched
    decoding that drops finished rows) against a loop of plain single forwards per (feature, scale)
    and one decoding per text, in the same run, sampling on (cfg.n_samples per feature). Reports the
    speed ratio and the agreement: curves, chosen scales and greedy texts (sampled texts differ by
    batch composition, so only their count is compared)."""
    from faithcase.run.errors import FaithcaseError
    from faithcase.stages import explain as ex
    from faithcase.model import steering
    from faithcase.model.prompt import build_prompt

    insert, read = ex.resolve_layers(lm, cfg, sae_layer)
    scales = ex.scale_grid(cfg)
    prompt = build_prompt(lm, cfg)
    features, matrix = ex._stack(directions, lm.d_model)
    if not features:
        raise FaithcaseError("bench explain needs at least one feature.")
    eligible = ex.eligible_scales(cfg, len(scales))

    def run(batch_size: int):
        result = steering.sweep(lm, prompt, matrix, scales, insert, read, cfg.mode,
                                residual_norm, batch_size, share_prefix=batch_size > 1)
        scores = ex.score_sweep(result.selfsim, ex.criterion_curve(result, cfg.criterion),
                                cfg.selfsim_weight, cfg.criterion_weight)
        picks = [p[0] for p in ex.best_scales(scores, eligible, 1)]
        vectors = torch.stack([matrix[i] * scales[j] * residual_norm for i, j in enumerate(picks)])
        greedy = steering.generate(lm, prompt, vectors, insert, cfg.mode, cfg.max_new_tokens,
                                   batch_size)
        sampled = steering.generate(lm, prompt, vectors.repeat_interleave(cfg.n_samples, dim=0),
                                    insert, cfg.mode, cfg.max_new_tokens, batch_size,
                                    temperature=cfg.temperature, seed=cfg.seed)
        steering.neutral_logprobs(lm, prompt, [t.ids for t in greedy + sampled], insert, cfg.mode,
                                  batch_size)
        return result, picks, [t.text for t in greedy], len(sampled)

    # warm-up
    steering.sweep(lm, prompt, matrix[:1], scales[:1], insert, read, cfg.mode, residual_norm, 2)
    (batched, picks_b, texts_b, n_sampled), batched_s = timed(lambda: run(cfg.batch_size),
                                                              lm.device)
    (loop, picks_l, texts_l, _), loop_s = timed(lambda: run(1), lm.device)
    return {
        "device": str(lm.device), "features": len(features), "scales": len(scales),
        "forwards": len(features) * len(scales), "sampled": n_sampled,
        "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
        "batched_s": batched_s, "loop_s": loop_s, "speedup": loop_s / batched_s,
        "max_abs_diff_selfsim": float((batched.selfsim - loop.selfsim).abs().max()),
        "max_abs_diff_ce": float((batched.ce - loop.ce).abs().max()),
        "same_scales": picks_b == picks_l, "same_greedy_texts": texts_b == texts_l,
        "texts": {f: t for f, t in zip(features, texts_b)},
    }


# ================================================================ embed


def bench_embed(rt) -> dict:
    """`embed_cache_speedup` on the run's SAE 1 windows and explanations."""
    from faithcase.pipeline import open_run
    from faithcase.stages.embed import explanation_texts

    with open_run(rt) as graph:
        windows = graph.get("windows")["sae1"].features
        explanations = explanation_texts(graph.get("explain").features["sae1"])
    return embed_cache_speedup(rt.embedder, windows, explanations, rt.cfg.embed)


def embed_cache_speedup(embedder, windows, explanations, settings) -> dict:
    """Contexts scored per second without and with the text cache, on the stage's workload: every
    feature scored by its own explanation, then by another feature's (as cross-scoring does)."""
    import numpy as np

    from faithcase.stages.embed import (
        documents, eleuther, make_query, score, unscorable_reason, window_counts)

    keys = list(windows)
    rotated = {key: explanations.get(keys[(i + 1) % len(keys)]) for i, key in enumerate(keys)}
    passes = [explanations, rotated]
    docs = {key: documents(feature) for key, feature in windows.items()}
    counts = {key: window_counts(feature) for key, feature in windows.items()}  # delphi's rules
    n_contexts = sum(
        len(docs[key]) for texts in passes for key in keys
        if unscorable_reason(texts.get(key), docs[key], settings, counts[key]) is None)

    def uncached():
        results = []
        for texts in passes:
            found = {}
            for key in keys:
                why = unscorable_reason(texts.get(key), docs[key], settings, counts[key])
                query = None if why else make_query(settings.template, texts[key])
                vectors = None if why else embedder.embed([query, *(d.text for d in docs[key])],
                                                          use_cache=False)
                found[key] = score(docs[key], None if why else vectors[1:], texts.get(key),
                                   None if why else vectors[0], why, None)
            results.append(found)
        return results

    def run(scorer):
        embedder.clear_cache()
        encoded_before = embedder.n_encoded_texts
        start = time.perf_counter()
        results = scorer()
        return time.perf_counter() - start, embedder.n_encoded_texts - encoded_before, results

    embedder.embed(["warm-up"], use_cache=False)
    seconds_uncached, encoded_uncached, results_uncached = run(uncached)
    seconds_cached, encoded_cached, results_cached = run(
        lambda: [eleuther(windows, texts, embedder, settings) for texts in passes])
    embedder.clear_cache()
    diffs = [abs(a[k].auroc - b[k].auroc)
             for a, b in zip(results_uncached, results_cached) for k in a
             if a[k].auroc is not None and b[k].auroc is not None]
    return {
        "n_features": len(keys), "n_contexts": n_contexts,
        "encoded_uncached": encoded_uncached, "encoded_cached": encoded_cached,
        "seconds_uncached": seconds_uncached, "seconds_cached": seconds_cached,
        "contexts_per_s_uncached": n_contexts / seconds_uncached,
        "contexts_per_s_cached": n_contexts / seconds_cached,
        "speedup": seconds_uncached / seconds_cached,
        "max_auroc_diff": float(np.max(diffs)) if diffs else 0.0,
    }
