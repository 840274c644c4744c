"""The rehearsal builders at small shapes: offline model folder, planted SAEs, stamps, corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from faithcase.model import corpus, lm
from faithcase.tools import rehearse_build
from faithcase.run.errors import FaithcaseError
from faithcase.saes import load_sae
from faithcase.stages.match import match_features

SMALL = dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, intermediate=128)
HOOK = "blocks.1.hook_resid_pre"
D_SAE, K, N_PLANTED, SEEDS = 256, 8, 6, (42, 49)


@pytest.fixture(scope="module")
def demo_tokenizer():
    """The builders' cached copy: reading the GGUF tokenizer again would take ~10 s."""
    return rehearse_build.demo_tokenizer()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return rehearse_build.build_paper_model(tmp_path_factory.mktemp("model"), seed=0, **SMALL)


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory, model_folder):
    folder = tmp_path_factory.mktemp("saes")
    planted = rehearse_build.build_paper_saes(folder, d_in=SMALL["d_model"], d_sae=D_SAE, k=K,
                                              n_planted=N_PLANTED, seeds=SEEDS,
                                              model_folder=model_folder, hook=HOOK)
    return folder, planted


def load_hf(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, local_files_only=True)


def build_saes(folder, n_planted: int = N_PLANTED):
    """Planted SAEs of the small shape without a model (b_dec = 0)."""
    return rehearse_build.build_paper_saes(folder, d_in=64, d_sae=D_SAE, k=K, n_planted=n_planted,
                                           hook=HOOK)


def centering_tokens(tokenizer) -> torch.Tensor:
    texts = corpus.load_texts(rehearse_build.DEMO_CORPUS)
    n, seq_len = rehearse_build.CENTERING_SEQUENCES, rehearse_build.CENTERING_SEQ_LEN
    return corpus.token_sequences(texts, tokenizer, seq_len=seq_len, max_tokens=n * seq_len, seed=0)


def test_model_folder_loads_offline_and_its_hook_is_hf_hidden_state(model_folder, demo_tokenizer):
    hf_model = load_hf(model_folder)
    tokens = centering_tokens(demo_tokenizer)[:2]
    with torch.no_grad():
        hidden = hf_model(tokens, output_hidden_states=True, use_cache=False).hidden_states

    model = lm.load_model("rehearsal", path=str(model_folder), device="cpu", dtype="bfloat16")
    assert (model.n_layers, model.d_model) == (SMALL["n_layers"], SMALL["d_model"])
    acts = model.activations(tokens, HOOK)
    assert acts.dtype == torch.bfloat16 and acts.shape == hidden[1].shape
    scale = hidden[1].float().abs().max().item()
    torch.testing.assert_close(acts.float(), hidden[1].float(), rtol=2e-2, atol=2e-2 * scale)

    text = "The capital of France is Paris, and the capital of Italy is"
    assert model.tokenizer.encode(text) == demo_tokenizer.encode(text)
    config = hf_model.config
    assert config.vocab_size == len(demo_tokenizer) and config.tie_word_embeddings
    assert config.rope_parameters == rehearse_build.LLAMA_3_2_ROPE
    with safe_open(str(model_folder / "model.safetensors"), "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}


def test_model_init_is_seeded_and_not_degenerate(model_folder, tmp_path):
    again = rehearse_build.build_paper_model(tmp_path / "same", seed=0, **SMALL)
    other = rehearse_build.build_paper_model(tmp_path / "other", seed=1, **SMALL)
    def load(folder):
        return LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).state_dict()

    first, same, different = load(model_folder), load(again), load(other)
    assert all(torch.equal(first[name], same[name]) for name in first)
    projections = [name for name in first if name.endswith("proj.weight")]
    assert not any(torch.equal(first[name], different[name]) for name in projections)
    norms = first["model.embed_tokens.weight"].float().norm(dim=-1)
    assert torch.isfinite(norms).all() and norms.std() > 0


def test_paper_config_is_llama_3_2_1b():
    config = rehearse_build.paper_model_config(49152)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.intermediate_size) == (16, 2048, 32, 8, 8192)
    assert (config.head_dim, config.hidden_act, config.rms_norm_eps) == (64, "silu", 1e-5)
    assert config.tie_word_embeddings and config.max_position_embeddings == 131072
    rope = config.rope_parameters
    assert rope["rope_type"] == "llama3" and rope["rope_theta"] == 500000.0
    assert rope["factor"] == 32.0

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())  # tied: the embedding counts once
    d, inter = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * config.head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * inter + 2 * d
    assert n_params == config.vocab_size * d + config.num_hidden_layers * per_layer + d
    assert 1.0e9 < n_params < 1.1e9


