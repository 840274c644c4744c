"""The explain prompt's chat-template choice (auto / always / never), its fixed date, and the
Llama 3 tokenizer built offline from llama-models (Llama-3.2-1B's vocabulary)."""

from __future__ import annotations

import copy
import importlib.util
from datetime import datetime

import pytest

from faithcase.config import ExplainConfig
from faithcase.model import lm
from faithcase.model.prompt import build_prompt, render_chat
from faithcase.run.errors import FaithcaseError

needs_llama_models = pytest.mark.skipif(importlib.util.find_spec("llama_models") is None,
                                        reason="llama-models is not installed")
BASE, INSTRUCT = "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B-Instruct"
USER, PREFIX = 'What is the meaning of the word "X"?', 'The meaning of the word "X" is "'
# Llama 3.2's rendering of one user message with the generation prompt, written out by hand
LLAMA_CHAT = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
              "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
              f"<|start_header_id|>user<|end_header_id|>\n\n{USER}<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")
HEADER_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
TEXTS = ["The capital of France is Paris, and the capital of Italy is",
         "def f(x):\n    return x ** 2  # squares\n\n\n", "can't WON'T I'll 1234567 3.14159",
         "héllo wörld ﬁ 日本語 😀\t tabs  and   spaces ", ""]


@pytest.fixture(scope="module")
def llama3():
    if importlib.util.find_spec("llama_models") is None:
        pytest.skip("llama-models is not installed")
    from faithcase.tools.llama3_tokenizer import llama3_tokenizer

    return llama3_tokenizer()


def tokenizer_model(tokenizer, name: str) -> lm.LanguageModel:
    """What build_prompt reads of a model (its tokenizer and name), without weights."""
    return lm.LanguageModel(bridge=None, hf_model=None, tokenizer=tokenizer, name=name)


def without_template(tokenizer):
    other = copy.copy(tokenizer)  # a shallow copy: the shared tokenizer keeps its template
    other.chat_template = None
    return other


def pieces(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def test_auto_rule_reads_the_model_name():
    instruct = ["HuggingFaceTB/SmolLM2-135M-Instruct", INSTRUCT, "google/gemma-2-2b-it",
                "meta-llama/Llama-2-7b-chat-hf", "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
                "mistralai/Mistral-7B-Instruct-v0.3"]
    base = [BASE, "gpt2", "EleutherAI/pythia-70m", "someone/italian-gpt", "rehearsal/llama-3.2-1b"]
    assert all(lm.instruction_tuned_name(name) for name in instruct)
    assert not any(lm.instruction_tuned_name(name) for name in base)


def test_demo_prompt_is_the_chat_template_under_auto(demo_tokenizer):
    demo = tokenizer_model(demo_tokenizer, "HuggingFaceTB/SmolLM2-135M-Instruct")
    auto = build_prompt(demo, ExplainConfig())
    expected = demo_tokenizer.apply_chat_template([{"role": "user", "content": USER}],
                                                  add_generation_prompt=True, tokenize=False)
    assert auto.chat and auto.text == expected + PREFIX
    assert auto.tokens == demo_tokenizer.encode(auto.text, add_special_tokens=False)
    assert auto.tokens[0] == 1 and auto.tokens.count(1) == 3  # <|im_start|> opens each turn
    assert auto.positions == [32, 46] and auto.placeholder_id == 72
    assert build_prompt(demo, ExplainConfig(chat_template="always")) == auto
    never = build_prompt(demo, ExplainConfig(chat_template="never"))
    assert not never.chat and never.text == ExplainConfig().plain_template
    assert list(auto.pieces) == pieces(demo_tokenizer, auto.tokens)


def test_always_needs_a_template(demo_tokenizer):
    plain_only = tokenizer_model(without_template(demo_tokenizer), "some/model-Instruct")
    with pytest.raises(FaithcaseError, match="has no chat template; use auto or never"):
        build_prompt(plain_only, ExplainConfig(chat_template="always"))
    assert not build_prompt(plain_only, ExplainConfig()).chat  # auto: the plain template


@needs_llama_models
def test_llama3_tokenizer_has_llama_3_2_vocabulary(llama3):
    assert len(llama3) == 128_256
    named = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006,
             "<|end_header_id|>": 128007, "<|eot_id|>": 128009,
             "<|reserved_special_token_247|>": 128255}
    assert {token: llama3.convert_tokens_to_ids(token) for token in named} == named
    assert (llama3.bos_token_id, llama3.eos_token_id) == (128000, 128001)
    assert llama3("Hello")["input_ids"][0] == 128000  # BOS in front, as Llama 3's tokenizer


