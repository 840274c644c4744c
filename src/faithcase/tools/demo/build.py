"""Build the embedded demo bundle, in resumable stages.

    samples      shards of model samples from BOS (tools/demo/sampling.py), in work_dir
    corpus       filter degenerate samples, deduplicate, split train / held-out (corpus.py)
                 → bundle/corpus_train.jsonl.gz, bundle/corpus_heldout.jsonl.gz
    activations  truncated pass to the hook, outlier positions dropped (numerics/outliers.py)
                 → work_dir/acts_train.pt, work_dir/acts_heldout.pt (float32, kept rows)
    sae_seed42, sae_seed49
                 two TopK SAEs that differ only in the seed (tools/demo/train.py)
                 → bundle/sae_seed42/, bundle/sae_seed49/ (SAELens format)
    manifest     held-out quality, shared features between the seeds, sizes, settings
                 (manifest.py) → bundle/manifest.json

Each stage records a key of its inputs (settings and upstream keys) in work_dir/stages.json
and is skipped when its key and outputs are unchanged; `force` reruns everything.
Run it as `faithcase demo build` (flags: --shards, --k, --epochs, --lr, --force …).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from faithcase.demo import BUNDLE_DIR, MANIFEST_FILE
from faithcase.run.errors import FaithcaseError
from faithcase.run.graph import Graph, Stage
from faithcase.run.store import sha256_file
from faithcase.tools.demo.corpus import (
    degenerate_reason,
    filter_samples,
    special_token_ids,
    split_heldout,
    token_count,
    write_texts,
)
from faithcase.tools.demo.manifest import (
    CORPUS_COUNTS,
    bundle_bytes,
    bundle_info,
    info_rows,
    write_manifest,
)
from faithcase.tools.demo.settings import (
    ACTS_HELDOUT,
    ACTS_TRAIN,
    HELDOUT_FILE,
    MODEL_GGUF,
    MODEL_NAME,
    SAMPLES_SUBDIR,
    STAGE_LOG,
    TARGET_DEAD,
    TARGET_FVU,
    TARGET_PAIRS_090,
    TRAIN_FILE,
    BuildSettings,
    FilterSettings,
    SampleSettings,
    TrainSettings,
    sae_name,
    settings_with,
)

__all__ = [  # the names other modules import from here
    "BUNDLE_DIR", "HELDOUT_FILE", "TRAIN_FILE", "BuildSettings", "FilterSettings",
    "SampleSettings", "TrainSettings", "build_bundle", "build_graph", "bundle_bytes",
    "bundle_info", "degenerate_reason", "filter_samples", "info_rows", "settings_with",
    "special_token_ids", "split_heldout", "write_texts",
]


def _key(*parts: Any) -> str:
    """A stage key without the package version: a release must not invalidate the long build."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the build


