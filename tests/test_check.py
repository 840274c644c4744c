"""`faithcase check` (preflight): one table of every component, exit 2 naming what cannot run;
`faithcase run` refuses a broken component before any corpus pass."""

import pytest
import yaml

from conftest import TINY_CONFIG, faithcase_cli
from faithcase.config import parse_config
from faithcase.run.errors import FaithcaseError
from faithcase.preflight import Preflight, check_table
from faithcase.run.runtime import Runtime

PAPER = "pkg:faithcase/configs/llama-3.2-1b.yaml"


@pytest.fixture(autouse=True)
def wide_table(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line


def tiny_runtime(tmp_path, demo_lm, **sections) -> Runtime:
    """A Runtime of the tiny config in tmp_path, on the session's demo model."""
    data = yaml.safe_load(TINY_CONFIG) | {"out_dir": str(tmp_path / "run")}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    rt = Runtime(parse_config(data, tmp_path))
    rt.__dict__["lm"] = demo_lm  # the cached property, already loaded
    return rt


def test_check_on_the_tiny_demo_passes_every_component(tmp_path, demo_lm):
    from rich.console import Console

    preflight = Preflight(tiny_runtime(tmp_path, demo_lm))
    checks = preflight.run()
    assert [c.component for c in checks] == ["model", "corpus", "sae1", "sae2", "embedder",
                                             "window explainer"]
    assert not preflight.failed, [c.status for c in checks]
    status = {c.component: c.status for c in checks}
    assert status["model"] == "ok: forward to blocks.12.hook_resid_pre, d_model 576"
    assert status["embedder"].startswith("ok: self-test 5/5 queries")
    for key in ("sae1", "sae2"):  # the load check: the demo SAEs reconstruct (FVU ~0.15)
        fvu = float(status[key].split("FVU ")[1].split(",")[0])
        assert 0 < fvu < 0.5 and "L0 16.0" in status[key]
    console = Console(record=True, width=250)
    console.print(check_table(checks))
    assert "dtype declared → used" in console.export_text()
    assert not (tmp_path / "run").exists()  # a check writes nothing


def test_check_on_the_paper_config_offline_names_what_is_missing(tmp_path):
    done = faithcase_cli("check", "--config", PAPER, "--out-dir", tmp_path / "run", cwd=tmp_path,
                         timeout=300)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    out = " ".join(done.stdout.split())
    for missing in ("meta-llama/Llama-3.2-1B", "seonglae/Llama-3.2-1B-sae",
                    "dunzhang/stella_en_400M_v5", "seonglae/faithful-llama3.2-1b"):
        assert missing in out
    error = done.stderr.strip().splitlines()
    assert error == ["error: 6 of 6 components cannot run: model, corpus, sae1, sae2, embedder, "
                     "window explainer (see the table)"]


@pytest.fixture
def broken_embedder(tmp_path):
    """The demo's MiniLM with random weights: it loads, and ranks nothing right."""
    from sentence_transformers import SentenceTransformer
    import torch

    from faithcase.config import EmbedConfig
    from faithcase.run.paths import resolve_path

    broken = SentenceTransformer(str(resolve_path(EmbedConfig().model)), device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in broken.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    broken.save(str(tmp_path / "broken-embedder"))
    return "broken-embedder"


def test_run_refuses_a_broken_embedder_before_any_corpus_pass(tmp_path, demo_lm,
                                                              broken_embedder):
    from faithcase.cli import preflight_stale
    from faithcase.pipeline import open_run

    rt = tiny_runtime(tmp_path, demo_lm, embed={"model": broken_embedder})
    with pytest.raises(FaithcaseError) as err, open_run(rt) as run:
        preflight_stale(rt, run)
    assert str(err.value).startswith("1 of 6 components cannot run: embedder: embedding model "
                                     "broken-embedder failed its self-test")
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "run").glob("*.json"))  # no stage ran


def test_a_run_of_studies_refuses_before_its_matrix(tmp_path, demo_lm, broken_embedder):
    from faithcase.cli import RunOptions, run_studies_command

    bundle = "pkg:faithcase/demo/bundle"
    saes = {"a": {"path": f"{bundle}/sae_seed42"}, "b": {"path": f"{bundle}/sae_seed49"}}
    data = yaml.safe_load(TINY_CONFIG) | {"saes": saes, "studies": [["a", "b"]],
                                          "out_dir": str(tmp_path / "many")}
    del data["sae1"], data["sae2"]
    data["embed"] |= {"model": broken_embedder}
    rt = Runtime(parse_config(data, tmp_path))
    rt.__dict__["lm"] = demo_lm
    with pytest.raises(FaithcaseError, match="components cannot run: embedder"):
        run_studies_command(RunOptions(), rt)
    assert not (tmp_path / "many" / "matrix.json").exists()
