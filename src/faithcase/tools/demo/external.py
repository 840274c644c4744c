"""The demo's external corpus: English prose the model did not write, from the Python
documentation that Debian's `python3.11-doc` package ships (reStructuredText sources under
`/usr/share/doc/python3.11/html/_sources`; PSF License Version 2).

Prose paragraphs only: code blocks, directives, tables and headings are dropped, inline markup
is reduced to its text. Paragraphs of one page are joined into documents of about
`doc_chars` characters; documents are taken in hash order (a seeded shuffle that does not
depend on the file system) until the token budget is filled, then split train / held-out as
the faithful corpus is (`split_heldout`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from faithcase.run.errors import FaithcaseError
from faithcase.tools.demo.corpus import split_heldout, token_count, write_texts

SECTIONS = ("tutorial", "howto", "faq", "reference", "library", "whatsnew", "using", "extending",
            "installing", "glossary.rst.txt")
LICENSE = "PSF License Version 2 (Python documentation, Debian package python3.11-doc)"
SOURCE = "/usr/share/doc/python3.11/html/_sources"
HEADING = re.compile(r"^([=\-~^*#\"'`+.:])\1{2,}\s*$")
ROLE = re.compile(r":[\w:.-]+:`!?~?([^`<]*?)\s*(?:<[^`>]*>)?`")
LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`_{1,2}")
LITERAL = re.compile(r"``([^`]+)``")
MARK = re.compile(r"(?<![\w*])\*{1,2}([^*\n]+?)\*{1,2}(?![\w*])|`([^`]+)`_{0,2}")
MIN_WORDS = 12


def prose_paragraphs(rst: str) -> list[str]:
    """The prose paragraphs of one reStructuredText page, markup reduced to text."""
    paragraphs, after_literal = [], False
    for block in re.split(r"\n\s*\n", rst):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        literal_next = lines[-1].rstrip().endswith("::")
        if after_literal and lines[0][:1].isspace() or _not_prose(lines):
            after_literal = literal_next or (after_literal and lines[0][:1].isspace())
            continue
        after_literal = literal_next
        text = " ".join(line.strip() for line in lines)
        text = _plain(text)
        if len(text.split()) >= MIN_WORDS and _letter_share(text) > 0.7:
            paragraphs.append(text)
    return paragraphs


def _not_prose(lines: list[str]) -> bool:
    first = lines[0].strip()
    return (first.startswith((".. ", ">>>", "|", "+-", "* ", "- ", "#. ", "$ ", "%"))
            or any(HEADING.match(line.strip()) for line in lines)
            or re.match(r"^\d+\.\s", first) is not None)


def _plain(text: str) -> str:
    text = ROLE.sub(lambda m: m.group(1), text)
    text = LINK.sub(lambda m: m.group(1), text)
    text = LITERAL.sub(lambda m: m.group(1), text)
    text = MARK.sub(lambda m: m.group(1) or m.group(2), text)
    text = re.sub(r"::$", ":", text)
    return re.sub(r"\s+", " ", text).strip()


def _letter_share(text: str) -> float:
    return sum(c.isalpha() or c.isspace() for c in text) / max(len(text), 1)


def documents(source: Path, doc_chars: int = 700) -> list[str]:
    """Every page's prose, joined into documents of about `doc_chars` characters."""
    pages = []
    for section in SECTIONS:
        root = source / section
        pages += sorted(root.rglob("*.rst.txt")) if root.is_dir() else [root] * root.is_file()
    if not pages:
        raise FaithcaseError(f"no documentation pages under {source}: install python3.11-doc "
                             "(Debian) or give its _sources folder with --docs")
    docs = []
    for page in pages:
        current = ""
        for paragraph in prose_paragraphs(page.read_text(encoding="utf-8")):
            current = f"{current}\n\n{paragraph}" if current else paragraph
            if len(current) >= doc_chars:
                docs.append(current)
                current = ""
        if current:
            docs.append(current)
    return docs


