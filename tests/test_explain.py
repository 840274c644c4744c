"""The explain stage (self-explanation by steering) on the embedded demo model: prompt, sweeps with the
CE criterion, KV-cached decoding against uncached references, ranking, and the calibrated failure test."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import bos_tokens

from faithcase.tools.bench import explain_speedup
from faithcase.artifacts import RankedText
from faithcase.config import ExplainConfig
from faithcase.run.errors import FaithcaseError
from faithcase.numerics.outliers import excluded_positions
from faithcase.model import hooks as hooks_module
from faithcase.model import steering
from faithcase.numerics.directions import unit_directions
from faithcase.stages import explain
from faithcase.model.prompt import build_prompt

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
    return build_prompt(demo_lm, ExplainConfig())


@pytest.fixture(scope="module")
def residual_norm(demo_lm):
    batches = [bos_tokens(demo_lm, CORPUS)]
    return steering.median_residual_norm(demo_lm, batches, INSERT_LAYER,
                                        lambda resid: excluded_positions(resid, norm_ratio=10.0))


@pytest.fixture(scope="module")
def directions(demo_lm):
    return {7: word_direction(demo_lm, "We flew to Paris for the weekend.", " Paris"),
            11: word_direction(demo_lm, "I love listening to music every day.", " music")}


@pytest.fixture(scope="module")
def paris_run(demo_lm, directions, residual_norm):
    cfg = ExplainConfig(scales=[1.0, 2.0, 4.0], max_new_tokens=FEW_TOKENS, n_samples=2)
    return explain.explain_features(demo_lm, {7: directions[7]}, cfg, residual_norm,
                                    fingerprints={7: "fp-7"}, threshold=0.0)


def reference_decode(model, prompt, vector, layer, mode, n_tokens, steer=True):
    """Greedy decoding without a KV cache: the whole sequence runs every step, the steering vector at
    the prompt's placeholders only; tokens up to the first stop token and their log-probabilities."""
    tokens = torch.tensor([prompt.tokens])
    stops = set(steering.stop_tokens(model).tolist())
    ids, logprobs = [], []
    for _ in range(n_tokens):
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        if steer:
            mask[0, prompt.positions] = True
        logits, _ = model.run_with_steering(tokens, layer, mask, vector[None], mode, last_position_only=True)
        log_probs = logits[0].float().log_softmax(-1)
        token = int(log_probs.argmax())
        ids.append(token)
        logprobs.append(float(log_probs[token]))
        if token in stops:
            break
        tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)
    return ids, logprobs


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
    spec = build_prompt(base_model, ExplainConfig())
    bos = demo_lm.bos_token_id
    assert spec.tokens[0] == bos and bos not in spec.tokens[1:]
    assert len(spec.positions) == 2 and {spec.tokens[p] for p in spec.positions} == {spec.placeholder_id}


def test_prompt_errors(demo_lm):
    no_placeholder = ExplainConfig(user_prompt="What does this mean?", answer_prefix='It means "')
    with pytest.raises(FaithcaseError, match="no placeholder"):
        build_prompt(demo_lm, no_placeholder)
    long_word = ExplainConfig(placeholder="Xylophonistically",
                              user_prompt='What is the meaning of the word "Xylophonistically"?',
                              answer_prefix='The meaning of the word "Xylophonistically" is "')
    with pytest.raises(FaithcaseError, match=r"not one token.*'X', 'yl'"):
        build_prompt(demo_lm, long_word)


def test_scale_and_feature_errors():
    with pytest.raises(FaithcaseError, match="empty"):
        explain.scale_grid(ExplainConfig(scales=[]))
    with pytest.raises(FaithcaseError, match="positive"):
        explain.scale_grid(ExplainConfig(scales=[1.0, -2.0]))
    with pytest.raises(FaithcaseError, match="positive"):
        explain.scale_grid(ExplainConfig(scales=[0.0, 2.0]))
    with pytest.raises(FaithcaseError, match="out of range"):
        unit_directions(torch.eye(4, 6), [1, 4])
    decoder = 3 * torch.eye(4, 6)
    decoder[1] = 0.0
    decoder[3, 0] = float("nan")
    for dead in (1, 3):
        with pytest.raises(FaithcaseError, match="dead feature"):
            unit_directions(decoder, [dead])
    units = unit_directions(decoder, [2])
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
    original = hooks_module.steering_hook

    def spy(positions_mask, vectors, mode="replace"):
        inner = original(positions_mask, vectors, mode)

        def hook_fn(resid, hook=None):
            out = inner(resid, hook)
            calls.append((resid.shape[1], not torch.equal(out, resid)))
            return out
        return hook_fn

    monkeypatch.setattr(hooks_module, "steering_hook", spy)
    texts = steering.generate(demo_lm, prompt, vector, INSERT_LAYER, "replace", 4, batch_size=1)
    assert calls == [(len(prompt.tokens) - first, True)]  # the prompt pass after the shared prefix, once
    assert 1 <= len(texts[0].ids) <= 4


