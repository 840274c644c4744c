"""Shared latents under both definitions (FaithfulSAE: decoder only; Paulo & Belrose: decoder and
encoder agree), against the second paper's own computation (scipy on encoder and decoder rows);
the MLP-out hook site sparsify's `layers.N.mlp` SAEs read; the Pythia-160M seeds config offline."""

from __future__ import annotations

import os
from types import SimpleNamespace

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's eager decoder on CPU

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from conftest import TINY_CONFIG  # noqa: E402
from faithcase.cli import app  # noqa: E402
from faithcase.artifacts import MatchArtifact  # noqa: E402
from faithcase.config import MatchConfig, load_config, parse_config  # noqa: E402
from faithcase.numerics.overlap import match_saes  # noqa: E402
from faithcase.saes import SAE, load_sae, select_hook_subfolder  # noqa: E402
from faithcase.stages.match import match  # noqa: E402
from overlap_reference import sae_overlap  # noqa: E402

PYTHIA = "pkg:faithcase/configs/pythia-160m-seeds.yaml"


def related_weights(n: int, base: torch.Tensor, seed: int, d_in: int):
    """(W_enc [d_in, n], W_dec [n, d_in]): rows of `base`, permuted, with per-latent noise; the
    encoder noisier, so the two assignments part on some latents."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.nn.functional.normalize(base[torch.randperm(len(base), generator=g)[:n]], dim=-1)
    scale = 0.2 + 1.3 * torch.rand(n, 1, generator=g)
    W_dec = rows + scale * torch.randn(n, d_in, generator=g) / d_in ** 0.5
    W_enc = rows + 1.4 * scale * torch.randn(n, d_in, generator=g) / d_in ** 0.5
    return W_enc.T.contiguous(), W_dec


def write_sparsify_sae(folder, W_enc: torch.Tensor, W_dec: torch.Tensor, k: int = 4):
    """A sparsify checkpoint written by sparsify itself; returns the coder."""
    from sparsify import SparseCoder, SparseCoderConfig

    coder = SparseCoder(W_enc.shape[0], SparseCoderConfig(num_latents=W_enc.shape[1], k=k),
                        dtype=torch.float32)
    with torch.no_grad():
        coder.encoder.weight.copy_(W_enc.T)
        coder.W_dec.copy_(W_dec)
    coder.save_to_disk(folder)
    return coder


def check_against_sae_overlap(matching, enc1, enc2, dec1, dec2) -> dict:
    expected = sae_overlap(enc1, enc2, dec1, dec2)
    encoder = matching.encoder
    assert encoder.reason is None and encoder.faithfulsae == matching.stats.shared_ratio
    assert encoder.faithfulsae == pytest.approx(expected["faithfulsae"], abs=1e-12)
    assert encoder.paulo_belrose == pytest.approx(expected["paulo_belrose"], abs=1e-12)
    assert encoder.agreement == pytest.approx(expected["agreement"], abs=1e-12)
    assert encoder.index2 == expected["enc_cols"].tolist()  # each latent's encoder partner
    assert encoder.similarity == pytest.approx(expected["enc_cos"].tolist(), abs=1e-5)
    assert 0 < encoder.paulo_belrose < encoder.faithfulsae and 0 < encoder.agreement < 1
    return expected


def test_both_definitions_on_sparsify_saes_against_sae_overlap(tmp_path):
    """Two sparsify checkpoints (written by sparsify): the match stage's encoder assignment reads
    their `encoder.weight` rows, as the second paper's script does."""
    d_in, n = 24, 48
    base = torch.randn(n, d_in, generator=torch.Generator().manual_seed(0))
    coders = [write_sparsify_sae(tmp_path / f"s{seed}", *related_weights(n, base, seed, d_in))
              for seed in (1, 2)]
    saes = [load_sae(tmp_path / f"s{seed}") for seed in (1, 2)]
    artifact = match(*saes, MatchConfig(threshold=0.7))
    enc = [c.encoder.weight.detach().numpy().astype(np.float64) for c in coders]
    dec = [c.W_dec.detach().numpy().astype(np.float64) for c in coders]
    check_against_sae_overlap(artifact, enc[0], enc[1], dec[0], dec[1])
    again = MatchArtifact.model_validate_json(artifact.model_dump_json())
    assert again.encoder == artifact.encoder


