"""The explain stage (self-explanation by steering) on the embedded demo model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import bos_tokens

from faithcase.bench import explain_speedup
from faithcase.stages import explain
from faithcase import lm as lm_module
from faithcase.config import ExplainConfig
from faithcase.errors import FaithcaseError
from faithcase.outliers import excluded_positions

INSERT_LAYER = 2
PLANTED_LAYER = 12
FEW_TOKENS = 8
CORPUS = ["We flew to Paris for the weekend.", "The dog barked at the mailman all night long.",
          "I love listening to music every day.", "The computer crashed again this morning."]


def word_direction(model, sentence: str, word: str, layer: int = PLANTED_LAYER) -> torch.Tensor:
    """The model's own residual of `word` in context, as a unit vector (planted feature)."""
    tokens = bos_tokens(model, sentence)
    word_id = model.tokenizer.encode(word, add_special_tokens=False)[0]
    position = (tokens[0] == word_id).nonzero()[0, 0]
    resid = model.activations(tokens, f"blocks.{layer}.hook_resid_pre")[0, position]
    return resid / resid.norm()


@pytest.fixture(scope="module")
def prompt(demo_lm):
    return explain.build_prompt(demo_lm, ExplainConfig())


@pytest.fixture(scope="module")
def residual_norm(demo_lm):
    batches = [bos_tokens(demo_lm, CORPUS)]
    return explain.median_residual_norm(demo_lm, batches, INSERT_LAYER,
                                        lambda resid: excluded_positions(resid, norm_ratio=10.0))


@pytest.fixture(scope="module")
def directions(demo_lm):
    return {7: word_direction(demo_lm, "We flew to Paris for the weekend.", " Paris"),
            11: word_direction(demo_lm, "I love listening to music every day.", " music")}


@pytest.fixture(scope="module")
def paris_run(demo_lm, directions, residual_norm):
    cfg = ExplainConfig(scales=[1.0, 2.0, 4.0], max_new_tokens=FEW_TOKENS, n_samples=1)
    return explain.explain_features(demo_lm, {7: directions[7]}, cfg, residual_norm,
                                    fingerprints={7: "fp-7"})


# ---------------------------------------------------------------- prompt


def test_prompt_uses_chat_template_with_two_placeholders(demo_lm, prompt):
    assert prompt.positions == [32, 46] and prompt.placeholder_id == 72
    assert [prompt.tokens[p] for p in prompt.positions] == [72, 72]
    assert prompt.tokens[0] == demo_lm.bos_token_id and prompt.tokens[1] != demo_lm.bos_token_id
    assert prompt.text.endswith('<|im_start|>assistant\nThe meaning of the word "X" is "')
    assert demo_lm.tokenizer.decode(prompt.tokens[-1:]) == ' "'  # no end-of-turn after the prefix


def test_plain_template_gets_one_bos(demo_lm):
    base_model = SimpleNamespace(has_chat_template=False, tokenizer=demo_lm.tokenizer,
                                 bos_token_id=demo_lm.bos_token_id)
    spec = explain.build_prompt(base_model, ExplainConfig())
    bos = demo_lm.bos_token_id
    assert spec.tokens[0] == bos and bos not in spec.tokens[1:]
    assert len(spec.positions) == 2 and {spec.tokens[p] for p in spec.positions} == {spec.placeholder_id}


def test_prompt_errors(demo_lm):
    no_placeholder = ExplainConfig(user_prompt="What does this mean?", answer_prefix='It means "')
    with pytest.raises(FaithcaseError, match="no placeholder"):
        explain.build_prompt(demo_lm, no_placeholder)
    long_word = ExplainConfig(placeholder="Xylophonistically",
                              user_prompt='What is the meaning of the word "Xylophonistically"?',
                              answer_prefix='The meaning of the word "Xylophonistically" is "')
    with pytest.raises(FaithcaseError, match=r"not one token.*'X', 'yl'"):
        explain.build_prompt(demo_lm, long_word)


