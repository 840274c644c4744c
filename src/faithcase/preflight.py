"""`faithcase check`: every component of a config loaded on its device and tried once, before any
corpus pass.

Per component (the model, the corpus, each SAE, the embedder, the window explainer): where it
loads from, the device, the dtype declared and used, the load time, and a status from a tiny
trial (a forward to the hook, the SAE load check on a few hundred corpus tokens, the embedder's
self-test). Every component is tried even when another fails, so one table names everything
missing; `faithcase run` runs the same check on what its stale stages need.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from faithcase.run.errors import FaithcaseError
from faithcase.run.machine import dtype_name

CHECK_TOKENS = 512  # corpus tokens of the SAE load check
PROBE_TEXT = "The cat sat on the mat, and the dog watched it from the door."


@dataclass
class ComponentCheck:
    component: str
    source: str
    device: str = ""
    dtype: str = ""  # "declared → used", or one name when they agree
    seconds: float = 0.0
    status: str = "ok"
    ok: bool = True
    warning: bool = False


def _dtypes(declared: torch.dtype | None, used: torch.dtype) -> str:
    declared = declared or used
    if declared == used:
        return dtype_name(used)
    return f"{dtype_name(declared)} → {dtype_name(used)}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, FaithcaseError):
        text = f"{type(err).__name__}: {text}"
    return text[:500]


class Preflight:
    """The checks of one Runtime's components; `run(components)` tries each in turn."""

    def __init__(self, rt):
        self.rt = rt
        self.checks: list[ComponentCheck] = []
        self._model_ok = False
        self._tokens: torch.Tensor | None = None
        self._resid: torch.Tensor | None = None  # the model at the hook on the sample tokens

    # ---------------------------------------------------------------- what a config has

    def sae_keys(self) -> list[str]:
        cfg = self.rt.cfg
        if cfg.saes and (cfg.studies or cfg.sae1 is None):
            return cfg.matrix_names()
        return [key for key in ("sae1", "sae2") if getattr(cfg, key) is not None]

    def components(self) -> list[str]:
        names = ["model", "corpus", *self.sae_keys(), "embedder"]
        return names + (["window explainer"] if self.rt.cfg.describe.enabled else [])

    # ---------------------------------------------------------------- running

    def run(self, components: list[str] | None = None) -> list[ComponentCheck]:
        for name in components or self.components():
            self.checks.append(self._try(name))
        return self.checks

    @property
    def failed(self) -> list[ComponentCheck]:
        return [check for check in self.checks if not check.ok]

    def _try(self, name: str) -> ComponentCheck:
        trial: Callable[[ComponentCheck], None] = {
            "model": self._model, "corpus": self._corpus, "embedder": self._embedder,
            "window explainer": self._window_explainer}.get(name, self._sae)
        check = ComponentCheck(component=name, source=self._source(name),
                               device=self.rt.device)
        start = time.perf_counter()
        try:
            trial(check)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - every failure is a row of the table
            check.ok, check.status = False, _one_line(err)
        check.seconds = time.perf_counter() - start
        return check

    def _source(self, name: str) -> str:
        cfg = self.rt.cfg
        if name == "model":
            return cfg.model.gguf or cfg.model.path or cfg.model.name
        if name == "corpus":
            source = cfg.corpus.source
            return source if isinstance(source, str) else " + ".join(source)
        if name == "embedder":
            return cfg.embed.model
        if name == "window explainer":
            from faithcase.stages.describe import explainer_name

            return explainer_name(cfg.describe, cfg.model.name)
        sae = cfg.sae_config(name)
        return f"{sae.hf}/{sae.id}" if sae.hf else str(sae.path)

    # ---------------------------------------------------------------- the trials

    def _model(self, check: ComponentCheck) -> None:
        rt = self.rt
        choice = rt.model_dtype
        check.dtype = _dtypes(choice.declared, choice.used)
        lm = rt.lm
        ids = lm.tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
        resid = lm.activations(ids, rt.cfg.hook)
        if not torch.isfinite(resid.float()).all():
            raise FaithcaseError(f"the forward to {rt.cfg.hook} gave non-finite values")
        check.status = f"ok: forward to {rt.cfg.hook}, d_model {resid.shape[-1]}"
        self._model_ok = True

    def _corpus(self, check: ComponentCheck) -> None:
        first = next(iter(self._texts()), None)
        if first is None:
            raise FaithcaseError("the corpus gave no text")
        if not self._model_ok:
            check.status = "texts readable; not tokenized: the model did not load"
            return
        tokens = self.sample_tokens()
        check.status = f"ok: {tokens.numel()} tokens read for the load check"

    def _texts(self):
        from faithcase.model.corpus import load_texts

        rt, corpus = self.rt, self.rt.cfg.corpus
        sources = [corpus.source] if isinstance(corpus.source, str) else corpus.source
        return itertools.chain.from_iterable(
            load_texts(source, kind=corpus.kind, text_column=corpus.text_column,
                       hf_config=corpus.hf_config, split=corpus.split,
                       streaming=corpus.streaming, base_dir=rt.base_dir())
            for source in sources)

    def sample_tokens(self) -> torch.Tensor:
        """About CHECK_TOKENS tokens from the start of the corpus, as the run cuts them."""
        if self._tokens is None:
            from faithcase.model.corpus import token_sequences

            rt, corpus = self.rt, self.rt.cfg.corpus
            budget = max(CHECK_TOKENS, corpus.seq_len)
            self._tokens = token_sequences(itertools.islice(self._texts(), 200), rt.lm.tokenizer,
                                           seq_len=corpus.seq_len, max_tokens=budget,
                                           seed=corpus.seed, bos_id=rt.lm.bos_token_id)
        return self._tokens

    def _sae(self, check: ComponentCheck) -> None:
        from faithcase.numerics.outliers import excluded_positions
        from faithcase.saes.load_check import sae_quality
        from faithcase.numerics.pass_sums import PassSums

        rt, key = self.rt, check.component
        sae = rt.sae(key)
        check.dtype = _dtypes(sae.declared_dtype, sae.dtype)
        check.device = str(sae.device)
        if not self._model_ok:
            check.status = (f"loaded ({sae.format}, {sae.d_sae} features); no load check: the "
                            "model did not load")
            return
        sae = rt.sae_for_model(key)
        tokens = self.sample_tokens()
        if self._resid is None:  # one forward for every SAE
            self._resid = rt.lm.activations(tokens, rt.cfg.hook)
        resid = self._resid
        outliers = rt.cfg.outliers
        excluded = excluded_positions(resid, outliers.norm_ratio, outliers.exclude_bos)
        sums = PassSums({key: sae}, {})
        sums.update(torch.arange(len(tokens)), tokens, resid, excluded)
        quality = sae_quality(sums, key, rt.cfg.scan, rt.cfg.hook)
        fvu = "inf" if math.isinf(quality.fvu) else f"{quality.fvu:.3f}"
        check.status = (f"FVU {fvu}, L0 {quality.l0:.1f} on {sums.n_tokens} tokens "
                        f"({sae.format}, {sae.d_sae} features)")
        if quality.warnings:
            check.warning = True
            check.status += "; " + quality.warnings[0]
            if rt.cfg.scan.strict:
                check.ok = False

    def _embedder(self, check: ComponentCheck) -> None:
        from faithcase.model.embedder import self_test

        embedder = self.rt.embedder  # loads, and refuses one that fails its self-test
        result = self_test(embedder)
        check.device = str(getattr(embedder.model, "device", self.rt.device))
        check.dtype = dtype_name(next(embedder.model.parameters()).dtype)
        check.status = f"ok: self-test {result.summary}"

    def _window_explainer(self, check: ComponentCheck) -> None:
        cfg = self.rt.cfg.describe
        if cfg.url:
            check.device, check.status = "remote", "endpoint: not contacted by the check"
            return
        if cfg.model == "same":
            check.status = "the run's model" if self._model_ok else "the run's model (failed)"
            check.ok = self._model_ok
            return
        from faithcase.stages.describe import make_explainer

        explainer = make_explainer(self.rt)
        model = explainer.model
        check.dtype = dtype_name(next(model.parameters()).dtype)
        ids = explainer.tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids.to(next(model.parameters()).device)).logits
        if not torch.isfinite(logits.float()).all():
            raise FaithcaseError("its forward gave non-finite logits")
        check.status = "ok: forward"


def check_table(checks: list[ComponentCheck], title: str = "faithcase check"):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("component", "source", "device", "dtype declared → used", "load s", "status"):
        table.add_column(column, overflow="fold")
    for check in checks:
        style = "red" if not check.ok else "yellow" if check.warning else "green"
        table.add_row(check.component, check.source, check.device, check.dtype,
                      f"{check.seconds:.1f}", f"[{style}]{check.status}[/]")
    return table


def refusal(checks: list[ComponentCheck]) -> FaithcaseError:
    failed = [check for check in checks if not check.ok]
    names = ", ".join(c.component for c in failed)
    why = f": {failed[0].status}" if len(failed) == 1 else " (see the table)"
    return FaithcaseError(f"{len(failed)} of {len(checks)} components cannot run: {names}{why}")