def test_saes_load_as_batchtopk_with_planted_twins_as_best_matches(sae_folder, model_folder):
    folder, planted = sae_folder
    sae1, sae2 = (load_sae(folder / f"seed{s}") for s in SEEDS)
    for sae, seed in zip((sae1, sae2), SEEDS):
        shape = (sae.format, sae.activation, sae.k, sae.d_in, sae.d_sae)
        assert shape == ("batchtopk", "topk", K, 64, D_SAE)
        assert (sae.hook_name, sae.hook_layer) == (HOOK, 1)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
        assert torch.equal(sae.W_enc, sae.W_dec.T)
        config = json.loads((folder / f"seed{seed}" / "config.json").read_text())
        assert config["seed"] == seed and config["dtype"] == "torch.bfloat16"
        assert config["input_unit_norm"] is False

    pairs = planted["planted"]
    assert planted == {**json.loads((folder / "planted.json").read_text()), "planted": pairs}
    assert len(pairs) == N_PLANTED and all(i != j for i, j in pairs)
    assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == N_PLANTED

    # brute force: each planted row's nearest row on the other side is its twin, cosine > 0.99
    W1, W2 = sae1.W_dec.numpy().astype(np.float64), sae2.W_dec.numpy().astype(np.float64)
    U1 = W1 / np.linalg.norm(W1, axis=1, keepdims=True)
    U2 = W2 / np.linalg.norm(W2, axis=1, keepdims=True)
    cos = U1 @ U2.T
    for i, j in pairs:
        assert cos[i].argmax() == j and cos[:, j].argmax() == i and cos[i, j] > 0.99
    rows, columns = [i for i, _ in pairs], [j for _, j in pairs]
    unplanted = np.delete(np.delete(cos, rows, axis=0), columns, axis=1)
    assert np.abs(unplanted).max() < 0.9

    matching = match_features(sae1.W_dec, sae2.W_dec)
    assignment = matching.assignment
    matched = dict(zip(assignment.index1, assignment.index2))
    assert all(matched[i] == j for i, j in pairs)
    top = np.argsort(assignment.similarity)[::-1][:N_PLANTED]
    assert {(assignment.index1[t], assignment.index2[t]) for t in top} == set(pairs)


def test_sae_b_dec_is_the_mean_residual_and_features_fire(sae_folder, model_folder):
    folder, _ = sae_folder
    sae = load_sae(folder / f"seed{SEEDS[0]}")
    hf_model = load_hf(model_folder)
    tokens = centering_tokens(lm.load_tokenizer("rehearsal", path=str(model_folder)))
    with torch.no_grad():
        hidden = hf_model(tokens, output_hidden_states=True, use_cache=False).hidden_states
    resid = hidden[1][:, 1:].float()
    scale = resid.abs().max().item()
    torch.testing.assert_close(sae.b_dec, resid.reshape(-1, 64).mean(0), rtol=0, atol=1e-2 * scale)
    active = (sae.encode(resid) > 0).sum(-1).float()
    assert active.min() >= 1 and active.mean() >= K / 2
    assert (sae.encode(resid) > 0).any(dim=(0, 1)).sum() > K  # not always the same features


def test_rebuild_is_skipped_with_the_same_settings(tmp_path):
    model = rehearse_build.build_paper_model(tmp_path / "m", seed=0, **SMALL)
    weights = model / "model.safetensors"
    stamp_time = weights.stat().st_mtime_ns
    rehearse_build.build_paper_model(model, seed=0, **SMALL)
    assert weights.stat().st_mtime_ns == stamp_time
    without_intermediate = {key: value for key, value in SMALL.items() if key != "intermediate"}
    rehearse_build.build_paper_model(model, seed=0, **without_intermediate)  # the default: 8192
    assert weights.stat().st_mtime_ns != stamp_time
    stamp = json.loads((model / "rehearsal.json").read_text())
    assert stamp["shape"] == {**SMALL, "intermediate": 8192}
    assert AutoModelForCausalLM.from_pretrained(model).config.intermediate_size == 8192
    rebuilt_time = weights.stat().st_mtime_ns
    # the same settings, spelled out
    rehearse_build.build_paper_model(model, seed=0, **without_intermediate, intermediate=8192)
    assert weights.stat().st_mtime_ns == rebuilt_time

    saes = tmp_path / "s"
    first = build_saes(saes)
    sae_file = saes / f"seed{SEEDS[0]}" / "sae.pt"
    sae_time = sae_file.stat().st_mtime_ns
    assert build_saes(saes) == first
    assert sae_file.stat().st_mtime_ns == sae_time
    other = build_saes(saes, n_planted=N_PLANTED + 1)
    assert sae_file.stat().st_mtime_ns != sae_time and len(other["planted"]) == N_PLANTED + 1
    assert other["planted"][:N_PLANTED] == first["planted"]  # same seeds, same draws
    assert load_sae(saes / f"seed{SEEDS[0]}").b_dec.count_nonzero() == 0  # no model: b_dec = 0


def test_corpus_holds_at_least_n_tokens(tmp_path, demo_tokenizer):
    path = rehearse_build.build_rehearsal_corpus(tmp_path / "c" / "corpus.jsonl", n_tokens=4000)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(set(row) == {"text"} for row in rows)
    counts = [len(demo_tokenizer.encode(row["text"], add_special_tokens=False)) for row in rows]
    assert sum(counts) >= 4000 > sum(counts[:-1])  # no more texts than needed
    assert list(corpus.load_texts(str(path))) == [row["text"] for row in rows]
    with pytest.raises(FaithcaseError, match="holds only"):
        rehearse_build.build_rehearsal_corpus(tmp_path / "big.jsonl", n_tokens=10**7)


def test_projection_counts_the_work_each_stage_does():
    from faithcase.tools.rehearse import FULL, REDUCED, units

    assert units("scan", FULL) / units("scan", REDUCED) == 2_000_000 / 4000
    full_features, reduced_features = 2 * (3 * 10 + 40), 2 * (3 * 2 + 4)
    assert units("explain", FULL) == (full_features + 64) * 16 + full_features * 5
    assert units("explain", REDUCED) == (reduced_features + 8) * 4 + reduced_features * 5
    assert units("embed", FULL) == full_features
    assert units("match", FULL) == units("assemble", REDUCED) == 1
