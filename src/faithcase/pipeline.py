"""The pipeline, declared once: match → explain, windows → embed → assemble → report.

Each stage below names its upstream stages, what its fingerprint covers and the files it writes;
its runner calls the public function of the stage (`faithcase.match`, `explain`,
`top_activated_windows`, `eleuther`, `assemble`) and writes the artifact. Every command asks
`PIPELINE` for a stage through `pipeline_run`; the graph (`graph.py`) reuses what is up to date.
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
    REPORT_INDEX,
    SAE_KEYS,
    SUMMARY_FILE,
    EmbedArtifact,
    ExplainArtifact,
    FeatureExplanation,
    MatchArtifact,
    Meta,
    WindowsArtifact,
    fingerprint,
    read_artifact,
    windows_file,
    write_artifact,
)
from faithcase.errors import FaithcaseError
from faithcase.graph import Graph, GraphRun, Stage
from faithcase.runtime import Runtime


def _meta(stage: str, fp: str, start: float, upstream: dict[str, Any] | None = None) -> Meta:
    return Meta(stage=stage, fingerprint=fp, seconds=time.perf_counter() - start,
                upstream={name: value.meta.fingerprint for name, value in (upstream or {}).items()})


# ================================================================ match


def _match_key(rt: Runtime) -> Any:
    return [rt.cfg.match.model_dump(mode="json"), rt.cfg.hook,
            {key: [rt.sae_hash(key), getattr(rt.cfg, key).format] for key in SAE_KEYS}]


def _run_match(rt: Runtime, up: dict, fp: str) -> MatchArtifact:
    from faithcase.stages.match import match
    from faithcase.stages.plots import similarity_histogram

    start = time.perf_counter()
    sae1, sae2 = rt.sae("sae1"), rt.sae("sae2")
    with rt.console.status("matching decoder directions …"):
        artifact = match(sae1, sae2, rt.cfg.match, sae_infos=(rt.sae_info("sae1"), rt.sae_info("sae2")))
    artifact.meta = _meta("match", fp, start)
    write_artifact(rt.path(MATCH_FILE), artifact)
    similarity_histogram(artifact.stats, rt.path(MATCH_PLOT))
    return artifact


# ================================================================ explain


def _explain_key(rt: Runtime) -> list:
    return [rt.cfg.explain.model_dump(mode="json", exclude={"batch_size"}), rt.model_key(), rt.corpus_key()]


def explain_feature_fingerprints(rt: Runtime, match: MatchArtifact) -> dict[str, dict[int, str]]:
    """Per feature: what its explanation depends on (settings, model, corpus, SAE files, index)."""
    common = _explain_key(rt)
    return {key: {f: fingerprint("explain-feature", *common, rt.sae_hash(key), f) for f in features}
            for key, features in match.selected_features().items()}


def _run_explain(rt: Runtime, up: dict, fp: str) -> ExplainArtifact:
    """Explains the features no earlier explain.json holds with the same per-feature fingerprint."""
    from faithcase.stages.explain import explain, insert_layer

    start = time.perf_counter()
    match: MatchArtifact = up["match"]
    wanted = explain_feature_fingerprints(rt, match)
    previous = _previous_explanations(rt)
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
    if todo:
        norm = rt.residual_norm(insert_layer(rt.cfg.explain, rt.cfg.hook_layer))
        with rt.console.status(f"explaining {sum(map(len, todo.values()))} features …"):
            fresh = explain(rt.lm, {key: rt.sae(key) for key in todo}, todo, rt.cfg.explain, norm,
                            sae_layer=rt.cfg.hook_layer, fingerprints=wanted)
        settings, baseline = fresh.settings, fresh.baseline
        for key, explained in fresh.features.items():
            features[key].update(explained)
    else:
        settings, baseline = previous.settings, previous.baseline
    artifact = ExplainArtifact(
        meta=_meta("explain", fp, start, {MATCH_FILE: match}), settings=settings, baseline=baseline,
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
    match: MatchArtifact = up["match"]
    found = top_activated_windows({key: rt.sae(key) for key in SAE_KEYS}, match.selected_features(),
                                  rt.activation_batches(description="windows of sae1 + sae2"),
                                  settings=rt.cfg.windows, token_text=rt.token_text)
    for key, artifact in found.items():
        artifact.meta = _meta("windows", fp, start, {MATCH_FILE: match})
        write_artifact(rt.path(windows_file(key)), artifact)
    return found


def _load_windows(rt: Runtime) -> dict[str, WindowsArtifact]:
    return {key: read_artifact(rt.path(windows_file(key)), WindowsArtifact, "windows") for key in SAE_KEYS}


# ================================================================ embed


def _run_embed(rt: Runtime, up: dict, fp: str) -> EmbedArtifact:
    from faithcase.stages.embed import embed_case_study

    start = time.perf_counter()
    match, explain_art, windows = up["match"], up["explain"], up["windows"]
    with rt.console.status("embedding explanations and contexts …"):
        artifact = embed_case_study(match.all_pairs(), explain_art, windows, rt.embedder, rt.cfg.embed,
                                    rt.cfg.windows.n_quantiles)
    artifact.meta = _meta("embed", fp, start, {MATCH_FILE: match, EXPLAIN_FILE: explain_art,
                                               **{windows_file(k): windows[k] for k in SAE_KEYS}})
    write_artifact(rt.path(EMBED_FILE), artifact)
    return artifact


# ================================================================ assemble and report


def _run_assemble(rt: Runtime, up: dict, fp: str):
    from faithcase.stages.assemble import assemble, write_case_study

    cases, summary = assemble(up["match"], up["explain"], up["windows"], up["embed"],
                              rt.cfg.model_dump(mode="json"), summary_fingerprint=fp)
    write_case_study(rt.out_dir, cases, summary)
    return cases, summary


def _load_case_study(rt: Runtime):
    from faithcase.stages.assemble import read_case_study

    return read_case_study(rt.out_dir)


def _run_report(rt: Runtime, up: dict, fp: str) -> Path:
    from faithcase.stages.report import build_report

    cases, summary = up["assemble"]
    return build_report(rt.out_dir, cases, summary, _previous_explanations(rt))


def _artifact(name: str, model: type, stage: str):
    return lambda rt: read_artifact(rt.path(name), model, stage)


def _files(*names: str):
    return lambda rt: [rt.path(name) for name in names]


PIPELINE = Graph([
    Stage("match", (), _match_key, _files(MATCH_FILE, MATCH_PLOT), _run_match,
          _artifact(MATCH_FILE, MatchArtifact, "match")),
    Stage("explain", ("match",), _explain_key, _files(EXPLAIN_FILE), _run_explain, _artifact(EXPLAIN_FILE, ExplainArtifact, "explain")),
    Stage("windows", ("match",), _windows_key, _files(*map(windows_file, SAE_KEYS)), _run_windows, _load_windows),
    Stage("embed", ("match", "explain", "windows"), lambda rt: rt.cfg.embed.model_dump(mode="json",
          exclude={"batch_size"}), _files(EMBED_FILE), _run_embed, _artifact(EMBED_FILE, EmbedArtifact, "embed")),
    Stage("assemble", ("match", "explain", "windows", "embed"), lambda rt: rt.cfg.model_dump(mode="json"),
          _files(CASE_STUDY_FILE, SUMMARY_FILE), _run_assemble, _load_case_study),
    Stage("report", ("assemble",), lambda rt: None, _files(REPORT_INDEX), _run_report,
          lambda rt: rt.path(REPORT_INDEX)),
], hasher=fingerprint)
STAGES = tuple(PIPELINE.order())


def pipeline_run(rt: Runtime, force: tuple[str, ...] = ()) -> GraphRun:
    return PIPELINE.run(rt, rt.ledger_path, force, report=rt.console.print)
