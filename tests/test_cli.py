"""The command line: `faithcase match` on each SAE format, caching, config overrides and bad input."""

import os
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import orjson
import pytest
import torch
from typer.testing import CliRunner

from sae_writers import D_IN, D_SAE, WRITERS, planted_decoders, write_batchtopk, write_saelens

from faithcase.cli import app

runner = CliRunner()


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "run_name: t\nhook: blocks.3.hook_resid_pre\n"
        "sae1: {path: none1}\nsae2: {path: none2}\n"
        "corpus: {source: corpus.txt}\npairs: {n_pairs: 5}\n"
    )
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_match_each_format_recovers_a_planted_permutation_and_caches(tmp_path, config_file, fmt):
    W1, W2, perm = planted_decoders()
    a = WRITERS[fmt](tmp_path / "a", W1)
    b = WRITERS[fmt](tmp_path / "b", W2)
    out = tmp_path / "out"
    result = invoke("match", "--config", config_file, "--sae1", a, "--sae2", b, "--out-dir", out)
    assert result.exit_code == 0, result.output
    data = orjson.loads((out / "match.json").read_bytes())
    assert data["sae1"]["format"] == fmt and data["sae2"]["format"] == fmt
    # W2[j] = W1[perm[j]]  →  feature perm[j] of SAE1 matches feature j of SAE2
    expected = {int(perm[j]): j for j in range(D_SAE)}
    got = dict(zip(data["assignment"]["index1"], data["assignment"]["index2"]))
    assert got == expected
    assert data["stats"]["shared_ratio"] == 1.0 and data["stats"]["top1_ratio"] == data["stats"]["top1_ratio_sae1"] == 1.0
    assert (out / "match_histogram.png").stat().st_size > 1000
    assert orjson.loads((out / "stages.json").read_bytes())["match"]["fingerprint"] == data["meta"]["fingerprint"]

    again = invoke("match", "--config", config_file, "--sae1", a, "--sae2", b, "--out-dir", out)
    assert again.exit_code == 0 and "cached" in again.output


def test_force_reruns_and_selection_sizes_fail_before_any_corpus_pass(tmp_path, config_file):
    W1, W2, _ = planted_decoders(seed=1, noise=0.5)
    a, b = write_batchtopk(tmp_path / "a", W1), write_batchtopk(tmp_path / "b", W2)
    out = tmp_path / "out"
    assert invoke("match", "-c", config_file, "--sae1", a, "--sae2", b, "--out-dir", out).exit_code == 0
    result = invoke("match", "-c", config_file, "--sae1", a, "--sae2", b, "--out-dir", out, "--force")
    assert result.exit_code == 0 and "cached" not in result.output and "match done" in result.output
    # the config has no corpus and no model: these fail on their sizes before any pass over it
    one_line_error(invoke("pairs", "-c", config_file, "--sae1", a, "--sae2", b, "--out-dir", out, "--n-pairs", 65),
                   "--n-pairs 65 is larger than the 64 matched features")
    one_line_error(invoke("pairs", "-c", config_file, "--sae1", a, "--sae2", b, "--out-dir", out,
                          "--set", "pairs.n_stratified=100"), "n_stratified 100 is larger than the 64 matched pairs")
    for bad, needle in (("explain.n_samples=-1", "explain.n_samples"), ("explain.criterion=kl", "explain.criterion"),
                        ("embed.query_template=plain", "{explanation}")):
        one_line_error(invoke("pairs", "-c", config_file, "--out-dir", out, "--set", bad), needle)


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    for needle in needles:
        assert needle in text, text