class _Builder:
    """The build's context: settings, folders, and the demo model (loaded once, when needed)."""

    def __init__(self, out_dir: Path, work_dir: Path, samples_dir: Path,
                 settings: BuildSettings, console):
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
                self._hf = load_hf_model(MODEL_NAME, gguf=MODEL_GGUF, device="cpu",
                                         dtype="float32")
        return self._hf

    def runtime(self):
        """A pipeline Runtime on the demo model, for its corpus passes (`Runtime.stream`)."""
        if self._runtime is None:
            from faithcase.config import Config
            from faithcase.model.lm import wrap_model
            from faithcase.run.runtime import Runtime

            s = self.settings
            corpus = {"source": str(self.out_dir / TRAIN_FILE), "seq_len": s.seq_len,
                      "batch_size": s.pass_batch_size}
            cfg = Config(model={"name": MODEL_NAME, "gguf": MODEL_GGUF}, hook=s.hook,
                         device="cpu", sae1={"path": "."}, sae2={"path": "."}, corpus=corpus,
                         outliers={"norm_ratio": s.norm_ratio, "exclude_bos": s.exclude_bos})
            self._runtime = Runtime(cfg, console=self.console)
            self._runtime.lm = wrap_model(MODEL_NAME, self.hf(), self.tokenizer())
        return self._runtime

    def model_file(self) -> Path:
        from faithcase.run.paths import resolve_path

        return resolve_path(MODEL_GGUF)

    def progress(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                        transient=True)

    def shards(self) -> list[Path]:
        from faithcase.tools.demo.sampling import shard_paths

        return shard_paths(self.samples_dir, self.settings.sampling.n_shards)

    def sae_folder(self, seed: int) -> Path:
        return self.out_dir / sae_name(seed)

    def trained_folder(self, seed: int) -> Path:
        """The SAE in float32, as trained (the bundle may store it in another dtype)."""
        return self.work_dir / f"{sae_name(seed)}.{self.out_dir.name}.float32"

    # -- stages: each returns the small record kept in the build's ledger

    def samples(self, up: dict, fp: str) -> dict:
        from faithcase.tools.demo.sampling import write_shards

        s = self.settings.sampling
        if not all(p.exists() for p in self.shards()):
            hf_model, tokenizer = self.hf(), self.tokenizer()
            if self._runtime is not None:
                raise RuntimeError("sample before wrapping the model "
                                   "(the bridge changes it in place)")
            with self.progress() as bar:
                task = bar.add_task("sampling shards", total=s.n_shards)
                write_shards(hf_model, tokenizer, self.samples_dir, s.n_shards, s.batch,
                             s.new_tokens, s.top_p, s.temperature, s.seed_base, s.top_k,
                             progress=lambda i, skipped: bar.advance(task))
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
            "sampled_tokens": token_count(samples),
            "kept_tokens": token_count(kept),
            "train_samples": len(train), "heldout_samples": len(heldout),
            "train_tokens": token_count(train),
            "heldout_tokens": token_count(heldout),
        }
        self.console.print(f"corpus: kept {counts['kept']}/{counts['input']} samples, "
                           f"{result['train_tokens']} train + {result['heldout_tokens']} "
                           "held-out tokens")
        return result

    def given_corpus_key(self) -> list:
        source = Path(self.settings.corpus_from)
        return [sha256_file(source / name) for name in (TRAIN_FILE, HELDOUT_FILE)]

    def given_corpus(self, up: dict, fp: str) -> dict:
        """The corpus files of a built bundle, taken as they are, with that bundle's record of
        how they were sampled and filtered."""
        source = Path(self.settings.corpus_from)
        record = bundle_info(source).get("corpus")
        if not record:
            raise FaithcaseError(f"{source / MANIFEST_FILE} has no corpus record")
        for name in (TRAIN_FILE, HELDOUT_FILE):
            if (source / name).resolve() != (self.out_dir / name).resolve():
                tmp = self.out_dir / (name + ".tmp")
                shutil.copyfile(source / name, tmp)
                os.replace(tmp, self.out_dir / name)
        return {name: record[name] for name in ("filter_counts", *CORPUS_COUNTS)}

    def activations_key(self) -> list:
        s = self.settings
        return [sha256_file(self.model_file()), s.hook, s.seq_len, s.pass_batch_size,
                s.norm_ratio, s.exclude_bos]

    def activations(self, up: dict, fp: str) -> dict:
        import torch

        from faithcase.model.corpus import load_texts

        result = {}
        splits = (("train", TRAIN_FILE, ACTS_TRAIN), ("heldout", HELDOUT_FILE, ACTS_HELDOUT))
        for split, corpus_file, out in splits:
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
        sequences = token_sequences(texts, rt.lm.tokenizer, seq_len=s.seq_len, max_tokens=None,
                                    seed=0, bos_id=rt.lm.bos_token_id)
        kept, n_bos, n_outliers = [], 0, 0
        for _, _, resid, excluded in rt.stream(sequences, s.hook, description):
            bos = int(excluded[:, 0].sum()) if s.exclude_bos else 0
            n_bos += bos
            n_outliers += int(excluded.sum()) - bos
            kept.append(resid[~excluded].float().cpu())
        acts = torch.cat(kept)
        counts = {"sequences": len(sequences), "positions": int(sequences.numel()),
                  "bos_excluded": n_bos, "outliers_excluded": n_outliers,
                  "kept": int(acts.shape[0])}
        return acts, counts

    def train(self, seed: int, up: dict, fp: str) -> dict:
        import torch

        from faithcase.tools.demo.train import train_topk_sae

        s, t = self.settings, self.settings.training
        stage = sae_name(seed)
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

            sae = train_topk_sae(acts, d_sae=t.d_sae, k=t.k, seed=seed, lr=t.lr,
                                 batch_size=t.batch_size, epochs=t.epochs, aux_k=t.aux_k,
                                 aux_coef=t.aux_coef, dead_after_tokens=t.dead_after_tokens,
                                 lr_decay_fraction=t.lr_decay_fraction, hook_name=s.hook,
                                 threads=t.threads, progress=report)
        self.save_sae(sae, self.trained_folder(seed))  # as trained: the storage comparison
        self.save_sae(sae.to(dtype=getattr(torch, s.weights_dtype)), self.sae_folder(seed))
        self.console.print(f"{stage}: trained in {time.perf_counter() - start:.0f} s, "
                           f"final normalized MSE {last.get('mse', float('nan')):.3f}")
        return {"final_loss": last.get("loss"), "final_mse": last.get("mse"),
                "final_dead_fraction": last.get("dead_fraction"),
                "train_tokens": int(acts.shape[0])}

    @staticmethod
    def save_sae(sae, folder: Path) -> None:
        """SAELens format, world-readable, replacing the folder only once it is complete."""
        from faithcase.saes import save_saelens

        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_saelens(sae, tmp)
        for file in tmp.iterdir():
            file.chmod(0o644)  # safetensors writes 0600; the bundle ships in the package
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

    def manifest(self, up: dict, fp: str) -> dict:
        """Held-out quality and matching of the shipped SAEs."""
        return write_manifest(self, up)


