"""The explanation prompt: `What is the meaning of the word "X"?` in the model's chat template with
the answer prefilled with `The meaning of the word "X" is "` (or the plain template), and the
positions of the placeholder tokens that steering overwrites (each must be exactly one token).

`explain.chat_template` chooses the form: `always` the chat template, `never` the plain template
(`explain.plain_template`), `auto` (default) the chat template only for an instruction-tuned model
whose tokenizer has one: the model's name marks it (`lm.instruction_tuned_name`: a word
`instruct…`, `chat` or `it`). A base model, e.g. meta-llama/Llama-3.2-1B whose tokenizer carries
the Llama 3 chat template, gets the plain template. A chat template renders with a fixed date.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import torch

from faithcase.config import ExplainConfig
from faithcase.model.lm import instruction_tuned_name
from faithcase.run.errors import FaithcaseError

# the date a chat template sees (the Llama 3 templates' own fallback), so that no prompt depends on
# the day it is built
TEMPLATE_DATE = datetime(2024, 7, 26)
TEMPLATE_DATE_STRING = "26 Jul 2024"


@dataclass(frozen=True)
class PromptSpec:
    tokens: list[int]  # the prompt's token ids, BOS included when the model uses one
    positions: list[int]  # indices of the placeholder tokens in `tokens`
    text: str  # the rendered prompt text
    placeholder_id: int
    pieces: tuple[str, ...] = ()  # each token's text
    chat: bool = False  # rendered with the chat template

    def batch(self, n_rows: int,
              device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens [n, T], attention_mask [n, T], placeholder mask [n, T]) for n identical rows."""
        tokens = torch.tensor(self.tokens, dtype=torch.long, device=device).expand(n_rows, -1)
        attention = torch.ones_like(tokens)
        mask = torch.zeros(len(self.tokens), dtype=torch.bool, device=device)
        mask[self.positions] = True
        return tokens, attention, mask.expand(n_rows, -1)


def _occurrences(text: str, needle: str, offset: int) -> list[tuple[int, int]]:
    spans, start = [], text.find(needle)
    while start >= 0:
        spans.append((offset + start, offset + start + len(needle)))
        start = text.find(needle, start + len(needle))
    return spans


def uses_chat_template(lm, cfg: ExplainConfig) -> bool:
    """Whether the prompt goes in the tokenizer's chat template (see the module's docstring)."""
    if cfg.chat_template == "never":
        return False
    if cfg.chat_template == "always":
        if not lm.has_chat_template:
            raise FaithcaseError(f"explain.chat_template is always, but the tokenizer of "
                                 f"{getattr(lm, 'name', 'the model')} has no chat template; "
                                 f"use auto or never.")
        return True
    return lm.has_chat_template and instruction_tuned_name(getattr(lm, "name", ""))


@contextmanager
def _frozen_template_clock():
    """While a chat template renders, `strftime_now` (transformers' jinja global, which reads
    `datetime.now()` of its module) returns TEMPLATE_DATE."""
    from transformers.utils import chat_template_utils

    clock = getattr(chat_template_utils, "datetime", None)
    if not isinstance(clock, type) or not issubclass(clock, datetime):
        yield  # another transformers layout: date_string alone fixes the Llama 3 templates
        return

    class Frozen(clock):
        @classmethod
        def now(cls, tz=None):
            return clock(*TEMPLATE_DATE.timetuple()[:6], tzinfo=tz)

    chat_template_utils.datetime = Frozen
    try:
        yield
    finally:
        chat_template_utils.datetime = clock


def render_chat(tokenizer, messages: list[dict[str, str]]) -> str:
    """The chat template rendered for `messages` with the generation prompt, at a fixed date:
    `date_string` (read by the Llama 3 templates) is given and the template's clock is frozen."""
    with _frozen_template_clock():
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                             date_string=TEMPLATE_DATE_STRING)


