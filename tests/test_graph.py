"""The stage graph: one freshness rule, fingerprints that carry upstream changes, --force on one stage."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from faithcase.run.store import fingerprint, write_json
from faithcase.tools.diff import compare_runs
from faithcase.run.errors import FaithcaseError
from faithcase.run.graph import Graph, Stage
from faithcase.pipeline import PIPELINE


class Context:
    """A toy run: settings per stage, a folder, and a log of the stages that ran."""

    def __init__(self, folder):
        self.folder = folder
        self.settings = {"a": 1, "b": 2, "c": 3}
        self.ran: list[str] = []


def _stage(name: str, inputs: tuple[str, ...]) -> Stage:
    def run(ctx, up, fp):
        ctx.ran.append(name)
        value = ctx.settings[name] + sum(up.values())
        (ctx.folder / f"{name}.txt").write_text(str(value))
        return value

    return Stage(name, inputs, key=lambda ctx: ctx.settings[name], files=lambda ctx: [ctx.folder / f"{name}.txt"],
                 run=run, load=lambda ctx: int((ctx.folder / f"{name}.txt").read_text()))


@pytest.fixture
def toy(tmp_path):
    graph = Graph([_stage("c", ("a", "b")), _stage("a", ()), _stage("b", ("a",))], hasher=fingerprint)
    return graph, Context(tmp_path), tmp_path / "stages.json"


def test_upstream_runs_first_then_everything_is_cached(toy):
    graph, ctx, ledger = toy
    assert graph.order() == ["a", "b", "c"] and graph.upstream_of("c") == ["a", "b"]
    assert graph.run(ctx, ledger).get("c") == 1 + (2 + 1) + 3
    assert ctx.ran == ["a", "b", "c"]
    ctx.ran.clear()
    again = graph.run(ctx, ledger)
    assert again.get("c") == 7 and ctx.ran == [] and again.ran == []
    recorded = orjson.loads(ledger.read_bytes())
    assert set(recorded) == {"a", "b", "c"} and recorded["c"]["fingerprint"] == again.fingerprint("c")


def test_a_change_upstream_reaches_every_stage_downstream(toy):
    graph, ctx, ledger = toy
    graph.run(ctx, ledger).get("c")
    ctx.ran.clear()
    ctx.settings["b"] = 20
    assert graph.run(ctx, ledger).get("c") == 1 + (20 + 1) + 3
    assert ctx.ran == ["b", "c"]  # "a" is reused


def test_a_missing_file_reruns_its_stage_only(toy):
    graph, ctx, ledger = toy
    graph.run(ctx, ledger).get("c")
    ctx.ran.clear()
    (ctx.folder / "b.txt").unlink()
    run = graph.run(ctx, ledger)
    assert run.get("c") == 7 and ctx.ran == []  # c's inputs did not change: it stays up to date
    assert run.get("b") == 3 and ctx.ran == ["b"]


def test_force_reruns_the_stage_asked_for(toy):
    graph, ctx, ledger = toy
    graph.run(ctx, ledger).get("c")
    ctx.ran.clear()
    graph.run(ctx, ledger, force=["c"]).get("c")
    assert ctx.ran == ["c"]
    ctx.ran.clear()
    graph.run(ctx, ledger, force=graph.order(["c"])).get("c")
    assert ctx.ran == ["a", "b", "c"]


def test_a_damaged_ledger_reruns_and_a_stage_that_writes_nothing_is_an_error(toy, tmp_path):
    graph, ctx, ledger = toy
    ledger.write_text("{not json")
    assert graph.run(ctx, ledger).get("a") == 1 and ctx.ran == ["a"]
    lazy = Graph([Stage("x", (), lambda ctx: 0, lambda ctx: [tmp_path / "never.txt"], lambda ctx, up, fp: 1)],
                 hasher=fingerprint)
    with pytest.raises(FaithcaseError, match="did not write"):
        lazy.run(ctx, tmp_path / "other.json").get("x")
    with pytest.raises(ValueError, match="unknown stages"):
        Graph([Stage("y", ("nope",), lambda ctx: 0, lambda ctx: [], lambda ctx, up, fp: 0)], hasher=fingerprint)


def test_the_pipeline_is_declared_once_in_run_order():
    assert PIPELINE.order() == ["match", "scan", "pairs", "explain", "windows", "embed", "assemble", "report"]
    assert PIPELINE.upstream_of("embed") == ["match", "scan", "pairs", "explain", "windows"]


def test_artifacts_honour_the_umask_and_stay_atomic(tmp_path):
    code = ("import os, stat, sys; os.umask(int(sys.argv[2], 8)); from pathlib import Path; "
            "from faithcase.artifacts import write_json; p = Path(sys.argv[1]); write_json(p, {'x': 1}); "
            "print(oct(stat.S_IMODE(p.stat().st_mode)))")
    for umask, mode in (("022", "0o644"), ("077", "0o600"), ("002", "0o664")):
        path = tmp_path / f"a{umask}.json"
        done = subprocess.run([sys.executable, "-c", code, str(path), umask], capture_output=True, text=True, check=True)
        assert done.stdout.strip() == mode and orjson.loads(path.read_bytes()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a002.json", "a022.json", "a077.json"]  # no temp files


def test_compare_runs_ignores_what_only_records_how_a_run_went(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    base = {"meta": {"created": "today", "fingerprint": "x"}, "value": 0.5, "texts": ["a", "b"],
            "nested": {"seconds": 3.0, "path": "/a", "n": 2}}
    write_json(first / "case.json", base)
    write_json(second / "case.json", base | {"meta": {"created": "tomorrow"}, "nested": {"seconds": 9.0, "path": "/b",
                                                                                        "n": 2, "added": 1}})
    assert compare_runs(first, second) == []
    write_json(second / "case.json", base | {"value": 0.5 + 1e-12, "texts": ["a", "c"]})
    assert compare_runs(first, second) == ["case.json.value: 0.5 vs 0.500000000001", "case.json.texts[1]: 'b' vs 'c'"]
    assert compare_runs(first, second, tolerance=1e-9) == ["case.json.texts[1]: 'b' vs 'c'"]
    with pytest.raises(FaithcaseError, match="run folder not found"):
        compare_runs(first, tmp_path / "missing")
