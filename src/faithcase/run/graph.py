"""A declared graph of cached stages, shared by the pipeline and the demo build.

A stage names its upstream stages, what its fingerprint covers (`key`), how to compute its value
(writing its files through the `Job`) and how to read the value back. `GraphRun.get(name)` runs or
reuses every stage upstream of the one asked for, then that stage.

One freshness rule: a stage is up to date when the ledger (`stages.json` beside its files) records
the fingerprint the stage would have now, and every file it wrote still has the content hash the
ledger recorded. A fingerprint hashes the stage's key and its upstream fingerprints, so it is known
before anything runs and a change upstream reaches every stage downstream.

Whole-stage commits: a stage's files are written under temporary names while it computes; then
its ledger entry is dropped, every file is renamed into place, and the entry is recorded with the
new hashes. A crash anywhere in between leaves the stage stale, never fresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faithcase.run.errors import FaithcaseError
from faithcase.run.store import (
    Ledger,
    StagedFiles,
    read_artifact,
    serialize,
    sha256_file,
)

def failed_stage(err: BaseException) -> str | None:
    """The stage whose computation raised `err` (for the interrupt message), or None."""
    return getattr(err, "faithcase_stage", None)


@dataclass(frozen=True)
class Stage:
    """A stage's whole declaration. Its fingerprint covers `key(ctx)` when given, else what the
    context says of the stage (`ctx.stage_key(stage)`: its config section and the resources it
    uses), and the fingerprints of its inputs."""

    name: str
    compute: Callable[[Job], Any]  # job -> value; files through job.write / job.write_bytes
    inputs: tuple[str, ...] = ()
    section: str | None = None  # its config section
    uses: tuple[str, ...] = ()  # resources of the context its results depend on (model, corpus …)
    artifact: type | None = None  # the model of its one artifact `<name>.json`
    load: Callable[[Job], Any] | None = None  # job -> value read back (default: the artifact)
    printer: Callable[[Any, dict], None] | None = None  # (value, upstream values) -> prints it
    check: Callable[[Any], None] | None = None  # ctx -> raises on bad settings, before any run
    doc: str = ""
    key: Callable[[Any], Any] | None = None  # ctx -> what the fingerprint covers (see above)
    files: Callable[[Any], list[Path]] | None = None  # files the stage writes itself (not staged)
    note: Callable[[Any], Any] | None = None  # value -> small JSON kept in the ledger

    @property
    def file(self) -> str:
        return f"{self.name}.json"

    def read_back(self, job: Job) -> Any:
        if self.load:
            return self.load(job)
        if self.artifact:
            return job.read(self.file, self.artifact)
        return job.note


@dataclass
class Job:
    """One stage's computation: its context, upstream values, fingerprint and staged files."""

    stage: Stage
    ctx: Any
    inputs: dict[str, Any]
    fingerprint: str
    upstream: dict[str, str]  # upstream stage -> fingerprint
    folder: Path
    trusted: Callable[[str], Path | None]  # file name -> its path when unchanged since recorded
    staged: StagedFiles
    note: Any = None  # the ledger's note of the stage's last run
    started: float = field(default_factory=time.perf_counter)

    def write(self, name: str, artifact: Any) -> None:
        """Stage an artifact (pydantic model or JSON-able data); the graph stamps `meta`."""
        if hasattr(artifact, "meta") and hasattr(type(artifact), "model_fields"):
            from faithcase.artifacts import Meta

            artifact.meta = Meta(stage=self.stage.name, fingerprint=self.fingerprint,
                                 upstream=self.upstream, seconds=time.perf_counter() - self.started)
        self.staged.add(self.folder / name, serialize(artifact))

    def write_bytes(self, name: str, payload: bytes) -> None:
        self.staged.add(self.folder / name, payload)

    @property
    def settings(self) -> Any:
        """The stage's config section (the context's `cfg.<section>`)."""
        return getattr(self.ctx.cfg, self.stage.section)

    def read(self, name: str, model: type) -> Any:
        return read_artifact(self.folder / name, model, self.stage.name)

    def previous(self, name: str, model: type) -> Any:
        """The stage's earlier artifact `name`, when unchanged since it was recorded, else None."""
        path = self.trusted(name)
        if path is None:
            return None
        try:
            return read_artifact(path, model)
        except FaithcaseError:
            return None


class Graph:
    def __init__(self, stages: Iterable[Stage], hasher: Callable[..., str]):
        self.stages = {stage.name: stage for stage in stages}
        self.hasher = hasher
        for stage in self.stages.values():
            unknown = [name for name in stage.inputs if name not in self.stages]
            if unknown:
                raise ValueError(f"stage {stage.name} reads unknown stages {unknown}")

    def order(self, targets: Iterable[str] | None = None) -> list[str]:
        """Stage names in a run order (upstream first) covering targets (default: every stage)."""
        seen: list[str] = []

        def visit(name: str) -> None:
            if name not in seen:
                for upstream in self.stages[name].inputs:
                    visit(upstream)
                seen.append(name)

        for name in targets or self.stages:
            visit(name)
        return seen

    def upstream_of(self, name: str) -> list[str]:
        return self.order([name])[:-1]

    def run(self, ctx: Any, ledger: Path, force: Iterable[str] = (),
            report: Callable[[str], None] | None = None, strict: bool = False) -> GraphRun:
        return GraphRun(self, ctx, Ledger(ledger), frozenset(force),
                        report or (lambda message: None), strict)