def test_both_definitions_with_unequal_sizes_and_the_sparse_solver():
    d_in = 16
    base = torch.randn(64, d_in, generator=torch.Generator().manual_seed(3))
    (enc1, dec1), (enc2, dec2) = related_weights(40, base, 4, d_in), related_weights(56, base, 5, d_in)
    sae1, sae2 = SimpleNamespace(W_enc=enc1, W_dec=dec1), SimpleNamespace(W_enc=enc2, W_dec=dec2)
    for solver in ("dense", "sparse"):
        matching = match_saes(sae1, sae2, 0.7, solver, k=4, depth=8)
        assert matching.stats.n_matched == 40 and matching.encoder.solver.name == solver
        assert matching.encoder.solver.exact or matching.encoder.solver.certified
        check_against_sae_overlap(matching, enc1.T.double().numpy(), enc2.T.double().numpy(),
                                  dec1.double().numpy(), dec2.double().numpy())


def test_no_usable_encoder_reports_the_decoder_definition_only():
    d_in, n = 8, 12
    W_dec = torch.randn(n, d_in, generator=torch.Generator().manual_seed(0))
    plain = SimpleNamespace(W_enc=W_dec.T.clone(), W_dec=W_dec)
    cases = {"no encoder weights": SimpleNamespace(W_dec=W_dec),
             "a transcoder": SimpleNamespace(W_enc=W_dec.T.clone(), W_dec=W_dec, transcoder=True),
             "every encoder direction is zero": SimpleNamespace(W_enc=torch.zeros(d_in, n),
                                                                W_dec=W_dec),
             "does not pair with the decoder": SimpleNamespace(W_enc=torch.ones(d_in, n + 1),
                                                               W_dec=W_dec)}
    for why, sae in cases.items():
        for pair, side in (((plain, sae), "SAE 2"), ((sae, plain), "SAE 1")):
            encoder = match(*pair).encoder
            assert encoder.reason.startswith(f"{side}: ") and why in encoder.reason
            assert encoder.faithfulsae == 1.0  # the same decoder
            assert (encoder.paulo_belrose, encoder.agreement, encoder.index2) == (None, None, None)
    tied = match(plain, plain).encoder  # tied weights, the same SAE: everything agrees
    assert (tied.faithfulsae, tied.paulo_belrose, tied.agreement) == (1.0, 1.0, 1.0)


# ---------------------------------------------------------------- the MLP-out hook site


def mlp_output(hf_model, layers, layer: int, tokens: torch.Tensor) -> torch.Tensor:
    """The output of module `layers[layer].mlp` in a plain HF forward: what sparsify's forward
    hook on `layers.N.mlp` reads (the forward stops there)."""
    class Captured(Exception):
        pass

    def capture(module, inputs, output):
        raise Captured(output.detach().clone())

    handle = layers[layer].mlp.register_forward_hook(capture)
    try:
        with torch.no_grad():
            hf_model(tokens, use_cache=False)
    except Captured as captured:
        return captured.args[0]
    finally:
        handle.remove()
    raise AssertionError(f"layers[{layer}].mlp did not run")