def test_cached_decoding_equals_an_uncached_reference(demo_lm, prompt, directions, residual_norm):
    vectors = torch.stack([directions[7], directions[11]]) * 2 * residual_norm
    decoded = steering.generate(demo_lm, prompt, vectors, INSERT_LAYER, "replace", FEW_TOKENS, batch_size=8)
    for vector, text in zip(vectors, decoded):
        ids, logprobs = reference_decode(demo_lm, prompt, vector, INSERT_LAYER, "replace", FEW_TOKENS)
        assert text.ids == ids
        assert text.logprobs == pytest.approx(logprobs, abs=2e-4)
        assert text.text == steering.explanation_text(demo_lm, ids)
    apart = steering.generate(demo_lm, prompt, vectors, INSERT_LAYER, "replace", FEW_TOKENS, batch_size=1)
    assert [t.ids for t in apart] == [t.ids for t in decoded]


def test_unsteered_rows_equal_adding_zero_and_the_plain_model(demo_lm, prompt):
    zero = torch.zeros(2, demo_lm.d_model)
    added = steering.generate(demo_lm, prompt, zero, INSERT_LAYER, "add", FEW_TOKENS, 2)
    masked = steering.generate(demo_lm, prompt, zero + 100, INSERT_LAYER, "replace", FEW_TOKENS, 2,
                               steer_mask=torch.tensor([False, False]))
    ids, _ = reference_decode(demo_lm, prompt, zero[0], INSERT_LAYER, "add", FEW_TOKENS, steer=False)
    assert added[0].ids == masked[0].ids == ids


def test_decoding_stops_at_the_closing_quote_and_sampling_is_seeded(demo_lm, prompt, directions, residual_norm):
    stops = set(steering.stop_tokens(demo_lm).tolist())
    assert demo_lm.eos_token_id in stops and all('"' in demo_lm.tokenizer.decode([t]) for t in stops
                                                  if t != demo_lm.eos_token_id)
    vectors = (directions[7] * 2 * residual_norm).expand(6, -1)
    first = steering.generate(demo_lm, prompt, vectors, INSERT_LAYER, "replace", 30, 6, temperature=1.0, seed=3)
    again = steering.generate(demo_lm, prompt, vectors, INSERT_LAYER, "replace", 30, 6, temperature=1.0, seed=3)
    other = steering.generate(demo_lm, prompt, vectors, INSERT_LAYER, "replace", 30, 6, temperature=1.0, seed=4)
    assert [t.ids for t in first] == [t.ids for t in again] != [t.ids for t in other]
    for text in first:
        assert all(t not in stops for t in text.ids[:-1])
        assert text.ids[-1] in stops or len(text.ids) == 30
        assert '"' not in text.text and len(text.logprobs) == len(text.ids)


def test_neutral_logprobs_equal_teacher_forcing(demo_lm, prompt):
    continuations = [[1000, 2000, 300], [42], [], [5, 6, 7, 8, 9]]
    scores = steering.neutral_logprobs(demo_lm, prompt, continuations, INSERT_LAYER, "replace", batch_size=2)
    neutral = steering.neutral_vector(demo_lm)
    assert neutral.norm().item() == pytest.approx(1.0, abs=1e-5)
    for ids, got in zip(continuations, scores):
        assert len(got) == len(ids)
        if not ids:
            continue
        tokens = torch.tensor([prompt.tokens + ids])
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[0, prompt.positions] = True
        logits, _ = demo_lm.run_with_steering(tokens, INSERT_LAYER, mask, neutral[None], "replace")
        log_probs = logits[0].float().log_softmax(-1)
        n = len(prompt.tokens)
        expected = [float(log_probs[n - 1 + k, token]) for k, token in enumerate(ids)]
        assert got == pytest.approx(expected, abs=2e-4)


def test_sweep_reference_rows_and_batching(demo_lm, prompt, directions, residual_norm):
    matrix = torch.stack([directions[7], directions[11]])
    scales = [0.0, 2.0]
    batched = steering.sweep(demo_lm, prompt, matrix, scales, INSERT_LAYER, 24, "replace", residual_norm, 64)
    single = steering.sweep(demo_lm, prompt, matrix, scales, INSERT_LAYER, 24, "replace", residual_norm, 1,
                            share_prefix=False)
    assert batched.selfsim.shape == batched.entropy.shape == batched.ce.shape == (2, 2)
    assert batched.selfsim[:, 0].abs().max() < 1e-5 and batched.entropy[:, 0].abs().max() < 1e-4
    assert (batched.selfsim[:, 1] > 0).all() and batched.selfsim_zero.shape == (2,)
    for name in ("selfsim", "entropy", "ce"):
        assert (getattr(batched, name) - getattr(single, name)).abs().max() < 1e-3, name


