"""What the machine does to a run: a full disk, no permission, an out-dir that is a file, garbage
corpora, malformed --set values, a path as run_name, Ctrl-C, a second writer. Each is one line and
exit 2 (130 for Ctrl-C), and earlier artifacts stay byte-identical."""

from __future__ import annotations

import errno
import os

import pytest
from typer.testing import CliRunner

from sae_writers import planted_decoders, write_batchtopk

from faithcase.cli import app
from faithcase.run import store
from faithcase.run.lock import LOCK_FILE, RunLock

runner = CliRunner()


@pytest.fixture
def matched(tmp_path):
    """A config, two SAEs and a run folder holding a finished match stage."""
    W1, W2, _ = planted_decoders(seed=3, noise=0.3)
    a, b = write_batchtopk(tmp_path / "a", W1), write_batchtopk(tmp_path / "b", W2)
    config = tmp_path / "run.yaml"
    config.write_text(f"run_name: t\nhook: blocks.3.hook_resid_pre\nsae1: {{path: {a}}}\n"
                      f"sae2: {{path: {b}}}\ncorpus: {{source: corpus.txt}}\n")
    out = tmp_path / "out"
    done = invoke("match", "-c", config, "--out-dir", out)
    assert done.exit_code == 0, done.output
    return config, out


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def one_line(result, code, *needles):
    assert result.exit_code == code, result.output
    text = result.output.strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    for needle in needles:
        assert needle in text, text


@pytest.mark.parametrize("code, needle", [(errno.ENOSPC, "no space left on the device"),
                                          (errno.EACCES, "permission denied")])
def test_a_full_disk_or_no_permission_is_one_line_and_leaves_the_folder_as_it_was(
        matched, monkeypatch, code, needle):
    config, out = matched
    before = snapshot(out)

    def fail(fh, payload):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store, "_write_payload", fail)
    one_line(invoke("match", "-c", config, "--out-dir", out, "--force"), 2, needle, str(out))
    assert snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_an_out_dir_that_is_a_file_fails_before_any_work(matched, tmp_path):
    config, _ = matched
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    one_line(invoke("match", "-c", config, "--out-dir", blocker), 2, "is a file, not a folder")
    assert blocker.read_text() == "keep me"


def test_malformed_set_values_and_a_path_as_run_name_are_refused(matched):
    config, out = matched
    before = snapshot(out)
    one_line(invoke("match", "-c", config, "--out-dir", out, "--set", "pairs.n_pairs=[1,"), 2,
             "--set 'pairs.n_pairs=[1,'", "not valid YAML")
    for name in ("../escape", "/abs/path", ".."):
        one_line(invoke("match", "-c", config, "--set", f"run_name={name}"), 2, "run_name",
                 "plain name")
    assert snapshot(out) == before


def test_ctrl_c_says_which_stage_and_keeps_finished_stages(matched, monkeypatch):
    import faithcase.stages.match as match_stage

    config, out = matched
    before = snapshot(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(match_stage, "match", interrupted)
    one_line(invoke("match", "-c", config, "--out-dir", out, "--force"), 130,
             "interrupted during match; finished stages are kept")
    assert snapshot(out) == before


def test_a_second_writer_fails_at_once_with_no_wait(matched):
    config, out = matched
    with RunLock(out):
        one_line(invoke("match", "-c", config, "--out-dir", out, "--no-wait"), 2,
                 f"pid {os.getpid()}", "--no-wait")


def test_an_unexpected_error_is_one_line_without_debug(matched, monkeypatch):
    import faithcase.stages.match as match_stage

    config, out = matched

    def bug(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(match_stage, "match", bug)
    one_line(invoke("match", "-c", config, "--out-dir", out, "--force"), 1,
             "internal error ZeroDivisionError: boom", "--debug")
    shown = invoke("--debug", "match", "-c", config, "--out-dir", out, "--force")
    assert isinstance(shown.exception, ZeroDivisionError)