def _render(lm, cfg: ExplainConfig, chat: bool) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text and the character spans of the placeholder in it (only where the user's
    template put it, never inside the chat template's own text)."""
    placeholder = cfg.placeholder
    if not placeholder:
        raise FaithcaseError("explain.placeholder is empty; use a one-token word such as X.")
    if not chat:
        if placeholder not in cfg.plain_template:
            raise FaithcaseError(f"explain.plain_template has no placeholder {placeholder!r}; "
                                 f"put it where the feature direction should go.")
        return cfg.plain_template, _occurrences(cfg.plain_template, placeholder, 0)
    if placeholder not in cfg.user_prompt and placeholder not in cfg.answer_prefix:
        raise FaithcaseError(f"the explain prompt has no placeholder {placeholder!r}; "
                             f"put it in explain.user_prompt or explain.answer_prefix.")
    rendered = render_chat(lm.tokenizer, [{"role": "user", "content": cfg.user_prompt}])
    user_at = rendered.rfind(cfg.user_prompt)
    if user_at < 0:
        raise FaithcaseError("the model's chat template changes the user message, so the "
                             "placeholder cannot be located; set explain.chat_template: never "
                             "or use another prompt.")
    spans = _occurrences(cfg.user_prompt, placeholder, user_at)
    spans += _occurrences(cfg.answer_prefix, placeholder, len(rendered))
    return rendered + cfg.answer_prefix, spans


def _tokenize_with_offsets(lm, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    try:
        encoded = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError, KeyError):  # slow tokenizers: no offsets
        return lm.tokenizer.encode(text, add_special_tokens=False), None


def _placeholder_index(lm, ids: list[int], offsets, span: tuple[int, int], text: str,
                       placeholder: str) -> int:
    start, end = span
    covering = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    if len(covering) == 1:
        a, b = offsets[covering[0]]
        if text[a:b].strip() == placeholder:
            return covering[0]
    pieces = [lm.tokenizer.decode([ids[i]]) for i in covering]
    raise FaithcaseError(f"placeholder {placeholder!r} is not one token in the prompt: it becomes "
                         f"{len(pieces)} token(s) {pieces}; choose a single-token placeholder.")


def _placeholder_indices_without_offsets(lm, ids: list[int], text: str, spans,
                                         placeholder: str) -> list[int]:
    """Fallback for tokenizers without offsets: tokenize the text piece by piece and require the
    concatenation to equal the whole-text tokenization."""
    pieces, cursor = [], 0
    for start, end in spans:
        pieces += [text[cursor:start], text[start:end]]
        cursor = end
    pieces.append(text[cursor:])
    joined, positions = [], []
    for k, piece in enumerate(pieces):
        piece_ids = lm.tokenizer.encode(piece, add_special_tokens=False) if piece else []
        if k % 2 == 1:
            if len(piece_ids) != 1:
                tokens = [lm.tokenizer.decode([i]) for i in piece_ids]
                raise FaithcaseError(f"placeholder {placeholder!r} is not one token in the "
                                     f"prompt: it becomes {len(tokens)} token(s) {tokens}; "
                                     f"choose a single-token placeholder.")
            positions.append(len(joined))
        joined += piece_ids
    if joined != ids:
        raise FaithcaseError(f"placeholder {placeholder!r} merges with the text around it when "
                             f"tokenized; surround it with quotes or spaces, or choose another "
                             f"placeholder.")
    return positions


def _bos_to_prepend(lm, ids: list[int], chat: bool) -> int | None:
    """The BOS id to put in front of the prompt, or None. A chat prompt gets the tokenizer's BOS
    when the tokenizer adds one itself and the rendered template lacks it; a plain prompt gets the
    model's BOS, as corpus sequences do."""
    if not chat:
        bos = lm.bos_token_id
    else:
        bos = lm.tokenizer.bos_token_id
        probe = lm.tokenizer("a")["input_ids"]
        if bos is None or not probe or probe[0] != bos:
            return None
    return None if ids and ids[0] == bos else bos


def build_prompt(lm, cfg: ExplainConfig) -> PromptSpec:
    """Render the explanation prompt and locate the placeholder tokens (each must be one token)."""
    chat = uses_chat_template(lm, cfg)
    text, spans = _render(lm, cfg, chat)
    ids, offsets = _tokenize_with_offsets(lm, text)
    if offsets is not None:
        positions = [_placeholder_index(lm, ids, offsets, span, text, cfg.placeholder)
                     for span in spans]
    else:
        positions = _placeholder_indices_without_offsets(lm, ids, text, spans, cfg.placeholder)
    bos = _bos_to_prepend(lm, ids, chat)
    if bos is not None:
        ids = [bos] + ids
        positions = [p + 1 for p in positions]
    placeholder_ids = {ids[p] for p in positions}
    if len(placeholder_ids) != 1:
        raise FaithcaseError(f"placeholder {cfg.placeholder!r} tokenizes differently at its "
                             f"positions ({sorted(placeholder_ids)}); put it in the same context "
                             f"each time.")
    pieces = tuple(lm.tokenizer.decode([i]) for i in ids)
    return PromptSpec(tokens=ids, positions=positions, text=text,
                      placeholder_id=placeholder_ids.pop(), pieces=pieces, chat=chat)
