"""The pipeline, declared once: match → scan → pairs → explain, windows → embed → assemble → report.

Each stage below names its upstream stages, what its fingerprint covers and the files it writes;
its runner calls the public function of the stage (`faithcase.match`, `scan`, `select_pairs`,
`explain`, `top_activated_windows`, `eleuther` via `embed_case_study`, `assemble`) and writes the
artifact. Every command asks `PIPELINE` for a stage through `pipeline_run`; the graph
(`graph.py`) reuses what is up to date.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from faithcase.artifacts import (
    CASE_STUDY_FILE,
    EMBED_FILE,
    EXPLAIN_FILE,
    MATCH_FILE,
    MATCH_PLOT,
    PAIRS_FILE,
    REPORT_INDEX,
    SAE_KEYS,
    SCAN_FILE,
    SUMMARY_FILE,
    EmbedArtifact,
    ExplainArtifact,
    FeatureExplanation,
    MatchArtifact,
    Meta,
    PairsArtifact,
    ScanArtifact,
    WindowsArtifact,
    windows_file,
)
from faithcase.run.store import fingerprint, read_artifact, write_artifact
from faithcase.run.errors import FaithcaseError
from faithcase.run.graph import Graph, GraphRun, Stage
from faithcase.run.runtime import Runtime


def _meta(stage: str, fp: str, start: float, upstream: dict[str, Any] | None = None) -> Meta:
    return Meta(stage=stage, fingerprint=fp, seconds=time.perf_counter() - start,
                upstream={name: value.meta.fingerprint for name, value in (upstream or {}).items()})


# ================================================================ match


def _match_key(rt: Runtime) -> Any:
    return [rt.cfg.match.model_dump(mode="json", include={"threshold", "solver"}), rt.cfg.hook,
            {key: [rt.sae_hash(key), getattr(rt.cfg, key).format] for key in SAE_KEYS}]


def _run_match(rt: Runtime, up: dict, fp: str) -> MatchArtifact:
    from faithcase.stages.match import match
    from faithcase.render.plots import similarity_histogram

    start = time.perf_counter()
    sae1, sae2 = rt.sae("sae1"), rt.sae("sae2")
    with rt.console.status("matching decoder directions …"):
        artifact = match(sae1, sae2, rt.cfg.match, sae_infos=(rt.sae_info("sae1"), rt.sae_info("sae2")))
    artifact.meta = _meta("match", fp, start)
    write_artifact(rt.path(MATCH_FILE), artifact)
    similarity_histogram(artifact.stats, rt.path(MATCH_PLOT))
    return artifact


# ================================================================ scan


def _scan_key(rt: Runtime) -> Any:
    return [rt.cfg.scan.model_dump(mode="json", exclude={"strict"}), rt.model_key(), rt.corpus_key()]


def _run_scan(rt: Runtime, up: dict, fp: str) -> ScanArtifact:
    from faithcase.stages.scan import scan

    start = time.perf_counter()
    match: MatchArtifact = up["match"]
    saes = {key: rt.sae_for_model(key) for key in SAE_KEYS}
    artifact = scan(saes, match.assignment, rt.activation_batches(description="scan: load check and agreement"),
                    rt.cfg.scan, rt.cfg.hook)
    for key, quality in artifact.quality.items():
        rt.console.print(f"load check {key}: FVU {quality.fvu:.3f}, L0 {quality.l0:.1f}"
                         + (f" (k={quality.k})" if quality.k else "") + f", {quality.n_silent} features never fire")
    warnings = [w for quality in artifact.quality.values() for w in quality.warnings]
    for warning in warnings:
        rt.console.print(f"[bold red]warning:[/bold red] {warning}", highlight=False, soft_wrap=True)
    if warnings and rt.cfg.scan.strict:
        raise FaithcaseError(f"{warnings[0]} (--strict)")
    artifact.meta = _meta("scan", fp, start, {MATCH_FILE: match})
    write_artifact(rt.path(SCAN_FILE), artifact)
    return artifact


# ================================================================ pairs


def _check_pairs(rt: Runtime) -> None:
    """Selection sizes the matching cannot fill fail before any corpus pass."""
    from faithcase.stages.match import dead_rows
    from faithcase.stages.pairs import check_selection

    alive = [int((~dead_rows(rt.sae(key).W_dec.float().cpu())).sum()) for key in SAE_KEYS]
    check_selection(min(alive), rt.cfg.match)


def _run_pairs(rt: Runtime, up: dict, fp: str) -> PairsArtifact:
    from faithcase.stages.pairs import select_pairs

    start = time.perf_counter()
    match, scan = up["match"], up["scan"]
    artifact = select_pairs(match.assignment, rt.cfg.match, scan.firing)
    n_pairs, n_stratified = rt.cfg.match.n_pairs, rt.cfg.match.n_stratified
    for kind, count in (("worst", n_pairs), ("random", n_pairs), ("stratified", n_stratified)):
        if len(artifact.pairs[kind]) < count:
            rt.console.print(f"[yellow]only {len(artifact.pairs[kind])} {kind} pairs[/yellow] of {count}: "
                             f"{artifact.n_eligible} matched pairs have two firing features")
    artifact.meta = _meta("pairs", fp, start, {MATCH_FILE: match, SCAN_FILE: scan})
    write_artifact(rt.path(PAIRS_FILE), artifact)
    return artifact


# ================================================================ explain


FAILURE_TEST = {"n_null", "null_quantile", "failed_selfsim"}  # settings of the failure test alone


def _explain_key(rt: Runtime) -> list:
    return [rt.cfg.explain.model_dump(mode="json", exclude={"batch_size"}), rt.model_key(), rt.corpus_key()]


def explain_feature_fingerprints(rt: Runtime, pairs: PairsArtifact) -> dict[str, dict[int, str]]:
    """Per feature: what its explanation depends on (settings, model, corpus, SAE files, index)."""
    common = [rt.cfg.explain.model_dump(mode="json", exclude={"batch_size"} | FAILURE_TEST), rt.model_key(),
              rt.corpus_key()]
    return {key: {f: fingerprint("explain-feature", *common, rt.sae_hash(key), f) for f in features}
            for key, features in pairs.selected_features().items()}


def _null_key(rt: Runtime) -> str:
    return fingerprint("explain-null", rt.cfg.explain.model_dump(mode="json", exclude={"batch_size", "null_quantile",
                                                                                     "failed_selfsim"}),
                       rt.model_key(), rt.corpus_key())


def _run_explain(rt: Runtime, up: dict, fp: str) -> ExplainArtifact:
    """Explains the features no earlier explain.json holds with the same per-feature fingerprint, and
    reuses its null distribution when the failure test's settings are the same."""
    from faithcase.stages import explain as ex
    from faithcase.model.prompt import build_prompt

    start = time.perf_counter()
    cfg = rt.cfg.explain
    pairs: PairsArtifact = up["pairs"]
    wanted = explain_feature_fingerprints(rt, pairs)
    previous = None if "explain" in rt.forced else _previous_explanations(rt)
    features: dict[str, dict[str, FeatureExplanation]] = {key: {} for key in SAE_KEYS}
    for key, fps in wanted.items():
        for feature, feature_fp in fps.items():
            old = previous.features.get(key, {}).get(str(feature)) if previous else None
            if old is not None and old.fingerprint == feature_fp:
                features[key][str(feature)] = old
    todo = {key: [f for f in wanted[key] if str(f) not in features[key]] for key in SAE_KEYS}
    for key in SAE_KEYS:
        if features[key]:
            rt.console.print(f"[green]cached[/green] explain {key}: {len(features[key])} features reused, "
                             f"{len(todo[key])} to explain")
    todo = {key: todo[key] for key in SAE_KEYS if todo[key]}
    null_key = _null_key(rt)
    null = previous.null if previous and previous.null and previous.null.key == null_key else None
    compute_null = null is None and ex.needs_null(cfg)
    norm = rt.residual_norm(ex.insert_layer(cfg, rt.cfg.hook_layer)) if compute_null or todo else None
    if compute_null:
        insert, read = ex.resolve_layers(rt.lm, cfg, rt.cfg.hook_layer)
        with rt.console.status(f"sweeping {cfg.n_null} random directions (the failure test's null) …"):
            null = ex.null_distribution(rt.lm, build_prompt(rt.lm, cfg), cfg, norm, insert, read, null_key)
    if todo:
        with rt.console.status(f"explaining {sum(map(len, todo.values()))} features …"):
            fresh = ex.explain(rt.lm, {key: rt.sae_for_model(key) for key in todo}, todo, cfg, norm,
                               sae_layer=rt.cfg.hook_layer, fingerprints=wanted, null=null)
        settings, baseline = fresh.settings, fresh.baseline
        for key, explained in fresh.features.items():
            features[key].update(explained)
    else:
        settings, baseline = previous.settings, previous.baseline
    threshold, source = ex.failure_threshold(cfg, null)
    for explained in features.values():
        for feature in explained.values():
            feature.failed = ex.is_failed(feature.best_selfsim, threshold)
    artifact = ExplainArtifact(
        meta=_meta("explain", fp, start, {PAIRS_FILE: pairs}), settings=settings, baseline=baseline, null=null,
        threshold=threshold, threshold_source=source,
        features={key: dict(sorted(features[key].items(), key=lambda kv: int(kv[0]))) for key in SAE_KEYS})
    write_artifact(rt.path(EXPLAIN_FILE), artifact)
    return artifact


