"""The language model wrapper on the embedded demo model (and a tiny local Llama)."""

from __future__ import annotations

import pytest
import torch

from conftest import DEMO_GGUF, REFERENCE_TEXT, bos_tokens

from faithcase.model import hooks, lm
from faithcase.tools.bench import bench_model
from faithcase.run.errors import FaithcaseError

HOOK = "blocks.12.hook_resid_pre"
STEER_LAYER = 2
PLACEHOLDER_QUESTION = 'What is the meaning of the word "X"?'
ANSWER_PREFIX = 'The meaning of the word "X" is "'


def chat_prompt(model: lm.LanguageModel, question: str, answer_prefix: str = "") -> list[int]:
    text = model.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                               add_generation_prompt=True, tokenize=False)
    return model.tokenizer.encode(text + answer_prefix, add_special_tokens=False)


@pytest.fixture(scope="module")
def prompts(demo_lm):
    """The placeholder prompt, twice (rows of one length)."""
    return [chat_prompt(demo_lm, PLACEHOLDER_QUESTION, ANSWER_PREFIX)] * 2


# ---------------------------------------------------------------- loading

def test_demo_model_loads_from_gguf(demo_lm):
    assert type(demo_lm.hf_model).__name__ == "LlamaForCausalLM"
    assert (demo_lm.n_layers, demo_lm.d_model) == (30, 576)
    assert demo_lm.bos_token_id == 1 and demo_lm.tokenizer.decode([1]) == "<|im_start|>"
    assert demo_lm.has_chat_template
    assert demo_lm.device == torch.device("cpu")
    assert not demo_lm.hf_model.training
    assert not any(p.requires_grad for p in demo_lm.hf_model.parameters())