def test_ce_curve_is_zero_at_the_neutral_baseline(demo_lm, prompt, residual_norm):
    neutral = steering.neutral_vector(demo_lm).cpu()
    result = steering.sweep(demo_lm, prompt, neutral[None], [1.0 / residual_norm, 1.0], INSERT_LAYER, 24, "replace",
                            residual_norm, 8)
    assert abs(float(result.ce[0, 0])) < 1e-4  # the steering vector is the neutral one
    # an independent computation of H(p_steered, p_neutral) - H(p_neutral) at the other scale
    tokens, _, mask = prompt.batch(1, demo_lm.device)
    logp = [demo_lm.run_with_steering(tokens, INSERT_LAYER, mask, v[None], "replace", last_position_only=True)[0]
            .float().log_softmax(-1)[0] for v in (neutral, neutral * residual_norm)]
    expected = float(-(logp[1].exp() * logp[0]).sum() + (logp[0].exp() * logp[0]).sum())
    assert float(result.ce[0, 1]) == pytest.approx(expected, abs=1e-3) and expected > 0.01


# ---------------------------------------------------------------- scores, ranking, failure test


def test_scoring_prefers_high_selfsim_and_low_criterion():
    selfsim = torch.tensor([[0.0, 0.05, 0.08, 0.02]])
    curve = torch.tensor([[0.0, -2.0, -1.0, -0.5]])
    scores = explain.score_sweep(selfsim, curve, 0.4, 0.6)
    assert scores.argmax().item() == 1
    assert explain.best_scales(scores, [True, False, True, True], 2) == [[2, 3]]


def test_specificity_and_ranking():
    assert explain.specificity([-1.0, -2.0], [-3.0, -3.0]) == pytest.approx(1.5)
    assert explain.specificity([], []) is None
    assert explain.mean_logprob([-1.0, -2.0]) == pytest.approx(-1.5) and explain.mean_logprob([]) is None
    texts = [RankedText(text="", scale=1, greedy=True, logprob=0.0, specificity=9.0),
             RankedText(text="b", scale=1, greedy=True, logprob=-0.5, specificity=0.5),
             RankedText(text="c", scale=2, greedy=False, logprob=-2.0, specificity=2.0),
             RankedText(text="d", scale=2, greedy=False, logprob=None, specificity=None),
             RankedText(text="e", scale=2, greedy=False, logprob=-0.5, specificity=0.5)]
    assert [t.text for t in explain.rank_texts(texts, "specificity")] == ["c", "b", "e", "d", ""]
    assert [t.text for t in explain.rank_texts(texts)] == ["b", "e", "c", "d", ""]


def test_null_distribution_and_threshold_recomputed(demo_lm, prompt, residual_norm):
    cfg = ExplainConfig(scales=[1.0, 4.0], n_null=8, seed=5)
    null = explain.null_distribution(demo_lm, prompt, cfg, residual_norm, INSERT_LAYER, 24, key="k")
    directions = explain.random_directions(8, demo_lm.d_model, 5)
    assert torch.allclose(directions.norm(dim=-1), torch.ones(8)) and null.n == 8 and null.key == "k"
    result = steering.sweep(demo_lm, prompt, directions, [1.0, 4.0], INSERT_LAYER, 24, "replace", residual_norm, 3)
    assert null.best_selfsim == pytest.approx(result.selfsim.max(dim=-1).values.tolist(), abs=1e-4)
    values = np.array(null.best_selfsim)
    assert null.quantiles["q95"] == pytest.approx(np.quantile(values, 0.95)) and null.quantiles["max"] == values.max()
    threshold, source = explain.failure_threshold(cfg, null)
    assert threshold == pytest.approx(np.quantile(values, cfg.null_quantile)) and "null" in source
    assert explain.failure_threshold(ExplainConfig(failed_selfsim=0.2), null) == (0.2, "fixed")
    assert explain.is_failed(threshold, threshold) and not explain.is_failed(threshold + 1e-6, threshold)


# ---------------------------------------------------------------- the stage


