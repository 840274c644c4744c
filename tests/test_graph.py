"""The stage graph: one freshness rule (fingerprint + content hashes), whole-stage commits,
fingerprints that carry upstream changes, --force on one stage, the run lock."""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys
import threading
import time

import orjson
import pytest

from faithcase.pipeline import PIPELINE
from faithcase.run.errors import FaithcaseError
from faithcase.run.graph import Graph, Stage
from faithcase.run.lock import RunLock
from faithcase.run.store import fingerprint, sha256_file, write_json
from faithcase.tools.diff import compare_runs


class Context:
    """A toy run: settings per stage and a log of the stages that ran."""

    def __init__(self):
        self.settings = {"a": 1, "b": 2, "c": 3}
        self.ran: list[str] = []


def _stage(name: str, inputs: tuple[str, ...], n_files: int = 1) -> Stage:
    def compute(job):
        job.ctx.ran.append(name)
        value = job.ctx.settings[name] + sum(job.inputs.values())
        for i in range(n_files):
            job.write(f"{name}{i}.json", {"value": value, "part": i})
        return value

    return Stage(name, compute, inputs, key=lambda ctx: ctx.settings[name],
                 load=lambda job: job.read(f"{name}0.json", dict)["value"])


@pytest.fixture
def toy(tmp_path):
    graph = Graph([_stage("c", ("a", "b"), n_files=2), _stage("a", ()), _stage("b", ("a",))],
                  hasher=fingerprint)
    return graph, Context(), tmp_path / "stages.json"


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
    for name, entry in recorded.items():  # each file's content hash, as sha256sum computes it
        for file, digest in entry["files"].items():
            assert sha256_file(ledger.parent / file) == digest


def test_a_change_upstream_reaches_every_stage_downstream(toy):
    graph, ctx, ledger = toy
    graph.run(ctx, ledger).get("c")
    ctx.ran.clear()
    ctx.settings["b"] = 20
    assert graph.run(ctx, ledger).get("c") == 1 + (20 + 1) + 3
    assert ctx.ran == ["b", "c"]  # "a" is reused


def test_a_missing_or_edited_file_reruns_its_stage_only(toy):
    graph, ctx, ledger = toy
    graph.run(ctx, ledger).get("c")
    ctx.ran.clear()
    (ledger.parent / "b0.json").unlink()
    run = graph.run(ctx, ledger)
    assert run.get("c") == 7 and ctx.ran == ["b"]  # b is rewritten; c, with the same inputs, is not
    assert run.get("b") == 3 and ctx.ran == ["b"]
    ctx.ran.clear()
    write_json(ledger.parent / "c1.json", {"value": -777, "part": 1})  # a hand edit
    notes: list[str] = []
    assert graph.run(ctx, ledger, report=notes.append).get("c") == 7 and ctx.ran == ["c"]
    assert any("c1.json changed since c wrote it" in note for note in notes), notes
    assert orjson.loads((ledger.parent / "c1.json").read_bytes())["value"] == 7


def test_strict_refuses_an_edited_artifact(toy):
    graph, ctx, ledger = toy
    graph.run(ctx, ledger).get("c")
    write_json(ledger.parent / "a0.json", {"value": 5, "part": 0})
    with pytest.raises(FaithcaseError, match="a0.json changed since a wrote it"):
        graph.run(ctx, ledger, strict=True).get("c")


def test_force_reruns_the_stage_asked_for(toy):
    graph, ctx, ledger = toy
    graph.run(ctx, ledger).get("c")
    ctx.ran.clear()
    graph.run(ctx, ledger, force=["c"]).get("c")
    assert ctx.ran == ["c"]
    ctx.ran.clear()
    graph.run(ctx, ledger, force=graph.order(["c"])).get("c")
    assert ctx.ran == ["a", "b", "c"]


