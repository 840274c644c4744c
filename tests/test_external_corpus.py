"""The demo's external corpus: prose paragraphs of reStructuredText, markup reduced to text, code,
directives, headings and lists dropped; documents in a hash order that does not depend on the files."""

from __future__ import annotations

import json

from faithcase.model.corpus import load_texts
from faithcase.tools.demo.external import build_external_corpus, prose_paragraphs

RST = """\
.. _tut-for:

:keyword:`!for` Statements
==========================

The :keyword:`for` statement in Python differs a bit from what you may be used
to in C or Pascal, as the `tutorial <https://example.org>`_ and ``for x in y`` show::

   >>> for w in words:
   ...     print(w)

   cat

Code that modifies a *collection* while iterating over that same collection can
be tricky to get right, see :func:`~itertools.chain` and :ref:`the loop section <tut-loop>`.

* a list item that is long enough to pass the word count but is a list, not prose
* another

.. note::

   A note inside a directive, indented, with enough words to pass the count.

Short one.
"""


def test_prose_paragraphs_keep_prose_and_reduce_markup():
    assert prose_paragraphs(RST) == [
        "The for statement in Python differs a bit from what you may be used to in C or Pascal, as "
        "the tutorial and for x in y show:",
        "Code that modifies a collection while iterating over that same collection can be tricky "
        "to get right, see itertools.chain and the loop section.",
    ]  # the note's body follows a line ending in "::", which is read as a literal block: dropped


def test_external_corpus_fills_the_budget_and_splits(tmp_path, demo_tokenizer):
    source = tmp_path / "_sources"
    (source / "tutorial").mkdir(parents=True)
    words = "The interpreter reads each line of the program and runs it at once for you here".split()
    for i in range(40):
        text = "\n\n".join(f"Page {i}, part {j}: " + " ".join(words[j:] + words[:j]) for j in range(12))
        (source / "tutorial" / f"page{i:02d}.rst.txt").write_text(text)
    record = build_external_corpus(source, tmp_path / "out", demo_tokenizer, max_tokens=3000,
                                   min_heldout_tokens=500)
    train = list(load_texts(str(tmp_path / "out" / "corpus_train.jsonl.gz")))
    heldout = list(load_texts(str(tmp_path / "out" / "corpus_heldout.jsonl.gz")))
    assert 3000 <= record["total_tokens"] < 3000 + 400  # stops at the first document past the budget
    assert len(train) == record["train_samples"] and len(heldout) == record["heldout_samples"] > 0
    assert record["heldout_tokens"] >= 500 and not set(train) & set(heldout)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["corpus"]["train_tokens"] + manifest["corpus"]["heldout_tokens"] == record["total_tokens"]