def test_planted_direction_explains_itself(paris_run, residual_norm):
    results, baseline, settings = paris_run
    paris = results[7]
    print(f"\nParis explanations: {paris.explanations} at scale {paris.scale}; baselines: "
          f"replace={baseline.replace_zero!r} add={baseline.add_zero!r} neutral={baseline.neutral!r}")
    assert paris.fingerprint == "fp-7"
    assert len(paris.ranking) == 3 and sum(t.greedy for t in paris.ranking) == 1  # greedy + 2 samples
    assert paris.explanations == [t.text for t in paris.ranking] == [t.text for t in explain.rank_texts(paris.ranking)]
    for text in paris.ranking:  # each ranked text's scores recomputed from its tokens
        assert text.logprob is not None and text.specificity is not None
    assert paris.scale == paris.ranking[0].scale and paris.scales[0] in (1.0, 2.0, 4.0)
    assert [point.scale for point in paris.sweep] == [1.0, 2.0, 4.0]
    assert all(point.score is not None and point.ce is not None for point in paris.sweep)
    assert paris.best_selfsim == pytest.approx(max(point.selfsim for point in paris.sweep)) and not paris.failed
    assert "paris" in " ".join(paris.explanations).lower()
    assert baseline.replace_zero and baseline.add_zero and baseline.neutral
    assert settings.placeholder_positions == [32, 46] and settings.read_layer == 24 and settings.criterion == "ce"
    assert settings.residual_norm == residual_norm and settings.scales == [1.0, 2.0, 4.0]


def test_bench_explain_agrees(demo_lm, directions, residual_norm):
    cfg = ExplainConfig(scales=[1.0, 2.0], max_new_tokens=4, n_samples=2)
    report = explain_speedup(demo_lm, {7: directions[7]}, cfg, residual_norm)
    assert report["forwards"] == 2 and report["speedup"] > 0 and report["sampled"] == 2
    assert report["max_abs_diff_selfsim"] < 1e-4 and report["max_abs_diff_ce"] < 1e-3
    assert report["same_greedy_texts"] and report["same_scales"]


def test_public_explain_with_the_null_and_add_mode(demo_lm, directions, residual_norm, paris_run):
    cfg = ExplainConfig(mode="add", scales=[2.0], max_new_tokens=FEW_TOKENS, n_samples=0, n_null=4)
    sae = SimpleNamespace(W_dec=torch.stack([directions[7], directions[11]]), d_sae=2)
    artifact = explain.explain(demo_lm, {"a": sae}, {"a": [0, 1]}, cfg, residual_norm)
    _, replace_baseline, _ = paris_run
    assert artifact.settings.mode == "add" and set(artifact.features["a"]) == {"0", "1"}
    assert artifact.null is not None and artifact.null.n == 4
    assert artifact.threshold == pytest.approx(float(np.quantile(artifact.null.best_selfsim, 0.95)))
    for feature in artifact.features["a"].values():
        assert feature.failed == (feature.best_selfsim <= artifact.threshold) and len(feature.ranking) == 1
    assert (artifact.baseline.replace_zero, artifact.baseline.add_zero) == \
        (replace_baseline.replace_zero, replace_baseline.add_zero)
    with pytest.raises(FaithcaseError, match="residual_norm"):
        explain.explain(demo_lm, sae, [0], cfg)


def test_reused_explanations_give_the_artifact_of_a_fresh_run(demo_lm, directions, residual_norm):
    """A run that reuses one feature's explanation and explains another holds what one fresh run of
    both holds: the reused feature as it was, the scale-0 baseline averaged over both."""
    cfg = ExplainConfig(scales=[2.0], max_new_tokens=FEW_TOKENS, n_samples=0, n_null=0)
    sae = SimpleNamespace(W_dec=torch.stack([directions[7], directions[11]]), d_sae=2)
    keys = {"a": {0: "fp0", 1: "fp1"}}
    fresh = explain.explain(demo_lm, {"a": sae}, {"a": [0, 1]}, cfg, residual_norm, fingerprints=keys)
    first = explain.explain(demo_lm, {"a": sae}, {"a": [0]}, cfg, residual_norm, fingerprints=keys)
    calls = []
    reused = explain.explain(lambda: calls.append(1) or demo_lm, {"a": sae}, {"a": [0, 1]}, cfg,
                             residual_norm, fingerprints=keys, previous=first)
    assert calls == [1] and reused.features["a"]["0"] == first.features["a"]["0"]
    zeros = [f.selfsim_zero for f in fresh.features["a"].values()]
    assert reused.baseline.selfsim_zero == pytest.approx(sum(zeros) / 2, abs=1e-6)
    assert fresh.baseline.selfsim_zero == pytest.approx(sum(zeros) / 2, abs=1e-6)
    assert [f.explanations for f in reused.features["a"].values()] == \
        [f.explanations for f in fresh.features["a"].values()]
    nothing = explain.explain(lambda: calls.append(2), {"a": sae}, {"a": [0, 1]}, cfg,
                              residual_norm, fingerprints=keys, previous=reused)
    assert calls == [1] and nothing.features == reused.features  # all reused: no model needed
