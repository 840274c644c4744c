"""SAEs encode in their checkpoint's declared dtype (or the config's override), recorded in SAEInfo
and in the SAEs' fingerprint; each format against its own library or reference code. The dtype
policy (run/machine.py): float32 on a CPU where half-precision matmul is slow."""

import json
import os

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's eager decoder on CPU

import pytest
import sae_lens
import torch
from sae_lens.saes.sae import SAEMetadata

from faithcase.config import load_config
from faithcase.run.errors import FaithcaseError
from faithcase.run.machine import (HALF_MATMUL_ENV, choose_dtype, half_matmul_slowdown,
                                   policy_key)
from faithcase.run.runtime import Runtime
from faithcase.saes import load_sae

D_IN, D_SAE, K = 64, 256, 8


@pytest.fixture(autouse=True)
def half_is_fast(monkeypatch):
    """These tests read the declared dtype: as on a machine where half precision is fast."""
    monkeypatch.setenv(HALF_MATMUL_ENV, "fast")


def inputs(n=256, seed=0):
    """float32 residual-like inputs, as the model gives them."""
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 3 + 0.5


def weights(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D_IN, D_SAE, generator=gen) / D_IN**0.5,
            "b_enc": torch.randn(D_SAE, generator=gen) * 0.3,
            "W_dec": torch.randn(D_SAE, D_IN, generator=gen) * 0.4,
            "b_dec": torch.randn(D_IN, generator=gen) * 0.5}


def write_lens(folder, dtype="bfloat16", **cfg_kwargs):
    """A SAELens TopK folder whose cfg.json declares `dtype`, written by sae-lens itself."""
    cfg = sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, dtype=dtype, device="cpu",
                                 metadata=SAEMetadata(hook_name="blocks.3.hook_resid_pre"),
                                 **cfg_kwargs)
    lens = sae_lens.TopKSAE(cfg)
    lens.load_state_dict({name: w.to(lens.dtype) for name, w in weights().items()})
    lens.save_model(folder)
    return folder