def build_external_corpus(source: Path, out_dir: Path, tokenizer, max_tokens: int,
                          heldout_fraction: float = 0.15, min_heldout_tokens: int = 45_000,
                          seed: str = "external") -> dict:
    """Write corpus_train/heldout.jsonl.gz and a manifest with the corpus record into
    `out_dir` (the input of `faithcase demo build --corpus-from`)."""
    docs = documents(source)
    order = sorted(range(len(docs)),
                   key=lambda i: hashlib.sha256(f"{seed}:{docs[i]}".encode()).hexdigest())
    samples, total = [], 0
    for i in order:
        if total >= max_tokens:
            break
        tokens = tokenizer(docs[i], add_special_tokens=False)["input_ids"]
        samples.append({"text": docs[i], "tokens": tokens})
        total += len(tokens)
    train, heldout = split_heldout(samples, heldout_fraction, min_heldout_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_texts(out_dir / "corpus_train.jsonl.gz", (s["text"] for s in train))
    write_texts(out_dir / "corpus_heldout.jsonl.gz", (s["text"] for s in heldout))
    record = {"source": LICENSE, "documents_available": len(docs),
              "filter_counts": {"input": len(docs), "kept": len(samples)},
              "sampled_tokens": total, "kept_tokens": total,
              "train_samples": len(train), "heldout_samples": len(heldout),
              "train_tokens": token_count(train), "heldout_tokens": token_count(heldout),
              "total_tokens": total}
    (out_dir / "manifest.json").write_text(json.dumps({"corpus": record}, indent=2))
    return record


EXTERNAL_FILES = {"train": "corpus_external_train.jsonl.gz",
                  "heldout": "corpus_external_heldout.jsonl.gz"}


def external_sae_folder(seed: int) -> str:
    return f"sae_external_seed{seed}"


def build_external(source: Path, work_dir: Path, bundle_dir: Path, console=None) -> dict:
    """The contrast pair: the external corpus (as many tokens as the faithful corpus), two SAEs
    with the faithful pair's recipe (`faithcase demo build --corpus-from`), copied into the
    bundle with an `external` record in its manifest. Resumable, as the demo build is."""
    import shutil

    from faithcase.demo import MANIFEST_FILE
    from faithcase.model.lm import load_tokenizer
    from faithcase.run.store import write_bytes_atomic
    from faithcase.tools.demo.build import build_bundle
    from faithcase.tools.demo.manifest import bundle_bytes, bundle_info
    from faithcase.tools.demo.settings import MODEL_GGUF, MODEL_NAME, settings_with

    faithful = bundle_info(bundle_dir)
    # beside the work folder: the corpus folder and the built pair (a bundle of its own)
    corpus_dir = work_dir.with_name(work_dir.name + "_corpus")
    built = work_dir.with_name(work_dir.name + "_bundle")
    if not (corpus_dir / "manifest.json").is_file():
        tokenizer = load_tokenizer(MODEL_NAME, gguf=MODEL_GGUF)
        build_external_corpus(source, corpus_dir, tokenizer, faithful["corpus"]["kept_tokens"])
    record = json.loads((corpus_dir / "manifest.json").read_text())["corpus"]
    manifest = build_bundle(built, work_dir, console=console,
                            settings=settings_with(corpus_from=str(corpus_dir)))
    for split, name in EXTERNAL_FILES.items():
        shutil.copyfile(built / f"corpus_{split}.jsonl.gz", bundle_dir / name)
    saes = {}
    for seed in manifest["seeds"]:
        target = bundle_dir / external_sae_folder(seed)
        shutil.copytree(built / f"sae_seed{seed}", target, dirs_exist_ok=True)
        saes[target.name] = manifest["saes"][f"sae_seed{seed}"] | {"folder": target.name}
    external = {"corpus": {**record, "licence": LICENSE, "files": EXTERNAL_FILES,
                           "source_folder": SOURCE},
                "activations": manifest["activations"], "training": manifest["training"],
                "saes": saes, "match": manifest["match"],
                "build_seconds": manifest["build_seconds"]}
    faithful["external"] = external
    faithful["bundle_bytes"] = bundle_bytes(bundle_dir)
    write_bytes_atomic(bundle_dir / MANIFEST_FILE,
                       (json.dumps(faithful, indent=2) + "\n").encode())
    return external
