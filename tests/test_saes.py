"""SAE loading: our encode/decode against each format's own definition, plus bad inputs."""

import json
import os

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's eager decoder on CPU

import numpy as np
import pytest
import sae_lens
import torch
from sae_lens.saes.sae import SAEMetadata
from sparsify import SparseCoder, SparseCoderConfig

from faithcase.run.errors import FaithcaseError
from faithcase.saes import (
    SAE,
    check_compatible,
    detect_format,
    load_sae,
    save_saelens,
    select_hook_subfolder,
)

D_IN, D_SAE, K = 32, 96, 6
ATOL = 1e-5


def random_inputs(n=64, d_in=D_IN, seed=0):
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


# --- SAELens ----------------------------------------------------------------------------

LENS_CLASSES = {
    "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
    "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
    "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
}


def make_lens_sae(architecture, seed=1, **cfg_kwargs):
    """A sae-lens SAE with random, non-trivial weights (biases, thresholds, decoder norms)."""
    sae_cls, cfg_cls = LENS_CLASSES[architecture]
    if architecture == "topk":
        cfg_kwargs.setdefault("k", K)
    cfg = cfg_cls(
        d_in=D_IN,
        d_sae=D_SAE,
        dtype="float32",
        device="cpu",
        metadata=SAEMetadata(hook_name="blocks.3.hook_resid_pre"),
        **cfg_kwargs,
    )
    lens = sae_cls(cfg)
    gen = torch.Generator().manual_seed(seed)
    state = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=gen) / D_IN**0.5,
        "b_enc": torch.randn(D_SAE, generator=gen) * 0.3,
        "W_dec": torch.randn(D_SAE, D_IN, generator=gen) * 0.4,
        "b_dec": torch.randn(D_IN, generator=gen) * 0.5,
    }
    if architecture == "jumprelu":
        state["threshold"] = torch.rand(D_SAE, generator=gen)
    lens.load_state_dict(state)
    return lens


LENS_CASES = {
    "standard": ("standard", {}),
    "standard-no-bdec": ("standard", {"apply_b_dec_to_input": False}),
    "topk": ("topk", {}),
    "topk-rescale": ("topk", {"rescale_acts_by_decoder_norm": True}),
    "topk-layer-norm": ("topk", {"normalize_activations": "layer_norm"}),
    "jumprelu": ("jumprelu", {}),
}


@pytest.mark.parametrize("case", LENS_CASES)
def test_saelens_encode_decode_match_library(tmp_path, case):
    architecture, cfg_kwargs = LENS_CASES[case]
    lens = make_lens_sae(architecture, **cfg_kwargs)
    lens.save_model(tmp_path)
    sae = load_sae(tmp_path)
    x = random_inputs()
    with torch.no_grad():
        expected = lens.encode(x)
        expected_recon = lens.decode(expected)  # after encode: layer_norm keeps the input stats
    ours = sae.encode(x)
    assert sae.format == "saelens"
    assert (sae.hook_name, sae.hook_layer) == ("blocks.3.hook_resid_pre", 3)
    assert (ours > 0).sum() > 0
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(sae.decode(ours, x), expected_recon, atol=ATOL, rtol=0)
    if architecture == "topk":
        assert ((ours != 0).sum(-1) <= K).all()


@pytest.mark.parametrize("case", ["standard-no-bdec", "topk-rescale", "topk-layer-norm", "jumprelu"])
def test_save_saelens_round_trip_is_exact(tmp_path, case):
    architecture, cfg_kwargs = LENS_CASES[case]
    make_lens_sae(architecture, **cfg_kwargs).save_model(tmp_path / "orig")
    sae = load_sae(tmp_path / "orig")
    save_saelens(sae, tmp_path / "copy")
    again = load_sae(tmp_path / "copy")
    assert_same_sae(sae, again)


