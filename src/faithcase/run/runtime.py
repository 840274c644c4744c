"""One run's context: the config, where artifacts go, and the heavy objects, loaded lazily.

The language model, the SAEs and the embedder load once per process, so `faithcase run` shares
them across stages and a fully cached run loads nothing. Corpus passes truncated at a hook are
kept on disk (run/residual_cache.py) and in memory while they fit `corpus.memory_mib`, so the
stages that read the same hook run the model over the corpus once per run, however invoked.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
import time
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path

import torch
from rich.console import Console

from faithcase import __version__
from faithcase.artifacts import LEDGER_FILE, SAE_KEYS, SAEInfo
from faithcase.run.residual_cache import ResidualCache
from faithcase.run.store import file_sha256
from faithcase.config import Config, affecting
from faithcase.run.errors import FaithcaseError
from faithcase.numerics.outliers import excluded_positions
from faithcase.model.tokens import token_texts
from faithcase.run import shards
from faithcase.run.machine import DtypeChoice, dtype_name, policy_key
from faithcase.run.paths import resolve_path

RESIDUAL_NORM_BATCHES = 4  # corpus batches that set the unit of the steering scales


class Runtime:
    def __init__(self, cfg: Config, console: Console | None = None,
                 parent: "Runtime | None" = None):
        """`parent`: the runtime of the run this one is a study of (same model and corpus): its
        model, corpus sequences and corpus passes (in memory and on disk) are shared."""
        self.cfg = cfg
        self.parent = parent
        self.console = console or Console(stderr=True)
        self.out_dir = cfg.output_dir()
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise FaithcaseError(f"the run folder {self.out_dir} is a file, not a folder: "
                                 "choose another --out-dir or run_name")
        self._saes: dict[str, object] = {}
        self._sae_hashes: dict[str, str] = {}
        self._sae_paths: dict[str, Path] = {}
        self._passes: dict[str, list[tuple]] = parent._passes if parent else {}
        self.shard = shards.current()  # this process's part of a split corpus pass
        self.corpus_passes = 0  # model passes over the corpus (a study's run counts its parent's)
        self.load_seconds: dict[str, float] = {}  # what loading the model and the embedder took

    # ---------------------------------------------------------------- files

    def path(self, name: str) -> Path:
        return self.out_dir / name

    @property
    def ledger_path(self) -> Path:
        return self.path(LEDGER_FILE)

    def base_dir(self) -> Path:
        return Path(self.cfg.base_dir)

    # ---------------------------------------------------------------- SAEs

    def sae_path(self, key: str) -> Path:
        """The SAE's local folder; a hub SAE is fetched into the Hugging Face cache first."""
        if key not in self._sae_paths:
            sae_cfg = self.cfg.sae_config(key)
            if sae_cfg.hf is not None:
                from faithcase.saes.hub import hub_sae_folder

                with self.console.status(f"fetching {key} from the hub ({sae_cfg.hf}) …"):
                    path = hub_sae_folder(sae_cfg.hf, sae_cfg.id, sae_cfg.revision)
            else:
                path = resolve_path(sae_cfg.path, self.base_dir())
            if not path.exists():
                raise FaithcaseError(f"{key} folder not found: {path}")
            self._sae_paths[key] = path
        return self._sae_paths[key]

    def sae(self, key: str):
        if key not in self._saes:
            from faithcase.saes import check_compatible, load_sae

            sae_cfg = self.cfg.sae_config(key)
            sae = load_sae(self.sae_path(key), format=sae_cfg.format, hook=self.cfg.hook,
                           device=self.device, dtype=sae_cfg.dtype)
            if sae_cfg.input_unit_norm is not None:
                sae = replace(sae, input_unit_norm=sae_cfg.input_unit_norm)
            if sae.dtype_note and sae_cfg.dtype == "auto":
                choice = DtypeChoice(sae.declared_dtype, sae.dtype, sae.dtype_note)
                self.console.print(choice.describe(key))
            _check_finite_encoder(key, sae)
            for other_key, other in self._saes.items():
                check_compatible(other, sae)
                _check_same_site(other_key, other, key, sae)
            self._saes[key] = sae
        return self._saes[key]

    def sae_for_model(self, key: str):
        """The SAE, checked to read vectors as wide as the model's residual stream."""
        sae = self.sae(key)
        if sae.d_in != self.lm.d_model:
            raise FaithcaseError(f"{key} reads vectors of d_in={sae.d_in} but "
                                 f"{self.cfg.model.name} has d_model={self.lm.d_model} at "
                                 f"{self.cfg.hook}: the SAE was not trained on this model")
        return sae

    def sae_hash(self, key: str) -> str:
        """Hash of the SAE's files, without loading its weights into torch."""
        if key not in self._sae_hashes:
            path = self.sae_path(key)
            files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
            self._sae_hashes[key] = file_sha256(files)
        return self._sae_hashes[key]

    def sae_info(self, key: str) -> SAEInfo:
        sae = self.sae(key)
        return SAEInfo(path=str(self.sae_path(key)), format=sae.format, d_in=sae.d_in,
                       d_sae=sae.d_sae, hook_name=sae.hook_name, sha256=self.sae_hash(key),
                       dtype=dtype_name(sae.dtype),
                       declared_dtype=dtype_name(sae.declared_dtype or torch.float32))

    # ---------------------------------------------------------------- models

    @cached_property
    def device(self) -> str:
        from faithcase.model.lm import resolve_device

        return resolve_device(self.cfg.device)

    @cached_property
    def lm(self):
        from faithcase.model.lm import load_model

        if self.parent is not None:
            return self.parent.lm
        model = self.cfg.model
        start = time.perf_counter()
        choice = self.model_dtype
        if choice.reason and model.dtype == "auto":
            self.console.print(choice.describe(model.name))
        with self.console.status(f"loading {model.name} …"):
            loaded = load_model(model.name, path=_resolved(model.path, self.base_dir()),
                                gguf=_resolved(model.gguf, self.base_dir()), device=self.device,
                                dtype=choice.used)
        self.load_seconds["lm"] = time.perf_counter() - start
        return loaded

    @cached_property
    def model_dtype(self):
        """The language model's declared dtype and the one it computes in (run/machine.py)."""
        from faithcase.model.lm import model_dtype

        if self.parent is not None:
            return self.parent.model_dtype
        model = self.cfg.model
        return model_dtype(model.name, path=_resolved(model.path, self.base_dir()),
                           gguf=_resolved(model.gguf, self.base_dir()), device=self.device,
                           dtype=model.dtype)

    @cached_property
    def embedder(self):
        from faithcase.model.embedder import load_embedder

        embed = self.cfg.embed
        start = time.perf_counter()
        with self.console.status(f"loading embedder {embed.model} …"):
            loaded = load_embedder(embed.model, device=self.device, batch_size=embed.batch_size,
                                   base_dir=self.base_dir(),
                                   trust_remote_code=embed.trust_remote_code)
        self.load_seconds["embedder"] = time.perf_counter() - start
        if loaded.config_kwargs:  # e.g. stella's xformers-only attention turned off on CPU
            self.console.print(f"embedder {embed.model} loaded with {loaded.config_kwargs}")
        if loaded.remote_code is not None:  # transformers 5 compatibility (model/remote_code.py)
            self.console.print(f"embedder {embed.model}: {loaded.remote_code.summary}")
        return loaded

    # ---------------------------------------------------------------- what fingerprints cover

    def stage_key(self, stage) -> dict:
        """What a stage's results depend on: its config section's settings (those that change
        results) and the resources it declares it uses."""
        key = {use: self.resource_key(use) for use in stage.uses}
        if stage.section:
            key["settings"] = affecting(getattr(self.cfg, stage.section))
        return key

    @cached_property
    def explainers(self) -> list:
        """The registered explainers, the run's plugins included (`faithcase.plugins`)."""
        from faithcase import plugins

        return plugins.explainers(self.cfg.plugins, self.base_dir())

    @cached_property
    def scores(self) -> list:
        from faithcase import plugins

        return plugins.scores(self.cfg.plugins, self.base_dir())

    def resource_key(self, name: str):
        if name == "saes":
            return self._sae_keys(SAE_KEYS)
        if name == "all_saes":  # every `saes` entry, with the metadata the tables group by
            names = self.cfg.matrix_names()
            meta = {n: [self.cfg.sae_config(n).seed, self.cfg.sae_config(n).dataset]
                    for n in names}
            return self._sae_keys(names) | {"metadata": meta}
        if name == "model":
            return affecting(self.cfg.model) | {"hook": self.cfg.hook,
                                                "dtype_policy": policy_key(self.device)}
        if name == "corpus":
            return {"corpus": affecting(self.cfg.corpus), "outliers": affecting(self.cfg.outliers)}
        if name == "config":
            return affecting(self.cfg)
        if name in ("plugins", "explainers"):
            from faithcase import plugins

            declaring = "EXPLAINER" if name == "explainers" else None
            return plugins.signature(self.cfg.plugins, self.base_dir(), declaring)
        raise ValueError(f"unknown resource {name!r}")

    def _sae_keys(self, keys) -> dict:
        # the files, format and dtype setting (auto: the declared dtype, unless slow here) fix it
        saes = {key: [self.sae_hash(key), self.cfg.sae_config(key).format,
                      self.cfg.sae_config(key).dtype, self.cfg.sae_config(key).input_unit_norm]
                for key in keys}
        return saes | {"hook": self.cfg.hook, "dtype_policy": policy_key(self.device)}

    # ---------------------------------------------------------------- corpus

    @cached_property
    def sequences(self) -> torch.Tensor:
        from faithcase.model.corpus import load_texts, token_sequences

        if self.parent is not None:
            return self.parent.sequences
        corpus = self.cfg.corpus
        sources = [corpus.source] if isinstance(corpus.source, str) else corpus.source
        texts = itertools.chain.from_iterable(
            load_texts(source, kind=corpus.kind, text_column=corpus.text_column,
                       hf_config=corpus.hf_config, split=corpus.split,
                       streaming=corpus.streaming, base_dir=self.base_dir())
            for source in sources)
        return token_sequences(texts, self.lm.tokenizer, seq_len=corpus.seq_len,
                               max_tokens=corpus.max_tokens, seed=corpus.seed,
                               bos_id=self.lm.bos_token_id)

    def activation_batches(self, hook: str | None = None,
                           description: str = "corpus pass") -> Iterator[tuple]:
        """(seq_ids, tokens, resid, excluded) per corpus batch, the pass truncated at `hook`
        (default: the SAEs' hook). The pass is kept on disk (the residual cache) and, while it
        fits corpus.memory_mib, in memory: the model runs over the corpus once per run."""
        hook = hook or self.cfg.hook
        if hook in self._passes:
            yield from self._passes[hook]
            return
        budget, used = self.cfg.corpus.memory_mib * 2**20, 0
        kept: list[tuple] | None = [] if budget > 0 else None
        for batch in self._cached_or_streamed(hook, description):
            if kept is not None:
                used += batch[2].element_size() * batch[2].numel()
                if used > budget:
                    kept = None  # too large to keep in memory: later stages read the disk cache
                else:
                    kept.append(batch)
            yield batch
        if kept is not None:
            self._passes[hook] = kept

    def prefix_batches(self, n_sequences: int, description: str) -> Iterator[tuple]:
        """The corpus pass's batches that start before sequence n_sequences, the same in every
        process: under torchrun each rank runs them itself; else from the (cached) pass, read to
        its end so that it is kept for the stages after."""
        size = self.cfg.corpus.batch_size
        if self.shard.split:
            end = -(-n_sequences // size) * size
            yield from self.stream(self.sequences[:end], self.cfg.hook, description,
                                   every_batch=True)
            return
        for batch in self.activation_batches(description=description):
            if int(batch[0][0]) < n_sequences:
                yield batch

    def residual_cache(self, hook: str) -> ResidualCache:
        key = {"model": self.resource_key("model"), "device": self.device, "hook": hook,
               "corpus": self.resource_key("corpus"), "version": __version__}
        root = self.parent.out_dir if self.parent is not None else self.out_dir
        return ResidualCache(root, key, warn=self._warn, device=self.device)

    def _warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}")

    def _cached_or_streamed(self, hook: str, description: str) -> Iterator[tuple]:
        """The pass from the disk cache when it is complete, else from the model (written to the
        cache as it goes)."""
        if not self.cfg.corpus.disk_cache or self.shard.split:  # a shard's pass is not cached
            yield from self.stream(self.sequences, hook, description)
            return
        cache = self.residual_cache(hook)
        if cache.complete():
            n_batches = len(cache.batches())
            with _progress(self.console) as progress:
                task = progress.add_task(f"{description} (cached)", total=n_batches)
                for index, batch in cache.read():
                    if batch is None:  # damaged: the model recomputes the rest, uncached
                        yield from self.stream(self.sequences, hook, description, index)
                        return
                    progress.advance(task)
                    yield batch
            return
        writer = cache.writer(self._pass_bytes())
        try:
            for batch in self.stream(self.sequences, hook, description):
                if writer is not None:
                    writer.add(batch)
                yield batch
        except BaseException:
            if writer is not None:
                writer.abandon()
            raise
        if writer is not None:
            writer.finish()

    def _pass_bytes(self) -> int:
        element = torch.empty((), dtype=self.model_dtype.used).element_size()
        return self.sequences.numel() * self.lm.d_model * element

    def stream(self, sequences: torch.Tensor, hook: str, description: str,
               first_batch: int = 0, every_batch: bool = False) -> Iterator[tuple]:
        """One pass over `sequences` in corpus batches (from `first_batch` on), truncated at
        `hook`, with a progress bar; this shard's batches only, unless `every_batch`."""
        size = self.cfg.corpus.batch_size
        outliers = self.cfg.outliers
        starts = [start for start in range(first_batch * size, len(sequences), size)
                  if every_batch or self.shard.owns(start // size)]
        self._count_pass()
        with _progress(self.console) as progress:
            task = progress.add_task(description, total=len(starts))
            for start in starts:
                tokens = sequences[start:start + size]
                resid = self.lm.activations(tokens, hook)
                excluded = excluded_positions(resid, outliers.norm_ratio, outliers.exclude_bos)
                yield torch.arange(start, start + len(tokens)), tokens, resid, excluded
                progress.advance(task)

    def _count_pass(self) -> None:
        self.corpus_passes += 1
        if self.parent is not None:
            self.parent._count_pass()

    def residual_norm(self, layer: int) -> float:
        """Median residual norm at `blocks.{layer}.hook_resid_pre` on corpus tokens (BOS and massive
        activations left out): the unit of the steering scales."""
        from faithcase.model.steering import median_residual_norm

        sequences = self.sequences
        size = self.cfg.corpus.batch_size
        batches = [sequences[start:start + size]
                   for start in range(0, len(sequences), size)][:RESIDUAL_NORM_BATCHES]
        outliers = self.cfg.outliers
        return median_residual_norm(self.lm, batches, layer,
                                    lambda resid: excluded_positions(resid, outliers.norm_ratio,
                                                                     outliers.exclude_bos))

    @cached_property
    def token_text(self) -> Callable[[list[int]], list[str]]:
        """Per-token strings as a reader sees them (spaces kept), memoized by token id."""
        return token_texts(self.lm.tokenizer)


def _progress(console: Console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    return Progress(*columns, console=console, transient=True)


def _check_finite_encoder(key: str, sae) -> None:
    """Non-finite decoder rows are dead features (counted by match); a non-finite encoder cannot
    encode."""
    tensors = [sae.W_enc, sae.b_enc, sae.b_dec]
    tensors += [sae.threshold] if sae.threshold is not None else []
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors)
    if bad:
        raise FaithcaseError(f"{key} ({sae.path}) has {bad} non-finite values in its encoder "
                             "weights or biases: check the checkpoint")


def _check_same_site(key_a: str, a, key_b: str, b) -> None:
    from faithcase.model.hooks import different_sites

    if different_sites(a.hook_name, b.hook_name):
        raise FaithcaseError(f"the SAEs read different hooks: {key_a} reads {a.hook_name}, "
                             f"{key_b} reads {b.hook_name}; compare SAEs of one hook site")


def _resolved(spec: str | None, base_dir: Path) -> str | None:
    return str(resolve_path(spec, base_dir)) if spec else None
