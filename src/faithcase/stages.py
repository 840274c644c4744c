"""Stage runners: fingerprint the inputs, skip what is up to date, compute, write the artifact.

Heavy objects (the language model, the SAEs, the embedder) load lazily, once per process, so
`faithcase run` shares them across stages and a fully cached run loads nothing.
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

import torch
from rich.console import Console

from faithcase import assemble as assemble_mod
from faithcase.assemble import EMBED_FILE, EXPLAIN_FILE, MATCH_FILE, windows_file
from faithcase.artifacts import (
    SAE_KEYS,
    Assignment,
    EmbedArtifact,
    ExplainArtifact,
    FeatureExplanation,
    Histogram,
    MatchArtifact,
    MatchStats,
    Meta,
    Pair,
    SAEInfo,
    SolverInfo,
    WindowsArtifact,
    file_sha256,
    fingerprint,
    is_up_to_date,
    read_artifact,
    write_artifact,
)
from faithcase.config import Config
from faithcase.errors import FaithcaseError
from faithcase.outliers import excluded_positions
from faithcase.paths import resolve_path


class Runtime:
    """One run: the config, where artifacts go, and lazily loaded models."""

    def __init__(self, cfg: Config, console: Console | None = None, force: bool = False):
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.force = force
        self.out_dir = cfg.output_dir()
        self._saes: dict[str, object] = {}
        self._sae_hashes: dict[str, str] = {}

    # ---------------------------------------------------------------- inputs

    def base_dir(self) -> Path:
        return Path(self.cfg.base_dir)

    def sae_path(self, key: str) -> Path:
        path = resolve_path(getattr(self.cfg, key).path, self.base_dir())
        if not path.exists():
            raise FaithcaseError(f"{key} folder not found: {path}")
        return path

    def sae(self, key: str):
        if key not in self._saes:
            from faithcase.saes import load_sae

            sae_cfg = getattr(self.cfg, key)
            sae = load_sae(self.sae_path(key), format=sae_cfg.format, hook=self.cfg.hook, device=self.device)
            _check_finite_encoder(key, sae)
            self._saes[key] = sae
            if len(self._saes) == 2:
                from faithcase.saes import check_compatible

                check_compatible(self._saes["sae1"], self._saes["sae2"])
        return self._saes[key]

    def sae_hash(self, key: str) -> str:
        """Hash of the SAE's files, without loading its weights into torch."""
        if key not in self._sae_hashes:
            path = self.sae_path(key)
            files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
            self._sae_hashes[key] = file_sha256(files)
        return self._sae_hashes[key]

    @cached_property
    def device(self) -> str:
        from faithcase.lm import resolve_device

        return resolve_device(self.cfg.device)

    @cached_property
    def lm(self):
        from faithcase.lm import load_model

        model = self.cfg.model
        with self.console.status(f"loading {model.name} …"):
            return load_model(model.name, path=_resolved(model.path, self.base_dir()),
                              gguf=_resolved(model.gguf, self.base_dir()), device=self.cfg.device,
                              dtype=model.dtype)

    @cached_property
    def embedder(self):
        from faithcase.embed import load_embedder

        with self.console.status(f"loading embedder {self.cfg.embed.model} …"):
            return load_embedder(self.cfg.embed.model, device=self.cfg.device,
                                 batch_size=self.cfg.embed.batch_size, base_dir=self.base_dir())

    def model_key(self) -> dict:
        return self.cfg.model.model_dump(mode="json") | {"hook": self.cfg.hook}

    def corpus_key(self) -> dict:
        return {"corpus": self.cfg.corpus.model_dump(mode="json"),
                "outliers": self.cfg.outliers.model_dump(mode="json")}

    # ---------------------------------------------------------------- corpus

    def sequences(self) -> torch.Tensor:
        from faithcase.corpus import load_texts, token_sequences

        corpus = self.cfg.corpus
        texts = load_texts(corpus.source, kind=corpus.kind, text_column=corpus.text_column,
                           hf_config=corpus.hf_config, split=corpus.split, streaming=corpus.streaming,
                           base_dir=self.base_dir())
        return token_sequences(texts, self.lm.tokenizer, seq_len=corpus.seq_len,
                               max_tokens=corpus.max_tokens, seed=corpus.seed, bos_id=self.lm.bos_token_id)

    def activation_batches(self, sequences: torch.Tensor, hook: str, description: str,
                           max_batches: int | None = None) -> Iterator[tuple]:
        """(seq_ids, tokens, resid, excluded) per batch of the corpus, truncated at `hook`."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        size = self.cfg.corpus.batch_size
        starts = list(range(0, len(sequences), size))[:max_batches]
        outliers = self.cfg.outliers
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=len(starts))
            for start in starts:
                tokens = sequences[start:start + size]
                resid = self.lm.activations(tokens, hook)
                excluded = excluded_positions(resid, outliers.norm_ratio, outliers.exclude_bos)
                yield torch.arange(start, start + len(tokens)), tokens, resid, excluded
                progress.advance(task)

    @cached_property
    def token_text(self) -> Callable[[list[int]], list[str]]:
        """Per-token strings as a reader sees them (spaces kept), memoized by token id."""
        cache: dict[int, str] = {}
        tokenizer = self.lm.tokenizer

        def texts(ids: list[int]) -> list[str]:
            for i in ids:
                if i not in cache:
                    cache[i] = tokenizer.decode([i])
            return [cache[i] for i in ids]

        return texts

    # ---------------------------------------------------------------- helpers

    def path(self, name: str) -> Path:
        return self.out_dir / name

    def cached(self, name: str, expected: str) -> bool:
        if not self.force and is_up_to_date(self.path(name), expected):
            self.console.print(f"[green]cached[/green] {name} is up to date ({self.path(name)})")
            return True
        return False


def _check_finite_encoder(key: str, sae) -> None:
    """Non-finite decoder rows are dead features (counted by match); a non-finite encoder cannot encode."""
    tensors = [sae.W_enc, sae.b_enc, sae.b_dec] + ([sae.threshold] if sae.threshold is not None else [])
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors)
    if bad:
        raise FaithcaseError(f"{key} ({sae.path}) has {bad} non-finite values in its encoder weights or biases: "
                             "check the checkpoint")


def _resolved(spec: str | None, base_dir: Path) -> str | None:
    return str(resolve_path(spec, base_dir)) if spec else None


# ================================================================ match


def match_fingerprint(rt: Runtime) -> str:
    return fingerprint("match", rt.cfg.match.model_dump(mode="json"), rt.cfg.hook,
                       {key: [rt.sae_hash(key), getattr(rt.cfg, key).format] for key in SAE_KEYS})


def sae_info(rt: Runtime, key: str) -> SAEInfo:
    sae = rt.sae(key)
    return SAEInfo(path=str(rt.sae_path(key)), format=sae.format, d_in=sae.d_in, d_sae=sae.d_sae,
                   hook_name=sae.hook_name, sha256=rt.sae_hash(key))


def run_match(rt: Runtime) -> MatchArtifact:
    from faithcase.match import match_features, select_pairs

    name, expected = MATCH_FILE, match_fingerprint(rt)
    if rt.cached(name, expected):
        return read_artifact(rt.path(name), MatchArtifact, "match")
    start = time.perf_counter()
    sae1, sae2 = rt.sae("sae1"), rt.sae("sae2")
    settings = rt.cfg.match
    with rt.console.status("matching decoder directions …"):
        result = match_features(sae1.W_dec.float().cpu(), sae2.W_dec.float().cpu(),
                                threshold=settings.threshold, solver=settings.solver)
    selected = select_pairs(result, settings.n_pairs, settings.seed)
    solver = result.solver
    artifact = MatchArtifact(
        meta=Meta(stage="match", fingerprint=expected, seconds=time.perf_counter() - start),
        sae1=sae_info(rt, "sae1"),
        sae2=sae_info(rt, "sae2"),
        stats=MatchStats(threshold=result.threshold, n_alive1=result.n_alive1, n_alive2=result.n_alive2,
                         n_dead1=result.n_dead1, n_dead2=result.n_dead2, n_matched=result.n_matched,
                         shared_ratio=result.shared_ratio, top1_ratio=result.top1_ratio,
                         mean_similarity=result.mean_similarity,
                         histogram=Histogram(edges=list(result.histogram.edges),
                                             counts=list(result.histogram.counts))),
        solver=SolverInfo(name=solver.name, exact=solver.exact, certified=solver.certified,
                          total=solver.total, upper_bound=solver.upper_bound,
                          relative_gap=solver.relative_gap, iterations=solver.iterations,
                          candidate_edges=solver.candidate_edges, seconds=solver.seconds),
        pairs={kind: [Pair(kind=kind, rank=p.rank, index1=p.index1, index2=p.index2, similarity=p.similarity)
                      for p in pairs] for kind, pairs in selected.items()},
        assignment=Assignment(index1=result.index1.tolist(), index2=result.index2.tolist(),
                              similarity=[float(s) for s in result.similarity]),
    )
    write_artifact(rt.path(name), artifact)
    _write_match_plot(rt, artifact)
    return artifact


def _write_match_plot(rt: Runtime, artifact: MatchArtifact) -> None:
    from faithcase.plots import similarity_histogram

    similarity_histogram(artifact.stats, rt.path("match_histogram.png"))


# ================================================================ explain


def explain_feature_fingerprints(rt: Runtime, match: MatchArtifact) -> dict[str, dict[int, str]]:
    settings = rt.cfg.explain.model_dump(mode="json", exclude={"batch_size"})
    common = [settings, rt.model_key(), rt.corpus_key()]
    return {key: {f: fingerprint("explain-feature", *common, rt.sae_hash(key), f) for f in features}
            for key, features in match.selected_features().items()}


def run_explain(rt: Runtime, match: MatchArtifact) -> ExplainArtifact:
    from faithcase import explain

    wanted = explain_feature_fingerprints(rt, match)
    name = EXPLAIN_FILE
    expected = fingerprint("explain", match.meta.fingerprint,
                           {key: sorted(fps.values()) for key, fps in wanted.items()})
    if rt.cached(name, expected):
        return read_artifact(rt.path(name), ExplainArtifact, "explain")
    start = time.perf_counter()
    previous = _previous_explanations(rt) if not rt.force else None
    reuse: dict[str, dict[str, FeatureExplanation]] = {key: {} for key in SAE_KEYS}
    if previous is not None:
        for key, fps in wanted.items():
            for feature, fp in fps.items():
                old = previous.features.get(key, {}).get(str(feature))
                if old is not None and old.fingerprint == fp:
                    reuse[key][str(feature)] = old

    cfg = rt.cfg.explain
    residual_norm, settings, baseline = None, None, None
    if previous is not None and all(len(reuse[k]) == len(wanted[k]) for k in SAE_KEYS):
        settings, baseline = previous.settings, previous.baseline
    features: dict[str, dict[str, FeatureExplanation]] = {}
    for key in SAE_KEYS:
        todo = [f for f in wanted[key] if str(f) not in reuse[key]]
        if reuse[key]:
            rt.console.print(f"[green]cached[/green] explain {key}: {len(reuse[key])} features reused, "
                             f"{len(todo)} to explain")
        features[key] = dict(reuse[key])
        if not todo:
            continue
        sae = rt.sae(key)
        layer = rt.cfg.hook_layer if cfg.insert_layer == "sae" else int(cfg.insert_layer)
        if residual_norm is None:
            residual_norm = _median_residual_norm(rt, layer)
        directions = explain.unit_directions(sae, todo)
        with rt.console.status(f"explaining {len(todo)} features of {key} …"):
            results, baseline, settings = explain.explain_features(
                rt.lm, directions, cfg, residual_norm, sae_layer=rt.cfg.hook_layer,
                fingerprints=wanted[key])
        features[key].update({str(f): r for f, r in results.items()})
    artifact = ExplainArtifact(
        meta=Meta(stage="explain", fingerprint=expected, seconds=time.perf_counter() - start,
                  upstream={MATCH_FILE: match.meta.fingerprint}),
        settings=settings, baseline=baseline,
        features={key: dict(sorted(features[key].items(), key=lambda kv: int(kv[0]))) for key in SAE_KEYS},
    )
    write_artifact(rt.path(name), artifact)
    return artifact


def _previous_explanations(rt: Runtime) -> ExplainArtifact | None:
    path = rt.path(EXPLAIN_FILE)
    if not path.is_file():
        return None
    try:
        return read_artifact(path, ExplainArtifact)
    except FaithcaseError:
        return None


def _median_residual_norm(rt: Runtime, layer: int) -> float:
    """Median residual norm at `blocks.{layer}.hook_resid_pre` on corpus tokens (BOS and outliers excluded)."""
    hook = f"blocks.{layer}.hook_resid_pre"
    norms = []
    for _, _, resid, excluded in rt.activation_batches(rt.sequences(), hook, "measuring residual norm",
                                                       max_batches=4):
        norms.append(resid.float().norm(dim=-1)[~excluded])
    return float(torch.cat(norms).median())


# ================================================================ windows


def windows_fingerprint(rt: Runtime, key: str, features: list[int]) -> str:
    return fingerprint("windows", rt.cfg.windows.model_dump(mode="json"), rt.model_key(), rt.corpus_key(),
                       rt.sae_hash(key), features)


def run_windows(rt: Runtime, match: MatchArtifact) -> dict[str, WindowsArtifact]:
    from faithcase.windows import QUANTILE_METHOD, WindowCollector, collect_windows

    selected = match.selected_features()
    expected = {key: windows_fingerprint(rt, key, selected[key]) for key in SAE_KEYS}
    todo = [key for key in SAE_KEYS if not rt.cached(windows_file(key), expected[key])]
    result = {key: read_artifact(rt.path(windows_file(key)), WindowsArtifact, "windows")
              for key in SAE_KEYS if key not in todo}
    if not todo:
        return result
    start = time.perf_counter()
    w = rt.cfg.windows
    collectors = {key: WindowCollector(rt.sae(key), selected[key], window=w.window, top=w.top,
                                       n_quantiles=w.n_quantiles, per_quantile=w.per_quantile,
                                       n_negative=w.n_negative, reservoir=w.reservoir,
                                       n_hist_bins=w.n_hist_bins, seed=w.seed) for key in todo}
    sequences = rt.sequences()
    batches = rt.activation_batches(sequences, rt.cfg.hook, f"windows of {' + '.join(todo)}")
    found = collect_windows(collectors, batches, rt.token_text)
    for key in todo:
        collector = collectors[key]
        artifact = WindowsArtifact(
            meta=Meta(stage="windows", fingerprint=expected[key], seconds=time.perf_counter() - start,
                      upstream={MATCH_FILE: match.meta.fingerprint}),
            sae=key, n_sequences=collector.n_sequences, n_tokens=collector.n_tokens,
            seq_len=int(collector.seq_len or 0), window=w.window, excluded_positions=collector.n_excluded,
            quantile_method=QUANTILE_METHOD,
            features={str(f): fw for f, fw in sorted(found[key].items())},
        )
        write_artifact(rt.path(windows_file(key)), artifact)
        result[key] = artifact
    return result


# ================================================================ embed


def run_embed(rt: Runtime, match: MatchArtifact, explain_art: ExplainArtifact,
              windows: dict[str, WindowsArtifact]) -> EmbedArtifact:
    from faithcase.embed import baseline_explanations, cross_scores, eleuther, explanation_texts

    upstream = {MATCH_FILE: match.meta.fingerprint, EXPLAIN_FILE: explain_art.meta.fingerprint,
                **{windows_file(k): windows[k].meta.fingerprint for k in SAE_KEYS}}
    e = rt.cfg.embed
    settings = e.model_dump(mode="json", exclude={"batch_size"})
    expected = fingerprint("embed", settings, upstream)
    if rt.cached(EMBED_FILE, expected):
        return read_artifact(rt.path(EMBED_FILE), EmbedArtifact, "embed")
    start = time.perf_counter()
    kwargs = dict(query_template=e.query_template, min_activating=e.min_activating,
                  min_non_activating=e.min_non_activating, n_quantiles=rt.cfg.windows.n_quantiles)
    texts = {key: explanation_texts(explain_art.features[key]) for key in SAE_KEYS}
    with rt.console.status("embedding explanations and contexts …"):
        embedder = rt.embedder
        scores = {key: eleuther(windows[key].features, texts[key], embedder, **kwargs) for key in SAE_KEYS}
        cross = cross_scores(match.all_pairs(), windows["sae1"].features, windows["sae2"].features,
                             texts["sae1"], texts["sae2"], embedder, **kwargs)
        for item in cross:
            item.explanation_similarity = explanation_similarity(
                embedder, texts["sae1"].get(str(item.index1)), texts["sae2"].get(str(item.index2)))
        baseline = None
        if e.baseline:
            baseline = {key: eleuther(windows[key].features, baseline_explanations(windows[key].features),
                                      embedder, **kwargs) for key in SAE_KEYS}
    artifact = EmbedArtifact(
        meta=Meta(stage="embed", fingerprint=expected, seconds=time.perf_counter() - start, upstream=upstream),
        embedder=e.model, query_template=e.query_template, scores=scores, cross=cross, baseline=baseline)
    write_artifact(rt.path(EMBED_FILE), artifact)
    return artifact


def explanation_similarity(embedder, text1: str | None, text2: str | None) -> float | None:
    """Cosine of the two explanations' embeddings (None when either is missing)."""
    if not text1 or not text2:
        return None
    vectors = embedder.embed([text1, text2])
    return float(vectors[0] @ vectors[1])


