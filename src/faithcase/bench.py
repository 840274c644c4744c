"""Benchmarks of the stages on the demo: every timing is reported beside a baseline measured in the same run."""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import torch

from faithcase.artifacts import SAE_KEYS
from faithcase.outliers import excluded_positions


def _sequences(rt, n_tokens: int) -> torch.Tensor:
    sequences = rt.sequences()
    n = max(1, n_tokens // sequences.shape[1])
    return sequences[:n]


def _features(rt, n_features: int) -> dict[str, list[int]]:
    """The features a demo run would select: the match stage's pairs, topped up to n_features."""
    from faithcase.stages import run_match

    selected = run_match(rt).selected_features()
    out = {}
    for key in SAE_KEYS:
        chosen = list(selected[key])[:n_features]
        extra = [f for f in range(rt.sae(key).d_sae) if f not in chosen]
        out[key] = chosen + extra[: n_features - len(chosen)]
    return out


def bench_windows(rt, n_tokens: int = 20_000, n_features: int = 30) -> dict:
    """Bare truncated pass vs the windows stage (both SAEs, one pass) vs a naive baseline
    (full forward, one pass per SAE, a Python loop per feature), on the same sequences."""
    from faithcase.windows import WindowCollector, collect_windows

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
    collectors = {k: WindowCollector(rt.sae(k), features[k]) for k in SAE_KEYS}
    batches = rt.activation_batches(sequences, hook, "windows stage")
    collect_windows(collectors, batches, rt.token_text)
    stage = time.perf_counter() - start

    start = time.perf_counter()
    _naive_windows(rt, sequences, features)
    naive = time.perf_counter() - start
    return {"tokens": tokens, "features_per_sae": n_features,
            "bare_truncated_tokens_per_s": tokens / bare, "windows_stage_tokens_per_s": tokens / stage,
            "naive_tokens_per_s": tokens / naive, "stage_vs_bare": bare / stage, "stage_vs_naive": naive / stage,
            **_rss_flat(rt)}


def _naive_windows(rt, sequences: torch.Tensor, features: dict[str, list[int]], window: int = 30) -> None:
    """The obvious way: full forward per batch, one corpus pass per SAE, a loop per feature."""
    size = rt.cfg.corpus.batch_size
    for key in SAE_KEYS:
        sae = rt.sae(key)
        best: dict[int, list] = {f: [] for f in features[key]}
        for i in range(0, len(sequences), size):
            tokens = sequences[i:i + size]
            _, cache = rt.lm.bridge.run_with_cache(tokens, names_filter=rt.cfg.hook)
            resid = cache[rt.cfg.hook]
            excluded = excluded_positions(resid, rt.cfg.outliers.norm_ratio, rt.cfg.outliers.exclude_bos)
            acts = sae.encode(resid).masked_fill(excluded[..., None], 0)
            for f in features[key]:
                column = acts[..., f]
                sums = column.unfold(1, window, 1).mean(-1)
                values, starts = sums.max(dim=1)
                best[f].extend(zip(values.tolist(), starts.tolist()))
                best[f] = sorted(best[f], reverse=True)[:10]


def _rss_flat(rt) -> dict:
    """Peak RSS of the collector streaming 100k vs 1M synthetic tokens (model excluded: memory of the stage)."""
    out = {}
    for n_tokens in (100_000, 1_000_000):
        code = ("import sys, torch, resource; from faithcase.bench import _stream_synthetic; "
                f"_stream_synthetic({n_tokens}); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[f"peak_rss_mib_{n_tokens // 1000}k_tokens"] = int(done.stdout.split()[-1]) / 1024
    return out


def _stream_synthetic(n_tokens: int, d_in: int = 576, d_sae: int = 2304, k: int = 32, seq_len: int = 64) -> None:
    from faithcase.saes import SAE
    from faithcase.windows import WindowCollector

    g = torch.Generator().manual_seed(0)
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1)
    sae = SAE(W_enc=W_dec.T.contiguous(), b_enc=torch.zeros(d_sae), W_dec=W_dec, b_dec=torch.zeros(d_in),
              activation="topk", k=k)
    collector = WindowCollector(sae, list(range(30)))
    batch = 64
    for first in range(0, n_tokens // seq_len, batch):
        resid = torch.randn(batch, seq_len, d_in, generator=g)
        tokens = torch.randint(0, 1000, (batch, seq_len), generator=g)
        collector.update(torch.arange(first, first + batch), tokens, resid, None)
    collector.finish()


def bench_explain(rt, n_features: int = 4, n_scales: int = 8) -> dict:
    from faithcase import explain
    from faithcase.stages import _median_residual_norm

    cfg = rt.cfg.explain.model_copy(update={"n_scales": n_scales})
    features = _features(rt, n_features)["sae1"][:n_features]
    layer = rt.cfg.hook_layer if cfg.insert_layer == "sae" else int(cfg.insert_layer)
    norm = _median_residual_norm(rt, layer)
    directions = explain.unit_directions(rt.sae("sae1"), features)
    return explain.bench_explain(rt.lm, directions, cfg, norm)


def bench_embed(rt) -> dict:
    from faithcase.artifacts import ExplainArtifact, WindowsArtifact, read_artifact
    from faithcase.embed import bench_embed as run, explanation_texts
    from faithcase.stages import EXPLAIN_FILE, windows_file

    windows = read_artifact(rt.path(windows_file("sae1")), WindowsArtifact, "windows")
    explain_art = read_artifact(rt.path(EXPLAIN_FILE), ExplainArtifact, "explain")
    e = rt.cfg.embed
    return run(rt.embedder, windows.features, explanation_texts(explain_art.features["sae1"]),
               query_template=e.query_template, min_activating=e.min_activating,
               min_non_activating=e.min_non_activating)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