@dataclass
class GraphRun:
    """One use of a graph on one context: fingerprints and values are computed at most once."""

    graph: Graph
    ctx: Any
    ledger: Ledger
    force: frozenset[str]
    report: Callable[[str], None]
    strict: bool = False  # an edited artifact is an error, not a rerun
    values: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    checked: set[str] = field(default_factory=set)
    freshness: dict[str, bool] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.ledger.path.parent

    def fingerprint(self, name: str) -> str:
        if name not in self.fingerprints:
            stage = self.graph.stages[name]
            upstream = {i: self.fingerprint(i) for i in stage.inputs}
            key = stage.key(self.ctx) if stage.key else self.ctx.stage_key(stage)
            self.fingerprints[name] = self.graph.hasher(name, key, upstream)
        return self.fingerprints[name]

    def is_fresh(self, name: str) -> bool:
        """The ledger records the current fingerprint and every recorded file is unchanged."""
        if name not in self.freshness:
            self.freshness[name] = self._fresh(name)
        return self.freshness[name]

    def _fresh(self, name: str) -> bool:
        if self.ledger.fingerprint(name) != self.fingerprint(name):
            return False
        changed = self.ledger.changed_files(name)
        if changed:
            message = f"{changed[0]} changed since {name} wrote it"
            if self.strict:
                raise FaithcaseError(f"{message}: rerun without --strict to recompute {name}")
            self.report(f"[yellow]stale[/yellow] {name}: {message}; recomputing")
        return not changed

    def files(self, name: str) -> list[Path]:
        """The files the stage wrote, as the ledger records them."""
        return [self.ledger.resolve(f) for f in self.ledger.files(name)]

    def check(self, name: str) -> None:
        """Run the settings checks of the stage and everything upstream of it, before anything
        runs."""
        for upstream in self.graph.order([name]):
            stage = self.graph.stages[upstream]
            if stage.check and upstream not in self.checked:
                stage.check(self.ctx)
                self.checked.add(upstream)

    def verify(self, name: str) -> None:
        """Bring the stage and everything upstream up to date without reading its value."""
        if name in self.values or self.freshness.get(name) is True:
            return
        for upstream in self.graph.stages[name].inputs:
            self.verify(upstream)
        if name in self.force or not self.is_fresh(name):
            self.get(name)

    def get(self, name: str) -> Any:
        """The stage's value: computed this run, read back when it and everything upstream are up
        to date, else run (upstream first)."""
        if name in self.values:
            return self.values[name]
        self.check(name)
        stage = self.graph.stages[name]
        for upstream in stage.inputs:
            self.verify(upstream)
        if name not in self.force and self.is_fresh(name):
            self.report(f"[green]cached[/green] {name} is up to date")
            value = stage.read_back(self._job(stage, {}))
        else:
            value = self._compute(stage, {i: self.get(i) for i in stage.inputs})
        self.values[name] = value
        return value

    def _job(self, stage: Stage, inputs: dict[str, Any]) -> Job:
        forced = stage.name in self.force
        return Job(stage=stage, ctx=self.ctx, inputs=inputs,
                   fingerprint=self.fingerprint(stage.name),
                   upstream={i: self.fingerprint(i) for i in stage.inputs}, folder=self.folder,
                   trusted=lambda file: None if forced else self.ledger.trusted(stage.name, file),
                   staged=StagedFiles(), note=self.ledger.note(stage.name))

    def _compute(self, stage: Stage, inputs: dict[str, Any]) -> Any:
        job = self._job(stage, inputs)
        try:
            value = stage.compute(job)
            own = [Path(p) for p in stage.files(self.ctx)] if stage.files else []
            missing = [str(p) for p in own if not p.exists()]
            if missing:
                raise FaithcaseError(f"stage {stage.name} did not write {', '.join(missing)}")
            self.ledger.forget(stage.name)
            hashes = job.staged.commit() | {p: sha256_file(p) for p in own}
        except BaseException as err:
            job.staged.discard()
            if failed_stage(err) is None:
                err.faithcase_stage = stage.name
            raise
        seconds = time.perf_counter() - job.started
        self.ledger.record(stage.name, job.fingerprint, seconds, hashes,
                           stage.note(value) if stage.note else None)
        self.ran.append(stage.name)
        self.freshness[stage.name] = True
        self.report(f"{stage.name} done in {seconds:.1f} s")
        return value