# ================================================================ assemble and report


def load_all(rt: Runtime) -> tuple:
    match = read_artifact(rt.path(MATCH_FILE), MatchArtifact, "match")
    explain_art = read_artifact(rt.path(EXPLAIN_FILE), ExplainArtifact, "explain")
    windows = {k: read_artifact(rt.path(windows_file(k)), WindowsArtifact, "windows") for k in SAE_KEYS}
    embed = read_artifact(rt.path(EMBED_FILE), EmbedArtifact, "embed")
    return match, explain_art, windows, embed


def check_fresh(rt: Runtime, match: MatchArtifact) -> None:
    """Refuse artifacts made from another config or other SAEs, naming the stage to rerun."""
    if match.meta.fingerprint != match_fingerprint(rt):
        raise FaithcaseError(f"{rt.path(MATCH_FILE)} was made with another config or other SAEs: "
                             "run `faithcase match`")
    selected = match.selected_features()
    for key in SAE_KEYS:
        path = rt.path(windows_file(key))
        if not is_up_to_date(path, windows_fingerprint(rt, key, selected[key])):
            raise FaithcaseError(f"{path} is missing or stale (other config or SAEs): run `faithcase windows`")


def run_assemble(rt: Runtime, out: Path | None = None) -> Path:
    match, explain_art, windows, embed = load_all(rt)
    check_fresh(rt, match)
    config = rt.cfg.model_dump(mode="json")
    cases, summary = assemble_mod.assemble(match, explain_art, windows, embed, config)
    out = out or rt.path(assemble_mod.CASE_STUDY_FILE)
    if not rt.force and is_up_to_date(out.parent / assemble_mod.SUMMARY_FILE, summary.meta.fingerprint) \
            and out.is_file():
        rt.console.print(f"[green]cached[/green] {out.name} is up to date ({out})")
        return out
    cases_path, _ = assemble_mod.write_case_study(out.parent, cases, summary, cases_name=out.name)
    return cases_path


