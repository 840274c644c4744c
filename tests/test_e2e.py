"""End to end: `faithcase run` on a tiny demo config from a temporary folder (a process of its own,
as a researcher runs it; so are the concurrent runs), then the case study validated and the
commands that follow it run in this process, on the session's model."""

import os

import orjson
import pytest
import yaml
from pydantic import TypeAdapter

from faithcase.artifacts import (
    MatchArtifact,
    PairsArtifact,
    ScanArtifact,
    WindowsArtifact,
)
from faithcase.case_study import CaseStudySummary, PairCase
from faithcase.run.paths import resolve_path
from faithcase.run.store import sha256_file

from conftest import TINY_CONFIG, tiny_config

BUNDLE = resolve_path("pkg:faithcase/demo/bundle")
needs_bundle = pytest.mark.skipif(not (BUNDLE / "manifest.json").is_file(), reason="demo bundle not built")


@pytest.fixture
def in_process(monkeypatch, demo_lm):
    """`faithcase ARGS` in this process (CliRunner) from a folder, on the session's model: every
    command after the run, except the concurrent runs. This process is not the run's, so the
    stages' keys are still compared across processes. Returns (exit code, output with its
    whitespace collapsed, output)."""
    import torch
    from typer.testing import CliRunner

    from faithcase.cli import app
    from faithcase.model import lm as lm_module

    monkeypatch.setattr(lm_module, "load_model", lambda *args, **kwargs: demo_lm)
    threads = torch.get_num_threads()  # a command sets its own (FAITHCASE_THREADS), as a process

    def invoke(*args, cwd):
        monkeypatch.chdir(cwd)
        done = CliRunner().invoke(app, [str(a) for a in args])
        return done.exit_code, " ".join(done.output.split()), done.output

    yield invoke
    torch.set_num_threads(threads)


@needs_bundle
def test_run_on_a_tiny_config_writes_a_valid_case_study(copy_of_tiny_run, in_process):
    tmp_path, out = copy_of_tiny_run
    cases = TypeAdapter(list[PairCase]).validate_json((out / "case_study.json").read_bytes())
    summary = CaseStudySummary.model_validate_json((out / "summary.json").read_bytes())
    tiny = yaml.safe_load(TINY_CONFIG)
    n_pairs, n_stratified = tiny["pairs"]["n_pairs"], tiny["pairs"]["n_stratified"]
    kinds = [(c.kind, c.rank) for c in cases]
    n_orphans = tiny["pairs"]["n_orphans"]
    assert kinds == [(k, r) for k in ("best", "worst", "random") for r in range(1, n_pairs + 1)] + [
        ("stratified", r) for r in range(1, n_stratified + 1)] + [
        ("orphan", r) for r in range(1, n_orphans + 1)]
    match = MatchArtifact.model_validate_json((out / "match.json").read_bytes())
    pairs = PairsArtifact.model_validate_json((out / "pairs.json").read_bytes())
    scan = ScanArtifact.model_validate_json((out / "scan.json").read_bytes())
    windows1 = WindowsArtifact.model_validate_json((out / "windows_sae1.json").read_bytes())
    for case, pair in zip(cases, pairs.all_pairs()):
        assert case.indices == [pair.index1, pair.index2]
        assert all(s in tiny["explain"]["scales"] for s in case.scales if s is not None)
        first = windows1.features[str(pair.index1)]
        assert [(w.tokens, w.seq_id, w.start) for w in case.windows[0]["max"]] == [
            (w.tokens, w.seq_id, w.start) for w in first.windows["max"]]
        assert first.stats.n_active == scan.firing["sae1"][pair.index1]  # same kept tokens
        assert case.agreement.frequency1 == pytest.approx(first.stats.frequency)
    assert summary.match.n_matched == match.stats.n_matched
    assert min(summary.groups["best"].mean_pearson, 1.0) > summary.groups["worst"].mean_pearson
    assert summary.quality["sae1"].fvu < 0.3 and summary.failure["n_null"] == tiny["explain"]["n_null"]
    html = (out / "report" / "index.html").read_text()
    assert html.count('class="pair') >= len(cases)
    ledger = orjson.loads((out / "stages.json").read_bytes())
    for name in ("match", "scan", "known", "pairs", "explain", "describe", "embed"):  # ledger = artifact
        meta = orjson.loads((out / f"{name}.json").read_bytes())["meta"]
        assert meta["fingerprint"] == ledger[name]["fingerprint"] and meta["stage"] == name
    upstream = orjson.loads((out / "summary.json").read_bytes())["meta"]["upstream"]
    assert upstream == {name: ledger[name]["fingerprint"]
                        for name in ("match", "scan", "pairs", "explain", "windows", "describe",
                                     "embed", "known")}

    # fewer pairs: explain reruns but steers no feature it has already explained (the per-feature
    # keys are the same in another process than the run's)
    explained = orjson.loads((out / "explain.json").read_bytes())["features"]
    code, said, _ = in_process("explain", "--config", "tiny.yaml", "--n-pairs", "1", cwd=tmp_path)
    assert code == 0, said[-3000:]
    selected = PairsArtifact.model_validate_json((out / "pairs.json").read_bytes()).selected_features()
    for key, features in selected.items():
        reused = [f for f in features if str(f) in explained[key]]
        assert reused and f"{key}: {len(reused)} features reused, {len(features) - len(reused)} to explain" \
            in said, said