def _stage(name: str, inputs: tuple[str, ...], key, files, run, **extra) -> Stage:
    """A build stage: `key(b)`, `files(b)` and `run(b, up, fp)` on the builder `b`; the stage
    writes its own files and keeps its result as the ledger's note unless told otherwise."""
    return Stage(name, lambda job: run(job.ctx, job.inputs, job.fingerprint), inputs, key=key,
                 files=files, **({"note": lambda result: result} | extra))


def _sae_stage(seed: int) -> Stage:
    return _stage(sae_name(seed), ("activations",),
                  lambda b: [asdict(b.settings.training), seed, b.settings.weights_dtype],
                  lambda b: [b.sae_folder(seed) / "cfg.json",
                             b.sae_folder(seed) / "sae_weights.safetensors",
                             b.trained_folder(seed) / "sae_weights.safetensors"],
                  lambda b, up, fp: b.train(seed, up, fp))


def build_graph(seeds: tuple[int, ...], corpus_given: bool = False) -> Graph:
    """samples → corpus → activations → one SAE per seed → manifest (with a given corpus:
    corpus → activations → …)."""
    corpus_files = lambda b: [b.out_dir / TRAIN_FILE, b.out_dir / HELDOUT_FILE]  # noqa: E731
    corpus = ([_stage("corpus", (), _Builder.given_corpus_key, corpus_files,
                      _Builder.given_corpus)] if corpus_given else
              [_stage("samples", (), lambda b: asdict(b.settings.sampling),
                      lambda b: b.shards(), _Builder.samples),
               _stage("corpus", ("samples",), _Builder.corpus_key, corpus_files,
                      _Builder.corpus)])
    return Graph([
        *corpus,
        _stage("activations", ("corpus",), _Builder.activations_key,
               lambda b: [b.work_dir / ACTS_TRAIN, b.work_dir / ACTS_HELDOUT],
               _Builder.activations),
        *[_sae_stage(seed) for seed in seeds],
        _stage("manifest", tuple(sae_name(seed) for seed in seeds),
               lambda b: [b.settings.match_threshold, TARGET_FVU, TARGET_DEAD, TARGET_PAIRS_090],
               lambda b: [b.out_dir / MANIFEST_FILE], _Builder.manifest,
               note=None, load=lambda job: bundle_info(job.ctx.out_dir)),
    ], hasher=_key)


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
    samples = Path(samples_dir) if samples_dir else work / SAMPLES_SUBDIR
    builder = _Builder(out, work, samples, settings, console)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    graph = build_graph(settings.seeds, corpus_given=settings.corpus_from is not None)
    force_stages = graph.order() if force else ()
    builder.graph_run = graph.run(builder, work / STAGE_LOG, force_stages, report=console.print)
    return builder.graph_run.get("manifest")
