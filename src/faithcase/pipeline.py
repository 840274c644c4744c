"""The pipeline: the stage modules in order. Each module ends with its declaration (`STAGE`);
a new stage is one new module in `faithcase/stages/` and one line here."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager

from faithcase.run.graph import Graph, GraphRun
from faithcase.run.lock import RunLock
from faithcase.run.store import fingerprint

STAGE_MODULES = ("match", "scan", "known", "pairs", "explain", "windows", "describe", "embed",
                 "assemble", "report")


def stages(modules: tuple[str, ...] = STAGE_MODULES) -> list:
    return [importlib.import_module(f"faithcase.stages.{name}").STAGE for name in modules]


PIPELINE = Graph(stages(), hasher=fingerprint)
STAGES = tuple(PIPELINE.order())


# matrix -> (the studies' pipelines, studies.py) -> compare
MANY_SAES = Graph(stages(("matrix", "compare")), hasher=fingerprint)


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
             wait: bool = True, targets: tuple[str, ...] | None = None,
             graph: Graph | None = None) -> Iterator[GraphRun]:
    """The pipeline's (or `graph`'s) run on the Runtime's run folder, holding the folder's
    lock."""
    force = tuple(force) + split_pass_stages(rt, graph or PIPELINE, targets)
    with RunLock(rt.out_dir, wait=wait, report=rt.console.print):
        if graph is None:
            yield pipeline_run(rt, force, strict, targets)
        else:
            yield graph.run(rt, rt.ledger_path, force, report=rt.console.print, strict=strict)


def split_pass_stages(rt, graph: Graph, targets: tuple[str, ...] | None) -> tuple[str, ...]:
    """Under torchrun, the stages that read the corpus run on every rank together: never cached
    (run/shards.py)."""
    from faithcase.run.errors import FaithcaseError
    from faithcase.run.shards import CORPUS_STAGES, SPLIT_STAGES

    if not rt.shard.split:
        return ()
    order = graph.order(targets)
    other = [name for name in order if name not in SPLIT_STAGES]
    if other:
        corpus = ", ".join(CORPUS_STAGES)
        raise FaithcaseError(f"under torchrun only the corpus stages run ({corpus}); {other[0]} "
                             "would repeat on every rank: run it, or `faithcase run`, in one "
                             "process once they are done")
    return tuple(name for name in order if name in CORPUS_STAGES)
