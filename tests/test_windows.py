"""windows stage against a brute-force numpy computation over every window of small corpora."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from faithcase.run.errors import FaithcaseError
from faithcase.config import WindowsConfig
from faithcase.stages import windows as windows_module
from faithcase.stages.windows import QUANTILE_METHOD, WindowCollector, collect_windows

from toy_saes import IdentitySAE, TopKSAE, batches_of, quantized_corpus, tagged


def top_activated_windows(sae, features, batches, tokenizer=tagged, **settings):
    """The public function with its settings as keywords, results keyed by feature index."""
    artifact = windows_module.top_activated_windows(sae, features, batches, settings=WindowsConfig(**settings),
                                                    tokenizer=tokenizer)
    return {int(key): found for key, found in artifact.features.items()}


# ---------------------------------------------------------------- tiny SAE-like encoders


# ---------------------------------------------------------------- corpora


# ---------------------------------------------------------------- brute force (no cleverness)


def brute_windows(acts, seq_ids, window, top):
    """acts [N, T] float64 of one feature (excluded already 0); every window of positions 1..T-1."""
    n_seq, length = acts.shape
    mean_c, dens_c, max_c = [], [], []
    for i in range(n_seq):
        sid = int(seq_ids[i])
        for s in range(1, length - window + 1):
            w = acts[i, s : s + window]
            total = sum(float(v) for v in w)
            nonzero = sum(1 for v in w if v > 0)
            mean_c.append(((-total, sid, s), sid, s, total / window))
            dens_c.append(((-nonzero, -total, sid, s), sid, s, nonzero / window))
        for p in range(1, length):
            s = min(max(p - window // 2, 1), length - window)
            max_c.append(((-float(acts[i, p]), sid, p), sid, s, float(acts[i, p])))

    def greedy(cands):
        chosen = []
        for _, sid, s, value in sorted(cands, key=lambda c: c[0]):
            if len(chosen) == top or value <= 0:
                break
            if all(not (sid == cs and abs(s - st) < window) for cs, st, _ in chosen):
                chosen.append((sid, s, value))
        return chosen

    return {"mean": greedy(mean_c), "density": greedy(dens_c), "max": greedy(max_c)}


def full_acts(sae, resid, excluded, features):
    acts = sae.encode(resid).double().numpy()[..., features]
    acts[excluded.numpy()] = 0
    acts[:, 0] = 0
    return np.maximum(acts, 0)


def check_against_brute(result, acts, tokens, seq_ids, features, window, top):
    tokens = tokens.numpy()
    row_of = {int(s): i for i, s in enumerate(seq_ids)}
    for j, feature in enumerate(features):
        expected = brute_windows(acts[..., j], seq_ids, window, top)
        for criterion in ("mean", "density", "max"):
            got = result[feature].windows[criterion]
            assert [(w.seq_id, w.start) for w in got] == [(sid, s) for sid, s, _ in expected[criterion]], (
                feature,
                criterion,
            )
            for w, (sid, s, value) in zip(got, expected[criterion]):
                assert w.value == pytest.approx(value, rel=1e-6)
                i = row_of[sid]
                assert w.tokens == tokens[i, s : s + window].tolist()
                np.testing.assert_allclose(w.acts, acts[i, s : s + window, j], rtol=1e-6)
                assert w.texts == tagged(w.tokens)


# ---------------------------------------------------------------- tests


def test_windows_match_brute_force_with_ties():
    resid, tokens, excluded = quantized_corpus()
    features = [0, 1, 2, 3, 4]
    seq_ids = torch.arange(100, 109)
    result = top_activated_windows(
        IdentitySAE(5), features, batches_of(resid, tokens, excluded, [9], seq_ids), window=6, top=4
    )
    acts = full_acts(IdentitySAE(5), resid, excluded, features)
    check_against_brute(result, acts, tokens, seq_ids.numpy(), features, 6, 4)


def test_planted_ties_overlap_and_edges():
    n_seq, length, window = 3, 21, 6
    resid = torch.zeros(n_seq, length, 3)
    tokens = torch.arange(n_seq * length).view(n_seq, length)
    excluded = torch.zeros(n_seq, length, dtype=torch.bool)
    excluded[:, 0] = True
    # feature 0: equal windows in seq 2 and seq 0 -> lower seq_id first; equal windows in one seq -> lower start
    resid[2, 5:8, 0] = torch.tensor([1.0, 2.0, 1.0])
    resid[0, 12:15, 0] = torch.tensor([2.0, 1.0, 1.0])
    resid[1, 2, 0] = 1.0
    resid[1, 14, 0] = 1.0
    # feature 1: adjacent peaks (the second overlaps the first's window); peaks at position 1 and T-1
    resid[0, 10, 1] = 5.0
    resid[0, 12, 1] = 4.0
    resid[1, 1, 1] = 3.0
    resid[2, length - 1, 1] = 3.0
    # feature 2 never fires
    result = top_activated_windows(IdentitySAE(3), [0, 1, 2], [(torch.arange(3), tokens, resid, excluded)], window=window, top=5)

    mean = [(w.seq_id, w.start) for w in result[0].windows["mean"]]
    assert mean[0] == (0, 9)  # ties with (2, 2): lower seq_id first, then lower start
    assert mean[1] == (2, 2)
    peaks = result[1].windows["max"]
    assert [(w.seq_id, w.start, w.value) for w in peaks] == [
        (0, 7, 5.0),  # centred on the peak at 10: 10 - 6 // 2
        (1, 1, 3.0),  # peak at position 1: clamped to the first start
        (2, length - window, 3.0),  # peak at T-1: clamped to the last start
    ]
    assert all(w.start >= 1 for c in result.values() for ws in c.windows.values() for w in ws)
    never = result[2]
    assert all(ws == [] for ws in never.windows.values())
    assert never.stats.n_active == 0 and never.stats.frequency == 0.0 and never.stats.max == 0.0
    assert sum(never.stats.histogram.counts) == 0
    assert never.activating == [] and len(never.non_activating) == n_seq * ((length - 1) // window)
    acts = full_acts(IdentitySAE(3), resid, excluded, [0, 1, 2])
    check_against_brute(result, acts, tokens, np.arange(3), [0, 1, 2], window, 5)


def test_streaming_equals_one_batch():
    resid, tokens, excluded = quantized_corpus(n_seq=10, length=37, seed=3)
    kwargs = dict(window=5, top=3, reservoir=10, n_negative=6, n_quantiles=3, per_quantile=2, seed=4)
    one = top_activated_windows(IdentitySAE(5), [4, 0, 2], batches_of(resid, tokens, excluded, [10]), **kwargs)
    many = top_activated_windows(IdentitySAE(5), [4, 0, 2], batches_of(resid, tokens, excluded, [3, 1, 4, 2]), **kwargs)
    assert {f: fw.model_dump() for f, fw in one.items()} == {f: fw.model_dump() for f, fw in many.items()}


def test_excluded_positions_never_count():
    resid, tokens, excluded = quantized_corpus(n_seq=4, length=25, seed=5)
    resid[1, 9, 0] = 1e6
    excluded[1, 9] = True
    result = top_activated_windows(IdentitySAE(5), [0], [(torch.arange(4), tokens, resid, excluded)], window=4, top=3)
    fw = result[0]
    assert fw.stats.max < 1e6
    assert fw.stats.n_tokens == 4 * 24 - 1
    everything = [w.acts for ws in fw.windows.values() for w in ws] + [c.acts for c in fw.activating]
    assert all(max(a) < 1e6 for a in everything)
    acts = full_acts(IdentitySAE(5), resid, excluded, [0])
    check_against_brute(result, acts, tokens, np.arange(4), [0], 4, 3)


def test_topk_feature_value_comes_from_full_encode():
    gen = torch.Generator().manual_seed(1)
    sae = TopKSAE(d_in=8, d_sae=32, k=4)
    resid = torch.randn(6, 19, 8, generator=gen)
    tokens = torch.randint(0, 100, (6, 19), generator=gen)
    excluded = torch.zeros(6, 19, dtype=torch.bool)
    excluded[:, 0] = True
    features = [3, 17, 30]
    # the test is only meaningful where top-k over the selected columns alone would keep a dropped value
    dropped = (sae.pre(resid)[..., features] > 0) & (sae.encode(resid)[..., features] == 0)
    assert dropped[:, 1:].any()
    result = top_activated_windows(sae, features, batches_of(resid, tokens, excluded, [2, 4]), window=5, top=3)
    acts = full_acts(sae, resid, excluded, features)
    check_against_brute(result, acts, tokens, np.arange(6), features, 5, 3)
    for j, f in enumerate(features):
        values = acts[..., j][acts[..., j] > 0]
        assert result[f].stats.n_active == values.size
        assert result[f].stats.max == pytest.approx(values.max(), rel=1e-6)


def test_stats_and_histogram_vs_numpy():
    resid, tokens, excluded = quantized_corpus(n_seq=8, length=33, d=4, density=0.3, seed=7)
    resid[..., 3] *= torch.rand(resid.shape[:2], generator=torch.Generator().manual_seed(0)) * 1e-3  # tiny values
    resid[5, 7, 2] = 40.0  # the running max grows across batches: fine bins are merged
    result = top_activated_windows(
        IdentitySAE(4), [0, 1, 2, 3], batches_of(resid, tokens, excluded, [2, 2, 4]), window=8, n_hist_bins=7
    )
    acts = full_acts(IdentitySAE(4), resid, excluded, [0, 1, 2, 3])
    for j in range(4):
        stats = result[j].stats
        values = acts[..., j][:, 1:]
        nonzero = values[values > 0]
        assert stats.n_tokens == 8 * 32
        assert stats.n_active == nonzero.size
        assert stats.frequency == pytest.approx(nonzero.size / (8 * 32))
        assert stats.max == pytest.approx(nonzero.max(), rel=1e-6)
        assert stats.mean_nonzero == pytest.approx(nonzero.mean(), rel=1e-6)
        edges, counts = stats.histogram.edges, stats.histogram.counts
        assert len(counts) == 7 and len(edges) == 8 and edges[0] == 0.0
        assert nonzero.max() < edges[-1] <= 1.2 * nonzero.max()
        assert sum(counts) == stats.n_active
        assert counts == np.histogram(nonzero.astype(np.float32), bins=np.array(edges))[0].tolist()


def test_contexts_disjoint_and_labelled():
    resid, tokens, excluded = quantized_corpus(n_seq=12, length=31, d=3, density=0.04, seed=11)
    window, n_quantiles, per_quantile = 5, 3, 2
    result = top_activated_windows(
        IdentitySAE(3),
        [0, 1, 2],
        batches_of(resid, tokens, excluded, [5, 7]),
        window=window,
        n_quantiles=n_quantiles,
        per_quantile=per_quantile,
        n_negative=7,
        reservoir=1000,  # holds every activating chunk: quantiles are exact
    )
    acts = full_acts(IdentitySAE(3), resid, excluded, [0, 1, 2])
    n_chunks = 30 // window
    for j in range(3):
        fw = result[j]
        chunk_max = acts[:, 1 : 1 + n_chunks * window, j].reshape(12, n_chunks, window).max(-1)
        # chunks overlapping a top `max` or `mean` window (the window explainer's) are left out
        top = [w for c in ("max", "mean") for w in fw.windows[c]]
        for seq in range(12):
            for k in range(n_chunks):
                start = 1 + k * window
                if any(w.seq_id == seq and start < w.start + len(w.tokens) and w.start < start + window
                       for w in top):
                    chunk_max[seq, k] = -1
        n_activating = int((chunk_max > 0).sum())
        spans = []
        for c in fw.activating + fw.non_activating:
            assert (c.start - 1) % window == 0 and len(c.tokens) == window
            assert c.tokens == tokens[c.seq_id, c.start : c.start + window].tolist()
            np.testing.assert_allclose(c.acts, acts[c.seq_id, c.start : c.start + window, j], rtol=1e-6)
            spans.append((c.seq_id, c.start))
        assert len(set(spans)) == len(spans)  # aligned chunks: distinct means disjoint
        for c in fw.activating:
            assert c.max_act > 0 and c.max_act == max(c.acts) and 0 <= c.quantile < n_quantiles
        for c in fw.non_activating:
            assert c.max_act == 0 and not any(c.acts) and c.quantile is None
        assert len(fw.non_activating) == 7
        # quantile groups: equal-count split of all activating chunks sorted by max activation
        sizes = np.bincount(np.arange(n_activating) * n_quantiles // max(n_activating, 1), minlength=n_quantiles)
        assert len(fw.activating) == int(np.minimum(sizes, per_quantile).sum())
        by_q = {}
        for c in fw.activating:
            by_q.setdefault(c.quantile, []).append(c.max_act)
        qs = sorted(by_q)
        for lo, hi in zip(qs, qs[1:]):
            assert max(by_q[lo]) <= min(by_q[hi])
    assert "reservoir" in QUANTILE_METHOD


def test_determinism_by_seed_and_bounded_reservoir():
    resid, tokens, excluded = quantized_corpus(n_seq=20, length=41, d=2, density=0.2, seed=13)

    def run(seed):
        out = top_activated_windows(
            IdentitySAE(2),
            [0, 1],
            batches_of(resid, tokens, excluded, [20]),
            window=4,
            reservoir=10,
            n_negative=5,
            n_quantiles=2,
            per_quantile=3,
            seed=seed,
        )
        return {f: fw.model_dump() for f, fw in out.items()}

    first, again, other = run(0), run(0), run(1)
    assert first == again
    assert [c["start"] for c in first[0]["activating"]] != [c["start"] for c in other[0]["activating"]] or [
        c["seq_id"] for c in first[0]["activating"]
    ] != [c["seq_id"] for c in other[0]["activating"]]
    assert len(first[0]["activating"]) == 6  # 2 quantiles x 3, from a 10-chunk reservoir
    assert first[0]["windows"] == other[0]["windows"]  # windows do not depend on the seed


def test_one_pass_feeds_two_saes():
    resid, tokens, excluded = quantized_corpus(n_seq=5, length=21, seed=17)
    batches = batches_of(resid, tokens, excluded, [2, 3])
    both = collect_windows(
        {"sae1": WindowCollector(IdentitySAE(5), [1, 2], WindowsConfig(window=4)),
         "sae2": WindowCollector(IdentitySAE(5), [3], WindowsConfig(window=4))},
        batches,
        tokenizer=tagged,
    )
    alone = top_activated_windows(IdentitySAE(5), [3], batches, window=4, tokenizer=tagged)
    assert set(both) == {"sae1", "sae2"} and set(both["sae1"]) == {1, 2}
    assert both["sae2"][3].model_dump() == alone[3].model_dump()
    assert both["sae1"][1].windows["mean"][0].texts[0].startswith("<")


def test_short_sequences_and_bad_features():
    resid, tokens, excluded = quantized_corpus(n_seq=2, length=10)
    with pytest.raises(FaithcaseError, match="corpus sequences have 9 tokens after BOS, shorter than the 30-token window"):
        top_activated_windows(IdentitySAE(5), [0], [(torch.arange(2), tokens, resid, excluded)], window=30)
    with pytest.raises(FaithcaseError, match="out of range"):
        WindowCollector(IdentitySAE(5), [5])
    with pytest.raises(FaithcaseError, match="no sequences"):
        top_activated_windows(IdentitySAE(5), [0], [], window=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    resid, tokens, excluded = quantized_corpus(n_seq=8, length=29, seed=19)
    kwargs = dict(window=4, top=3, reservoir=12, n_negative=5, n_quantiles=2, per_quantile=2)
    cpu = top_activated_windows(IdentitySAE(5), [0, 3], batches_of(resid, tokens, excluded, [3, 5]), **kwargs)
    cuda = top_activated_windows(
        IdentitySAE(5), [0, 3], [tuple(t.cuda() for t in b) for b in batches_of(resid, tokens, excluded, [3, 5])], **kwargs
    )
    assert {f: fw.model_dump() for f, fw in cpu.items()} == {f: fw.model_dump() for f, fw in cuda.items()}


def test_public_function_one_pass_for_several_saes_in_the_researchers_call_shape():
    resid, tokens, excluded = quantized_corpus(n_seq=5, length=21, seed=17)
    batches = batches_of(resid, tokens, excluded, [2, 3])
    found = windows_module.top_activated_windows({"sae1": IdentitySAE(5), "sae2": IdentitySAE(5)},
                                                 {"sae1": [1, 2], "sae2": [3]}, batches, window=4,
                                                 tokenizer=tagged)
    one = windows_module.top_activated_windows(IdentitySAE(5), [3], batches, window=4,
                                               tokenizer=tagged)
    assert set(found) == {"sae1", "sae2"} and found["sae2"].sae == "sae2" and one.sae == "sae"
    assert found["sae2"].features["3"].model_dump() == one.features["3"].model_dump()
    assert found["sae1"].window == one.window == 4 and set(found["sae1"].features) == {"1", "2"}
    assert one.n_tokens == found["sae1"].n_tokens == int((~excluded[:, 1:]).sum())


def test_texts_need_a_tokenizer_before_the_pass():
    resid, tokens, excluded = quantized_corpus(n_seq=4, length=21, seed=23)

    def batches():
        raise AssertionError("the corpus pass started without a tokenizer")
        yield  # a generator

    with pytest.raises(FaithcaseError, match="tokenizer"):
        windows_module.top_activated_windows(IdentitySAE(5), [0], batches(), window=4)
    with pytest.raises(FaithcaseError, match="tokenizer"):
        collect_windows({"sae": WindowCollector(IdentitySAE(5), [0])}, batches(), None)
    collector = WindowCollector(IdentitySAE(5), [0], WindowsConfig(window=4))
    collector.update(torch.arange(4), tokens, resid, excluded)
    with pytest.raises(FaithcaseError, match="tokenizer"):
        collector.finish(None)


def test_texts_are_the_tokenizers_decoded_tokens(demo_tokenizer):
    resid, tokens, excluded = quantized_corpus(n_seq=6, length=25, seed=29)  # ids < 500
    batches = batches_of(resid, tokens, excluded, [2, 4])
    settings = dict(window=5, n_negative=3)
    by_function = top_activated_windows(IdentitySAE(5), [0, 3], batches, **settings)
    for tokenizer in (demo_tokenizer, SimpleNamespace(tokenizer=demo_tokenizer)):  # or a model
        result = top_activated_windows(IdentitySAE(5), [0, 3], batches, tokenizer, **settings)
        spans = [span for fw in result.values()
                 for span in [*fw.activating, *fw.non_activating, *sum(fw.windows.values(), [])]]
        assert spans
        for span in spans:
            assert span.texts == [demo_tokenizer.decode([t]) for t in span.tokens]
            assert span.texts != [str(t) for t in span.tokens]
        # the texts are all that the tokenizer changes
        for f, fw in result.items():
            assert _without_texts(fw.model_dump()) == _without_texts(by_function[f].model_dump())


def _without_texts(value):
    if isinstance(value, dict):
        return {k: _without_texts(v) for k, v in value.items() if k != "texts"}
    if isinstance(value, list):
        return [_without_texts(v) for v in value]
    return value