def assert_same_sae(a: SAE, b: SAE):
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert (ta is None) == (tb is None), name
        if ta is not None:
            assert torch.equal(ta, tb), name
    for name in ("activation", "k", "input_unit_norm", "apply_b_dec_to_input",
                 "rescale_acts_by_decoder_norm", "hook_name", "hook_layer"):
        assert getattr(a, name) == getattr(b, name), name


def test_saelens_unsupported_settings_are_rejected(tmp_path):
    make_lens_sae("topk").save_model(tmp_path)
    cfg_path = tmp_path / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "normalize_activations": "expected_average_only_in"}))
    with pytest.raises(FaithcaseError, match="normalize_activations"):
        load_sae(tmp_path)
    cfg_path.write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(FaithcaseError, match="'gated'"):
        load_sae(tmp_path)


# --- sparsify ---------------------------------------------------------------------------


def make_sparse_coder(seed=2, num_latents=128, **cfg_kwargs):
    torch.manual_seed(seed)
    coder = SparseCoder(D_IN, SparseCoderConfig(num_latents=num_latents, k=K, **cfg_kwargs), dtype=torch.float32)
    with torch.no_grad():
        coder.encoder.bias.copy_(torch.randn(num_latents) * 0.3)
        coder.b_dec.copy_(torch.randn(D_IN) * 0.5)
    return coder


def sparsify_dense(coder, x):
    with torch.no_grad():
        top_acts, top_indices, _ = coder.encode(x)
    return torch.zeros(x.shape[0], coder.num_latents).scatter_(-1, top_indices, top_acts), top_acts, top_indices


def test_sparsify_encode_decode_match_library(tmp_path):
    coder = make_sparse_coder(multi_topk=True)  # a training-only flag: accepted
    coder.save_to_disk(tmp_path / "layers.4")
    sae = load_sae(tmp_path / "layers.4")
    x = random_inputs()
    expected, top_acts, top_indices = sparsify_dense(coder, x)
    ours = sae.encode(x)
    assert sae.format == "sparsify" and sae.d_sae == 128
    assert (sae.hook_name, sae.hook_layer) == ("blocks.4.hook_resid_post", 4)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)
    with torch.no_grad():
        expected_recon = coder.decode(top_acts, top_indices)
    torch.testing.assert_close(sae.decode(ours), expected_recon, atol=ATOL, rtol=0)


def test_sparsify_parent_folder_selects_hook(tmp_path):
    coders = {"layers.2": make_sparse_coder(seed=3), "layers.5": make_sparse_coder(seed=4)}
    for name, coder in coders.items():
        coder.save_to_disk(tmp_path / name)
    assert detect_format(tmp_path) == "sparsify"
    x = random_inputs()
    for hook, name in [("layers.5", "layers.5"), ("blocks.5.hook_resid_post", "layers.5"),
                       ("blocks.3.hook_resid_pre", "layers.2"), ("blocks.6.hook_resid_pre", "layers.5")]:
        sae = load_sae(tmp_path, hook=hook)
        assert sae.path == str(tmp_path / name)
        torch.testing.assert_close(sae.encode(x), sparsify_dense(coders[name], x)[0], atol=ATOL, rtol=0)
    with pytest.raises(FaithcaseError, match="available: layers.2, layers.5"):
        load_sae(tmp_path)  # no hook, two subfolders
    with pytest.raises(FaithcaseError, match="no subfolder matches hook 'blocks.9.hook_resid_pre'.*layers.2, layers.5"):
        load_sae(tmp_path, hook="blocks.9.hook_resid_pre")


def test_select_hook_subfolder_rule(tmp_path):
    names = ["model.layers.11", "model.layers.12"]
    assert select_hook_subfolder(names, "blocks.12.hook_resid_pre", tmp_path) == "model.layers.11"
    assert select_hook_subfolder(names, "model.layers.12", tmp_path) == "model.layers.12"
    assert select_hook_subfolder(["layers.0"], None, tmp_path) == "layers.0"
    with pytest.raises(FaithcaseError, match="no subfolder matches"):
        select_hook_subfolder(names, "blocks.12.hook_mlp_out", tmp_path)