def test_a_crash_between_the_renames_of_a_stage_leaves_it_stale(toy, monkeypatch):
    graph, ctx, ledger = toy
    graph.run(ctx, ledger).get("c")
    ctx.settings["c"] = 30
    real_replace, calls = os.replace, []

    def crash_on_the_second_file(src, dst):
        calls.append(dst)
        if str(dst).endswith("c1.json"):
            raise KeyboardInterrupt  # a kill between c0.json and c1.json
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        graph.run(ctx, ledger).get("c")
    monkeypatch.setattr(os, "replace", real_replace)
    parts = [orjson.loads((ledger.parent / f"c{i}.json").read_bytes())["value"] for i in (0, 1)]
    assert parts == [1 + 3 + 30, 7]  # the folder holds a half-committed stage …
    assert "c" not in orjson.loads(ledger.read_bytes())  # … which the ledger does not call fresh
    assert not [p for p in ledger.parent.iterdir() if p.name.endswith(".tmp")]  # nor leaves temps
    ctx.ran.clear()
    assert graph.run(ctx, ledger).get("c") == 34 and ctx.ran == ["c"]
    assert [orjson.loads((ledger.parent / f"c{i}.json").read_bytes())["value"] for i in (0, 1)] == [34, 34]


def test_previous_artifacts_are_offered_only_when_unchanged(tmp_path):
    seen = []

    def compute(job):
        seen.append(job.previous("p.json", dict))
        job.write("p.json", {"n": len(seen)})
        return len(seen)

    graph = Graph([Stage("p", compute, key=lambda ctx: ctx["k"])], hasher=fingerprint)
    ledger = tmp_path / "stages.json"
    graph.run({"k": 1}, ledger).get("p")
    graph.run({"k": 2}, ledger).get("p")  # settings changed: the earlier file is still trusted
    write_json(tmp_path / "p.json", {"n": 99})
    graph.run({"k": 3}, ledger).get("p")  # an edited file is not
    graph.run({"k": 3}, ledger, force=["p"]).get("p")  # nor anything under --force
    assert seen == [None, {"n": 1}, None, None]


def test_a_damaged_ledger_reruns_and_bad_declarations_are_errors(toy, tmp_path):
    graph, ctx, ledger = toy
    ledger.write_text("{not json")
    assert graph.run(ctx, ledger).get("a") == 1 and ctx.ran == ["a"]
    lazy = Graph([Stage("x", lambda job: 1, files=lambda ctx: [tmp_path / "never.txt"],
                        key=lambda ctx: 0)], hasher=fingerprint)
    with pytest.raises(FaithcaseError, match="did not write"):
        lazy.run(ctx, tmp_path / "other.json").get("x")
    with pytest.raises(ValueError, match="unknown stages"):
        Graph([Stage("y", lambda job: 0, ("nope",))], hasher=fingerprint)


def test_a_second_writer_waits_for_the_lock(tmp_path):
    """Waiting; failing at once instead (--no-wait): test_run_folder, through the command."""
    messages: list[str] = []
    with RunLock(tmp_path):
        order: list[str] = []

        def second():
            with RunLock(tmp_path, report=messages.append):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        order.append("first done")
    thread.join(10)
    assert order == ["first done", "second"]
    assert messages and f"waiting for the run in progress (pid {os.getpid()})" in messages[0]


def test_the_lock_removes_leftover_temporary_files_only(tmp_path):
    (tmp_path / "report").mkdir()
    leftovers = [tmp_path / ".case_study.json.ab12cd_9.tmp", tmp_path / "report" / ".index.html.zz99yy00.tmp"]
    kept = [tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / "case_study.json"]
    for path in leftovers + kept:
        path.write_text("x")
    with RunLock(tmp_path):
        pass
    assert [p.exists() for p in leftovers] == [False, False] and all(p.exists() for p in kept)


def test_the_pipeline_is_declared_once_in_run_order():
    assert PIPELINE.order() == ["match", "scan", "known", "pairs", "explain", "windows",
                                "describe", "embed", "assemble", "report"]
    assert PIPELINE.upstream_of("embed") == ["match", "scan", "pairs", "known", "explain",
                                             "windows", "describe"]