def test_scale_and_feature_errors():
    with pytest.raises(FaithcaseError, match="empty"):
        explain.scale_grid(ExplainConfig(scales=[]))
    with pytest.raises(FaithcaseError, match="positive"):
        explain.scale_grid(ExplainConfig(scales=[1.0, -2.0]))
    with pytest.raises(FaithcaseError, match="positive"):
        explain.scale_grid(ExplainConfig(scales=[0.0, 2.0]))
    sae = SimpleNamespace(W_dec=torch.eye(4, 6), d_sae=4)
    with pytest.raises(FaithcaseError, match="out of range"):
        explain.unit_directions(sae, [1, 4])
    units = explain.unit_directions(SimpleNamespace(W_dec=3 * torch.eye(4, 6), d_sae=4), [2])
    assert torch.allclose(units[2], torch.eye(4, 6)[2])


def test_auto_grid_is_geometric_and_skips_lowest():
    cfg = ExplainConfig()
    grid = explain.scale_grid(cfg)
    assert len(grid) == cfg.n_scales and grid[0] == cfg.min_scale and grid[-1] == pytest.approx(cfg.max_scale)
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert max(ratios) - min(ratios) < 1e-4
    skipped = cfg.skip_lowest
    assert explain.eligible_scales(cfg, len(grid)) == [False] * skipped + [True] * (len(grid) - skipped)
    assert explain.eligible_scales(ExplainConfig(scales=[4, 8, 16]), 3) == [True] * 3  # a list is used as given


def test_layers(demo_lm):
    assert explain.resolve_layers(demo_lm, ExplainConfig()) == (2, 24)
    at_sae = ExplainConfig(insert_layer="sae", read_layer=29)
    assert explain.resolve_layers(demo_lm, at_sae, sae_layer=12) == (12, 29)
    with pytest.raises(FaithcaseError, match="out of range"):
        explain.resolve_layers(demo_lm, ExplainConfig(insert_layer=30))
    with pytest.raises(FaithcaseError, match="'sae'"):
        explain.resolve_layers(demo_lm, ExplainConfig(insert_layer="sae"))


# ---------------------------------------------------------------- steering


def test_steering_only_touches_placeholders_of_the_prompt_pass(demo_lm, prompt, directions, residual_norm,
                                                                monkeypatch):
    tokens, _, mask = prompt.batch(1, demo_lm.device)
    vector = directions[7][None] * 2 * residual_norm
    later = "blocks.6.hook_resid_pre"
    _, cache = demo_lm.run_with_steering(tokens, INSERT_LAYER, mask, vector, read_hooks=[later])
    plain = demo_lm.activations(tokens, later)
    first = prompt.positions[0]
    assert torch.equal(cache[later][0, :first], plain[0, :first])
    assert (cache[later][0, first] - plain[0, first]).norm() > 1.0

    calls = []  # (sequence length, whether the hook changed the residual)
    original = lm_module.steering_hook

    def spy(positions_mask, vectors, mode="replace"):
        inner = original(positions_mask, vectors, mode)

        def hook_fn(resid, hook=None):
            out = inner(resid, hook)
            calls.append((resid.shape[1], not torch.equal(out, resid)))
            return out
        return hook_fn

    monkeypatch.setattr(lm_module, "steering_hook", spy)
    explain.generate_explanations(demo_lm, prompt, vector, INSERT_LAYER, "replace", 4, batch_size=1)
    assert calls[0] == (len(prompt.tokens), True)
    assert len(calls) > 1 and all(call == (1, False) for call in calls[1:])


def test_add_zero_is_the_unsteered_model(demo_lm, prompt):
    zero = torch.zeros(1, demo_lm.d_model)
    steered = explain.generate_explanations(demo_lm, prompt, zero, INSERT_LAYER, "add", FEW_TOKENS, 1)
    tokens, attention, _ = prompt.batch(1, demo_lm.device)
    plain = demo_lm.generate_greedy(tokens, attention, FEW_TOKENS, stop_strings=['"'])
    assert steered == [explain.explanation_text(demo_lm, plain[0])]


