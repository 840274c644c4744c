"""`faithcase check` (preflight): one table of every component, exit 2 naming what cannot run;
`faithcase run` refuses a broken component before any corpus pass."""

import json

import pytest

from conftest import TINY_CONFIG, faithcase_cli

PAPER = "pkg:faithcase/configs/llama-3.2-1b.yaml"


@pytest.fixture(autouse=True)
def wide_table(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line


def test_check_on_the_tiny_demo_prints_its_table_and_exits_0(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    done = faithcase_cli("check", "--config", "tiny.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = " ".join(done.stdout.split())
    for component in ("model", "corpus", "sae1", "sae2", "embedder", "window explainer"):
        assert component in out
    assert "forward to blocks.12.hook_resid_pre" in out and "self-test" in out
    assert out.count("FVU") == 2  # the load check of both SAEs
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.json"))


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
    assert len(error) == 1 and "components cannot run" in error[0]


def test_run_refuses_a_broken_embedder_before_any_corpus_pass(tmp_path):
    from sentence_transformers import SentenceTransformer
    import torch

    from faithcase.config import EmbedConfig
    from faithcase.run.paths import resolve_path

    broken = SentenceTransformer(str(resolve_path(EmbedConfig().model)), device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in broken.parameters():  # random weights: embeds, ranks nothing right
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    broken.save(str(tmp_path / "broken-embedder"))
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG.replace(
        "embed: {", "embed: {model: broken-embedder, "))
    done = faithcase_cli("run", "--config", "tiny.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "broken-embedder" in done.stderr and "self-test" in done.stderr
    ledger = tmp_path / "outputs" / "tiny" / "stages.json"
    stages = json.loads(ledger.read_text()).get("stages", {}) if ledger.exists() else {}
    assert "scan" not in stages and not (tmp_path / "outputs" / "tiny" / "scan.json").exists()
