"""Token ids to the strings a reader sees, with the model's own tokenizer."""

from __future__ import annotations

from typing import Any, Callable

from faithcase.run.errors import FaithcaseError

TokenTexts = Callable[[list[int]], list[str]]


def token_texts(tokenizer: Any) -> TokenTexts:
    """Per-token strings (spaces kept), memoized by id. `tokenizer` is a Hugging Face tokenizer, a
    model that carries one (`.tokenizer`), or already a function of token ids."""
    if tokenizer is None:
        raise FaithcaseError("texts need the model's tokenizer to decode token ids: "
                             "pass tokenizer= (e.g. rt.lm.tokenizer)")
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if not hasattr(tokenizer, "decode"):
        if callable(tokenizer):
            return tokenizer
        raise FaithcaseError(f"cannot decode token ids with {type(tokenizer).__name__}: "
                             "pass a tokenizer with .decode")
    cache: dict[int, str] = {}

    def texts(ids: list[int]) -> list[str]:
        for i in ids:
            if i not in cache:
                cache[i] = tokenizer.decode([i])
        return [cache[i] for i in ids]

    return texts
