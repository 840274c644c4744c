"""The demo bundle: the TopK trainer, quality figures, corpus filters, and the shipped bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faithcase.model.corpus import load_texts
from faithcase.demo import BUNDLE_DIR, MANIFEST_FILE
from faithcase.tools.demo.corpus import (
    degenerate_reason,
    filter_samples,
    split_heldout,
    write_texts,
)
from faithcase.tools.demo.manifest import bundle_info, info_rows
from faithcase.tools.demo.settings import FilterSettings
from faithcase.tools.demo.train import (
    _decode_sparse,
    _encode_topk,
    fold_input_scale,
    input_scale,
    lr_at,
    sae_quality,
    train_topk_sae,
)
from faithcase.run.errors import FaithcaseError
from faithcase.saes import SAE


def planted(n: int, d: int = 32, n_true: int = 64, active: int = 3, seed: int = 0) -> torch.Tensor:
    """Activations built from `active` of `n_true` fixed unit directions, plus offset and noise."""
    dictionary = torch.randn(n_true, d, generator=torch.Generator().manual_seed(0))
    dictionary /= dictionary.norm(dim=-1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.rand(n, n_true, generator=g).topk(active, dim=-1).indices
    codes = torch.zeros(n, n_true).scatter_(1, chosen, torch.rand(n, active, generator=g) * 3 + 1)
    return codes @ dictionary * 20 + 5 + 0.2 * torch.randn(n, d, generator=g)


def tiny_sae(seed: int = 0, epochs: int = 1, **kwargs) -> SAE:
    return train_topk_sae(planted(1024), d_sae=64, k=4, seed=seed, batch_size=128, epochs=epochs,
                          dead_after_tokens=512, threads=1, **kwargs)


def random_sae(d_in: int = 16, d_sae: int = 48, k: int = 5, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    return SAE(W_enc=torch.randn(d_in, d_sae, generator=g), b_enc=torch.randn(d_sae, generator=g),
               W_dec=W_dec / W_dec.norm(dim=-1, keepdim=True), b_dec=torch.randn(d_in, generator=g),
               activation="topk", k=k)


# ----------------------------------------------------------------------------- trainer


def test_trainer_learns_planted_structure():
    metrics = []
    sae = train_topk_sae(planted(4096), d_sae=128, k=4, seed=0, batch_size=256, epochs=5,
                         dead_after_tokens=1024, threads=1, hook_name="blocks.12.hook_resid_pre",
                         progress=lambda step, total, m: metrics.append(m))
    assert len(metrics) == 5 * (4096 // 256)
    mse = [m["mse"] for m in metrics]
    first, last = np.mean(mse[:5]), np.mean(mse[-5:])
    assert last < 0.4 * first
    quality = sae_quality(sae, planted(2048, seed=1))  # held-out tokens of the same dictionary
    assert quality["fvu"] < 0.2
    assert quality["l0"] <= 4
    assert quality["dead_fraction"] <= 0.1
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(128), atol=1e-5)
    described = (sae.activation, sae.k, sae.hook_name, sae.hook_layer)
    assert described == ("topk", 4, "blocks.12.hook_resid_pre", 12)
    assert metrics[-1]["lr"] < metrics[0]["lr"]  # decayed at the end


def test_trainer_is_deterministic_by_seed():
    a, b, c = tiny_sae(seed=3), tiny_sae(seed=3), tiny_sae(seed=4)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.W_dec, c.W_dec)
    assert not torch.equal(a.W_enc, c.W_enc)


def test_initialization_before_any_step():
    acts = planted(512)
    sae = train_topk_sae(acts, d_sae=64, k=4, seed=0, batch_size=128, epochs=0, threads=1)
    assert torch.allclose(sae.b_dec, acts.mean(0), rtol=1e-5, atol=1e-4)  # the raw data mean
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(64), atol=1e-6)


def test_input_scale_gives_mean_squared_norm_d():
    acts = planted(1000) * 7
    scaled = acts * input_scale(acts)
    assert scaled.pow(2).sum(-1).mean().item() == pytest.approx(acts.shape[1], rel=1e-5)


def test_folded_scale_on_raw_activations_equals_training_computation():
    """The saved SAE on raw x gives the training-time code and reconstruction of s·x,
    divided by s."""
    scaled, scale = random_sae(), 0.037
    raw = torch.randn(64, 16) * 40 + 3
    x = raw * scale  # what the trainer sees
    values, indices = _encode_topk(x, scaled.W_enc, scaled.b_enc, scaled.b_dec, scaled.k)
    training_code = torch.zeros(64, scaled.d_sae).scatter_(1, indices, values)
    training_recon = _decode_sparse(values, indices, scaled.W_dec) + scaled.b_dec

    folded = fold_input_scale(scaled, scale)
    assert torch.allclose(folded.encode(raw), training_code / scale, rtol=1e-4, atol=1e-4)
    assert torch.allclose(folded.reconstruct(raw), training_recon / scale, rtol=1e-4, atol=1e-3)
    # the same rule as SAE.encode
    assert torch.allclose(scaled.encode(x), training_code, rtol=1e-5, atol=1e-5)
    assert torch.equal(folded.W_dec, scaled.W_dec)  # unit-norm decoder kept


def test_lr_schedule_decays_linearly_at_the_end():
    lrs = [lr_at(step, 100, 1.0, 0.2) for step in range(100)]
    assert lrs[:80] == [1.0] * 80
    assert lrs[80] == pytest.approx(1.0) and lrs[90] == pytest.approx(0.5)
    assert lrs[99] == pytest.approx(0.05)


def test_trainer_rejects_bad_input():
    with pytest.raises(FaithcaseError):
        train_topk_sae(torch.zeros(0, 8), d_sae=16, k=2)
    with pytest.raises(FaithcaseError):
        train_topk_sae(torch.zeros(32, 8), d_sae=16, k=2)  # all zero: no scale


# ----------------------------------------------------------------------------- quality


def test_sae_quality_matches_numpy_brute_force():
    sae = random_sae(k=5)
    acts = torch.randn(300, 16) * 3 + 1
    got = sae_quality(sae, acts, batch_size=64)  # several batches

    x = acts.double().numpy()
    pre = (x - sae.b_dec.double().numpy()) @ sae.W_enc.double().numpy() + sae.b_enc.double().numpy()
    code = np.zeros_like(pre)
    for row in range(len(pre)):
        top = np.argsort(pre[row])[-sae.k:]
        code[row, top] = np.maximum(pre[row, top], 0)
    recon = code @ sae.W_dec.double().numpy() + sae.b_dec.double().numpy()
    fvu = ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert got["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert got["l0"] == pytest.approx((code != 0).sum(1).mean())
    assert got["dead_fraction"] == pytest.approx(1 - (code != 0).any(0).mean())
    assert got["tokens"] == 300


# ----------------------------------------------------------------------------- corpus filters

SPECIAL = {0, 1, 2}


def sample(tokens: list[int], text: str | None = None) -> dict:
    return {"tokens": tokens, "text": text if text is not None else " ".join(map(str, tokens))}


def good_tokens(seed: int, n: int = 60) -> list[int]:
    return torch.randint(100, 5000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_degenerate_samples_are_named():
    assert degenerate_reason(good_tokens(0), SPECIAL) is None
    assert degenerate_reason(good_tokens(0, n=10), SPECIAL) == "short"
    assert degenerate_reason(good_tokens(0, 30) + [2, 2, 2, 2], SPECIAL) == "special_run"
    assert degenerate_reason(good_tokens(0, 30) + [77] * 20, SPECIAL) == "one_token"
    loop = [11, 12, 13, 14, 15, 16] * 12  # a sentence repeating itself
    assert degenerate_reason(good_tokens(0, 20) + loop, SPECIAL) == "repetition"
    # a single special token, or a list with varied items, is fine
    assert degenerate_reason(good_tokens(0, 30) + [2] + good_tokens(1, 30), SPECIAL) is None
    listing = [t for i in range(20) for t in (500 + i, 9, 600 + i, 700 + i)]  # "1: a b\n2: c d…"
    assert degenerate_reason(listing, SPECIAL) is None


def test_filter_samples_drops_degenerate_and_duplicates():
    good = [sample(good_tokens(i)) for i in range(4)]
    near = sample(good[1]["tokens"][:32] + good_tokens(9, 20))  # same first 32 tokens
    samples = [good[0], sample([5] * 40), good[1], sample(good_tokens(5, 8)), dict(good[0]), near,
               sample(good_tokens(6, 30) + [2, 2, 2]), good[2], sample(good_tokens(7), text="   "),
               good[3]]
    kept, counts = filter_samples(samples, SPECIAL, FilterSettings())
    assert kept == good
    assert counts == {"input": 10, "kept": 4, "one_token": 1, "short": 1, "duplicate": 1,
                      "near_duplicate": 1, "special_run": 1, "empty_text": 1}


def test_heldout_split_is_deterministic_and_sized():
    samples = [sample(good_tokens(i, 50 + i % 7)) for i in range(200)]
    train, heldout = split_heldout(samples, heldout_fraction=0.15, min_heldout_tokens=100)
    total = sum(len(s["tokens"]) for s in samples)
    held_tokens = sum(len(s["tokens"]) for s in heldout)
    assert 0.15 * total <= held_tokens < 0.15 * total + 60
    assert len(train) + len(heldout) == 200
    assert not {id(s) for s in train} & {id(s) for s in heldout}
    # independent of the input order
    _, heldout_reversed = split_heldout(samples[::-1], 0.15, 100)
    assert sorted(s["text"] for s in heldout_reversed) == sorted(s["text"] for s in heldout)
    # the minimum wins over the fraction, capped at half
    _, big = split_heldout(samples, 0.15, min_heldout_tokens=10**9)
    assert total / 2 <= sum(len(s["tokens"]) for s in big) < total / 2 + 60


def test_corpus_files_round_trip_and_are_reproducible(tmp_path):
    texts = ["héllo\nworld", "second"]
    write_texts(tmp_path / "a.jsonl.gz", texts)
    write_texts(tmp_path / "b.jsonl.gz", texts)
    assert list(load_texts(str(tmp_path / "a.jsonl.gz"))) == texts  # the pipeline's reader
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()


def test_info_rows_flatten_the_manifest():
    rows = info_rows({"a": {"b": 0.123456, "c": [1, 2]}, "d": "x"})
    assert rows == [("a.b", "0.1235"), ("a.c", "[1, 2]"), ("d", "x")]


# ----------------------------------------------------------------------------- the shipped bundle


@pytest.mark.skipif(not BUNDLE_DIR.is_dir(),
                    reason="the demo bundle has not been built (make demo-bundle)")
def test_shipped_bundle(demo_lm):
    from faithcase.model.corpus import token_sequences
    from faithcase.numerics.outliers import excluded_positions
    from faithcase.tools.demo.manifest import bundle_info
    from faithcase.tools.demo.settings import HELDOUT_FILE
    from faithcase.saes import load_sae

    assert (BUNDLE_DIR / MANIFEST_FILE).is_file(), "bundle folder without manifest.json"
    info = bundle_info()
    saes = {}
    for name, entry in info["saes"].items():
        folder = BUNDLE_DIR / entry["folder"]
        assert (folder / "cfg.json").is_file(), name
        assert (folder / "sae_weights.safetensors").is_file(), name
        saes[name] = load_sae(folder)
        assert saes[name].format == "saelens"
        assert saes[name].hook_name == info["model"]["hook"]
    assert len(saes) == 2
    first, second = saes.values()
    assert not torch.equal(first.W_dec, second.W_dec)
    assert (first.W_dec - second.W_dec).abs().max() > 0.1

    # recompute held-out activations on a few sequences, with the build's own settings
    texts = list(load_texts(str(BUNDLE_DIR / HELDOUT_FILE)))[:48]
    act = info["activations"]
    sequences = token_sequences(texts, demo_lm.tokenizer, seq_len=act["seq_len"], max_tokens=None,
                                seed=0, bos_id=demo_lm.bos_token_id)[:32]
    rule = info["outlier_rule"]
    kept = []
    for begin in range(0, len(sequences), act["batch_size"]):
        batch = sequences[begin:begin + act["batch_size"]]
        resid = demo_lm.activations(batch, info["model"]["hook"])
        excluded = excluded_positions(resid, rule["norm_ratio"], rule["exclude_bos"])
        kept.append(resid[~excluded].float())
    acts = torch.cat(kept)
    assert len(acts) > 2000
    for name, sae in saes.items():
        quality = sae_quality(sae, acts)
        shipped = info["saes"][name]["heldout"]
        assert quality["fvu"] == pytest.approx(shipped["fvu"], abs=0.03), name
        assert quality["l0"] <= sae.k


def test_build_flags_replace_only_what_they_name_and_bad_values_exit_2():
    from typer.testing import CliRunner

    from faithcase.cli import app
    from faithcase.tools.demo.settings import BuildSettings, settings_with

    default = BuildSettings()
    assert settings_with() == default
    custom = settings_with(shards=3, k=16, epochs=2)
    assert (custom.sampling.n_shards, custom.training.k, custom.training.epochs) == (3, 16, 2)
    assert custom.training.lr == default.training.lr
    assert custom.sampling.top_p == default.sampling.top_p
    assert custom.min_heldout_tokens == default.min_heldout_tokens
    custom = settings_with(d_sae=64, weights_dtype="float32", corpus_from="bundle")
    assert (custom.training.d_sae, custom.weights_dtype, custom.corpus_from) == (64, "float32",
                                                                                 "bundle")
    assert default.weights_dtype == "bfloat16" and default.corpus_from is None
    too_many = str(default.training.d_sae + 1)
    for flags in (["--k", "0"], ["--k", too_many], ["--lr", "-1"], ["--shards", "0"],
                  ["--d-sae", "0"], ["--weights-dtype", "float8"]):
        result = CliRunner().invoke(app, ["demo", "build", "--work-dir", "unused", *flags])
        assert result.exit_code == 2, (flags, result.output)
        assert "error:" in result.output and "Traceback" not in result.output


def test_shards_are_exactly_the_requested_ones_and_sampling_gets_every_setting(tmp_path,
                                                                               monkeypatch):
    from types import SimpleNamespace

    from faithcase.tools.demo import sampling

    seen = []

    def fake_sample(hf_model, bos_id, eos_id, batch, new_tokens, top_p, temperature, seed, top_k):
        seen.append((batch, new_tokens, top_p, temperature, seed, top_k))
        return [[seed, seed + 1]]

    monkeypatch.setattr(sampling, "sample_from_bos", fake_sample)
    tokenizer = SimpleNamespace(bos_token_id=1, eos_token_id=2,
                                decode=lambda row: " ".join(map(str, row)))
    sampling.write_shards(None, tokenizer, tmp_path, 3, 4, 8, 0.9, 0.7, seed=100, top_k=17)
    assert seen == [(4, 8, 0.9, 0.7, 100 + i, 17) for i in range(3)]
    written = [p.name for p in sorted(tmp_path.glob("shard_*.jsonl.gz"))]
    assert written == [p.name for p in sampling.shard_paths(tmp_path, 3)]

    # a third shard on disk is not read
    rows = sampling.read_shards(sampling.shard_paths(tmp_path, 2))
    assert [row["tokens"] for row in rows] == [[100, 101], [101, 102]]
    assert rows[0]["text"] == "100 101"


def test_manifest_records_the_trainer_where_it_lives():
    import importlib

    from faithcase.tools.demo.manifest import trainer_path

    module, name = trainer_path().rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is train_topk_sae


def test_build_keeps_the_names_the_cli_imports():
    from faithcase.tools.demo import build, manifest, settings

    assert build.bundle_info is manifest.bundle_info and build.info_rows is manifest.info_rows
    assert build.settings_with is settings.settings_with and callable(build.build_bundle)


def test_stage_keys_are_those_the_shipped_bundle_was_built_with(tmp_path, monkeypatch):
    """Pinned: a change reruns every stage of a cached build (an hour)."""
    from faithcase.tools.demo import build
    from faithcase.tools.demo.settings import BuildSettings

    model = tmp_path / "model.gguf"
    model.write_bytes(b"model")
    monkeypatch.setattr(build._Builder, "model_file", lambda self: model)
    builder = build._Builder(tmp_path / "out", tmp_path / "work", tmp_path / "samples",
                             BuildSettings(), console=None)
    graph = build.build_graph(builder.settings.seeds)
    run = graph.run(builder, tmp_path / "work" / "stages.json")
    assert {name: run.fingerprint(name) for name in graph.order()} == {
        "samples": "a16584ca54089d99", "corpus": "7785a20c009b85ee",
        "activations": "b6053372862421f2", "sae_seed42": "97cca76a53a6bfa1",
        "sae_seed49": "4fadfbd2d11a803c", "manifest": "6b7882d0e83ff680",
    }


def test_a_given_corpus_replaces_sampling_and_keeps_its_record(tmp_path, monkeypatch):
    """`--corpus-from`: the corpus files of a built bundle, copied, with that bundle's record."""
    from faithcase.tools.demo import build
    from faithcase.tools.demo.settings import HELDOUT_FILE, TRAIN_FILE, settings_with

    builder = build._Builder(tmp_path / "out", tmp_path / "work", tmp_path / "samples",
                             settings_with(corpus_from=str(BUNDLE_DIR)), console=None)
    (tmp_path / "out").mkdir()
    graph = build.build_graph(builder.settings.seeds, corpus_given=True)
    assert graph.order()[:2] == ["corpus", "activations"]  # no samples stage
    record = builder.given_corpus({}, "")
    shipped = bundle_info()["corpus"]
    assert record["train_tokens"] == shipped["train_tokens"]
    assert record["filter_counts"] == shipped["filter_counts"]
    for name in (TRAIN_FILE, HELDOUT_FILE):
        assert (tmp_path / "out" / name).read_bytes() == (BUNDLE_DIR / name).read_bytes()