def test_the_dequantized_cache_equals_the_gguf_load(demo_lm, demo_plain_reference, tmp_path,
                                                    monkeypatch):
    """The session's model came through the cache (model/gguf_cache.py): its weights, logits and
    tokenizer equal a direct GGUF load; where the cache cannot be written, GGUF is read directly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faithcase.model import gguf_cache
    from faithcase.run.paths import resolve_path

    file = resolve_path(DEMO_GGUF)
    assert (gguf_cache.cache_folder(file) / gguf_cache.COMPLETE).is_file()
    kwargs = {"gguf_file": file.name, "local_files_only": True}
    direct = AutoModelForCausalLM.from_pretrained(str(file.parent), dtype=torch.float32, **kwargs)
    cached = demo_lm.plain_model().state_dict()
    assert all(torch.equal(tensor, cached[name]) for name, tensor in direct.state_dict().items())
    tokens = demo_plain_reference["tokens"]
    with torch.no_grad():
        assert torch.equal(direct(tokens).logits, demo_plain_reference["logits"])
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), **kwargs)
    text = demo_lm.tokenizer.apply_chat_template([{"role": "user", "content": REFERENCE_TEXT}],
                                                 tokenize=False, add_generation_prompt=True)
    assert tokenizer(text)["input_ids"] == demo_lm.tokenizer(text)["input_ids"]
    assert tokenizer.chat_template == demo_lm.tokenizer.chat_template

    blocked = tmp_path / "read-only"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(blocked))
    source, extra = lm.model_source("x", gguf=DEMO_GGUF)
    assert (source, extra["gguf_file"]) == (str(file.parent), file.name)


def test_load_model_errors(tmp_path):
    with pytest.raises(FaithcaseError, match="GGUF model file not found"):
        lm.load_model("x", gguf=str(tmp_path / "missing.gguf"))
    with pytest.raises(FaithcaseError, match="config.json"):
        lm.load_model("x", path=str(tmp_path))
    with pytest.raises(FaithcaseError, match="not both"):
        lm.load_model("x", path=str(tmp_path), gguf=str(tmp_path / "m.gguf"))
    with pytest.raises(FaithcaseError, match="Unknown dtype"):
        lm.resolve_dtype("float13")
    assert lm.resolve_device("cpu") == "cpu"
    assert lm.resolve_device("auto") in ("cpu", "cuda")


def test_bridge_logits_match_plain_hf(demo_lm, demo_plain_reference):
    logits = demo_lm.full_logits(demo_plain_reference["tokens"])
    max_diff = (logits - demo_plain_reference["logits"]).abs().max().item()
    print(f"\nbridge vs plain HF logits: max abs diff {max_diff:.3g}")
    assert max_diff <= 1e-4


# ---------------------------------------------------------------- activations

def test_truncated_pass_equals_full_pass_and_hf(demo_lm, demo_plain_reference):
    tokens = demo_plain_reference["tokens"]
    later_calls = []

    def count(tensor, hook):
        later_calls.append(hook.name)
        return tensor

    with demo_lm.bridge.hooks(fwd_hooks=[("blocks.13.hook_resid_pre", count), ("unembed.hook_out", count)]):
        truncated = demo_lm.activations(tokens, HOOK)
    assert later_calls == []  # nothing after the hooked layer ran
    _, cache = demo_lm.bridge.run_with_cache(tokens, names_filter=HOOK, return_cache_object=False)
    assert truncated.shape == (1, tokens.shape[1], 576)
    assert torch.equal(truncated, cache[HOOK])
    hf_diff = (truncated - demo_plain_reference["hidden_states"][12]).abs().max().item()
    print(f"\ntruncated {HOOK} vs plain HF hidden_states[12]: max abs diff {hf_diff:.3g}")
    assert hf_diff <= 1e-4


def test_hook_names(demo_lm):
    assert demo_lm.hook_layer(HOOK) == 12
    demo_lm.check_hook("blocks.29.hook_resid_post")
    with pytest.raises(FaithcaseError, match="out of range"):
        demo_lm.check_hook("blocks.30.hook_resid_pre")
    with pytest.raises(FaithcaseError, match="Unknown hook"):
        demo_lm.check_hook("blocks.3.hook_nonsense")
    with pytest.raises(FaithcaseError, match="not a block hook"):
        demo_lm.hook_layer("hook_embed")


# ---------------------------------------------------------------- steering

def test_steering_changes_only_chosen_positions_and_layers(demo_lm, demo_plain_reference):
    tokens = demo_plain_reference["tokens"]
    layer, pos = 4, 6
    reads = ["blocks.3.hook_resid_post", "blocks.4.hook_resid_pre", "blocks.6.hook_resid_pre"]
    vector = torch.randn(1, 576, generator=torch.Generator().manual_seed(0)) * 50
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    base_logits, base = demo_lm.run_with_steering(tokens, layer, mask, vector, "replace", reads)
    mask[0, pos] = True
    logits, steered = demo_lm.run_with_steering(tokens, layer, mask, vector, "replace", reads)
    _, added = demo_lm.run_with_steering(tokens, layer, mask, vector, "add", ["blocks.4.hook_resid_pre"])

    assert torch.allclose(base_logits, demo_lm.full_logits(tokens), atol=1e-6)  # empty mask: no-op
    assert torch.equal(steered["blocks.3.hook_resid_post"], base["blocks.3.hook_resid_post"])
    at_hook, base_at_hook = steered["blocks.4.hook_resid_pre"][0], base["blocks.4.hook_resid_pre"][0]
    assert torch.equal(at_hook[pos], vector[0])
    others = torch.arange(tokens.shape[1]) != pos
    assert torch.equal(at_hook[others], base_at_hook[others])
    assert torch.allclose(added["blocks.4.hook_resid_pre"][0, pos], base_at_hook[pos] + vector[0])
    later, base_later = steered["blocks.6.hook_resid_pre"][0], base["blocks.6.hook_resid_pre"][0]
    assert torch.allclose(later[:pos], base_later[:pos], atol=1e-6)  # causal: earlier positions untouched
    assert (later[pos:] - base_later[pos:]).abs().amax(dim=-1).min() > 1e-3
    assert torch.allclose(logits[0, :pos], base_logits[0, :pos], atol=1e-5)
    assert (logits[0, pos:] - base_logits[0, pos:]).abs().max() > 1e-2


def test_steering_hook_ignores_other_sequence_lengths():
    mask = torch.tensor([[False, True, False]])
    hook = hooks.steering_hook(mask, torch.ones(1, 4), "replace")
    step = torch.zeros(1, 1, 4)  # a KV-cached generation step: one new token
    assert hook(step) is step
    prompt = hook(torch.zeros(1, 3, 4))
    assert prompt[0, 1].tolist() == [1.0] * 4 and prompt[0, [0, 2]].abs().sum() == 0
    with pytest.raises(FaithcaseError):
        hooks.steering_hook(mask, torch.ones(1, 4), "multiply")


def test_last_position_logits(demo_lm, prompts):
    tokens = torch.tensor(prompts)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    zeros = torch.zeros(len(prompts), demo_lm.d_model)
    last, cache = demo_lm.run_with_steering(tokens, STEER_LAYER, mask, zeros, "add", ["blocks.29.hook_resid_post"],
                                            last_position_only=True)
    full, _ = demo_lm.run_with_steering(tokens, STEER_LAYER, mask, zeros, "add")
    assert last.shape == (2, full.shape[-1])
    assert torch.allclose(last, full[:, -1], atol=1e-4)
    assert cache["blocks.29.hook_resid_post"].shape == (*tokens.shape, 576)


# ---------------------------------------------------------------- a local folder

@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory, demo_tokenizer):
    """A tiny random Llama (2 layers, d_model 64) saved with save_pretrained, with the demo tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    config = LlamaConfig(vocab_size=len(demo_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    return folder


def test_local_folder_loads_offline(tiny_llama_folder):
    from transformers import LlamaForCausalLM

    model = lm.load_model("tiny-llama-not-on-the-hub", path=str(tiny_llama_folder), device="cpu")
    assert (model.n_layers, model.d_model) == (2, 64)
    plain = LlamaForCausalLM.from_pretrained(tiny_llama_folder).eval()
    tokens = bos_tokens(model, ["a local model", "loaded offline, twice as long"])
    with torch.no_grad():
        reference = plain(tokens, output_hidden_states=True, use_cache=False)
    acts = model.activations(tokens, "blocks.1.hook_resid_pre")
    assert (acts - reference.hidden_states[1]).abs().max() <= 1e-5
    assert (model.full_logits(tokens) - reference.logits).abs().max() <= 1e-4


def test_bench_model_reports_both_speeds(tiny_llama_folder):
    model = lm.load_model("tiny-llama", path=str(tiny_llama_folder), device="cpu")
    result = bench_model(model, "blocks.1.hook_resid_pre", n_tokens=64, batch=2, seq_len=16)
    assert result["tokens"] == 64 and result["layer"] == 1
    assert result["truncated_tokens_per_s"] > 0 and result["full_tokens_per_s"] > 0
    assert result["speedup"] == pytest.approx(result["truncated_tokens_per_s"] / result["full_tokens_per_s"])