@needs_llama_models
def test_llama3_tokenizer_equals_tiktoken_and_round_trips(llama3):
    tiktoken = pytest.importorskip("tiktoken")  # a dependency of llama-models
    from faithcase.tools.llama3_tokenizer import SPLIT_PATTERN, bpe_file, read_ranks

    ranks = read_ranks(bpe_file())
    assert len(ranks) == 128_000 and sorted(ranks.values()) == list(range(128_000))
    reference = tiktoken.Encoding("llama3", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                                  special_tokens={})
    for text in TEXTS:
        ids = llama3.encode(text, add_special_tokens=False)
        assert ids == reference.encode(text)
        assert llama3.decode(ids) == text == reference.decode(ids)
    assert llama3.encode(" Paris", add_special_tokens=False) == [ranks[b" Paris"]]


@needs_llama_models
def test_base_model_prompt_is_plain_with_x_one_token(llama3):
    cfg = ExplainConfig()
    base = tokenizer_model(llama3, BASE)
    auto, never = build_prompt(base, cfg), build_prompt(base, ExplainConfig(chat_template="never"))
    assert auto == never and not auto.chat and auto.text == cfg.plain_template
    assert auto.tokens == llama3.encode(cfg.plain_template)  # BOS once, then the text
    assert auto.tokens.count(128000) == 1
    header_ids = set(llama3.convert_tokens_to_ids(list(HEADER_TOKENS)))
    assert not header_ids & set(auto.tokens) and "Date" not in auto.text
    words = pieces(llama3, auto.tokens)
    first, second = auto.positions
    assert words[first - 2:first + 3] == [" word", ' "', "X", '"', "?\n"]
    assert words[second - 2:second + 4] == [" word", ' "', "X", '"', " is", ' "']
    assert auto.placeholder_id == llama3.convert_tokens_to_ids("X")


@needs_llama_models
def test_chat_prompt_on_llama3_has_headers_and_x_one_token(llama3):
    chat = build_prompt(tokenizer_model(llama3, INSTRUCT), ExplainConfig())
    assert chat.chat and chat.text == LLAMA_CHAT + PREFIX
    assert chat.tokens == llama3.encode(chat.text, add_special_tokens=False)
    assert chat.tokens[0] == 128000 and chat.tokens.count(128000) == 1
    words = pieces(llama3, chat.tokens)
    first, second = chat.positions
    assert words[first - 2:first + 3] == [" word", ' "', "X", '"?', "<|eot_id|>"]
    assert words[second - 2:second + 4] == [" word", ' "', "X", '"', " is", ' "']
    forced = build_prompt(tokenizer_model(llama3, BASE), ExplainConfig(chat_template="always"))
    assert forced == chat


def fake_clock(monkeypatch, day: datetime) -> None:
    """Set the clock that transformers' `strftime_now` reads."""
    from transformers.utils import chat_template_utils

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return day

    monkeypatch.setattr(chat_template_utils, "datetime", Clock)


@needs_llama_models
def test_chat_prompt_does_not_depend_on_the_date(llama3, monkeypatch):
    model = tokenizer_model(llama3, INSTRUCT)
    message = [{"role": "user", "content": USER}]
    rendered, prompts = [], []
    for day in (datetime(2025, 1, 2), datetime(2031, 12, 30)):
        fake_clock(monkeypatch, day)
        rendered.append(llama3.apply_chat_template(message, add_generation_prompt=True,
                                                   tokenize=False))
        prompts.append(build_prompt(model, ExplainConfig()))
    assert "Today Date: 02 Jan 2025" in rendered[0] and "Today Date: 30 Dec 2031" in rendered[1]
    assert prompts[0].tokens == prompts[1].tokens and prompts[0].text == prompts[1].text

    # a template that reads the clock itself (no date_string) is frozen too
    clocked = copy.copy(llama3)
    clocked.chat_template = ("Today is {{ strftime_now('%Y-%m-%d') }}.{% for m in messages %}"
                             "{{ m['content'] }}{% endfor %}")
    assert render_chat(clocked, message) == f"Today is 2024-07-26.{USER}"


def test_prompt_is_recorded_and_shown_token_by_token(demo_tokenizer):
    from faithcase.artifacts import ExplainSettings
    from faithcase.render.html import prompt_html

    prompt = build_prompt(tokenizer_model(demo_tokenizer, "SmolLM2-135M-Instruct"), ExplainConfig())
    settings = ExplainSettings(
        prompt_text=prompt.text, prompt_tokens=list(zip(prompt.tokens, prompt.pieces)),
        placeholder_token_id=prompt.placeholder_id, placeholder_positions=prompt.positions,
        insert_layer=2, read_layer=24, mode="replace", residual_norm=1.0, scales=[1.0])
    again = ExplainSettings.model_validate_json(settings.model_dump_json())
    assert again.prompt_tokens == [(i, demo_tokenizer.decode([i])) for i in prompt.tokens]
    assert "".join(text for _, text in again.prompt_tokens) == prompt.text
    html = prompt_html(again)
    assert html.count('<span class="tok on"') == 2
    assert html.count('<span class="tok') == len(prompt.tokens)
    assert f'title="{prompt.placeholder_id}">X</span>' in html
    assert prompt_html(again.model_copy(update={"prompt_tokens": []})) == ""