@needs_bundle
def test_an_edited_or_missing_artifact_reruns_its_stage_only_and_strict_refuses(copy_of_tiny_run,
                                                                                in_process):
    """An edited explain.json is refused under --strict, else recomputed; a missing windows file's
    stage reruns; --force reruns the stage asked for (assemble, written also to --out); every other
    stage, upstream or downstream, is reused. Then `report --case-study` on the --out copy."""
    tmp_path, out = copy_of_tiny_run
    original = (out / "explain.json").read_bytes()
    edited = orjson.loads(original)
    feature = next(iter(edited["features"]["sae1"].values()))
    feature["explanations"][0] = "an edited explanation"
    (out / "explain.json").write_bytes(orjson.dumps(edited))
    code, said, _ = in_process("assemble", "--config", "tiny.yaml", "--force", "--strict", cwd=tmp_path)
    assert code == 2 and "explain.json changed since explain wrote it" in said, said
    assert "Traceback" not in said and (out / "explain.json").read_bytes() != original

    windows2 = orjson.loads((out / "windows_sae2.json").read_bytes())
    (out / "windows_sae2.json").unlink()
    target = tmp_path / "elsewhere" / "study.json"
    code, said, _ = in_process("assemble", "--config", "tiny.yaml", "--force", "--out", target, cwd=tmp_path)
    assert code == 0, said[-3000:]
    ran = [name for name in ("match", "scan", "pairs", "explain", "windows", "describe", "embed",
                             "assemble") if f"{name} done" in said]
    assert ran == ["explain", "windows", "assemble"] and said.count("done in") == 3, said
    cases = orjson.loads(target.read_bytes())
    assert "an edited explanation" not in [t for c in cases for t in c["self_explanations"]]
    restored = orjson.loads((out / "explain.json").read_bytes())["features"]
    assert restored == orjson.loads(original)["features"]  # recomputed, not the edit
    rewritten = orjson.loads((out / "windows_sae2.json").read_bytes())
    assert rewritten["features"] == windows2["features"]  # from the cached corpus pass

    assert target.read_bytes() == (out / "case_study.json").read_bytes()
    assert (tmp_path / "elsewhere" / "study.summary.json").read_bytes() == (out / "summary.json").read_bytes()
    code, said, _ = in_process("report", "--case-study", target, cwd=tmp_path)
    assert code == 0, said[-3000:]
    assert (tmp_path / "elsewhere" / "report" / "index.html").stat().st_size > 10_000