def test_an_sae_at_hook_mlp_out_reads_the_mlp_output_on_the_demo_model(tmp_path, demo_lm):
    from faithcase.run.runtime import Runtime

    layer, hook = 3, "blocks.3.hook_mlp_out"
    g = torch.Generator().manual_seed(0)
    coders = {name: write_sparsify_sae(tmp_path / "seeds" / name,
                                       torch.randn(576, 64, generator=g) / 24,
                                       torch.randn(64, 576, generator=g) / 24)
              for name in ("layers.3", "layers.3.mlp")}
    sae = load_sae(tmp_path / "seeds", hook=hook)  # the mlp subfolder, not the residual one
    assert sae.path == str(tmp_path / "seeds" / "layers.3.mlp")
    assert (sae.hook_name, sae.hook_layer) == (hook, layer)
    data = yaml.safe_load(TINY_CONFIG) | {"hook": hook, "out_dir": str(tmp_path / "run")}
    data |= {"sae1": {"path": "seeds"}, "sae2": {"path": "seeds/layers.3.mlp"}}
    rt = Runtime(parse_config(data, tmp_path))
    rt.__dict__["lm"] = demo_lm
    assert rt.sae("sae1").hook_name == rt.sae("sae2").hook_name == hook  # one site: no error
    _, tokens, resid, _ = next(rt.stream(rt.sequences[:2], rt.cfg.hook, "mlp out"))
    plain = demo_lm.plain_model()
    expected = mlp_output(plain, plain.model.layers, layer, tokens)
    torch.testing.assert_close(resid, expected, atol=2e-5, rtol=1e-5)
    assert (resid - mlp_output(plain, plain.model.layers, layer - 1, tokens)).abs().max() > 1
    with torch.no_grad():
        top_acts, top_indices, _ = coders["layers.3.mlp"].encode(expected.reshape(-1, 576))
    reference = torch.zeros(len(top_acts), 64).scatter_(-1, top_indices, top_acts)
    torch.testing.assert_close(sae.encode(resid).reshape(-1, 64), reference, atol=1e-4,
                               rtol=1e-4)


def test_hook_mlp_out_on_a_pythia_architecture(demo_tokenizer):
    """A small random GPT-NeoX (Pythia's architecture, parallel residual): the bridge's
    blocks.1.hook_mlp_out is the output of module gpt_neox.layers.1.mlp."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from faithcase.model.lm import wrap_model

    config = GPTNeoXConfig(vocab_size=len(demo_tokenizer), hidden_size=64, num_hidden_layers=3,
                           num_attention_heads=4, intermediate_size=256,
                           max_position_embeddings=64, use_parallel_residual=True)
    torch.manual_seed(0)
    hf_model = GPTNeoXForCausalLM(config).eval()
    tokens = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(1))
    expected = mlp_output(hf_model, hf_model.gpt_neox.layers, 1, tokens)
    model = wrap_model("EleutherAI/pythia-160m", hf_model, demo_tokenizer)
    torch.testing.assert_close(model.activations(tokens, "blocks.1.hook_mlp_out"), expected,
                               atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- the Pythia-160M seeds


def test_pythia_seeds_config_and_its_offline_check(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line
    cfg = load_config(PYTHIA)
    assert (cfg.model.name, cfg.hook) == ("EleutherAI/pythia-160m", "blocks.6.hook_mlp_out")
    names = cfg.matrix_names()
    assert names == [f"seed{n}" for n in range(1, 10)]
    for n, name in enumerate(names, start=1):
        sae = cfg.sae_config(name)
        assert (sae.hf, sae.id, sae.seed) == ("EleutherAI/sae_overlap",
                                              f"k32-sae-mlp-32k-seed{n}/layers.6.mlp", n)
    assert select_hook_subfolder(["layers.6", "layers.6.mlp"], cfg.hook, tmp_path) == "layers.6.mlp"
    done = CliRunner().invoke(app, ["check", "--config", PYTHIA, "--out-dir", str(tmp_path / "run")])
    assert done.exit_code == 2, done.output[-3000:]
    assert "Traceback" not in done.output
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert lines[-1] == ("error: 11 of 12 components cannot run: model, corpus, "
                         + ", ".join(names) + " (see the table)")
    table = " ".join(done.output.split())
    assert "Could not load model 'EleutherAI/pythia-160m'" in table
    assert "hub repo 'EleutherAI/sae_overlap' is not in the Hugging Face cache" in table
    assert not (tmp_path / "run").exists()