def test_artifacts_honour_the_umask_and_stay_atomic(tmp_path):
    code = ("import os, stat, sys; os.umask(int(sys.argv[2], 8)); from pathlib import Path; "
            "from faithcase.run.store import write_json; p = Path(sys.argv[1]); "
            "write_json(p, {'x': 1}); print(oct(stat.S_IMODE(p.stat().st_mode)))")
    for umask, mode in (("022", "0o644"), ("077", "0o600"), ("002", "0o664")):
        path = tmp_path / f"a{umask}.json"
        done = subprocess.run([sys.executable, "-c", code, str(path), umask], capture_output=True,
                              text=True, check=True)
        assert done.stdout.strip() == mode and orjson.loads(path.read_bytes()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a002.json", "a022.json", "a077.json"]


def test_compare_runs_ignores_what_only_records_how_a_run_went(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    base = {"meta": {"created": "today", "fingerprint": "x"}, "value": 0.5, "texts": ["a", "b"],
            "nested": {"seconds": 3.0, "path": "/a", "n": 2}}
    write_json(first / "case.json", base)
    write_json(second / "case.json", base | {"meta": {"created": "tomorrow"},
                                             "nested": {"seconds": 9.0, "path": "/b", "n": 2,
                                                        "added": 1}})
    assert compare_runs(first, second) == []
    write_json(second / "case.json", base | {"value": 0.5 + 1e-12, "texts": ["a", "c"]})
    assert compare_runs(first, second) == ["case.json.value: 0.5 vs 0.500000000001",
                                           "case.json.texts[1]: 'b' vs 'c'"]
    assert compare_runs(first, second, tolerance=1e-9) == ["case.json.texts[1]: 'b' vs 'c'"]
    with pytest.raises(FaithcaseError, match="run folder not found"):
        compare_runs(first, tmp_path / "missing")


def _consistent(folder) -> None:
    """Every stage the ledger calls fresh holds exactly the files, and the values, it recorded."""
    ledger = orjson.loads((folder / "stages.json").read_bytes())
    for name, entry in ledger.items():
        values = set()
        for file, digest in entry["files"].items():
            assert sha256_file(folder / file) == digest, (name, file)
            values.add(orjson.loads((folder / file).read_bytes())["value"])
        assert len(values) == 1, (name, values)  # never a mix of two runs' files


def test_soak_concurrent_runs_and_kills_never_leave_a_lying_folder(tmp_path):
    """20 rounds: two concurrent toy runs with random settings, one killed at a random moment."""
    import random

    script = os.path.join(os.path.dirname(__file__), "toy_pipeline.py")
    rng = random.Random(0)
    folder = tmp_path / "run"

    def start(a, b):
        return subprocess.Popen([sys.executable, script, str(folder), str(a), str(b)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    kills = 0
    for _ in range(20):
        first = start(rng.randint(0, 3), rng.randint(0, 3))
        second = start(rng.randint(0, 3), rng.randint(0, 3))
        time.sleep(rng.uniform(0.05, 0.6))
        victim = rng.choice([first, second])
        if victim.poll() is None:
            victim.kill()
            kills += 1
        for proc in (first, second):
            proc.communicate(timeout=60)
            assert proc.returncode in (0, -9), proc.stderr
        if (folder / "stages.json").is_file():
            _consistent(folder)
    assert kills >= 5
    final = start(2, 3)
    out, err = final.communicate(timeout=60)
    assert final.returncode == 0, err
    clean = tmp_path / "clean"
    done = subprocess.run([sys.executable, script, str(clean), "2", "3"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and out.split()[0] == done.stdout.split()[0] == str(1 + 2 + (3 + 2))
    _consistent(folder)
    assert compare_runs(folder, clean) == []
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_the_ledger_finds_a_file_outside_its_folder_given_by_a_relative_path(tmp_path,
                                                                            monkeypatch):
    from faithcase.run.store import Ledger, sha256_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.json").write_text("{}")
    ledger = Ledger(tmp_path / "work" / "stages.json")
    relative = Path("out") / "a.json"  # relative to the working folder, not to the ledger's
    ledger.record("a", "fp", 0.0, {relative: sha256_file(relative)})
    assert ledger.changed_files("a") == []
    (tmp_path / "out" / "a.json").write_text("{ }")
    assert ledger.changed_files("a") == [str(tmp_path / "out" / "a.json")]
