"""End to end: `faithcase run` on a tiny demo config from a temporary folder, then the case study validated."""

import os

import orjson
import pytest
from pydantic import TypeAdapter

from faithcase.artifacts import (
    CaseStudySummary,
    MatchArtifact,
    PairCase,
    PairsArtifact,
    ScanArtifact,
    WindowsArtifact,
)
from faithcase.run.paths import resolve_path
from faithcase.run.store import sha256_file

from conftest import TINY_CONFIG, faithcase_cli

BUNDLE = resolve_path("pkg:faithcase/demo/bundle")
TINY = TINY_CONFIG
needs_bundle = pytest.mark.skipif(not (BUNDLE / "manifest.json").is_file(), reason="demo bundle not built")


def faithcase(*args, cwd):
    return faithcase_cli(*args, cwd=cwd)


@needs_bundle
def test_run_on_a_tiny_config_writes_a_valid_case_study(copy_of_tiny_run):
    tmp_path, out = copy_of_tiny_run
    cases = TypeAdapter(list[PairCase]).validate_json((out / "case_study.json").read_bytes())
    summary = CaseStudySummary.model_validate_json((out / "summary.json").read_bytes())
    kinds = [(c.kind, c.rank) for c in cases]
    assert kinds == [(k, r) for k in ("best", "worst", "random") for r in (1, 2)] + [
        ("stratified", r) for r in range(1, 5)]
    match = MatchArtifact.model_validate_json((out / "match.json").read_bytes())
    pairs = PairsArtifact.model_validate_json((out / "pairs.json").read_bytes())
    scan = ScanArtifact.model_validate_json((out / "scan.json").read_bytes())
    windows1 = WindowsArtifact.model_validate_json((out / "windows_sae1.json").read_bytes())
    for case, pair in zip(cases, pairs.all_pairs()):
        assert case.indices == [pair.index1, pair.index2]
        assert all(s in (0.5, 1.0, 2.0, 4.0) for s in case.scales if s is not None)
        first = windows1.features[str(pair.index1)]
        assert [(w.tokens, w.seq_id, w.start) for w in case.windows[0]["max"]] == [
            (w.tokens, w.seq_id, w.start) for w in first.windows["max"]]
        assert first.stats.n_active == scan.firing["sae1"][pair.index1]  # same kept tokens
        assert case.agreement.frequency1 == pytest.approx(first.stats.frequency)
    assert summary.match.n_matched == match.stats.n_matched
    assert min(summary.groups["best"].mean_pearson, 1.0) > summary.groups["worst"].mean_pearson
    assert summary.quality["sae1"].fvu < 0.3 and summary.failure["n_null"] == 8
    html = (out / "report" / "index.html").read_text()
    assert html.count('class="pair') >= len(cases)
    ledger = orjson.loads((out / "stages.json").read_bytes())
    for name in ("match", "scan", "pairs", "explain", "describe", "embed"):  # ledger = artifact
        meta = orjson.loads((out / f"{name}.json").read_bytes())["meta"]
        assert meta["fingerprint"] == ledger[name]["fingerprint"] and meta["stage"] == name
    upstream = orjson.loads((out / "summary.json").read_bytes())["meta"]["upstream"]
    assert upstream == {name: ledger[name]["fingerprint"]
                        for name in ("match", "scan", "pairs", "explain", "windows", "describe",
                                     "embed")}

    # a second run with nothing changed reruns no stage
    again = faithcase("run", "--config", "tiny.yaml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("cached") >= 8 and "done in" not in again.stderr, again.stderr

    # a missing artifact: the stage that writes it reruns, and nothing downstream of it
    (out / "windows_sae2.json").unlink()
    rerun = faithcase("run", "--config", "tiny.yaml", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "windows done" in rerun.stderr and rerun.stderr.count("done in") == 1, rerun.stderr
    assert (out / "windows_sae2.json").is_file()

    # --force reruns the stage asked for only; upstream stages are reused
    forced = faithcase("embed", "--config", "tiny.yaml", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "embed done" in forced.stderr and forced.stderr.count("done in") == 1, forced.stderr

    # fewer pairs: explain reruns but steers no feature it has already explained
    explained = orjson.loads((out / "explain.json").read_bytes())["features"]
    fewer = faithcase("explain", "--config", "tiny.yaml", "--n-pairs", "1", cwd=tmp_path)
    assert fewer.returncode == 0, fewer.stderr[-3000:]
    selected = PairsArtifact.model_validate_json((out / "pairs.json").read_bytes()).selected_features()
    for key, features in selected.items():
        reused = [f for f in features if str(f) in explained[key]]
        assert reused and f"{key}: {len(reused)} features reused, {len(features) - len(reused)} to explain" \
            in fewer.stderr, fewer.stderr


@needs_bundle
def test_an_edited_artifact_is_recomputed_or_refused_under_strict(copy_of_tiny_run):
    tmp_path, out = copy_of_tiny_run
    original = (out / "explain.json").read_bytes()
    edited = orjson.loads(original)
    feature = next(iter(edited["features"]["sae1"].values()))
    feature["explanations"][0] = "an edited explanation"
    (out / "explain.json").write_bytes(orjson.dumps(edited))
    strict = faithcase("assemble", "--config", "tiny.yaml", "--force", "--strict", cwd=tmp_path)
    assert strict.returncode == 2 and "explain.json changed since explain wrote it" in strict.stderr
    assert "Traceback" not in strict.stderr and (out / "explain.json").read_bytes() != original
    fixed = faithcase("assemble", "--config", "tiny.yaml", "--force", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "explain done" in fixed.stderr and "assemble done" in fixed.stderr, fixed.stderr
    cases = orjson.loads((out / "case_study.json").read_bytes())
    assert "an edited explanation" not in [t for c in cases for t in c["self_explanations"]]
    restored = orjson.loads((out / "explain.json").read_bytes())["features"]
    assert restored == orjson.loads(original)["features"]  # recomputed, not the edit


@needs_bundle
def test_assemble_out_then_report_case_study(copy_of_tiny_run):
    tmp_path, out = copy_of_tiny_run
    target = tmp_path / "elsewhere" / "study.json"
    done = faithcase("assemble", "--config", "tiny.yaml", "--out", target, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert target.read_bytes() == (out / "case_study.json").read_bytes()
    assert (tmp_path / "elsewhere" / "study.summary.json").read_bytes() == (out / "summary.json").read_bytes()
    shown = faithcase("report", "--case-study", target, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert (tmp_path / "elsewhere" / "report" / "index.html").stat().st_size > 10_000


@needs_bundle
def test_two_concurrent_runs_with_different_settings_end_consistent(copy_of_tiny_run):
    """Two `run`s with different assemble settings at once: one waits for the other's lock; the
    folder ends with every file as its ledger records it, and `cached` only where true."""
    import subprocess
    import sys

    tmp_path, out = copy_of_tiny_run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "faithcase.cli", "run", "--config", "tiny.yaml"]
    settings = (["--set", "assemble.n_bootstrap=100"], ["--set", "assemble.n_bootstrap=200"])
    runs = [subprocess.Popen(command + extra, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for extra in settings]
    results = [run.communicate(timeout=1200) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in results]
    assert any("waiting for the run in progress" in err for _, err in results)
    ledger = orjson.loads((out / "stages.json").read_bytes())
    for name, entry in ledger.items():  # every recorded file holds what the ledger says
        for file, digest in entry["files"].items():
            assert sha256_file(out / file) == digest, (name, file)
        if (out / f"{name}.json").is_file() and name != "report":
            assert orjson.loads((out / f"{name}.json").read_bytes())["meta"]["fingerprint"] == entry["fingerprint"]
    for extra in settings:  # `cached` only where true: the summary is the one asked for
        again = faithcase("run", "--config", "tiny.yaml", *extra, cwd=tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
        summary = orjson.loads((out / "summary.json").read_bytes())
        assert summary["config"]["assemble"]["n_bootstrap"] == int(extra[1].split("=")[1])
        assert "cached match is up to date" in " ".join(again.stderr.split()), again.stderr[-2000:]


@needs_bundle
def test_the_load_check_flags_a_mis_normalised_sae_and_strict_stops(tmp_path):
    from faithcase.saes import load_sae, save_saelens

    sae = load_sae(BUNDLE / "sae_seed42")
    sae.input_unit_norm = True  # trained on raw activations, loaded as if it standardised them
    save_saelens(sae, tmp_path / "mis_normalised")
    (tmp_path / "tiny.yaml").write_text(TINY.replace("max_tokens: 20000", "max_tokens: 2000"))
    warned = faithcase("scan", "--config", "tiny.yaml", "--sae1", tmp_path / "mis_normalised", cwd=tmp_path)
    assert warned.returncode == 0 and "warning:" in warned.stderr and "FVU" in warned.stderr, warned.stderr
    strict = faithcase("scan", "--config", "tiny.yaml", "--sae1", tmp_path / "mis_normalised", "--strict",
                       "--out-dir", "strict", cwd=tmp_path)
    assert strict.returncode == 2 and "(--strict)" in strict.stderr and "Traceback" not in strict.stderr
    assert not (tmp_path / "strict" / "scan.json").exists()


@needs_bundle
def test_an_sae_of_another_width_than_the_model_is_a_one_line_error(tmp_path):
    import torch
    from sae_writers import write_batchtopk

    decoder = torch.nn.functional.normalize(torch.randn(64, 24, generator=torch.Generator().manual_seed(0)), dim=-1)
    write_batchtopk(tmp_path / "a", decoder)
    write_batchtopk(tmp_path / "b", decoder.flip(0))
    (tmp_path / "tiny.yaml").write_text(TINY.replace("max_tokens: 20000", "max_tokens: 2000"))
    done = faithcase("scan", "--config", "tiny.yaml", "--sae1", tmp_path / "a", "--sae2", tmp_path / "b", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "d_in=24" in lines[0] and "d_model=576" in lines[0]
    assert (tmp_path / "outputs" / "tiny" / "match.json").is_file()  # match needs no model
    assert not (tmp_path / "outputs" / "tiny" / "scan.json").exists()
