"""Sample a "faithful" corpus from the model itself, starting from BOS alone (FaithfulSAE)."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import torch


def sample_from_bos(hf_model, bos_id: int, eos_id: int, batch: int, new_tokens: int,
                    top_p: float, temperature: float, seed: int) -> list[list[int]]:
    """Nucleus-sample `batch` continuations of the BOS token; returns token ids without BOS."""
    torch.manual_seed(seed)
    ids = torch.full((batch, 1), bos_id, dtype=torch.long, device=hf_model.device)
    with torch.no_grad():
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                top_p=top_p, top_k=0, temperature=temperature,
                                max_new_tokens=new_tokens, pad_token_id=eos_id, eos_token_id=eos_id)
    samples = []
    for row in out[:, 1:].tolist():
        if eos_id in row:
            row = row[: row.index(eos_id)]
        samples.append(row)
    return samples


def write_shards(hf_model, tokenizer, shard_dir: Path, n_shards: int, batch: int, new_tokens: int,
                 top_p: float, temperature: float, seed: int, progress=None) -> None:
    """Resumable: shard i is sampled with seed+i and skipped when its file already exists."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_shards):
        path = shard_dir / f"shard_{i:05d}.jsonl.gz"
        if path.exists():
            if progress:
                progress(i, skipped=True)
            continue
        rows = sample_from_bos(hf_model, tokenizer.bos_token_id, tokenizer.eos_token_id, batch,
                               new_tokens, top_p, temperature, seed + i)
        tmp = path.with_suffix(".tmp")
        with gzip.open(tmp, "wb") as fh:
            for row in rows:
                fh.write(orjson.dumps({"tokens": row, "text": tokenizer.decode(row)}) + b"\n")
        tmp.rename(path)
        if progress:
            progress(i, skipped=False)


def read_shards(shard_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(shard_dir.glob("shard_*.jsonl.gz")):
        with gzip.open(path, "rb") as fh:
            rows.extend(orjson.loads(line) for line in fh if line.strip())
    return rows
