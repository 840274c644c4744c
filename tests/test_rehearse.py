"""The rehearsal builders at small shapes: offline model folder (Llama 3 tokenizer), planted SAEs,
stamps, corpus, the explain prompt check and the GPU-check preset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from faithcase.model import corpus, lm
from faithcase.run.paths import resolve_path
from faithcase.tools import rehearse_build
from faithcase.saes import load_sae
from faithcase.stages.match import match_features

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_models") is None,
                                reason="the rehearsal's Llama 3 tokenizer needs llama-models")
SMALL = dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, intermediate=128)
HOOK = "blocks.1.hook_resid_pre"
D_SAE, K, N_PLANTED, SEEDS = 256, 8, 6, (42, 49)


@pytest.fixture(scope="module")
def llama3():
    """The builders' cached copy: building it again from the BPE ranks would take seconds."""
    return rehearse_build.rehearsal_tokenizer()


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


def test_model_folder_loads_offline_and_its_hook_is_hf_hidden_state(model_folder, llama3):
    hf_model = load_hf(model_folder)
    tokens = centering_tokens(llama3)[:2]
    with torch.no_grad():
        hidden = hf_model(tokens, output_hidden_states=True, use_cache=False).hidden_states

    model = lm.load_model("rehearsal", path=str(model_folder), device="cpu", dtype="bfloat16")
    assert (model.n_layers, model.d_model) == (SMALL["n_layers"], SMALL["d_model"])
    acts = model.activations(tokens, HOOK)
    assert acts.dtype == torch.bfloat16 and acts.shape == hidden[1].shape
    scale = hidden[1].float().abs().max().item()
    torch.testing.assert_close(acts.float(), hidden[1].float(), rtol=2e-2, atol=2e-2 * scale)

    text = "The capital of France is Paris, and the capital of Italy is"
    assert model.tokenizer.encode(text) == llama3.encode(text)
    assert model.tokenizer.chat_template == llama3.chat_template
    config = hf_model.config
    assert config.vocab_size == len(llama3) == 128_256 and config.tie_word_embeddings
    assert (config.bos_token_id, config.eos_token_id) == (128000, 128001)
    assert config.rope_parameters == rehearse_build.LLAMA_3_2_ROPE
    with safe_open(str(model_folder / "model.safetensors"), "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}
        assert "lm_head.weight" not in weights.keys()  # tied: the embedding is the unembedding
    assert hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()


def test_model_dtype_auto_is_the_declared_bf16_unless_slow_here(model_folder, monkeypatch):
    monkeypatch.setenv("FAITHCASE_HALF_MATMUL", "fast")
    fast = lm.model_dtype("rehearsal", path=str(model_folder), device="cpu")
    assert (fast.declared, fast.used, fast.reason) == (torch.bfloat16, torch.bfloat16, "")
    monkeypatch.setenv("FAITHCASE_HALF_MATMUL", "slow")
    slow = lm.model_dtype("rehearsal", path=str(model_folder), device="cpu")
    assert (slow.declared, slow.used) == (torch.bfloat16, torch.float32)
    assert slow.describe("rehearsal") == ("rehearsal declares bfloat16; computing in float32 "
                                          "(bf16 matmul 50x slower than float32 on this CPU)")
    assert lm.model_dtype("rehearsal", path=str(model_folder), device="cpu",
                          dtype="bfloat16").used == torch.bfloat16  # explicit wins
    model = lm.load_model("rehearsal", path=str(model_folder), device="cpu")
    assert model.hf_model.dtype == torch.float32


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
    config = rehearse_build.paper_model_config(128_256)
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
    assert 1.23e9 < n_params < 1.24e9  # Llama-3.2-1B: 1.24B with its 128,256-token embedding


def test_saes_load_as_batchtopk_with_planted_twins_as_best_matches(sae_folder, model_folder):
    folder, planted = sae_folder
    sae1, sae2 = (load_sae(folder / f"seed{s}") for s in SEEDS)
    for sae, seed in zip((sae1, sae2), SEEDS):
        shape = (sae.format, sae.activation, sae.k, sae.d_in, sae.d_sae)
        assert shape == ("batchtopk", "topk", K, 64, D_SAE)
        assert (sae.hook_name, sae.hook_layer) == (HOOK, 1)
        # the files hold float32; the loader may cast to the declared bfloat16
        torch.testing.assert_close(sae.W_dec.float().norm(dim=1), torch.ones(D_SAE), atol=1e-2,
                                   rtol=0)
        assert torch.equal(sae.W_enc, sae.W_dec.T)
        config = json.loads((folder / f"seed{seed}" / "config.json").read_text())
        assert config["seed"] == seed and config["dtype"] == "torch.bfloat16"
        assert config["input_unit_norm"] is False

    pairs = planted["planted"]
    assert planted == {**json.loads((folder / "planted.json").read_text()), "planted": pairs}
    assert len(pairs) == N_PLANTED and all(i != j for i, j in pairs)
    assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == N_PLANTED

    # brute force: each planted row's nearest row on the other side is its twin, cosine > 0.99
    W1, W2 = (sae.W_dec.double().numpy() for sae in (sae1, sae2))
    U1 = W1 / np.linalg.norm(W1, axis=1, keepdims=True)
    U2 = W2 / np.linalg.norm(W2, axis=1, keepdims=True)
    cos = U1 @ U2.T
    for i, j in pairs:
        assert cos[i].argmax() == j and cos[:, j].argmax() == i and cos[i, j] > 0.99
    rows, columns = [i for i, _ in pairs], [j for _, j in pairs]
    unplanted = np.delete(np.delete(cos, rows, axis=0), columns, axis=1)
    assert np.abs(unplanted).max() < 0.9

    matching = match_features(sae1.W_dec.float(), sae2.W_dec.float())
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
    torch.testing.assert_close(sae.b_dec.float(), resid.reshape(-1, 64).mean(0), rtol=0,
                               atol=1e-2 * scale)
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


def test_corpus_holds_at_least_n_tokens(tmp_path, llama3):
    path = rehearse_build.build_rehearsal_corpus(tmp_path / "c" / "corpus.jsonl", n_tokens=4000)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(set(row) == {"text"} for row in rows)
    counts = [len(llama3.encode(row["text"], add_special_tokens=False)) for row in rows]
    assert sum(counts) >= 4000 > sum(counts[:-1])  # no more texts than needed
    assert list(corpus.load_texts(str(path))) == [row["text"] for row in rows]

    demo = list(corpus.load_texts(rehearse_build.DEMO_CORPUS))
    demo_tokens = sum(len(ids) for ids in llama3(demo, add_special_tokens=False)["input_ids"])
    big = rehearse_build.build_rehearsal_corpus(tmp_path / "big.jsonl", n_tokens=demo_tokens + 1)
    texts = list(corpus.load_texts(str(big)))
    assert texts[:len(demo)] == demo and texts[len(demo):] == demo[:len(texts) - len(demo)]
    assert len(texts) > len(demo)  # started over from the first text


def test_projection_counts_the_work_each_stage_does():
    from faithcase.tools.rehearse import FULL, REDUCED, units

    assert units("scan", FULL) / units("scan", REDUCED) == 2_000_000 / 4000
    full_features, reduced_features = 2 * (3 * 10 + 40), 2 * (3 * 2 + 4)
    assert units("explain", FULL) == (full_features + 64) * 16 + full_features * 5
    assert units("explain", REDUCED) == (reduced_features + 8) * 4 + reduced_features * 5
    assert units("embed", FULL) == full_features
    assert units("match", FULL) == units("assemble", REDUCED) == 1


def test_prompt_check_on_the_rehearsal_tokenizer(model_folder, llama3):
    from faithcase.tools.rehearse import check_prompts

    prompts = check_prompts(model_folder)
    base, chat = prompts["auto"], prompts["always"]
    plain = 'Q: What is the meaning of the word "X"?\nA: The meaning of the word "X" is "'
    assert base == prompts["never"] and base.text == plain and not base.chat
    assert base.tokens == llama3.encode(plain)  # one BOS, then the plain text
    x = llama3.convert_tokens_to_ids("X")
    assert [base.tokens[p] for p in base.positions] == [x, x]
    assert [chat.tokens[p] for p in chat.positions] == [x, x]
    assert "Today Date: 26 Jul 2024" in chat.text and chat.tokens.count(128000) == 1
    assert {128006, 128007, 128009} <= set(chat.tokens)
    assert not {128006, 128007, 128009} & set(base.tokens)


def test_gpu_check_uses_the_paper_batches_and_projects_to_2m_tokens():
    from faithcase.tools import rehearse

    paper = yaml.safe_load(resolve_path("pkg:faithcase/configs/llama-3.2-1b.yaml").read_text())
    assert rehearse.PAPER_BATCHES == {"seq_len": paper["corpus"]["seq_len"],
                                      "corpus": paper["corpus"]["batch_size"],
                                      "explain": paper["explain"]["batch_size"]}
    assert paper["explain"]["chat_template"] == "never"
    assert rehearse.FULL["tokens"] == paper["corpus"]["max_tokens"] == 2_000_000
    assert rehearse.GPU_CHECK == rehearse.FULL | {"tokens": 200_000}
    workload, device, on_gpu = rehearse.gpu_check_preset()
    assert (workload, device) == ((rehearse.GPU_CHECK, "cuda") if torch.cuda.is_available()
                                  else (rehearse.REDUCED, "cpu")) and on_gpu == (device == "cuda")
    row = rehearse.stage_row("scan", {"seconds": 12.0, "load": 2.0, "peak_rss_gib": 1.0},
                             rehearse.GPU_CHECK)
    assert row["tokens_per_s"] == 20_000 and row["factor"] == 10 and row["projected"] == 102
    assert row["peak_gpu_gib"] is None
    explain = rehearse.stage_row("explain", {"seconds": 5.0, "load": 1.0, "peak_rss_gib": 1.0,
                                             "peak_gpu_gib": 3.5}, rehearse.GPU_CHECK)
    assert explain["tokens_per_s"] is None and explain["projected"] == 5.0
    assert explain["peak_gpu_gib"] == 3.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_check_without_cuda_exits_2_and_says_what_torch_sees(tmp_path):
    from typer.testing import CliRunner

    from faithcase.cli import app

    done = CliRunner().invoke(app, ["rehearse", "--gpu-check", "--work-dir", str(tmp_path / "w")])
    assert done.exit_code == 2
    assert f"torch.version.cuda {torch.version.cuda}" in done.output
    assert "the GPU check needs CUDA" in done.output
    assert not (tmp_path / "w").exists()  # nothing built
