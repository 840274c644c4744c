"""The house rules: a new stage is one module plus one line, stages import no other stage, the
model and run packages import no stage, and modules and functions stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import orjson

import faithcase.stages
from faithcase.config import load_config
from faithcase.pipeline import STAGE_MODULES, stages
from faithcase.run.graph import Graph
from faithcase.run.runtime import Runtime
from faithcase.run.store import fingerprint

SRC = Path(faithcase.stages.__file__).resolve().parents[1]

TOY_STAGE = '''
"""A toy stage: how many matched pairs are at least as similar as the match threshold."""

from faithcase.run.graph import Stage


def _compute(job):
    match = job.inputs["match"]
    strong = sum(s >= job.settings.threshold for s in match.assignment.similarity)
    job.write("strong_pairs.json", {"threshold": job.settings.threshold, "strong": strong})
    return strong


STAGE = Stage("strong_pairs", _compute, inputs=("match",), section="match",
              load=lambda job: job.read("strong_pairs.json", dict)["strong"])
'''


def test_a_new_stage_is_one_module_and_one_line(tmp_path, monkeypatch):
    (tmp_path / "strong_pairs.py").write_text(TOY_STAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(faithcase.stages, "__path__", [*faithcase.stages.__path__, str(tmp_path)])
    graph = Graph(stages((*STAGE_MODULES, "strong_pairs")), hasher=fingerprint)  # the one line

    def run(threshold: float):
        cfg = load_config(overrides={"out_dir": str(tmp_path / "run"), "match.threshold": threshold})
        graph_run = graph.run(Runtime(cfg), tmp_path / "run" / "stages.json")
        return graph_run.get("strong_pairs"), graph_run.ran, graph_run.get("match")

    strong, ran, match = run(0.7)
    assert ran == ["match", "strong_pairs"]
    assert strong == sum(s >= 0.7 for s in match.assignment.similarity) > 0
    assert run(0.7)[1] == []  # cached
    strong, ran, match = run(0.9)  # its config section changed: it reruns
    assert ran == ["match", "strong_pairs"] and strong == sum(s >= 0.9 for s in match.assignment.similarity)
    written = orjson.loads((tmp_path / "run" / "strong_pairs.json").read_bytes())
    assert written == {"threshold": 0.9, "strong": strong}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_stages_import_no_other_stage_and_the_machinery_imports_no_stage():
    for path in sorted((SRC / "stages").glob("*.py")):
        own = f"faithcase.stages.{path.stem}"
        others = {n for n in _imports(path) if n.startswith("faithcase.stages.") and n != own}
        assert not others, f"{path.name} imports {others}"
    for package in ("model", "run", "saes", "numerics", "render"):
        for path in sorted((SRC / package).rglob("*.py")):
            stages_used = {n for n in _imports(path) if n.startswith("faithcase.stages")}
            assert not stages_used, f"{package}/{path.name} imports {stages_used}"


def test_modules_and_functions_stay_small():
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        where = path.relative_to(SRC)
        assert len(lines) <= 450, f"{where} has {len(lines)} lines"
        long = [i + 1 for i, line in enumerate(lines) if len(line) > 100]
        assert not long, f"{where} has lines over 100 characters: {long[:5]}"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                assert size <= 60, f"{where}:{node.lineno} {node.name} has {size} lines"