@pytest.mark.parametrize("flag", ["skip_connection", "transcode"])
def test_sparsify_unsupported_flags_are_rejected(tmp_path, flag):
    make_sparse_coder(**{flag: True}).save_to_disk(tmp_path)
    with pytest.raises(FaithcaseError, match=flag):
        load_sae(tmp_path)


# --- BatchTopK (FaithfulSAE) ------------------------------------------------------------


def write_batchtopk(folder, sae_type, input_unit_norm=False, seed=5):
    """A BatchTopK-repository checkpoint: config.json + sae.pt, numpy copies of the weights."""
    rng = np.random.default_rng(seed)
    weights = {
        "W_enc": rng.normal(size=(D_IN, D_SAE)) / D_IN**0.5,
        "W_dec": rng.normal(size=(D_SAE, D_IN)) * 0.4,
        "b_enc": rng.normal(size=D_SAE) * 0.3,
        "b_dec": rng.normal(size=D_IN) * 0.5,
    }
    if sae_type == "jumprelu":
        weights["jumprelu.log_threshold"] = rng.normal(size=D_SAE) * 0.5 - 1
    weights = {name: w.astype(np.float32) for name, w in weights.items()}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({name: torch.from_numpy(w) for name, w in weights.items()}, folder / "sae.pt")
    config = {"sae_type": sae_type, "act_size": D_IN, "dict_size": D_SAE, "top_k": K,
              "input_unit_norm": input_unit_norm, "hook_point": "blocks.7.hook_resid_pre",
              "layer": 7, "dtype": "torch.float32", "seed": seed}
    (folder / "config.json").write_text(json.dumps(config))
    return weights