def _previous_explanations(rt: Runtime) -> ExplainArtifact | None:
    try:
        return read_artifact(rt.path(EXPLAIN_FILE), ExplainArtifact)
    except FaithcaseError:
        return None


# ================================================================ windows


def _windows_key(rt: Runtime) -> Any:
    return [rt.cfg.windows.model_dump(mode="json"), rt.model_key(), rt.corpus_key()]


def _run_windows(rt: Runtime, up: dict, fp: str) -> dict[str, WindowsArtifact]:
    from faithcase.stages.windows import top_activated_windows

    start = time.perf_counter()
    pairs: PairsArtifact = up["pairs"]
    found = top_activated_windows({key: rt.sae_for_model(key) for key in SAE_KEYS}, pairs.selected_features(),
                                  rt.activation_batches(description="windows of sae1 + sae2"),
                                  settings=rt.cfg.windows, token_text=rt.token_text)
    for key, artifact in found.items():
        artifact.meta = _meta("windows", fp, start, {PAIRS_FILE: pairs})
        write_artifact(rt.path(windows_file(key)), artifact)
    return found


def _load_windows(rt: Runtime) -> dict[str, WindowsArtifact]:
    return {key: read_artifact(rt.path(windows_file(key)), WindowsArtifact, "windows") for key in SAE_KEYS}


