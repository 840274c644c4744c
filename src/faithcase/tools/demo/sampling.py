"""Sample a "faithful" corpus from the model itself, starting from BOS alone (FaithfulSAE)."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import torch


def _nucleus_sample(logits: torch.Tensor, top_p: float, temperature: float, top_k: int,
                    generator: torch.Generator) -> torch.Tensor:
    """Top-k prefilter, then nucleus (top-p) sampling within it (no sort of the vocabulary)."""
    values, indices = torch.topk(logits.float() / temperature, top_k, dim=-1)
    probs = values.softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    probs = probs.masked_fill(mass_before >= top_p, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)
    return indices.gather(-1, choice)


def sample_from_bos(hf_model, bos_id: int, eos_id: int, batch: int, new_tokens: int,
                    top_p: float, temperature: float, seed: int,
                    top_k: int = 200) -> list[list[int]]:
    """Sample `batch` continuations of the BOS token with a KV cache; returns ids without BOS,
    cut at EOS."""
    from transformers import DynamicCache

    generator = torch.Generator().manual_seed(seed)
    tokens = torch.full((batch, 1), bos_id, dtype=torch.long, device=hf_model.device)
    cache = DynamicCache()
    finished = torch.zeros(batch, dtype=torch.bool)
    generated = []
    with torch.inference_mode():
        step_input = tokens
        for _ in range(new_tokens):
            out = hf_model(input_ids=step_input, past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1].cpu()
            next_ids = _nucleus_sample(logits, top_p, temperature, top_k, generator)
            generated.append(next_ids)
            finished |= next_ids[:, 0] == eos_id
            if finished.all():
                break
            step_input = next_ids.to(hf_model.device)
    samples = []
    for row in torch.cat(generated, dim=1).tolist():
        samples.append(row[: row.index(eos_id)] if eos_id in row else row)
    return samples


def shard_paths(shard_dir: Path, n_shards: int) -> list[Path]:
    """The files of shards 0 … n_shards-1 (shard i is sampled with seed base + i)."""
    return [shard_dir / f"shard_{i:05d}.jsonl.gz" for i in range(n_shards)]


def write_shards(hf_model, tokenizer, shard_dir: Path, n_shards: int, batch: int,
                 new_tokens: int, top_p: float, temperature: float, seed: int, top_k: int = 200,
                 progress=None) -> None:
    """Resumable: shard i is sampled with seed+i and skipped when its file already exists."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(shard_paths(shard_dir, n_shards)):
        if path.exists():
            if progress:
                progress(i, skipped=True)
            continue
        rows = sample_from_bos(hf_model, tokenizer.bos_token_id, tokenizer.eos_token_id, batch,
                               new_tokens, top_p, temperature, seed + i, top_k)
        tmp = path.with_suffix(".tmp")
        with gzip.open(tmp, "wb") as fh:
            for row in rows:
                fh.write(orjson.dumps({"tokens": row, "text": tokenizer.decode(row)}) + b"\n")
        tmp.rename(path)
        if progress:
            progress(i, skipped=False)


def read_shards(paths: list[Path]) -> list[dict]:
    """The samples of the given shard files, in order."""
    rows = []
    for path in paths:
        with gzip.open(path, "rb") as fh:
            rows.extend(orjson.loads(line) for line in fh if line.strip())
    return rows
