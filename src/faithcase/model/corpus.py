"""Text sources → fixed-length token sequences.

Sources (`load_texts`): local `.jsonl` / `.jsonl.gz` (one JSON object per line, text in
`text_column`), `.txt` (one document per non-empty line), `.parquet` (column `text_column`),
a local dataset folder (files `datasets` can read, or a `save_to_disk` folder), or a
Hugging Face dataset id such as `seonglae/faithful-llama3.2-1b`.

Sequences (`token_sequences`), FaithfulSAE style: every document is tokenized without
special tokens, documents are joined into one token stream with the EOS token between
them, and the stream is cut into chunks of seq_len - 1 tokens; each sequence is
BOS + one chunk. The last, partial chunk is dropped. Reading stops once the token budget
is filled (sources are read in order, so the first max_tokens worth of the corpus is
used); the sequences are then shuffled with a torch.Generator seeded by `seed`.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import torch

from faithcase.run.errors import FaithcaseError
from faithcase.run.paths import resolve_path

LOCAL_KINDS = ("jsonl", "jsonl.gz", "txt", "parquet")
TOKENIZE_BATCH = 256
READ_ERRORS = (OSError, EOFError, UnicodeError, zlib.error)  # unreadable or garbage local files
FORMAT_HINT = "give a UTF-8 .txt, .jsonl, .jsonl.gz or .parquet file"
JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}


# ---------------------------------------------------------------- readers

def load_texts(source: str, kind: str = "auto", text_column: str = "text",
               hf_config: str | None = None, split: str = "train", streaming: bool = True,
               base_dir: Path | None = None) -> Iterator[str]:
    """Texts of a corpus, in source order. Errors (missing file/column) surface on iteration;
    a local file that cannot be read or decoded raises one FaithcaseError naming it."""
    kind, location = _resolve_source(source, kind, base_dir)
    if kind == "jsonl":
        return _guarded(location, _jsonl_texts(location, text_column, opener=open))
    if kind == "jsonl.gz":
        return _guarded(location, _jsonl_texts(location, text_column, opener=gzip.open))
    if kind == "txt":
        return _guarded(location, _txt_texts(location))
    if kind == "parquet":
        return _guarded(location, _parquet_texts(location, text_column), arrow=True)
    if kind == "hf-disk":
        return _saved_dataset_texts(location, text_column, split)
    return _hf_texts(str(location), text_column, hf_config, split, streaming)


def _resolve_source(source: str, kind: str, base_dir: Path | None) -> tuple[str, Path | str]:
    """(kind, path or dataset id). `auto` picks by suffix for files and by content for folders;
    a string that is no existing path and has no file suffix is taken as a Hugging Face id."""
    known = LOCAL_KINDS + ("hf", "hf-disk", "auto")
    if kind not in known:
        raise FaithcaseError(f"Unknown corpus kind '{kind}'; use one of {', '.join(known)}.")
    path = resolve_path(source, base_dir)
    if kind == "hf" and not path.exists():
        return "hf", source
    if not path.exists():
        if kind != "auto" or _looks_local(source):
            raise FaithcaseError(f"Corpus not found: {path}")
        return "hf", source
    if kind != "auto":
        return kind, path
    if path.is_dir():
        saved = (path / "dataset_dict.json").exists() or (path / "state.json").exists()
        return ("hf-disk" if saved else "hf"), path
    for suffix in ("jsonl.gz", "jsonl", "txt", "parquet"):
        if path.name.endswith("." + suffix):
            return suffix, path
    raise FaithcaseError(f"Cannot tell the format of {path}; use .jsonl, .jsonl.gz, .txt or "
                         ".parquet or set the corpus kind.")


def _guarded(path: Path, texts: Iterator[str], arrow: bool = False) -> Iterator[str]:
    """`texts`, with read and decode errors (raised on opening or while iterating) turned into
    one FaithcaseError naming `path`."""
    errors = READ_ERRORS
    if arrow:
        import pyarrow

        errors += (pyarrow.ArrowException,)
    try:
        yield from texts
    except errors as err:
        raise FaithcaseError(_unreadable_message(path, err, arrow)) from err


def _unreadable_message(path: Path, err: BaseException, arrow: bool) -> str:
    detail = _first_line(err)
    hint = FORMAT_HINT
    if isinstance(err, gzip.BadGzipFile):
        gzipped = not detail.startswith("Not a gzipped")
        reason = f"bad gzip data, {detail}" if gzipped else "not a gzip file"
    elif isinstance(err, (EOFError, zlib.error)):
        reason = "truncated or corrupt gzip data"
    elif isinstance(err, UnicodeError):
        reason = "not UTF-8 text"
    elif isinstance(err, OSError) and err.errno is not None:
        reason = os.strerror(err.errno).lower()  # pyarrow's strerror is a long sentence
        hint = "check that it is a readable file, or give another corpus"
    elif arrow:  # pyarrow errors, and OSErrors without an errno (pyarrow raises those too)
        reason = f"not a readable parquet file, {detail}"
    else:
        reason = detail
    return f"cannot read corpus {path}: {reason} ({type(err).__name__}); {hint}"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0].strip().rstrip(".") if lines else type(err).__name__


def _looks_local(source: str) -> bool:
    suffixes = tuple("." + kind for kind in LOCAL_KINDS)
    return source.startswith(("pkg:", ".", "/", "~")) or source.endswith(suffixes)


def _jsonl_texts(path: Path, text_column: str, opener) -> Iterator[str]:
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as err:  # also too-long ints, too-deep nesting
                reason = err.msg if isinstance(err, json.JSONDecodeError) else _first_line(err)
                raise FaithcaseError(f"{path}:{number}: not valid JSON ({reason}); "
                                     "write one JSON object per line.") from err
            if not isinstance(row, dict):
                got = JSON_TYPES.get(type(row), type(row).__name__)
                raise FaithcaseError(f"{path}:{number}: expected a JSON object per line, got "
                                     f"{got}; write one JSON object per line.")
            if text_column not in row:
                raise FaithcaseError(f"{path}:{number}: no '{text_column}' field; fields present: "
                                     f"{', '.join(row) or 'none'}. Set the corpus text column.")
            text = _as_text(row[text_column], f"{path}:{number}")
            if text is not None:
                yield text


def _txt_texts(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            text = line.rstrip("\r\n")
            if text.strip():
                yield text


def _parquet_texts(path: Path, text_column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    _check_column(text_column, table.schema_arrow.names, str(path))
    for batch in table.iter_batches(columns=[text_column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            text = _as_text(value, str(path))
            if text is not None:
                yield text


def _hf_texts(dataset: str, text_column: str, hf_config: str | None, split: str,
              streaming: bool) -> Iterator[str]:
    import datasets

    try:
        rows = datasets.load_dataset(dataset, hf_config, split=split, streaming=streaming)
    except (OSError, ValueError, ConnectionError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FaithcaseError(f"Could not load dataset '{dataset}' (split {split}): "
                             f"{message}") from err
    yield from _dataset_rows(rows, text_column, dataset)


def _saved_dataset_texts(path: Path, text_column: str, split: str) -> Iterator[str]:
    import datasets

    rows = datasets.load_from_disk(str(path))
    if isinstance(rows, datasets.DatasetDict):
        if split not in rows:
            raise FaithcaseError(f"{path} has no split '{split}'; splits present: "
                                 f"{', '.join(rows)}.")
        rows = rows[split]
    yield from _dataset_rows(rows, text_column, str(path))


def _dataset_rows(rows, text_column: str, where: str) -> Iterator[str]:
    if rows.column_names is not None:  # streaming datasets may not know their columns
        _check_column(text_column, rows.column_names, where)
    for row in rows:
        if text_column not in row:
            _check_column(text_column, list(row), where)
        text = _as_text(row[text_column], where)
        if text is not None:
            yield text


def _check_column(text_column: str, columns: list[str], where: str) -> None:
    if text_column not in columns:
        raise FaithcaseError(f"{where}: no column '{text_column}'; columns present: "
                             f"{', '.join(columns) or 'none'}. Set the corpus text column.")


def _as_text(value, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise FaithcaseError(f"{where}: text column holds {type(value).__name__}, expected strings.")


# ---------------------------------------------------------------- token sequences

def token_sequences(texts: Iterable[str], tokenizer, seq_len: int, max_tokens: int | None = None,
                    seed: int = 0, bos_id: int | None = None,
                    join_with_eos: bool = True) -> torch.Tensor:
    """LongTensor [N, seq_len]: BOS + seq_len-1 tokens of the joined document stream per row,
    N * seq_len <= max_tokens, rows shuffled by `seed` (see the module docstring)."""
    if seq_len < 2:
        raise FaithcaseError(f"seq_len must be at least 2 (BOS + one token), got {seq_len}.")
    if max_tokens is not None and max_tokens < seq_len:
        raise FaithcaseError(f"Token budget {max_tokens} is smaller than one sequence "
                             f"({seq_len} tokens).")
    bos_id = _default_bos(tokenizer) if bos_id is None else bos_id
    joined = join_with_eos and tokenizer.eos_token_id is not None
    separator = [tokenizer.eos_token_id] if joined else []
    max_rows = None if max_tokens is None else max_tokens // seq_len

    rows = _RowBlocks(seq_len)
    buffer: list[int] = []
    counts = {"texts": 0, "nonempty": 0, "tokens": 0}
    chunk = seq_len - 1
    for ids in _tokenized(texts, tokenizer, counts):
        buffer.extend(ids + separator)
        start = 0
        while len(buffer) - start >= chunk and (max_rows is None or len(rows) < max_rows):
            rows.append([bos_id] + buffer[start:start + chunk])
            start += chunk
        del buffer[:start]
        if max_rows is not None and len(rows) >= max_rows:
            break
    _check_enough(len(rows), counts, seq_len)
    sequences = rows.tensor()
    order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(seed))
    return sequences[order]


class _RowBlocks:
    """Rows collected as tensor blocks: a Python list of ints per token would not scale."""

    BLOCK = 4096

    def __init__(self, seq_len: int):
        self.seq_len, self.blocks, self.pending = seq_len, [], []

    def append(self, row: list[int]) -> None:
        self.pending.append(row)
        if len(self.pending) == self.BLOCK:
            self.blocks.append(torch.tensor(self.pending, dtype=torch.long))
            self.pending = []

    def __len__(self) -> int:
        return len(self.blocks) * self.BLOCK + len(self.pending)

    def tensor(self) -> torch.Tensor:
        tail = [torch.tensor(self.pending, dtype=torch.long).reshape(-1, self.seq_len)]
        return torch.cat(self.blocks + tail)


def _default_bos(tokenizer) -> int:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise FaithcaseError("The tokenizer has no BOS or EOS token; pass bos_id explicitly.")
    return bos


def _tokenized(texts: Iterable[str], tokenizer, counts: dict) -> Iterator[list[int]]:
    """Token ids of each non-empty text, tokenized in batches (no special tokens)."""
    batch: list[str] = []
    for text in texts:
        counts["texts"] += 1
        if text.strip():
            batch.append(text)
        if len(batch) == TOKENIZE_BATCH:
            yield from _encode(batch, tokenizer, counts)
            batch = []
    if batch:
        yield from _encode(batch, tokenizer, counts)


def _encode(batch: list[str], tokenizer, counts: dict) -> Iterator[list[int]]:
    for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
        if ids:
            counts["nonempty"] += 1
            counts["tokens"] += len(ids)
            yield ids


def _check_enough(n_rows: int, counts: dict, seq_len: int) -> None:
    if n_rows:
        return
    if counts["texts"] == 0:
        raise FaithcaseError("The corpus is empty: the source yielded no texts.")
    if counts["nonempty"] == 0:
        raise FaithcaseError(f"All {counts['texts']} texts of the corpus are empty.")
    raise FaithcaseError(f"The corpus has only {counts['tokens']} tokens, too few for one sequence "
                         f"of {seq_len}; add text or lower seq_len.")