def run_report(rt: Runtime, case_study: Path | None = None) -> Path:
    from faithcase.plots import make_plots
    from faithcase.report import render_report, write_report

    folder = (case_study or rt.path(assemble_mod.CASE_STUDY_FILE)).parent
    cases, summary = assemble_mod.read_case_study(folder, cases_name=(case_study.name if case_study else None))
    index = folder / "report" / "index.html"
    stamp = folder / "report" / ".fingerprint"
    expected = fingerprint("report", summary.meta.fingerprint)
    if not rt.force and index.is_file() and stamp.is_file() and stamp.read_text() == expected:
        rt.console.print(f"[green]cached[/green] report is up to date ({index})")
        return index
    explain_art = read_artifact(rt.path(EXPLAIN_FILE), ExplainArtifact, "explain") \
        if rt.path(EXPLAIN_FILE).is_file() else None
    points = [(c.similarity, c.explanation_similarity, c.kind) for c in cases
              if c.explanation_similarity is not None]
    plots = make_plots(cases, summary, explain_art, points)
    html = render_report(cases, summary, plots, explain_art)
    path = write_report(folder, html, plots)
    stamp.write_text(expected)
    return path


# ================================================================ all stages


def run_pipeline(rt: Runtime, console: Console) -> tuple[Path, Path]:
    """match → explain → windows → embed → assemble → report, each skipped when up to date."""
    steps = ["match", "explain", "windows", "embed", "assemble", "report"]
    results: dict = {}
    for i, step in enumerate(steps, start=1):
        console.rule(f"[bold]{i}/{len(steps)} {step}")
        start = time.perf_counter()
        if step == "match":
            results["match"] = run_match(rt)
        elif step == "explain":
            results["explain"] = run_explain(rt, results["match"])
        elif step == "windows":
            results["windows"] = run_windows(rt, results["match"])
        elif step == "embed":
            results["embed"] = run_embed(rt, results["match"], results["explain"], results["windows"])
        elif step == "assemble":
            results["assemble"] = run_assemble(rt)
        else:
            results["report"] = run_report(rt, results["assemble"])
        console.print(f"{step} done in {time.perf_counter() - start:.1f} s")
    return results["assemble"], results["report"]
