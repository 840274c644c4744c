"""The explanation prompt: the model's chat template around `What is the meaning of the word "X"?`,
the answer prefilled with `The meaning of the word "X" is "`, and the positions of the placeholder
tokens that steering overwrites (each occurrence must be exactly one token)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from faithcase.config import ExplainConfig
from faithcase.run.errors import FaithcaseError


@dataclass(frozen=True)
class PromptSpec:
    tokens: list[int]  # the prompt's token ids, BOS included when the model uses one
    positions: list[int]  # indices of the placeholder tokens in `tokens`
    text: str  # the rendered prompt text
    placeholder_id: int

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


def _render(lm, cfg: ExplainConfig) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text and the character spans of the placeholder in it (only where the user's
    template put it, never inside the chat template's own text)."""
    placeholder = cfg.placeholder
    if not placeholder:
        raise FaithcaseError("explain.placeholder is empty; use a one-token word such as X.")
    if not lm.has_chat_template:
        if placeholder not in cfg.plain_template:
            raise FaithcaseError(f"explain.plain_template has no placeholder {placeholder!r}; "
                                 f"put it where the feature direction should go.")
        return cfg.plain_template, _occurrences(cfg.plain_template, placeholder, 0)
    if placeholder not in cfg.user_prompt and placeholder not in cfg.answer_prefix:
        raise FaithcaseError(f"the explain prompt has no placeholder {placeholder!r}; "
                             f"put it in explain.user_prompt or explain.answer_prefix.")
    rendered = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": cfg.user_prompt}], add_generation_prompt=True, tokenize=False)
    user_at = rendered.rfind(cfg.user_prompt)
    if user_at < 0:
        raise FaithcaseError("the model's chat template changes the user message, so the "
                             "placeholder cannot be located; use a model without a chat template "
                             "or another prompt.")
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


def _bos_to_prepend(lm, ids: list[int]) -> int | None:
    """The BOS id to put in front of the prompt, or None. A chat prompt gets the tokenizer's BOS
    when the tokenizer adds one itself and the rendered template lacks it; a plain prompt gets the
    model's BOS, as corpus sequences do."""
    if not lm.has_chat_template:
        bos = lm.bos_token_id
    else:
        bos = lm.tokenizer.bos_token_id
        probe = lm.tokenizer("a")["input_ids"]
        if bos is None or not probe or probe[0] != bos:
            return None
    return None if ids and ids[0] == bos else bos


def build_prompt(lm, cfg: ExplainConfig) -> PromptSpec:
    """Render the explanation prompt and locate the placeholder tokens (each must be one token)."""
    text, spans = _render(lm, cfg)
    ids, offsets = _tokenize_with_offsets(lm, text)
    if offsets is not None:
        positions = [_placeholder_index(lm, ids, offsets, span, text, cfg.placeholder)
                     for span in spans]
    else:
        positions = _placeholder_indices_without_offsets(lm, ids, text, spans, cfg.placeholder)
    bos = _bos_to_prepend(lm, ids)
    if bos is not None:
        ids = [bos] + ids
        positions = [p + 1 for p in positions]
    placeholder_ids = {ids[p] for p in positions}
    if len(placeholder_ids) != 1:
        raise FaithcaseError(f"placeholder {cfg.placeholder!r} tokenizes differently at its "
                             f"positions ({sorted(placeholder_ids)}); put it in the same context "
                             f"each time.")
    return PromptSpec(tokens=ids, positions=positions, text=text,
                      placeholder_id=placeholder_ids.pop())
