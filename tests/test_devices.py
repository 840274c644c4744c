"""Device consistency without a GPU: SAEs on another device (`meta`, under tests/other_device.py)
fed CPU batches, as a GPU run's SAEs meet batches reread from the residual cache."""

import itertools

import pytest
import torch

from faithcase.artifacts import Assignment
from faithcase.config import ScanConfig, WindowsConfig
from faithcase.run.residual_cache import ResidualCache
from faithcase.saes.model import SAE
from faithcase.saes.load_check import sae_quality
from faithcase.numerics.pass_sums import PassSums
from faithcase.stages.scan import ScanCollector
from faithcase.stages.windows import WindowCollector, collect_windows
from other_device import OTHER, OtherDevice

D_IN, D_SAE = 8, 32


def topk_sae(seed: int) -> SAE:
    gen = torch.Generator().manual_seed(seed)
    return SAE(W_enc=torch.randn(D_IN, D_SAE, generator=gen), b_enc=torch.randn(D_SAE, generator=gen),
               W_dec=torch.randn(D_SAE, D_IN, generator=gen), b_dec=torch.randn(D_IN, generator=gen),
               activation="topk", k=4, hook_name="blocks.0.hook_resid_pre")


def cpu_batches(n: int = 2, seq_len: int = 40):
    gen = torch.Generator().manual_seed(1)
    for b in range(n):
        tokens = torch.randint(0, 50, (3, seq_len), generator=gen)
        resid = torch.randn(3, seq_len, D_IN, generator=gen)
        yield torch.arange(3 * b, 3 * b + 3), tokens, resid, torch.zeros(3, seq_len, dtype=torch.bool)


def test_the_stand_in_device_catches_mixing():
    with OtherDevice(), pytest.raises(RuntimeError, match="meet"):
        torch.ones(4, 3).to(OTHER) @ torch.ones(3, 2)  # plain meta matmul would not raise


def test_scan_keeps_its_sums_on_the_saes_device():
    saes = {"sae1": topk_sae(0).to(OTHER), "sae2": topk_sae(1).to(OTHER)}
    assignment = Assignment(index1=list(range(D_SAE)), index2=list(range(D_SAE)),
                            similarity=[0.5] * D_SAE)
    with OtherDevice():
        collector = ScanCollector(saes, assignment)
        for batch in cpu_batches():
            collector.update(*batch)
        collector.finish()  # the per-feature results move to the CPU
    assert collector.firing["sae1"].device == OTHER
    assert all(s.hi.device == OTHER for s in collector.pair_sums[("sae1", "sae2")].values())


def test_windows_collect_on_the_saes_device():
    sae = topk_sae(0).to(OTHER)
    with OtherDevice():
        collector = WindowCollector(sae, [0, 3, 5], WindowsConfig(window=5, reservoir=10))
        found = collect_windows({"sae1": collector}, cpu_batches(), lambda ids: [str(i) for i in ids])
    assert collector._device == OTHER and set(found["sae1"]) == {0, 3, 5}


def test_matrix_pass_on_the_saes_device():
    """The matrix's pass (its matching reads the decoders' values, which meta lacks: tested on
    the CPU in test_matrix.py)."""
    saes = {name: topk_sae(seed).to(OTHER) for seed, name in enumerate(("a", "b", "c"))}
    identity = (list(range(D_SAE)), list(range(D_SAE)))
    with OtherDevice():
        sums = PassSums(saes, {pair: identity for pair in itertools.combinations(saes, 2)})
        for batch in cpu_batches():
            sums.update(*batch)
        [sae_quality(sums, name, ScanConfig(), None) for name in saes]
        [sums.agreement(pair) for pair in sums.index]
    assert all(sums.firing[name].device == OTHER for name in saes)


def test_residual_cache_loads_onto_the_models_device(tmp_path):
    batches = list(cpu_batches(1))
    writer = ResidualCache(tmp_path, {"k": 1}).writer(1 << 20)
    writer.add(batches[0])
    writer.finish()
    [(index, batch)] = list(ResidualCache(tmp_path, {"k": 1}, device="meta").read())
    assert all(t.device == OTHER for t in batch)


def test_encode_moves_cpu_inputs_to_the_sae():
    sae = topk_sae(0)
    x = torch.randn(5, D_IN)
    with OtherDevice():
        out = sae.to(OTHER).encode(x)
    assert out.device == OTHER and out.shape == (5, D_SAE)
