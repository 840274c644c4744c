"""The demo corpus: degenerate-sample filters, deduplication, the held-out split, its files."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Iterable

from faithcase.run.store import write_bytes_atomic
from faithcase.tools.demo.settings import FilterSettings


def degenerate_reason(tokens: list[int], special_ids: set[int],
                      settings: FilterSettings = FilterSettings()) -> str | None:
    """Why a sample is degenerate ("short", "special_run", "one_token", "repetition"), or None."""
    if len(tokens) < settings.min_tokens:
        return "short"
    if any(a in special_ids and b in special_ids for a, b in zip(tokens, tokens[1:])):
        return "special_run"  # e.g. <|im_end|><|im_end|>…
    if Counter(tokens).most_common(1)[0][1] > settings.max_token_share * len(tokens):
        return "one_token"
    four_grams = list(zip(tokens, tokens[1:], tokens[2:], tokens[3:]))
    if len(set(four_grams)) < settings.min_distinct_4gram_share * len(four_grams):
        return "repetition"
    return None


def filter_samples(samples: list[dict], special_ids: set[int],
                   settings: FilterSettings = FilterSettings()
                   ) -> tuple[list[dict], dict[str, int]]:
    """Drop degenerate samples, then exact (text) and near (first tokens) duplicates, keeping
    the first occurrence. Returns (kept samples, counts per reason)."""
    counts = Counter({"input": len(samples)})
    seen_texts: set[str] = set()
    seen_prefixes: set[tuple[int, ...]] = set()
    kept = []
    for sample in samples:
        tokens = sample["tokens"]
        if not sample["text"].strip():
            reason = "empty_text"
        else:
            reason = degenerate_reason(tokens, special_ids, settings)
        if reason is None:
            text_hash = hashlib.sha256(sample["text"].strip().encode()).hexdigest()
            prefix = tuple(tokens[: settings.near_dup_prefix])
            if text_hash in seen_texts:
                reason = "duplicate"
            elif prefix in seen_prefixes:
                reason = "near_duplicate"
            seen_texts.add(text_hash)
            seen_prefixes.add(prefix)
        if reason:
            counts[reason] += 1
        else:
            kept.append(sample)
    counts["kept"] = len(kept)
    return kept, dict(counts)


def token_count(samples: Iterable[dict]) -> int:
    """The tokens of the samples, all together."""
    return sum(len(s["tokens"]) for s in samples)


def split_heldout(samples: list[dict], heldout_fraction: float = 0.15,
                  min_heldout_tokens: int = 45_000) -> tuple[list[dict], list[dict]]:
    """Deterministic split by text hash: samples in hash order go to held-out until it holds
    max(heldout_fraction of the tokens, min_heldout_tokens), at most half of them.
    Both splits keep the input order."""
    total = token_count(samples)
    target = min(max(heldout_fraction * total, min_heldout_tokens), total / 2)

    def text_hash(i: int) -> str:
        return hashlib.sha256(samples[i]["text"].encode()).hexdigest()

    heldout_ids, heldout_tokens = set(), 0
    for i in sorted(range(len(samples)), key=text_hash):
        if heldout_tokens >= target:
            break
        heldout_ids.add(i)
        heldout_tokens += len(samples[i]["tokens"])
    train = [s for i, s in enumerate(samples) if i not in heldout_ids]
    heldout = [s for i, s in enumerate(samples) if i in heldout_ids]
    return train, heldout


def special_token_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return ids


def write_texts(path: Path, texts: Iterable[str]) -> None:
    """{"text": ...} per line, gzip without a timestamp (same texts → same bytes), atomically.
    Read back with `faithcase.model.corpus.load_texts`, as the pipeline does."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as fh:
        for text in texts:
            fh.write(json.dumps({"text": text}, ensure_ascii=False).encode() + b"\n")
    write_bytes_atomic(path, buffer.getvalue())