# ================================================================ embed


def _run_embed(rt: Runtime, up: dict, fp: str) -> EmbedArtifact:
    from faithcase.stages.embed import embed_case_study

    start = time.perf_counter()
    pairs, explain_art, windows = up["pairs"], up["explain"], up["windows"]
    with rt.console.status("embedding explanations and contexts …"):
        artifact = embed_case_study(pairs.all_pairs(), explain_art, windows, rt.embedder, rt.cfg.embed,
                                    rt.cfg.windows.n_quantiles)
    artifact.meta = _meta("embed", fp, start, {PAIRS_FILE: pairs, EXPLAIN_FILE: explain_art,
                                               **{windows_file(k): windows[k] for k in SAE_KEYS}})
    write_artifact(rt.path(EMBED_FILE), artifact)
    return artifact


# ================================================================ assemble and report


def _run_assemble(rt: Runtime, up: dict, fp: str):
    from faithcase.stages.assemble import assemble, write_case_study

    cases, summary = assemble(up["match"], up["scan"], up["pairs"], up["explain"], up["windows"], up["embed"],
                              rt.cfg.model_dump(mode="json"), summary_fingerprint=fp)
    write_case_study(rt.out_dir, cases, summary)
    return cases, summary


def _load_case_study(rt: Runtime):
    from faithcase.stages.assemble import read_case_study

    return read_case_study(rt.out_dir)


def _run_report(rt: Runtime, up: dict, fp: str) -> Path:
    from faithcase.stages.report import build_report

    cases, summary = up["assemble"]
    background = (up["match"].assignment.similarity, up["scan"].agreement.pearson)
    return build_report(rt.out_dir, cases, summary, up["explain"], background)


def _artifact(name: str, model: type, stage: str):
    return lambda rt: read_artifact(rt.path(name), model, stage)


def _files(*names: str):
    return lambda rt: [rt.path(name) for name in names]


PIPELINE = Graph([
    Stage("match", (), _match_key, _files(MATCH_FILE, MATCH_PLOT), _run_match,
          _artifact(MATCH_FILE, MatchArtifact, "match")),
    Stage("scan", ("match",), _scan_key, _files(SCAN_FILE), _run_scan, _artifact(SCAN_FILE, ScanArtifact, "scan")),
    Stage("pairs", ("match", "scan"), lambda rt: rt.cfg.match.model_dump(mode="json", include=set(rt.cfg.match.SELECTION)),
          _files(PAIRS_FILE), _run_pairs, _artifact(PAIRS_FILE, PairsArtifact, "pairs"), check=_check_pairs),
    Stage("explain", ("pairs",), _explain_key, _files(EXPLAIN_FILE), _run_explain,
          _artifact(EXPLAIN_FILE, ExplainArtifact, "explain")),
    Stage("windows", ("pairs",), _windows_key, _files(*map(windows_file, SAE_KEYS)), _run_windows, _load_windows),
    Stage("embed", ("pairs", "explain", "windows"), lambda rt: rt.cfg.embed.model_dump(mode="json",
          exclude={"batch_size"}), _files(EMBED_FILE), _run_embed, _artifact(EMBED_FILE, EmbedArtifact, "embed")),
    Stage("assemble", ("match", "scan", "pairs", "explain", "windows", "embed"), lambda rt: rt.cfg.model_dump(mode="json"),
          _files(CASE_STUDY_FILE, SUMMARY_FILE), _run_assemble, _load_case_study),
    Stage("report", ("assemble", "match", "scan", "explain"), lambda rt: None, _files(REPORT_INDEX), _run_report,
          lambda rt: rt.path(REPORT_INDEX)),
], hasher=fingerprint)
STAGES = tuple(PIPELINE.order())


def pipeline_run(rt: Runtime, force: tuple[str, ...] = ()) -> GraphRun:
    rt.forced = set(force)  # a forced explain reuses no earlier explanation
    return PIPELINE.run(rt, rt.ledger_path, force, report=rt.console.print)