def write_batchtopk(folder, dtype):
    """A BatchTopK checkpoint as the repository saves it: config values dumped as strings, the
    weights in float32 here (the repository casts them to cfg["dtype"] when it builds the SAE)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(weights(), folder / "sae.pt")
    config = {"sae_type": "topk", "act_size": D_IN, "dict_size": D_SAE, "top_k": K,
              "input_unit_norm": False, "hook_point": "blocks.3.hook_resid_pre", "layer": 3,
              "device": "cuda:0", "seed": 42}
    if dtype is not None:
        config["dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("cfg_kwargs", [{}, {"normalize_activations": "layer_norm"},
                                        {"rescale_acts_by_decoder_norm": True}])
def test_saelens_bf16_folder_encodes_in_bf16_like_sae_lens(tmp_path, cfg_kwargs):
    folder = write_lens(tmp_path, "bfloat16", **cfg_kwargs)
    sae = load_sae(folder)
    lens = sae_lens.SAE.load_from_disk(folder, device="cpu")
    assert sae.dtype == lens.dtype == torch.bfloat16
    x = inputs()
    with torch.no_grad():
        expected = lens.encode(x)
        expected_recon = lens.decode(expected)
    ours = sae.encode(x)
    assert ours.dtype == torch.bfloat16 and (ours > 0).sum() > 0
    assert torch.equal(ours, expected)
    assert torch.equal(sae.decode(ours, x), expected_recon)
    fp32 = load_sae(folder, dtype=torch.float32).encode(x)  # the override
    assert fp32.dtype == torch.float32 and not torch.equal(fp32, ours.float())


def batchtopk_reference(w, x, dtype):
    """The BatchTopK repository's TopK encode at inference, in `dtype`: (acts, ReLU'd pre-acts)."""
    w = {name: t.to(dtype) for name, t in w.items()}
    acts = torch.relu((x.to(dtype) - w["b_dec"]) @ w["W_enc"])
    top = torch.topk(acts, K, dim=-1)
    return torch.zeros_like(acts).scatter(-1, top.indices, top.values), acts


def assert_same_topk(ours, expected, pre):
    """Equal on rows whose k-th and (k+1)-th pre-activations differ; where they tie (common in
    bfloat16), the same values: torch.topk breaks ties by implementation, and the libraries call
    it on other tensors (ReLU first or not) or with sorted=True."""
    edge = torch.topk(pre, K + 1, dim=-1).values
    untied = edge[:, -2] != edge[:, -1]
    assert untied.float().mean() > 0.9
    assert torch.equal(ours[untied], expected[untied])
    assert torch.equal(ours.sort(-1).values, expected.sort(-1).values)


@pytest.mark.parametrize("declared, expected", [("torch.bfloat16", torch.bfloat16),
                                                ("torch.float16", torch.float16),
                                                ("torch.float32", torch.float32),
                                                ("torch.qint8", torch.float32),
                                               (None, torch.float32)])
def test_batchtopk_reads_its_declared_dtype(tmp_path, declared, expected):
    sae = load_sae(write_batchtopk(tmp_path, declared))
    assert sae.dtype == expected and sae.W_dec.dtype == expected
    x = inputs()
    ours = sae.encode(x)
    assert ours.dtype == expected
    assert_same_topk(ours, *batchtopk_reference(weights(), x, expected))


def test_sparsify_takes_its_stored_dtype(tmp_path):
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(3)
    coder = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K), dtype=torch.bfloat16)
    with torch.no_grad():
        coder.encoder.bias.copy_(torch.randn(D_SAE) * 0.3)
        coder.b_dec.copy_(torch.randn(D_IN) * 0.5)
    coder.save_to_disk(tmp_path / "layers.2")
    sae = load_sae(tmp_path / "layers.2")
    assert sae.dtype == torch.bfloat16
    x = inputs()
    with torch.no_grad():
        top_acts, top_indices, pre = coder.encode(x.to(torch.bfloat16))
    expected = torch.zeros(len(x), D_SAE, dtype=torch.bfloat16).scatter_(-1, top_indices, top_acts)
    assert_same_topk(sae.encode(x), expected, pre)


def run_config(tmp_path, folder, **sets):
    overrides = {"out_dir": str(tmp_path / "run"), "sae1": {"path": str(folder)},
                 "sae2": {"path": str(folder)}} | sets
    return load_config(overrides=overrides)


def test_config_override_info_and_fingerprint(tmp_path):
    folder = write_batchtopk(tmp_path / "sae", "torch.bfloat16")
    auto = Runtime(run_config(tmp_path, folder))
    forced = Runtime(run_config(tmp_path, folder, **{"sae1.dtype": "float32"}))
    assert auto.sae("sae1").dtype == auto.sae("sae2").dtype == torch.bfloat16
    assert forced.sae("sae1").dtype == torch.float32
    assert forced.sae("sae2").dtype == torch.bfloat16
    assert auto.sae_info("sae1").dtype == "bfloat16"
    assert forced.sae_info("sae1").dtype == "float32"
    assert auto.resource_key("saes") != forced.resource_key("saes")
    x = inputs()
    expected, _ = batchtopk_reference(weights(), x, torch.float32)
    torch.testing.assert_close(forced.sae("sae1").encode(x), expected, atol=1e-5, rtol=0)


def test_bad_dtype_in_config_is_one_line(tmp_path):
    with pytest.raises(FaithcaseError) as err:
        run_config(tmp_path, tmp_path, **{"sae2.dtype": "bf16"})
    message = str(err.value)
    assert "\n" not in message and "sae2.dtype" in message and "bfloat16" in message


# ---------------------------------------------------------------- the policy


def test_slow_half_on_cpu_computes_in_float32_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(HALF_MATMUL_ENV, "slow")
    folder = write_batchtopk(tmp_path / "sae", "torch.bfloat16")
    sae = load_sae(folder)
    assert sae.dtype == torch.float32 and sae.declared_dtype == torch.bfloat16
    assert "bf16 matmul 50x slower than float32 on this CPU" == sae.dtype_note
    x = inputs()
    expected, _ = batchtopk_reference(weights(), x, torch.float32)
    torch.testing.assert_close(sae.encode(x), expected, atol=1e-5, rtol=0)
    assert load_sae(folder, dtype=torch.bfloat16).dtype == torch.bfloat16  # explicit wins
    rt = Runtime(run_config(tmp_path, folder, **{"sae2.dtype": "bfloat16"}))
    assert rt.sae("sae1").dtype == torch.float32 and rt.sae("sae2").dtype == torch.bfloat16
    info = rt.sae_info("sae1")
    assert (info.dtype, info.declared_dtype) == ("float32", "bfloat16")
    slow_key = rt.resource_key("saes")
    monkeypatch.setenv(HALF_MATMUL_ENV, "fast")
    assert Runtime(run_config(tmp_path, folder, **{"sae2.dtype": "bfloat16"})).resource_key(
        "saes") != slow_key  # a run folder moved to a machine that decides otherwise recomputes


def test_runtime_says_so_once(tmp_path, monkeypatch):
    from rich.console import Console

    monkeypatch.setenv(HALF_MATMUL_ENV, "slow")
    folder = write_batchtopk(tmp_path / "sae", "torch.bfloat16")
    console = Console(record=True, width=200)
    rt = Runtime(run_config(tmp_path, folder), console=console)
    rt.sae("sae1"), rt.sae("sae1"), rt.sae("sae2")
    lines = [line for line in console.export_text().splitlines() if "declares" in line]
    assert lines == ["sae1 declares bfloat16; computing in float32 (bf16 matmul 50x slower than "
                     "float32 on this CPU)", "sae2 declares bfloat16; computing in float32 (bf16 "
                     "matmul 50x slower than float32 on this CPU)"]


def test_other_devices_keep_the_declared_dtype(monkeypatch):
    monkeypatch.setenv(HALF_MATMUL_ENV, "slow")
    assert choose_dtype(torch.bfloat16, "cuda").used == torch.bfloat16
    assert choose_dtype(torch.bfloat16, "cpu").used == torch.float32
    assert choose_dtype(torch.float32, "cpu").used == torch.float32
    assert policy_key("cuda") == {"half": "declared"}


def test_measured_slowdown_is_a_real_ratio_kept_per_machine(monkeypatch, tmp_path):
    from faithcase.run import machine

    monkeypatch.delenv(HALF_MATMUL_ENV)
    monkeypatch.setenv("FAITHCASE_CACHE", str(tmp_path))
    machine._measured_slowdown.cache_clear()
    ratio = half_matmul_slowdown(torch.bfloat16)
    assert 0 < ratio < 10_000 and ratio not in (0.5, 50.0)
    [(key, kept)] = json.loads((tmp_path / "half-matmul.json").read_text()).items()
    assert kept == ratio and key.startswith("bfloat16|")
    machine._measured_slowdown.cache_clear()  # another process on this machine: no measuring
    monkeypatch.setattr(machine, "_time", lambda *args: pytest.fail("measured again"))
    assert half_matmul_slowdown(torch.bfloat16) == ratio
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # capped kernels are another machine
    assert machine._machine_key() not in key
    machine._measured_slowdown.cache_clear()
    monkeypatch.setenv(HALF_MATMUL_ENV, "sometimes")
    with pytest.raises(FaithcaseError, match="fast or slow"):
        half_matmul_slowdown(torch.bfloat16)


def test_input_unit_norm_override_standardizes_and_changes_the_fingerprint(tmp_path):
    from faithcase.saes.model import standardize

    folder = write_batchtopk(tmp_path / "sae", "float32")  # the converter's config: no unit norm
    plain = Runtime(run_config(tmp_path, folder))
    normed = Runtime(run_config(tmp_path, folder, **{"sae1.input_unit_norm": True}))
    assert plain.sae("sae1").input_unit_norm is False
    assert normed.sae("sae1").input_unit_norm is True and normed.sae("sae2").input_unit_norm is False
    x = inputs()
    expected, _ = batchtopk_reference(weights(), standardize(x)[0], torch.float32)
    torch.testing.assert_close(normed.sae("sae1").encode(x), expected, atol=1e-5, rtol=0)
    assert plain.resource_key("saes") != normed.resource_key("saes")


def test_a_high_fvu_names_input_normalisation_and_the_setting_to_try():
    from types import SimpleNamespace

    from faithcase.config import ScanConfig
    from faithcase.saes.load_check import load_warnings

    sae = SimpleNamespace(activation="relu", k=None, d_sae=100, input_unit_norm=False)
    [warning] = load_warnings("sae2", sae, fvu=3.2, l0=1.0, settings=ScanConfig(), hook=None)
    assert "most likely input normalisation" in warning
    assert "try `input_unit_norm: true` in its config entry" in warning