def test_selfsim_at_scale_zero_is_zero_and_batching_agrees(demo_lm, prompt, directions, residual_norm):
    matrix = torch.stack([directions[7], directions[11]])
    scales = [0.0, 2.0]
    batched = explain.sweep(demo_lm, prompt, matrix, scales, INSERT_LAYER, 24, "replace", residual_norm, 64)
    single = explain.sweep(demo_lm, prompt, matrix, scales, INSERT_LAYER, 24, "replace", residual_norm, 1,
                           share_prefix=False)
    selfsim, entropy, base = batched
    assert selfsim.shape == entropy.shape == (2, 2)
    assert selfsim[:, 0].abs().max() < 1e-5 and entropy[:, 0].abs().max() < 1e-4
    assert (selfsim[:, 1] > 0).all()
    assert base["selfsim_zero"].shape == (2,)
    assert (batched[0] - single[0]).abs().max() < 1e-4
    assert (batched[1] - single[1]).abs().max() < 1e-4

    vectors = matrix * 2 * residual_norm
    together = explain.generate_explanations(demo_lm, prompt, vectors, INSERT_LAYER, "replace", FEW_TOKENS, 8)
    apart = explain.generate_explanations(demo_lm, prompt, vectors, INSERT_LAYER, "replace", FEW_TOKENS, 1)
    assert together == apart


# ---------------------------------------------------------------- the stage


def test_planted_direction_explains_itself(paris_run, residual_norm):
    results, baseline, settings = paris_run
    paris = results[7]
    print(f"\nParis explanations: {paris.explanations} at scale {paris.scale}; "
          f"baselines: replace={baseline.replace_zero!r} add={baseline.add_zero!r}")
    assert paris.fingerprint == "fp-7"
    assert len(paris.explanations) == 2  # greedy, then one sample
    assert paris.scale in (1.0, 2.0, 4.0) and paris.scales == [paris.scale]
    assert [point.scale for point in paris.sweep] == [1.0, 2.0, 4.0]
    assert all(point.score is not None for point in paris.sweep)
    chosen = next(point for point in paris.sweep if point.scale == paris.scale)
    assert chosen.selfsim > 0 and not paris.failed
    assert paris.best_selfsim == pytest.approx(max(point.selfsim for point in paris.sweep))
    assert paris.explanations[0] and paris.explanations[0] != baseline.replace_zero
    assert baseline.replace_zero and baseline.add_zero  # both baselines recorded
    assert settings.placeholder_positions == [32, 46] and settings.read_layer == 24
    assert settings.residual_norm == residual_norm and settings.scales == [1.0, 2.0, 4.0]


def test_scoring_prefers_high_selfsim_and_low_entropy():
    selfsim = torch.tensor([[0.0, 0.05, 0.08, 0.02]])
    entropy = torch.tensor([[0.0, -2.0, -1.0, -0.5]])
    scores = explain.score_sweep(selfsim, entropy, 0.4, 0.6)
    assert scores.argmax().item() == 1
    assert explain.best_scales(scores, [True, False, True, True], 2) == [[2, 3]]


def test_bench_explain_agrees(demo_lm, directions, residual_norm):
    cfg = ExplainConfig(scales=[1.0, 2.0], max_new_tokens=4)
    report = explain_speedup(demo_lm, {7: directions[7]}, cfg, residual_norm)
    assert report["forwards"] == 2 and report["speedup"] > 0
    assert report["max_abs_diff_selfsim"] < 1e-4 and report["max_abs_diff_entropy"] < 1e-4
    assert report["same_texts"] and report["same_scales"]


def test_add_mode_records_the_same_baselines(demo_lm, directions, residual_norm, paris_run):
    cfg = ExplainConfig(mode="add", scales=[2.0], max_new_tokens=FEW_TOKENS)
    results, baseline, settings = explain.explain_features(demo_lm, {7: directions[7]}, cfg, residual_norm)
    _, replace_baseline, _ = paris_run
    assert settings.mode == "add" and results[7].scale == 2.0 and results[7].fingerprint == ""
    assert (baseline.replace_zero, baseline.add_zero) == (replace_baseline.replace_zero, replace_baseline.add_zero)
    assert results[7].sweep[0].selfsim > 0
