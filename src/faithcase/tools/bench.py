"""Benchmarks, in one place: every timing is reported beside a baseline measured in the same run.

- `bench_model`: the pass truncated at the hook vs a full forward.
- `run_match_bench`: faithcase's matching (solver auto) vs dense scipy on structured synthetic
  decoders shaped like real SAE pairs (features in families around shared parent directions, a
  share of SAE 2's features noisy copies of SAE 1's with cosines spread over ~0.25-0.97).
- `bench_windows`: the windows stage vs a bare truncated pass and a naive per-feature loop.
- `bench_explain`: batched sweep and generation vs a per-(feature, scale) loop.
- `bench_embed`: the embed stage's text cache vs one encode per feature.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy.optimize import linear_sum_assignment

from faithcase.artifacts import SAE_KEYS
from faithcase.model.outliers import excluded_positions
from faithcase.numerics.assignment import cosine_similarity
from faithcase.stages.match import match_features


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
    batches = [torch.randint(0, vocab, (batch, seq_len), generator=generator) for _ in range(n_batches)]
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
            "truncated_tokens_per_s": truncated, "full_tokens_per_s": full, "speedup": truncated / full}


# ================================================================ match

BIG_SIZE, BIG_D = 65_536, 2048


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


def _family_features(parents: torch.Tensor, n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """n unit features, each a random mix of one parent direction (weight 0-0.8) and own noise."""
    parent = parents[torch.randint(len(parents), (n,), generator=gen)]
    weight = 0.8 * torch.rand(n, 1, generator=gen)
    own = _unit(torch.randn(n, d, generator=gen))
    return _unit(weight * parent + torch.sqrt(1 - weight**2) * own)


def synthetic_decoders(
    n: int, d: int, seed: int = 0, shared: float = 0.75, family_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two decoder matrices [n, d] of SAEs that share about `shared` of their features."""
    gen = torch.Generator().manual_seed(seed)
    parents = _unit(torch.randn(max(n // family_size, 1), d, generator=gen))
    W1 = _family_features(parents, n, d, gen)

    n_shared = int(shared * n)
    source = torch.randperm(n, generator=gen)[:n_shared]
    target_cos = 0.25 + 0.72 * torch.rand(n_shared, 1, generator=gen)
    noise_scale = torch.sqrt(1 / target_cos**2 - 1)  # cos(x, x + s * unit noise) ~ 1 / sqrt(1 + s^2)
    copies = _unit(W1[source] + noise_scale * _unit(torch.randn(n_shared, d, generator=gen)))
    W2 = torch.cat([copies, _family_features(parents, n - n_shared, d, gen)])
    W2 = W2[torch.randperm(n, generator=gen)]
    return W1, W2


def _dense_scipy(W1: torch.Tensor, W2: torch.Tensor) -> float:
    """The baseline: full similarity matrix, then scipy's linear_sum_assignment; returns the total."""
    sim = cosine_similarity(W1, W2).numpy()
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return float(sim[rows, cols].astype(np.float64).sum())


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def bench_size(n: int, d: int, seed: int = 0) -> dict:
    """Dense scipy vs faithcase (solver auto) on one synthetic pair of size n x n."""
    W1, W2 = synthetic_decoders(n, d, seed)
    start = time.perf_counter()
    dense_total = _dense_scipy(W1, W2)
    dense_s = time.perf_counter() - start
    start = time.perf_counter()
    result = match_features(W1, W2, solver="auto")
    ours_s = time.perf_counter() - start
    info = result.solver
    return {
        "n": n,
        "d": d,
        "solver": info.name,
        "dense_scipy_s": dense_s,
        "faithcase_s": ours_s,
        "speedup": dense_s / ours_s,
        "relative_gap": (dense_total - info.total) / abs(dense_total),
        "certified": info.certified,
        "iterations": info.iterations,
        "candidate_edges": info.candidate_edges,
        "shared_ratio": result.stats.shared_ratio,
        "mean_similarity": result.stats.mean_similarity,
    }


def bench_big(
    n: int = BIG_SIZE,
    d: int = BIG_D,
    seed: int = 0,
    time_limit: float = 480.0,
    console: Console | None = None,
) -> dict:
    """The sparse solver alone on a large pair (no dense baseline fits): time, certificate, RSS."""
    console = console or Console()
    W1, W2 = synthetic_decoders(n, d, seed)
    start = time.perf_counter()

    def report(stage: str, done: int, total: int) -> None:
        if stage != "similarity" or done == total or (done // 2048) % 8 == 0:
            console.print(f"  {time.perf_counter() - start:7.1f} s  {stage} {done}/{total}")

    result = match_features(W1, W2, solver="sparse", time_limit=time_limit, progress=report)
    info = result.solver
    return {
        "n": n,
        "d": d,
        "solver": info.name,
        "faithcase_s": time.perf_counter() - start,
        "certified": info.certified,
        "iterations": info.iterations,
        "candidate_edges": info.candidate_edges,
        "relative_gap": info.relative_gap,
        "gap_to_row_max_bound": (info.upper_bound - info.total) / abs(info.total),
        "peak_rss_gib": _peak_rss_gib(),
        "shared_ratio": result.stats.shared_ratio,
        "mean_similarity": result.stats.mean_similarity,
    }


def run_match_bench(
    sizes=(2304, 4608, 14336), d: int = 576, big: bool = False, console: Console | None = None
) -> list[dict]:
    """Benchmark every size in one run, print a table, and return one dict per row."""
    console = console or Console()
    rows = []
    for n in sizes:
        console.print(f"matching {n} x {n} features (d={d}) ...")
        rows.append(bench_size(n, d))
    if big:
        console.print(f"matching {BIG_SIZE} x {BIG_SIZE} features (d={BIG_D}), sparse solver only ...")
        rows.append(bench_big(console=console))
    console.print(_table(rows))
    return rows


COLUMNS = (
    "features", "d", "solver", "dense scipy s", "faithcase s", "speedup",
    "gap", "optimal", "rounds", "graph pairs", "peak RSS",
)  # fmt: skip


def _table(rows: list[dict]) -> Table:
    table = Table(
        title="feature matching: faithcase (solver auto) vs dense scipy linear_sum_assignment, same run",
        caption="gap: (dense total - faithcase total) / dense total; without a dense baseline, the "
        "proven gap to the best upper bound. optimal: 'certified' by LP duals, 'exact' for dense.",
    )
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for row in rows:
        dense = row.get("dense_scipy_s")
        optimal = "certified" if row["certified"] else "exact" if row["solver"] == "dense" else "no"
        table.add_row(
            f"{row['n']:,}",
            str(row["d"]),
            row["solver"],
            "-" if dense is None else f"{dense:.2f}",
            f"{row['faithcase_s']:.2f}",
            "-" if dense is None else f"{row['speedup']:.1f}x",
            f"{row['relative_gap']:.1e}",
            optimal,
            str(row["iterations"]),
            f"{row['candidate_edges']:,}",
            f"{row['peak_rss_gib']:.1f} GiB" if "peak_rss_gib" in row else "-",
        )
    return table


# ================================================================ windows


def _sequences(rt, n_tokens: int) -> torch.Tensor:
    sequences = rt.sequences
    n = max(1, n_tokens // sequences.shape[1])
    return sequences[:n]


def _features(rt, n_features: int) -> dict[str, list[int]]:
    """The features a run would select: the match stage's pairs, topped up to n_features."""
    from faithcase.pipeline import pipeline_run

    selected = pipeline_run(rt).get("pairs").selected_features()
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
    top_activated_windows({k: rt.sae(k) for k in SAE_KEYS}, features, rt.stream(sequences, hook, "windows stage"),
                          settings=rt.cfg.windows, tokenizer=rt.lm)
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
        code = ("import sys, torch, resource; from faithcase.tools.bench import _stream_synthetic; "
                f"_stream_synthetic({n_tokens}); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[f"peak_rss_mib_{n_tokens // 1000}k_tokens"] = int(done.stdout.split()[-1]) / 1024
    return out


def _stream_synthetic(n_tokens: int, d_in: int = 576, d_sae: int = 2304, k: int = 32, seq_len: int = 64) -> None:
    from faithcase.saes import SAE
    from faithcase.stages.windows import WindowCollector

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
    collector.finish(lambda ids: [str(i) for i in ids])  # synthetic tokens: ids as texts


# ================================================================ explain


def bench_explain(rt, n_features: int = 4, n_scales: int = 8) -> dict:
    """`explain_speedup` on the first n_features selected features of SAE 1, with n_scales scales."""
    from faithcase.numerics.directions import unit_directions
    from faithcase.stages.explain import insert_layer

    cfg = rt.cfg.explain.model_copy(update={"n_scales": n_scales})
    features = _features(rt, n_features)["sae1"][:n_features]
    norm = rt.residual_norm(insert_layer(cfg, rt.cfg.hook_layer))
    return explain_speedup(rt.lm, unit_directions(rt.sae("sae1").W_dec, features), cfg, norm, rt.cfg.hook_layer)


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
        result = steering.sweep(lm, prompt, matrix, scales, insert, read, cfg.mode, residual_norm, batch_size,
                                share_prefix=batch_size > 1)
        scores = ex.score_sweep(result.selfsim, ex.criterion_curve(result, cfg.criterion), cfg.selfsim_weight,
                                cfg.criterion_weight)
        picks = [p[0] for p in ex.best_scales(scores, eligible, 1)]
        vectors = torch.stack([matrix[i] * scales[j] * residual_norm for i, j in enumerate(picks)])
        greedy = steering.generate(lm, prompt, vectors, insert, cfg.mode, cfg.max_new_tokens, batch_size)
        sampled = steering.generate(lm, prompt, vectors.repeat_interleave(cfg.n_samples, dim=0), insert, cfg.mode,
                                    cfg.max_new_tokens, batch_size, temperature=cfg.temperature, seed=cfg.seed)
        steering.neutral_logprobs(lm, prompt, [t.ids for t in greedy + sampled], insert, cfg.mode, batch_size)
        return result, picks, [t.text for t in greedy], len(sampled)

    steering.sweep(lm, prompt, matrix[:1], scales[:1], insert, read, cfg.mode, residual_norm, 2)  # warm-up
    (batched, picks_b, texts_b, n_sampled), batched_s = timed(lambda: run(cfg.batch_size), lm.device)
    (loop, picks_l, texts_l, _), loop_s = timed(lambda: run(1), lm.device)
    return {
        "device": str(lm.device), "features": len(features), "scales": len(scales),
        "forwards": len(features) * len(scales), "sampled": n_sampled, "max_new_tokens": cfg.max_new_tokens,
        "batch_size": cfg.batch_size, "batched_s": batched_s, "loop_s": loop_s, "speedup": loop_s / batched_s,
        "max_abs_diff_selfsim": float((batched.selfsim - loop.selfsim).abs().max()),
        "max_abs_diff_ce": float((batched.ce - loop.ce).abs().max()),
        "same_scales": picks_b == picks_l, "same_greedy_texts": texts_b == texts_l,
        "texts": {f: t for f, t in zip(features, texts_b)},
    }


# ================================================================ embed


def bench_embed(rt) -> dict:
    """`embed_cache_speedup` on the run's SAE 1 windows and explanations."""
    from faithcase.pipeline import pipeline_run
    from faithcase.stages.embed import explanation_texts

    graph = pipeline_run(rt)
    windows = graph.get("windows")["sae1"].features
    explanations = explanation_texts(graph.get("explain").features["sae1"])
    return embed_cache_speedup(rt.embedder, windows, explanations, rt.cfg.embed)


def embed_cache_speedup(embedder, windows, explanations, settings) -> dict:
    """Contexts scored per second without and with the text cache, on the stage's workload: every
    feature scored by its own explanation, then by another feature's (as cross-scoring does)."""
    import numpy as np

    from faithcase.stages.embed import _why_not, documents, eleuther, make_query, score

    keys = list(windows)
    rotated = {key: explanations.get(keys[(i + 1) % len(keys)]) for i, key in enumerate(keys)}
    passes = [explanations, rotated]
    docs = {key: documents(feature) for key, feature in windows.items()}
    n_contexts = sum(len(docs[key]) for texts in passes for key in keys
                     if _why_not(texts.get(key), docs[key], settings) is None)

    def uncached():
        results = []
        for texts in passes:
            found = {}
            for key in keys:
                why = _why_not(texts.get(key), docs[key], settings)
                vectors = None if why else embedder.embed([make_query(settings.template, texts[key]),
                                                           *(d.text for d in docs[key])], use_cache=False)
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
    diffs = [abs(a[k].auroc - b[k].auroc) for a, b in zip(results_uncached, results_cached) for k in a
             if a[k].auroc is not None and b[k].auroc is not None]
    return {
        "n_features": len(keys), "n_contexts": n_contexts,
        "encoded_uncached": encoded_uncached, "encoded_cached": encoded_cached,
        "seconds_uncached": seconds_uncached, "seconds_cached": seconds_cached,
        "contexts_per_s_uncached": n_contexts / seconds_uncached,
        "contexts_per_s_cached": n_contexts / seconds_cached,
        "speedup": seconds_uncached / seconds_cached, "max_auroc_diff": float(np.max(diffs)) if diffs else 0.0,
    }
