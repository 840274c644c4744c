"""The house rules: a new stage is one module plus one line, stages import no other stage, the
model and run packages import no stage, and modules and functions stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

import faithcase.stages
from faithcase.cli import app
from faithcase.config import (
    AssembleConfig,
    CalibrationConfig,
    Config,
    CorpusConfig,
    DescribeConfig,
    EmbedConfig,
    ExplainConfig,
    MatchConfig,
    MatrixConfig,
    ModelConfig,
    OutlierConfig,
    PairsConfig,
    SAEConfig,
    ScanConfig,
    WindowsConfig,
    load_config,
)
from faithcase.pipeline import STAGE_MODULES, stages
from faithcase.run.errors import FaithcaseError
from faithcase.run.graph import Graph
from faithcase.run.runtime import Runtime
from faithcase.run.store import fingerprint
from faithcase.tools.config_docs import REGENERATE, doc_sections, render_configuration_docs

SRC = Path(faithcase.stages.__file__).resolve().parents[1]
CONFIGURATION_DOCS = SRC.parents[1] / "docs" / "configuration.md"
SECTION_MODELS = (ModelConfig, SAEConfig, CorpusConfig, OutlierConfig, ScanConfig, MatchConfig,
                  PairsConfig, ExplainConfig, WindowsConfig, EmbedConfig, DescribeConfig,
                  MatrixConfig, AssembleConfig, CalibrationConfig, Config)

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
    for package in ("model", "run", "saes", "numerics", "render", "explainers", "scores"):
        for path in sorted((SRC / package).rglob("*.py")):
            stages_used = {n for n in _imports(path) if n.startswith("faithcase.stages")}
            assert not stages_used, f"{package}/{path.name} imports {stages_used}"
    plugins_used = {n for n in _imports(SRC / "plugins.py") if n.startswith("faithcase.stages")}
    assert not plugins_used


def _module_graph() -> dict[str, set[str]]:
    """faithcase module -> the faithcase modules it imports (at any depth of the file)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        imported = set()
        for item in _imports(path):  # "pkg.module" or "pkg.module.symbol"
            while item and item not in modules:
                item = item.rpartition(".")[0]
            imported.add(item)
        graph[name] = imported - {"", name, "faithcase"}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_and_numerics_imports_no_model_code():
    graph = _module_graph()
    assert _circles(graph) == []
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]  # it finds one
    above = ("faithcase.model", "faithcase.saes", "faithcase.stages", "faithcase.render",
             "faithcase.tools", "faithcase.run.runtime", "faithcase.cli", "faithcase.pipeline")
    for name, imported in graph.items():
        if name.startswith("faithcase.numerics"):
            assert not {m for m in imported if m.startswith(above)}, name
    for name in ("faithcase.run.errors", "faithcase.run.paths"):  # the bottom layer
        assert graph[name] <= {"faithcase.run.errors"}, (name, graph[name])


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


# ---------------------------------------------------------------- config documented at the source


def test_every_config_field_has_a_description_and_every_section_a_docstring():
    for model in SECTION_MODELS:
        assert (model.__doc__ or "").strip(), f"{model.__name__} has no docstring"
        for name, info in model.model_fields.items():
            assert (info.description or "").strip(), f"{model.__name__}.{name} has no description"
    assert {section.model for section in doc_sections()} == set(SECTION_MODELS)


def test_the_configuration_docs_are_generated_from_the_models():
    docs = CONFIGURATION_DOCS
    written = docs.read_text(encoding="utf-8") if docs.is_file() else ""
    assert written == render_configuration_docs(), (
        f"docs/configuration.md is not what the config models say: regenerate it with "
        f"`{REGENERATE}`")


def test_config_errors_say_what_the_key_means_and_which_keys_exist():
    with pytest.raises(FaithcaseError) as bad_value:
        load_config(sets=["windows.window=0"])
    message = str(bad_value.value)
    description = WindowsConfig.model_fields["window"].description.rstrip(".")
    assert "windows.window" in message and description in message and "\n" not in message
    with pytest.raises(FaithcaseError) as unknown:
        load_config(sets=["windows.topp=5"])
    message = str(unknown.value)
    assert "unknown config key 'windows.topp'" in message and "did you mean 'top'" in message
    assert "single_token_share" in message and "\n" not in message


def test_faithcase_config_prints_each_key_with_its_description():
    runner = CliRunner()
    result = runner.invoke(app, ["config", "windows"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "window" in result.output
    assert WindowsConfig.model_fields["window"].description in result.output
    assert "n_bootstrap" not in result.output  # one section only
    markdown = runner.invoke(app, ["config", "--markdown"])
    assert markdown.exit_code == 0 and markdown.output == render_configuration_docs()
    unknown = runner.invoke(app, ["config", "windowz"])
    assert unknown.exit_code == 2 and "sections:" in unknown.output
    help_text = runner.invoke(app, ["config", "--help"], env={"COLUMNS": "200"}).output
    assert "docs/configuration.md" in help_text


def test_test_modules_import_no_other_test_module():
    """Shared helpers live in conftest.py or a helper module, never in another test module."""
    tests = Path(__file__).parent
    for path in sorted(tests.glob("test_*.py")):
        others = {n for n in _imports(path) if n.split(".")[0].startswith("test_")}
        assert not others, f"{path.name} imports {others}"
