"""The pipeline: the stage modules in order. Each module ends with its declaration (`STAGE`);
a new stage is one new module in `faithcase/stages/` and one line here."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager

from faithcase.run.graph import Graph, GraphRun
from faithcase.run.lock import RunLock
from faithcase.run.store import fingerprint

STAGE_MODULES = ("match", "scan", "pairs", "explain", "windows", "describe", "embed", "assemble",
                 "report")


def stages(modules: tuple[str, ...] = STAGE_MODULES) -> list:
    return [importlib.import_module(f"faithcase.stages.{name}").STAGE for name in modules]


PIPELINE = Graph(stages(), hasher=fingerprint)
STAGES = tuple(PIPELINE.order())


def pipeline_run(rt, force: tuple[str, ...] = (), strict: bool = False,
                 targets: tuple[str, ...] | None = None) -> GraphRun:
    """The graph run; when reaching `targets` (default: every stage) will compute embed, its
    embedder is resolved first, so a missing one fails before any corpus pass."""
    run = PIPELINE.run(rt, rt.ledger_path, force, report=rt.console.print, strict=strict)
    check_embedder(rt, run, targets)
    return run


def check_embedder(rt, run: GraphRun, targets: tuple[str, ...] | None = None) -> None:
    """FaithcaseError (one line) if the embed stage will run and its model cannot load; a
    cached embed stage needs no embedder."""
    if "embed" not in PIPELINE.order(targets):
        return
    if "embed" in run.force or not run.is_fresh("embed"):
        from faithcase.model.embedder import resolve_embedder

        embed = rt.cfg.embed
        resolve_embedder(embed.model, rt.base_dir(), embed.trust_remote_code)


@contextmanager
def open_run(rt, force: tuple[str, ...] = (), strict: bool = False,
             wait: bool = True, targets: tuple[str, ...] | None = None) -> Iterator[GraphRun]:
    """The pipeline's graph run on the Runtime's run folder, holding the folder's lock."""
    with RunLock(rt.out_dir, wait=wait, report=rt.console.print):
        yield pipeline_run(rt, force, strict, targets)
