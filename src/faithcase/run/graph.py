"""A declared graph of cached stages, shared by the pipeline (`pipeline.py`) and the demo build.

Each stage declares its name, its upstream stages, what its fingerprint covers, the files it
writes, how to run it and how to read its result back. `GraphRun.get(name)` runs or reuses the
stages upstream of the one asked for, then that stage.

One freshness rule: a stage is up to date when the ledger (a JSON file beside its outputs) records
the fingerprint the stage would have now, and every file it writes exists. A fingerprint hashes
the stage's own inputs (settings, input file hashes) and the fingerprints of its upstream stages,
so it is known before anything runs and a change upstream reaches every stage downstream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from faithcase.run.errors import FaithcaseError


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]
    key: Callable[[Any], Any]  # ctx -> what the fingerprint covers besides the upstream fingerprints
    files: Callable[[Any], list[Path]]  # ctx -> the files the stage writes
    run: Callable[[Any, dict[str, Any], str], Any]  # (ctx, upstream values, fingerprint) -> value; writes files
    load: Callable[[Any], Any] | None = None  # ctx -> value read back (default: the ledger's note)
    note: Callable[[Any], Any] | None = None  # value -> small JSON kept in the ledger (default: none)
    check: Callable[[Any], None] | None = None  # ctx -> raises on bad settings, before any stage runs


class Ledger:
    """The JSON record of a folder's stages: {stage: {fingerprint, seconds, note}}."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self.entries = orjson.loads(self.path.read_bytes())
            except orjson.JSONDecodeError:
                self.entries = {}  # a damaged ledger only makes every stage rerun

    def fingerprint(self, stage: str) -> str | None:
        return self.entries.get(stage, {}).get("fingerprint")

    def note(self, stage: str) -> Any:
        return self.entries.get(stage, {}).get("note")

    def record(self, stage: str, fingerprint: str, seconds: float, note: Any = None) -> None:
        from faithcase.run.store import write_json

        self.entries[stage] = {"fingerprint": fingerprint, "seconds": round(seconds, 2), "note": note}
        write_json(self.path, self.entries)


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

    def run(self, ctx: Any, ledger: Path, force: Iterable[str] = (), report: Callable[[str], None] | None = None
            ) -> GraphRun:
        return GraphRun(self, ctx, Ledger(ledger), frozenset(force), report or (lambda message: None))


@dataclass
class GraphRun:
    """One use of a graph on one context: fingerprints and values are computed at most once."""

    graph: Graph
    ctx: Any
    ledger: Ledger
    force: frozenset[str]
    report: Callable[[str], None]
    values: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    checked: set[str] = field(default_factory=set)

    def fingerprint(self, name: str) -> str:
        if name not in self.fingerprints:
            stage = self.graph.stages[name]
            upstream = {i: self.fingerprint(i) for i in stage.inputs}
            self.fingerprints[name] = self.graph.hasher(name, stage.key(self.ctx), upstream)
        return self.fingerprints[name]

    def is_fresh(self, name: str) -> bool:
        stage = self.graph.stages[name]
        return (self.ledger.fingerprint(name) == self.fingerprint(name)
                and all(Path(p).exists() for p in stage.files(self.ctx)))

    def check(self, name: str) -> None:
        """Run the settings checks of the stage and everything upstream of it, before anything runs."""
        for upstream in self.graph.order([name]):
            stage = self.graph.stages[upstream]
            if stage.check and upstream not in self.checked:
                stage.check(self.ctx)
                self.checked.add(upstream)

    def get(self, name: str) -> Any:
        """The stage's value: computed this run, read back when up to date, else run (upstream first)."""
        if name in self.values:
            return self.values[name]
        self.check(name)
        stage = self.graph.stages[name]
        if name not in self.force and self.is_fresh(name):
            self.report(f"[green]cached[/green] {name} is up to date")
            value = stage.load(self.ctx) if stage.load else self.ledger.note(name)
        else:
            upstream = {i: self.get(i) for i in stage.inputs}
            start = time.perf_counter()
            value = stage.run(self.ctx, upstream, self.fingerprint(name))
            seconds = time.perf_counter() - start
            missing = [str(p) for p in stage.files(self.ctx) if not Path(p).exists()]
            if missing:
                raise FaithcaseError(f"stage {name} did not write {', '.join(missing)}")
            self.ledger.record(name, self.fingerprint(name), seconds, stage.note(value) if stage.note else None)
            self.ran.append(name)
            self.report(f"{name} done in {seconds:.1f} s")
        self.values[name] = value
        return value