def reference_batchtopk(weights, sae_type, input_unit_norm, x):
    """The repository's forward pass, per token, in float64 numpy: (feature acts, reconstruction)."""
    x = x.astype(np.float64)
    if input_unit_norm:
        mean = x.mean(-1, keepdims=True)
        std = (x - mean).std(-1, ddof=1, keepdims=True)
        x = (x - mean) / (std + 1e-5)
    if sae_type == "jumprelu":
        pre = np.maximum(x @ weights["W_enc"] + weights["b_enc"], 0)
        acts = pre * (pre > np.exp(weights["jumprelu.log_threshold"]))
    elif sae_type == "vanilla":
        acts = np.maximum((x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"], 0)
    else:  # topk and batchtopk (per token at inference)
        relu = np.maximum((x - weights["b_dec"]) @ weights["W_enc"], 0)
        acts = np.zeros_like(relu)
        for row in range(relu.shape[0]):
            keep = np.argsort(-relu[row])[:K]
            acts[row, keep] = relu[row, keep]
    recon = acts @ weights["W_dec"] + weights["b_dec"]
    if input_unit_norm:
        recon = recon * std + mean
    return acts, recon


@pytest.mark.parametrize("input_unit_norm", [False, True])
@pytest.mark.parametrize("sae_type", ["topk", "batchtopk", "vanilla", "jumprelu"])
def test_batchtopk_matches_reference(tmp_path, sae_type, input_unit_norm):
    weights = write_batchtopk(tmp_path, sae_type, input_unit_norm)
    sae = load_sae(tmp_path)
    x = random_inputs()
    acts, recon = reference_batchtopk(weights, sae_type, input_unit_norm, x.numpy())
    ours = sae.encode(x)
    assert sae.format == "batchtopk" and (sae.hook_name, sae.hook_layer) == ("blocks.7.hook_resid_pre", 7)
    assert (ours > 0).sum() > 0
    np.testing.assert_allclose(ours.numpy(), acts, atol=ATOL, rtol=0)
    np.testing.assert_allclose(sae.decode(ours, x).numpy(), recon, atol=1e-4, rtol=0)


@pytest.mark.parametrize("sae_type", ["topk", "jumprelu"])
def test_batchtopk_saved_as_saelens_encodes_the_same_in_sae_lens(tmp_path, sae_type):
    write_batchtopk(tmp_path / "orig", sae_type, input_unit_norm=True)
    sae = load_sae(tmp_path / "orig")
    save_saelens(sae, tmp_path / "lens")
    lens = sae_lens.SAE.load_from_disk(tmp_path / "lens")
    x = random_inputs()
    with torch.no_grad():
        torch.testing.assert_close(lens.encode(x), sae.encode(x), atol=ATOL, rtol=0)
    assert_same_sae(sae, load_sae(tmp_path / "lens"))


def test_nan_weights_load_and_corrupt_files_fail_cleanly(tmp_path):
    weights = write_batchtopk(tmp_path / "nan", "topk")
    state = {name: torch.from_numpy(w) for name, w in weights.items()}
    state["W_dec"][3] = float("nan")
    torch.save(state, tmp_path / "nan" / "sae.pt")
    assert torch.isnan(load_sae(tmp_path / "nan").W_dec[3]).all()

    write_batchtopk(tmp_path / "bad_pt", "topk")
    (tmp_path / "bad_pt" / "sae.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FaithcaseError, match="cannot read SAE weights"):
        load_sae(tmp_path / "bad_pt")

    make_sparse_coder().save_to_disk(tmp_path / "bad_st")
    (tmp_path / "bad_st" / "sae.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(FaithcaseError, match="cannot read SAE weights"):
        load_sae(tmp_path / "bad_st")

    make_lens_sae("standard").save_model(tmp_path / "bad_json")
    (tmp_path / "bad_json" / "cfg.json").write_text("{oops")
    with pytest.raises(FaithcaseError, match="cannot read SAE config"):
        load_sae(tmp_path / "bad_json")


# --- bad input, fingerprints, compatibility -----------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(FaithcaseError, match="SAE folder not found"):
        load_sae(tmp_path / "nope")


def test_unrelated_files_list_expected_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FaithcaseError) as info:
        load_sae(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for expected in ["cfg.json + sae_weights.safetensors", "cfg.json + sae.safetensors",
                     "config.json + sae.pt", "found: notes.txt"]:
        assert expected in message


def test_explicit_wrong_format(tmp_path):
    write_batchtopk(tmp_path, "topk")
    with pytest.raises(FaithcaseError, match="not a saelens SAE folder: missing cfg.json, sae_weights.safetensors"):
        load_sae(tmp_path, format="saelens")
    with pytest.raises(FaithcaseError, match="not a sparsify SAE folder"):
        load_sae(tmp_path, format="sparsify")
    with pytest.raises(FaithcaseError, match="unknown SAE format 'gguf'"):
        load_sae(tmp_path, format="gguf")
    assert load_sae(tmp_path, format="batchtopk").k == K


def test_check_compatible_and_input_width(tmp_path):
    write_batchtopk(tmp_path / "a", "topk")
    sae = load_sae(tmp_path / "a")
    other = SAE(W_enc=torch.zeros(48, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, 48),
                b_dec=torch.zeros(48), activation="relu")
    check_compatible(sae, sae)
    with pytest.raises(FaithcaseError, match=f"d_in mismatch: sae1 has {D_IN}, sae2 has 48"):
        check_compatible(sae, other)
    with pytest.raises(FaithcaseError, match="expects d_in=32"):
        sae.encode(torch.zeros(2, 48))


def test_encode_keeps_leading_dims_and_to_moves(tmp_path):
    write_batchtopk(tmp_path, "batchtopk")
    sae = load_sae(tmp_path, dtype=torch.float64)
    assert sae.dtype == torch.float64
    x = random_inputs(n=12).reshape(3, 4, D_IN)
    z = sae.to(dtype=torch.float32).encode(x)
    assert z.shape == (3, 4, D_SAE) and z.dtype == torch.float32
    torch.testing.assert_close(z.reshape(12, D_SAE), sae.to(dtype=torch.float32).encode(x.reshape(12, D_IN)))
