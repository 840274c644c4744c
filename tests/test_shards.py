"""Mergeable collectors: a pass split into shards (batches r, r + N, …) and merged equals the single
pass exactly (counts, pools, reservoirs, histograms and compensated float64 sums), and the same
split run as two torchrun processes gives run folders `faithcase diff` finds equal."""

from __future__ import annotations

import os
import random
from fractions import Fraction
import shutil
import subprocess
import sys

import pytest
import torch

from faithcase.config import WindowsConfig
from faithcase.numerics.exact_sum import CompensatedSum
from faithcase.numerics.pass_sums import PassSums
from faithcase.stages.windows import WindowCollector

from conftest import tiny_config
from toy_saes import D_SAE, TopKSAE, batches, corpus, topk_sae


def test_compensated_sums_do_not_depend_on_the_order_of_the_partials():
    rng = random.Random(0)
    parts = [torch.tensor([rng.uniform(-1, 1) * 10 ** rng.randint(-8, 8) for _ in range(64)],
                          dtype=torch.float64) for _ in range(200)]
    whole = CompensatedSum(64)
    for part in parts:
        whole.add(part)
    even, odd = CompensatedSum(64), CompensatedSum(64)
    for i, part in enumerate(parts):
        (even if i % 2 == 0 else odd).add(part)
    even.merge(odd)
    exact = [float(sum(Fraction(float(p[j])) for p in parts))
             for j in range(64)]
    assert whole.value.tolist() == even.value.tolist() == exact  # correctly rounded
    naive = sum(parts[1::2], torch.zeros(64, dtype=torch.float64)) + sum(
        parts[::2], torch.zeros(64, dtype=torch.float64))
    assert naive.tolist() != exact  # what plain float64 addition would have given


def _shards(items, n):
    return [[x for i, x in enumerate(items) if i % n == r] for r in range(n)]


def _merged(make, shards):
    """A collector fed every shard's batches separately, merged in rank order."""
    states = []
    for shard in shards:
        collector = make()
        for batch in shard:
            collector.update(*batch)
        states.append(collector.state())
    merged = make()
    merged.reset()
    for state in states:
        merged.merge_state(state)
    return merged


def test_pass_sums_of_two_shards_merge_to_the_single_pass():
    resid, tokens, excluded = corpus(n_seq=12, length=9)
    all_batches = list(batches(resid, tokens, excluded, [2] * 6))
    saes = {"a": topk_sae(1), "b": topk_sae(2), "c": topk_sae(3)}
    index = list(range(D_SAE))
    pairs = {("a", "b"): (index, index[::-1]), ("a", "c"): (index, index),
             ("b", "c"): (index[::-1], index)}

    def make():
        return PassSums(saes, pairs)

    single = make()
    for batch in all_batches:
        single.update(*batch)
    merged = _merged(make, _shards(all_batches, 2))
    assert merged.n_tokens == single.n_tokens and merged.n_sequences == single.n_sequences
    for pair in pairs:
        assert merged.agreement(pair) == single.agreement(pair)
    for key in saes:
        assert merged.fvu(key) == single.fvu(key) and merged.l0(key) == single.l0(key)
        assert merged.firing[key].tolist() == single.firing[key].tolist()


def test_window_collectors_of_three_shards_merge_to_the_single_pass():
    gen = torch.Generator().manual_seed(5)
    n_seq, length = 18, 40
    resid = torch.randn(n_seq, length, 8, generator=gen)
    tokens = torch.randint(0, 60, (n_seq, length), generator=gen)
    excluded = torch.zeros(n_seq, length, dtype=torch.bool)
    excluded[:, 0] = True
    all_batches = [(torch.arange(s, s + 3), tokens[s:s + 3], resid[s:s + 3], excluded[s:s + 3])
                   for s in range(0, n_seq, 3)]
    sae = TopKSAE(8, 16, k=4, seed=1)
    settings = WindowsConfig(window=8, top=3, n_quantiles=2, per_quantile=2, n_negative=4,
                             reservoir=10, n_hist_bins=5)

    def make():
        return WindowCollector(sae, [0, 3, 7, 11], settings)

    single = make()
    for batch in all_batches:
        single.update(*batch)
    merged = _merged(make, _shards(all_batches, 3))
    texts = lambda ids: [f"<t{i}>" for i in ids]  # noqa: E731
    assert merged.finish(texts) == single.finish(texts)


# ---------------------------------------------------------------- two processes


@pytest.mark.timeout(900)
def test_two_torchrun_processes_give_the_single_process_run_folder(tmp_path):
    """scan and windows (both corpus passes) on 2 CPU processes (gloo) vs 1 process: `faithcase
    diff` finds no difference. One thread each, so every batch's arithmetic is the same."""
    from typer.testing import CliRunner

    from faithcase.cli import app

    config = tiny_config(corpus={"max_tokens": 2048, "batch_size": 8})  # 4 batches, 2 per rank
    (tmp_path / "tiny.yaml").write_text(config)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "FAITHCASE_THREADS": "1"}
    cli = [sys.executable, "-m", "faithcase.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "faithcase.cli"]
    for command, folder in ((cli, "single"), (torchrun, "split")):
        done = subprocess.run([*command, "windows", "--config", "tiny.yaml", "--out-dir", folder],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=800)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "split" / "windows_sae1.json").is_file()
    assert not (tmp_path / "split" / ".cache").exists()  # a shard's pass is never cached
    done = CliRunner().invoke(app, ["diff", str(tmp_path / "single"), str(tmp_path / "split")])
    assert done.exit_code == 0 and "the runs agree" in done.output, done.output[-2000:]
    shutil.rmtree(tmp_path / "split" / ".shards")


def test_under_torchrun_only_the_corpus_stages_run(tmp_path):
    from faithcase.config import load_config
    from faithcase.pipeline import MANY_SAES, PIPELINE, split_pass_stages
    from faithcase.run.errors import FaithcaseError
    from faithcase.run.runtime import Runtime
    from faithcase.run.shards import Shard

    (tmp_path / "tiny.yaml").write_text(tiny_config())
    rt = Runtime(load_config(str(tmp_path / "tiny.yaml")))
    assert split_pass_stages(rt, PIPELINE, ("explain",)) == ()  # one process: nothing forced
    rt.shard = Shard(rank=1, world=2)
    assert split_pass_stages(rt, PIPELINE, ("windows",)) == ("scan", "windows")
    assert split_pass_stages(rt, MANY_SAES, ("matrix",)) == ("matrix",)
    with pytest.raises(FaithcaseError, match="under torchrun only the corpus stages run .*explain would repeat"):
        split_pass_stages(rt, PIPELINE, None)
