"""One model pass over the corpus per run: the residual cache, counted and damaged."""

from __future__ import annotations

import errno
from pathlib import Path

import orjson
import pytest
import torch
from typer.testing import CliRunner

from faithcase.cli import app
from faithcase.config import load_config
from faithcase.model import lm as lm_module
from faithcase.run.runtime import Runtime

from conftest import tiny_config

SMALL = tiny_config(
    run_name="small", corpus={"max_tokens": 1536, "batch_size": 8},
    pairs={"n_pairs": 1, "n_stratified": 0, "require_firing": False},
    explain={"scales": [1.0, 2.0], "max_new_tokens": 4, "n_samples": 0, "n_null": 2},
    windows={"n_negative": 5, "top": 2}, describe=False,  # no corpus pass of its own
    embed={"min_activating": 1, "min_non_activating": 1, "compare_templates": False})
N_BATCHES = 3  # 1536 tokens in sequences of 64, 8 per batch


@pytest.fixture
def counted(demo_lm, monkeypatch):
    """Every Runtime gets the session's model; corpus passes at the SAEs' hook are counted (the
    preflight's trial forwards on ~500 tokens before a run are not a corpus pass: counted apart,
    in `counted.checks`)."""
    from faithcase.preflight import Preflight

    calls, checking = CountedCalls(), []
    original, original_run = demo_lm.activations, Preflight.run

    def activations(tokens, hook_name, attention_mask=None):
        if hook_name == "blocks.12.hook_resid_pre":
            (calls.checks if checking else calls).append(len(tokens))
        return original(tokens, hook_name, attention_mask)

    def run(self, components=None):
        checking.append(True)
        try:
            return original_run(self, components)
        finally:
            checking.pop()

    monkeypatch.setattr(demo_lm, "activations", activations)
    monkeypatch.setattr(Preflight, "run", run)
    monkeypatch.setattr(lm_module, "load_model", lambda *args, **kwargs: demo_lm)
    return calls


class CountedCalls(list):
    def __init__(self):
        super().__init__()
        self.checks: list[int] = []


def cli(config, out, *args):
    done = CliRunner().invoke(app, [*args, "-c", str(config), "--out-dir", str(out)])
    assert done.exit_code == 0, done.output
    return done


def test_one_model_pass_whether_run_whole_or_stage_by_stage(counted, tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(SMALL)
    cli(config, tmp_path / "a", "scan")
    assert len(counted) == N_BATCHES
    cli(config, tmp_path / "a", "windows")  # another process's worth of Runtime: reads the cache
    assert len(counted) == N_BATCHES

    counted.clear()
    cli(config, tmp_path / "b", "run")
    assert len(counted) == N_BATCHES
    assert sum(counted.checks) <= 9  # the check: a probe sentence and 8 sequences of 64 tokens
    # new pairs: their features' windows come from the cache, no model pass (the stages after
    # windows never read the corpus: the whole run above counted one pass)
    cli(config, tmp_path / "b", "windows", "--set", "pairs.n_pairs=2")
    assert len(counted) == N_BATCHES
    windows = _without_meta(tmp_path / "b" / "windows_sae1.json")
    cli(config, tmp_path / "b", "windows", "--set", "pairs.n_pairs=2", "--force")
    assert len(counted) == N_BATCHES
    assert _without_meta(tmp_path / "b" / "windows_sae1.json") == windows  # read back exactly


def _without_meta(path):
    data = orjson.loads(path.read_bytes())
    data.pop("meta")
    return data


def _pass(config, out):
    cfg = load_config(str(config), overrides={"out_dir": str(out)})
    return [tuple(t.clone() for t in batch) for batch in Runtime(cfg).activation_batches()]


def _equal(first, second):
    return len(first) == len(second) and all(
        all(torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(first, second))


def test_a_damaged_batch_is_dropped_and_recomputed(counted, tmp_path, capsys):
    config = tmp_path / "small.yaml"
    config.write_text(SMALL)
    fresh = _pass(config, tmp_path / "run")
    caches = list((tmp_path / "run" / ".cache" / "residuals").iterdir())
    assert len(caches) == 1 and len(counted) == N_BATCHES
    assert _equal(_pass(config, tmp_path / "run"), fresh) and len(counted) == N_BATCHES

    victim = caches[0] / "batch-000001.pt"
    victim.write_bytes(victim.read_bytes()[:-7] + b"garbage")
    assert _equal(_pass(config, tmp_path / "run"), fresh)
    assert len(counted) == 2 * N_BATCHES - 1  # batch 0 from the cache, the model from batch 1
    assert not caches[0].exists()  # removed; the next pass writes a new one
    assert _equal(_pass(config, tmp_path / "run"), fresh) and caches[0].is_dir()


def test_a_full_disk_while_caching_warns_and_the_pass_goes_on(counted, tmp_path, monkeypatch):
    config = tmp_path / "small.yaml"
    config.write_text(SMALL)
    fresh = _pass(config, tmp_path / "reference")
    real_write, writes = Path.write_bytes, []

    def write_bytes(path, data):
        if ".tmp-" in str(path):
            writes.append(path)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    assert _equal(_pass(config, tmp_path / "run"), fresh)
    root = tmp_path / "run" / ".cache" / "residuals"
    assert len(writes) == 2 and not list(root.iterdir())  # no half-written cache, no temporary


def test_a_killed_pass_leaves_no_cache_that_reads_as_complete(counted, tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(SMALL)
    cfg = load_config(str(config), overrides={"out_dir": str(tmp_path / "run")})
    batches = Runtime(cfg).activation_batches()
    next(batches)
    batches.close()  # the consumer stopped (Ctrl-C, an error) after one batch
    root = tmp_path / "run" / ".cache" / "residuals"
    assert not list(root.iterdir())
    counted.clear()
    assert len(_pass(config, tmp_path / "run")) == N_BATCHES and len(counted) == N_BATCHES