@needs_bundle
def test_two_concurrent_runs_with_different_settings_end_consistent(copy_of_tiny_run, in_process):
    """Two `run`s with different assemble settings at once: one waits for the other's lock; the
    folder ends with every file as its ledger records it, and `cached` only where true: the run
    that waited recomputes what the other changed (its summary is the one left), and a third run
    with nothing changed reruns no stage."""
    import subprocess
    import sys

    tmp_path, out = copy_of_tiny_run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "faithcase.cli", "run", "--config", "tiny.yaml"]
    settings = [["--set", "assemble.n_bootstrap=200"], ["--set", "assemble.n_bootstrap=300"]]
    runs = [subprocess.Popen(command + extra, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for extra in settings]
    results = [run.communicate(timeout=1200) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in results]
    waited = [i for i, (_, err) in enumerate(results) if "waiting for the run in progress" in err]
    assert len(waited) == 1, [err[-2000:] for _, err in results]
    ledger = orjson.loads((out / "stages.json").read_bytes())
    for name, entry in ledger.items():  # every recorded file holds what the ledger says
        for file, digest in entry["files"].items():
            assert sha256_file(out / file) == digest, (name, file)
        if (out / f"{name}.json").is_file() and name != "report":
            assert orjson.loads((out / f"{name}.json").read_bytes())["meta"]["fingerprint"] == entry["fingerprint"]
    last, late = settings[waited[0]], " ".join(results[waited[0]][1].split())
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["config"]["assemble"]["n_bootstrap"] == int(last[1].split("=")[1])
    assert "assemble done" in late and "cached match is up to date" in late, late[-2000:]
    code, said, _ = in_process("run", "--config", "tiny.yaml", *last, cwd=tmp_path)
    assert code == 0 and said.count("cached") >= 8 and "done in" not in said, said


@needs_bundle
def test_the_load_check_flags_a_mis_normalised_sae_and_strict_stops(tmp_path, in_process):
    from faithcase.saes import load_sae, save_saelens

    sae = load_sae(BUNDLE / "sae_seed42")
    sae.input_unit_norm = True  # trained on raw activations, loaded as if it standardised them
    save_saelens(sae, tmp_path / "mis_normalised")
    (tmp_path / "tiny.yaml").write_text(tiny_config(corpus={"max_tokens": 1024}))
    code, said, _ = in_process("scan", "--config", "tiny.yaml", "--sae1", tmp_path / "mis_normalised",
                               "--strict", cwd=tmp_path)
    assert code == 2 and "(--strict)" in said and "Traceback" not in said, said
    assert not (tmp_path / "outputs" / "tiny" / "scan.json").exists()
    code, said, _ = in_process("scan", "--config", "tiny.yaml", "--sae1", tmp_path / "mis_normalised",
                               cwd=tmp_path)
    assert code == 0 and "warning:" in said and "FVU" in said, said
    assert (tmp_path / "outputs" / "tiny" / "scan.json").is_file()


@needs_bundle
def test_an_sae_of_another_width_than_the_model_is_a_one_line_error(tmp_path, in_process):
    import torch
    from sae_writers import write_batchtopk

    decoder = torch.nn.functional.normalize(torch.randn(64, 24, generator=torch.Generator().manual_seed(0)), dim=-1)
    write_batchtopk(tmp_path / "a", decoder)
    write_batchtopk(tmp_path / "b", decoder.flip(0))
    (tmp_path / "tiny.yaml").write_text(tiny_config(corpus={"max_tokens": 1024}))
    code, said, output = in_process("scan", "--config", "tiny.yaml", "--sae1", tmp_path / "a",
                                    "--sae2", tmp_path / "b", cwd=tmp_path)
    assert code == 2 and "Traceback" not in said, said
    lines = [line for line in output.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "d_in=24" in lines[0] and "d_model=576" in lines[0]
    assert (tmp_path / "outputs" / "tiny" / "match.json").is_file()  # match needs no model
    assert not (tmp_path / "outputs" / "tiny" / "scan.json").exists()