def test_bad_inputs_give_one_line_errors_and_leave_artifacts_untouched(tmp_path, config_file):
    W1, W2, _ = planted_decoders(seed=2)
    a, b = write_batchtopk(tmp_path / "a", W1), write_batchtopk(tmp_path / "b", W2)
    out = tmp_path / "out"
    assert invoke("match", "-c", config_file, "--sae1", a, "--sae2", b, "--out-dir", out).exit_code == 0
    before = (out / "match.json").read_bytes()

    one_line_error(invoke("match", "-c", config_file, "--sae1", tmp_path / "missing", "--sae2", b,
                          "--out-dir", out, "--force"), "not found")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "weights.bin").write_bytes(b"x")
    one_line_error(invoke("match", "-c", config_file, "--sae1", unknown, "--sae2", b, "--out-dir", out, "--force"),
                   "cfg.json", "sae_weights.safetensors", "sae.safetensors", "sae.pt")
    wide = write_batchtopk(tmp_path / "wide", torch.randn(D_SAE, D_IN + 8))
    one_line_error(invoke("match", "-c", config_file, "--sae1", a, "--sae2", wide, "--out-dir", out, "--force"),
                   "d_in")
    nan = write_batchtopk(tmp_path / "nan", W1, W_enc=torch.full((D_IN, D_SAE), float("nan")))
    one_line_error(invoke("match", "-c", config_file, "--sae1", nan, "--sae2", b, "--out-dir", out, "--force"),
                   "non-finite")
    one_line_error(invoke("match", "-c", config_file, "--out-dir", out, "--force", "--set", "sae1.hf=owner/name"),
                   "sae1", "not both")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("run_name: [unclosed\n")
    one_line_error(invoke("match", "-c", bad_yaml, "--out-dir", out), "malformed YAML")
    unknown_key = tmp_path / "unknown_key.yaml"
    unknown_key.write_text(config_file.read_text() + "match_threshold: 0.5\n")
    one_line_error(invoke("match", "-c", unknown_key, "--out-dir", out), "unknown config key", "match_threshold")
    one_line_error(invoke("match", "-c", tmp_path / "nope.yaml"), "config file not found")
    assert (out / "match.json").read_bytes() == before
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_set_overrides_nested_keys_and_rejects_unknown_ones(tmp_path, config_file):
    from faithcase.config import load_config
    from faithcase.run.errors import FaithcaseError

    cfg = load_config(str(config_file), sets=["windows.top=5", "explain.mode=add"])
    assert cfg.windows.top == 5 and cfg.explain.mode == "add"
    with pytest.raises(FaithcaseError, match="unknown config key 'windows.topp'"):
        load_config(str(config_file), sets=["windows.topp=5"])
    with pytest.raises(FaithcaseError, match="hook"):
        load_config(str(config_file), sets=["hook=resid12"])


def test_demo_config_is_the_shipped_default():
    from faithcase.config import load_config

    cfg = load_config()
    assert cfg.run_name == "demo" and cfg.hook == "blocks.12.hook_resid_pre"
    assert cfg.sae1.path.endswith("sae_seed42") and cfg.sae2.path.endswith("sae_seed49")
    # one demo config: configs/ holds relative symlinks to the packaged configs, not copies
    configs = Path(__file__).parents[1] / "configs"
    for name in ("demo.yaml", "llama-3.2-1b.yaml"):
        assert (configs / name).is_symlink(), f"configs/{name} should be a symlink"
        assert os.readlink(configs / name) == f"../src/faithcase/configs/{name}"


def test_demo_info_prints_the_shipped_shared_ratio_recomputed_with_scipy():
    from scipy.optimize import linear_sum_assignment

    from faithcase.tools.demo.build import BUNDLE_DIR, bundle_info
    from faithcase.saes import load_sae

    info = bundle_info()
    folders = [BUNDLE_DIR / entry["folder"] for entry in info["saes"].values()]
    W1, W2 = (torch.nn.functional.normalize(load_sae(f).W_dec.double(), dim=-1).numpy() for f in folders)
    similarity = W1 @ W2.T
    rows, cols = linear_sum_assignment(-similarity)
    matched = similarity[rows, cols]
    assert info["match"]["shared_ratio"] == pytest.approx((matched > 0.7).mean(), abs=1e-4)
    assert info["match"]["pairs_cos_ge_0.9"] == int((matched >= 0.9).sum())

    result = runner.invoke(app, ["demo", "info"])
    assert result.exit_code == 0, result.output
    assert f"{info['match']['shared_ratio']:.4f}" in result.output
    for name, entry in info["saes"].items():
        line = next(line for line in result.output.splitlines() if name in line and "%" in line)
        assert f"{entry['heldout']['fvu']:.4f}" in line


def test_sae_options_replace_the_configs_sae_and_its_format(tmp_path):
    W1, W2, _ = planted_decoders(seed=3)
    a, b = write_saelens(tmp_path / "a", W1), write_batchtopk(tmp_path / "b", W2)
    config = tmp_path / "formats.yaml"
    config.write_text("run_name: t\nhook: blocks.3.hook_resid_pre\nsae1: {path: nowhere, format: sparsify}\n"
                      "sae2: {path: nowhere, format: sparsify}\ncorpus: {source: corpus.txt}\npairs: {n_pairs: 2}\n")
    out = tmp_path / "out"
    result = invoke("match", "-c", config, "--sae1", a, "--sae2", b, "--out-dir", out)
    assert result.exit_code == 0, result.output
    data = orjson.loads((out / "match.json").read_bytes())
    assert (data["sae1"]["format"], data["sae2"]["format"]) == ("saelens", "batchtopk")
    forced = invoke("match", "-c", config, "--sae1", a, "--sae2", b, "--out-dir", out, "--force-all")
    assert forced.exit_code == 0 and "match done" in forced.output
