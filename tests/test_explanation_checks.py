"""Issue 21: delphi's scoring rules (rare and dense features get no AUROC, and a reason), the group
tables counting scored features, uninformative explanations (a baseline answer, a stock text), the
explanation-similarity null, the known-answer check with its null, single-token features; each
checked against an independent recomputation from the recorded artifacts."""

from __future__ import annotations

import re
import zlib
from statistics import fmean

import numpy as np
import orjson
import pytest
import torch
from fixtures_case import EXPLAINERS, FAILED, FIXTURE_KINDS, make_case_artifacts
from sklearn.metrics import roc_auc_score
from html_tree import parse
from typer.testing import CliRunner

from faithcase.artifacts import (
    PAIR_KINDS,
    SAE_KEYS,
    ActivationSpread,
    Window,
)
from faithcase.cli import app
from faithcase.config import EmbedConfig, ExplainConfig, WindowsConfig
from faithcase.model.embedder import Embedder
from faithcase.render.html import render_report
from faithcase.stages.assemble import assemble
from faithcase.stages.embed import eleuther, embed_case_study
from faithcase.stages.explain import explain
from faithcase.stages.windows import top_activated_windows


# ---------------------------------------------------------------- helpers


class BagOfWords:
    """A stand-in sentence model: unit vectors of hashed word counts (deterministic, instant)."""

    def encode(self, texts, **kwargs):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, zlib.crc32(word.encode()) % 63] += 1
            out[i, 63] = 0.5  # never a zero vector
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def get_sentence_embedding_dimension(self):
        return 64


def embedder() -> Embedder:
    return Embedder(BagOfWords(), "bag-of-words")


class IdentitySAE:
    def __init__(self, d: int):
        self.d_sae = d

    def encode(self, x):
        return torch.relu(x)


def tagged(ids):
    return [f"<t{i}>" for i in ids]


def spread(n_act=100, n_non=100, share=0.2) -> ActivationSpread:
    return ActivationSpread(n_windows=n_act + n_non, n_activating_windows=n_act,
                            n_non_activating_windows=n_non, total=10.0, top_token=7, texts=[" x"],
                            top_token_share=share, single_token=share > 0.5)


def with_spreads(arts, counts=None, single=()):
    """Every fixture feature gets a corpus record: counts[(sae, f)] = (activating, non-activating)
    windows (default 100 / 100), single-token for those in `single`."""
    for sae, artifact in arts.windows.items():
        for key, fw in artifact.features.items():
            n_act, n_non = (counts or {}).get((sae, int(key)), (100, 100))
            fw.stats.spread = spread(n_act, n_non, 0.9 if (sae, int(key)) in single else 0.2)
    return arts


def embedded(arts, **rules):
    """The fixture's embed.json made by the embed stage itself, on the fixture's windows."""
    settings = EmbedConfig(**{"min_activating": 10, "min_non_activating": 10, **rules})
    arts.embed = embed_case_study(arts.pairs.all_pairs(), arts.explain, arts.windows, embedder(),
                                  settings, n_quantiles=3, describe=arts.describe)
    return arts


def run(arts):
    return assemble(arts.match, arts.scan, arts.pairs, arts.explain, arts.windows, arts.embed,
                    arts.config, describe=arts.describe)


def kept_pairs(arts, kind):
    return [p for p in arts.pairs.pairs[kind]
            if arts.scan.firing["sae1"][p.index1] and arts.scan.firing["sae2"][p.index2]]


def recorded_auroc(embed, docs_of, feature, explanation_of, name):
    scored = embed.features[docs_of][str(feature)]
    score = scored.eleuther[explanation_of][name]
    if not score.similarities:
        return None
    return roc_auc_score([d.label for d in scored.documents], score.similarities)


def mean(values):
    values = [v for v in values if v is not None]
    return fmean(values) if values else None


def cell(rate, n):
    return f"{'—' if rate is None else f'{rate:.0%}'} ({n})"


def checks_rows(html):
    table = parse(html).root.find_all("table", "checks")[0]
    return {row.attrs["data-kind"]: [c.text() for c in row.find_all("td")]
            for row in table.find_all("tr") if "data-kind" in row.attrs}


# ---------------------------------------------------------------- scoring rules


def test_dense_and_rare_features_get_no_score_and_the_reason():
    """A synthetic corpus pass: feature 0 fires in all but 3 aligned windows, feature 1 in 7,
    feature 2 in about half; the counts are the whole pass's, recomputed by brute force."""
    rng = np.random.default_rng(5)
    n_seq, length, window = 40, 31, 5  # 30 usable positions: 6 aligned windows per sequence
    acts = np.zeros((n_seq, length, 3), dtype=np.float32)
    chunks = [(s, c) for s in range(n_seq) for c in range(6)]
    silent = {chunks[i] for i in rng.choice(len(chunks), 3, replace=False)}
    rare = {chunks[i] for i in rng.choice(len(chunks), 7, replace=False)}
    for s, c in chunks:
        start = 1 + c * window
        if (s, c) not in silent:
            acts[s, start + rng.integers(window), 0] = rng.uniform(0.5, 2)
        if (s, c) in rare:
            acts[s, start + rng.integers(window), 1] = rng.uniform(0.5, 2)
        if rng.random() < 0.5:
            acts[s, start + rng.integers(window), 2] = rng.uniform(0.5, 2)
    acts[:, 0] = 9.0  # BOS: never counted
    tokens = torch.tensor(rng.integers(2, 300, size=(n_seq, length)))
    excluded = torch.zeros(n_seq, length, dtype=torch.bool)
    excluded[:, 0] = True
    batches = [(torch.arange(20), tokens[:20], torch.tensor(acts[:20]), excluded[:20]),
               (torch.arange(20, 40), tokens[20:], torch.tensor(acts[20:]), excluded[20:])]
    found = top_activated_windows(IdentitySAE(3), [0, 1, 2], batches, tokenizer=tagged,
                                  settings=WindowsConfig(window=window, n_negative=10,
                                                         n_quantiles=2, per_quantile=4))
    chunk_max = acts[:, 1:31].reshape(n_seq, 6, window, 3).max(2)
    for f in range(3):
        counted = found.features[str(f)].stats.spread
        assert counted.n_activating_windows == int((chunk_max[..., f] > 0).sum())
        assert counted.n_non_activating_windows == int((chunk_max[..., f] == 0).sum())
        assert counted.n_windows == n_seq * 6
    assert found.features["0"].stats.spread.n_non_activating_windows == 3
    assert found.features["1"].stats.spread.n_activating_windows == 7

    settings = EmbedConfig(min_activating=20, min_non_activating=10)
    scores = eleuther(found.features, {"0": "dense", "1": "rare", "2": "normal"}, embedder(),
                      settings)
    assert scores["0"].auroc is None and scores["0"].similarities == []
    assert scores["0"].reason == "dense: active in 99% of windows (3 non-activating < 10)"
    assert scores["1"].auroc is None and scores["1"].reason == "rare: 7 activating windows < 20"
    documents = found.features["2"].activating + found.features["2"].non_activating
    labels = [1] * len(found.features["2"].activating) + [0] * len(found.features["2"].non_activating)
    assert len(documents) == len(scores["2"].similarities) and scores["2"].reason is None
    assert scores["2"].auroc == pytest.approx(roc_auc_score(labels, scores["2"].similarities))
    # delphi's defaults score none of these: 200 activating windows are asked for
    assert EmbedConfig().min_activating == 200 and EmbedConfig().min_non_activating == 50
    default = eleuther(found.features, {"2": "normal"}, embedder())
    assert default["0"].reason == "dense: active in 99% of windows (3 non-activating < 50)"
    assert default["1"].reason == "rare: 7 activating windows < 200"
    assert default["2"].auroc is None and default["2"].reason.startswith("rare")


def test_group_tables_count_scored_features_and_average_only_those():
    rare, dense = ("sae1", 5), ("sae2", 12)  # the two sides of best pair 1
    arts = embedded(with_spreads(make_case_artifacts(), {rare: (3, 500), dense: (900, 2)}))
    scored = arts.embed.features
    assert scored["sae1"]["5"].scoring.reason == "rare: 3 activating windows < 10"
    assert scored["sae2"]["12"].scoring.reason == \
        "dense: active in 100% of windows (2 non-activating < 10)"
    assert (scored["sae2"]["12"].scoring.n_activating_windows,
            scored["sae2"]["12"].scoring.n_non_activating_windows) == (900, 2)
    for sae, f in (rare, dense):
        for by in scored[sae][str(f)].eleuther.values():
            assert all(s.auroc is None and s.reason == scored[sae][str(f)].scoring.reason
                       for s in by.values())
    assert arts.embed.rules["min_activating"] == 10 and "aligned" in arts.embed.rules["counted"]
    cases, summary = run(arts)
    for kind in FIXTURE_KINDS:
        kept = kept_pairs(arts, kind)
        group = summary.groups[kind]
        unscored = [(s, f) for p in kept for s, f in (("sae1", p.index1), ("sae2", p.index2))
                    if (s, f) in (rare, dense)]
        assert group.n_features == 2 * len(kept)
        assert group.n_scored == 2 * len(kept) - len(unscored)
        for side in ("own", "cross"):
            for name in EXPLAINERS:
                values = []
                for p in kept:
                    features = {"sae1": p.index1, "sae2": p.index2}
                    for docs, other in (("sae1", "sae2"), ("sae2", "sae1")):
                        of = docs if side == "own" else other
                        values.append(recorded_auroc(arts.embed, docs, features[docs], of, name))
                expected = mean(values)
                got = group.eleuther[side][name]
                assert got == (None if expected is None else pytest.approx(expected, abs=1e-12))
    assert summary.groups["best"].checks.unscored == {"dense": 1, "rare": 1}
    assert summary.groups["worst"].checks.unscored == {}
    assert "200" not in summary.rules["scored"] and "10 activating" in summary.rules["scored"]
    best = next(c for c in cases if (c.kind, c.rank) == ("best", 1))
    assert [c.scored for c in best.checks] == [False, False]
    assert best.checks[0].unscored.startswith("rare") and best.eleuthers == [None, None]
    # the report and the printer say how many
    rows = checks_rows(render_report(cases, summary, {}, arts.explain))
    assert rows["best"][1:3] == ["2 / 4", "1 dense, 1 rare"]
    from faithcase.render import summary_print as stage

    printed = []
    original = stage.console.print
    stage.console.print = printed.append
    try:
        stage.print_summary(summary)
    finally:
        stage.console.print = original
    cells = {column.header: list(column.cells) for column in printed[0].columns}
    assert cells["scored"] == [f"{g.n_scored}/{g.n_features}" for g in summary.groups.values()]


# ---------------------------------------------------------------- uninformative explanations


def flagged_explain(arts):
    """explain() over the fixture's explanations (all reused: no model), after planting an
    unsteered answer, a stock text given by 4 of the 22 features and a text 2 features share."""
    prev = arts.explain
    prev.baseline.add_zero = "envelope"
    texts = {("sae1", 5): 'Envelope."', ("sae1", 17): "the", ("sae2", 3): "The.",
             ("sae1", 8): " the ", ("sae2", 30): "THE", ("sae1", 2): "cat", ("sae2", 7): "Cat!"}
    for (sae, f), text in texts.items():
        prev.features[sae][str(f)].explanations[0] = text
        prev.features[sae][str(f)].ranking[0].text = text
    features = arts.pairs.selected_features()
    fingerprints = {sae: {f: prev.features[sae][str(f)].fingerprint for f in fs}
                    for sae, fs in features.items()}
    arts.explain = explain(None, {"sae1": None, "sae2": None}, features, ExplainConfig(n_null=8),
                           fingerprints=fingerprints, previous=prev, null_key=prev.null.key)
    return arts


def normalized(text: str) -> str:
    """Independently: lower-case, punctuation and whitespace runs to one space, stripped."""
    out = "".join(ch if ch.isalnum() else " " for ch in text.lower())
    return " ".join(out.split())


def test_an_explanation_equal_to_the_unsteered_answer_or_a_stock_text_is_uninformative():
    arts = flagged_explain(make_case_artifacts())
    features = arts.explain.features
    assert features["sae1"]["5"].uninformative == "the unsteered answer"
    for sae, f in (("sae1", 17), ("sae2", 3), ("sae1", 8), ("sae2", 30)):
        assert features[sae][str(f)].uninformative == "stock text: given by 4 of 22 features"
    assert features["sae1"]["2"].uninformative is None  # 2 features: fewer than stock_min (3)
    rule = arts.explain.uninformative
    assert rule.stock == {"the": 4} and rule.n_explained == 22 and rule.n_uninformative == 5
    assert (rule.stock_share, rule.stock_min) == (0.05, 3) and rule.baselines["unsteered"] == "envelope"
    # brute force: the same flags from the rule as stated
    texts = {(s, k): f.explanations[0] for s, group in features.items() for k, f in group.items()}
    counts = {}
    for text in texts.values():
        counts[normalized(text)] = counts.get(normalized(text), 0) + 1
    answers = {normalized(t) for t in (arts.explain.baseline.replace_zero,
                                       arts.explain.baseline.add_zero, arts.explain.baseline.neutral)}
    for (s, k), text in texts.items():
        expected = normalized(text) in answers or (counts[normalized(text)] >= 3
                                                   and counts[normalized(text)] > 0.05 * 22)
        assert (features[s][k].uninformative is not None) == expected, (s, k, text)
    # a larger share: "the" (4 of 22 = 18%) is no longer stock
    again = explain(None, {"sae1": None, "sae2": None}, arts.pairs.selected_features(),
                    ExplainConfig(n_null=8, stock_share=0.2), previous=arts.explain,
                    fingerprints={s: {int(k): f.fingerprint for k, f in g.items()}
                                  for s, g in features.items()}, null_key=arts.explain.null.key)
    assert again.features["sae1"]["17"].uninformative is None and again.uninformative.stock == {}


def test_uninformative_explanations_are_counted_and_left_out_of_the_informative_means():
    arts = embedded(with_spreads(flagged_explain(make_case_artifacts())), min_activating=1,
                    min_non_activating=1)
    cases, summary = run(arts)
    flags = {(s, int(k)): f.uninformative is not None
             for s, g in arts.explain.features.items() for k, f in g.items()}
    for kind in FIXTURE_KINDS:
        kept = kept_pairs(arts, kind)
        checks = summary.groups[kind].checks
        assert checks.n_uninformative == sum(flags["sae1", p.index1] + flags["sae2", p.index2]
                                             for p in kept)
        for side in ("own", "cross"):
            values = {name: [] for name in EXPLAINERS}
            for p in kept:
                features = {"sae1": p.index1, "sae2": p.index2}
                for docs, other in (("sae1", "sae2"), ("sae2", "sae1")):
                    of = docs if side == "own" else other
                    if flags[of, features[of]]:
                        continue
                    for name in EXPLAINERS:
                        values[name].append(recorded_auroc(arts.embed, docs, features[docs], of,
                                                           name))
            for name in EXPLAINERS:
                assert checks.eleuther_informative[side][name] == pytest.approx(mean(values[name]))
        similarity = [next(x.explanation_similarity for x in arts.embed.pairs
                           if (x.kind, x.rank) == (p.kind, p.rank)) for p in kept
                      if not flags["sae1", p.index1] and not flags["sae2", p.index2]]
        assert checks.n_similarity_informative == len([s for s in similarity if s is not None])
        assert checks.explanation_similarity_informative == pytest.approx(mean(similarity))
    assert summary.groups["best"].checks.n_uninformative == 3  # 5 (unsteered), 17 and 3 (stock)
    assert summary.rules["uninformative"]["stock"] == {"the": 4}


def test_explanation_similarity_has_a_null_of_unrelated_pairs():
    arts = embedded(with_spreads(flagged_explain(make_case_artifacts())))
    null = arts.embed.similarity_null
    matched = {(p.index1, p.index2) for p in arts.pairs.all_pairs()}
    selected = arts.pairs.selected_features()
    possible = len(selected["sae1"]) * len(selected["sae2"]) - len(matched)
    assert len(null.pairs) == min(200, possible) == len({tuple(p) for p in null.pairs})
    vectors = embedder()
    texts = {s: {k: f.explanations[0] for k, f in g.items()}
             for s, g in arts.explain.features.items()}
    for (a, b), similarity, informative in zip(null.pairs, null.similarities, null.informative):
        assert (a, b) not in matched and a in selected["sae1"] and b in selected["sae2"]
        v = vectors.embed([texts["sae1"][str(a)], texts["sae2"][str(b)]])
        assert similarity == pytest.approx(float(v[0] @ v[1]), abs=1e-6)
        assert informative == (arts.explain.features["sae1"][str(a)].uninformative is None
                               and arts.explain.features["sae2"][str(b)].uninformative is None)
    assert null.mean == pytest.approx(fmean(null.similarities))
    assert null.mean_informative == pytest.approx(
        fmean([s for s, ok in zip(null.similarities, null.informative) if ok]))
    # seeded: the same draw again, another with another seed
    fewer = embed_case_study(arts.pairs.all_pairs(), arts.explain, arts.windows, embedder(),
                             EmbedConfig(n_similarity_null=20, seed=3), n_quantiles=3)
    same = embed_case_study(arts.pairs.all_pairs(), arts.explain, arts.windows, embedder(),
                            EmbedConfig(n_similarity_null=20, seed=3), n_quantiles=3)
    assert fewer.similarity_null == same.similarity_null and len(fewer.similarity_null.pairs) == 20
    assert fewer.similarity_null.pairs != arts.embed.similarity_null.pairs[:20]
    cases, summary = run(arts)
    assert summary.similarity_null == null
    html = render_report(cases, summary, {}, arts.explain)
    assert f"{null.mean:.2f} all · {null.mean_informative:.2f} informative" in html


# ---------------------------------------------------------------- known answer


def peak_tokens_brute(windows, n=3):
    seen, count, weight = [], {}, {}
    for w in windows:
        if not w.acts:
            continue
        top = max(w.acts)
        peak = w.acts.index(top)
        token = w.texts[peak].strip()
        if top > 0 and token:
            if token not in count:
                seen.append(token)
            count[token] = count.get(token, 0) + 1
            weight[token] = weight.get(token, 0.0) + top
    return sorted(seen, key=lambda t: (-count[t], -weight[t], seen.index(t)))[:n]


def word_forms(word):
    found = {word}
    for suffix in ("s", "es", "ed", "ing", "ly"):
        if word.endswith(suffix):
            found.add(word[: len(word) - len(suffix)])
    return {f for f in found if len(f) >= 3}


def names(explanation, tokens):
    if not explanation or not explanation.strip() or not tokens:
        return None
    said = set()
    for word in "".join(ch if ch.isalnum() else " " for ch in explanation.lower()).split():
        said |= word_forms(word)
    return any(word_forms("".join(ch for ch in t.lower() if ch.isalnum())) & said for t in tokens)


def known_answer_rates(windows, explain_features, nulls, feature_pairs, window_texts):
    """Per group: (rate, n) of explanations naming a peak token, of the null explanations and of
    the window explanations (`window_texts[sae][feature]`)."""
    def first(sae, key):
        return next((e for e in explain_features[sae][key]["explanations"] if e.strip()), None)

    result = {}
    for kind, features in feature_pairs.items():
        own, null, window = [], [], []
        for sae, f in features:
            tokens = peak_tokens_brute(windows[sae][str(f)])
            own.append(names(first(sae, str(f)), tokens))
            null.append(names(first(sae, str(nulls[sae][str(f)])), tokens))
            window.append(names(window_texts[sae][str(f)], tokens))
        result[kind] = tuple((mean([float(v) for v in values if v is not None]),
                              sum(v is not None for v in values)) for values in (own, null, window))
    return result


def plant_peaks(arts, peaks):
    """The peak token of every top `max` window of each feature in `peaks` ({(sae, f): text})."""
    for (sae, f), text in peaks.items():
        for w in arts.windows[sae].features[str(f)].windows["max"]:
            w.texts[w.acts.index(max(w.acts))] = text
    return arts


def test_known_answer_rate_and_its_null_recomputed_from_windows_and_texts():
    arts = plant_peaks(make_case_artifacts(), {("sae1", 5): " cat", ("sae2", 12): " warm",
                                               ("sae1", 17): " sat", ("sae2", 3): " boxes"})
    for (sae, f), text in {("sae1", 5): "cats on mats", ("sae2", 12): "Warmly.",
                           ("sae1", 17): "sitting", ("sae2", 3): "a box"}.items():
        arts.explain.features[sae][str(f)].explanations[0] = text
    for (sae, f), text in {("sae1", 5): "Cats.", ("sae2", 12): "nothing here"}.items():
        arts.describe.features[sae][str(f)].explanation = text
    arts = embedded(with_spreads(arts), min_activating=1, min_non_activating=1)
    known = arts.embed.features
    assert known["sae1"]["5"].known_answer.explanation is True  # cats -> cat
    assert known["sae2"]["12"].known_answer.explanation is True  # warmly -> warm
    assert known["sae1"]["17"].known_answer.explanation is False  # sitting is not sat
    assert known["sae2"]["3"].known_answer.explanation is True  # boxes -> box
    assert known["sae1"]["5"].known_answer.peak_tokens[0] == "cat"
    cases, summary = run(arts)
    windows = {s: {k: fw.windows["max"] for k, fw in a.features.items()}
               for s, a in arts.windows.items()}
    explain_json = orjson.loads(arts.explain.model_dump_json())["features"]
    groups = {kind: [(s, f) for p in kept_pairs(arts, kind)
                     for s, f in (("sae1", p.index1), ("sae2", p.index2))] for kind in FIXTURE_KINDS}
    described = {s: {k: e.explanation for k, e in g.items()} for s, g in arts.describe.features.items()}
    expected = known_answer_rates(windows, explain_json, arts.embed.explainers["null"].record["partners"], groups, described)
    rows = checks_rows(render_report(cases, summary, {}, arts.explain))
    for kind, ((rate, n), (null_rate, n_null), (window_rate, n_window)) in expected.items():
        checks = summary.groups[kind].checks
        assert (checks.n_known_answer, checks.n_known_answer_null) == (n, n_null)
        assert checks.known_answer_rate == pytest.approx(rate)
        assert checks.known_answer_null_rate == pytest.approx(null_rate)
        assert (checks.known_answer_window_rate, checks.n_known_answer_window) == (
            pytest.approx(window_rate) if window_rate is not None else None, n_window)
        assert rows[kind][7:10] == [cell(rate, n), cell(window_rate, n_window),
                                    cell(null_rate, n_null)]
    assert summary.groups["best"].checks.known_answer_window_rate == 0.25  # 1 of 4: "Cats." names cat
    assert summary.groups["best"].checks.known_answer_rate == 0.75  # 3 of the 4 planted
    assert "ing" in summary.rules["known_answer"]


# ---------------------------------------------------------------- single-token features


def test_a_feature_firing_on_one_token_id_is_single_token():
    rng = np.random.default_rng(2)
    n_seq, length = 12, 21
    tokens = rng.integers(0, 40, size=(n_seq, length))
    tokens[6:] += 1000  # later batches bring larger ids: the table grows
    acts = np.zeros((n_seq, length, 3), dtype=np.float32)
    acts[..., 0] = np.where(tokens == 7, 1.5, 0.0) + np.where(tokens == 1007, 0.5, 0.0)
    acts[..., 1] = rng.uniform(0, 1, (n_seq, length)) * (rng.random((n_seq, length)) < 0.4)
    acts[:, 0] = 5.0  # BOS
    excluded = np.zeros((n_seq, length), dtype=bool)
    excluded[:, 0] = True
    excluded[3, 9] = True  # an excluded position carries no activation
    t, a, e = torch.tensor(tokens), torch.tensor(acts), torch.tensor(excluded)
    batches = [(torch.arange(6), t[:6], a[:6], e[:6]), (torch.arange(6, 12), t[6:], a[6:], e[6:])]
    found = top_activated_windows(IdentitySAE(3), [0, 1, 2], batches, tokenizer=tagged,
                                  settings=WindowsConfig(window=4, single_token_share=0.5))
    kept = np.where(excluded, 0.0, acts.astype(np.float64).transpose(2, 0, 1)).transpose(1, 2, 0)
    for f in range(3):
        by_id: dict[int, float] = {}
        for i in range(n_seq):
            for p in range(1, length):
                by_id[int(tokens[i, p])] = by_id.get(int(tokens[i, p]), 0.0) + kept[i, p, f]
        total = sum(by_id.values())
        got = found.features[str(f)].stats.spread
        assert got.total == pytest.approx(total)
        if total == 0:
            assert got.top_token is None and got.top_token_share is None and not got.single_token
            continue
        top = max(by_id, key=by_id.get)
        assert got.top_token == top and got.texts == tagged([top])
        assert got.top_token_share == pytest.approx(by_id[top] / total)
        assert got.single_token == (by_id[top] / total > 0.5)
    assert found.features["0"].stats.spread.top_token == 7 and found.features["0"].stats.spread.single_token
    assert not found.features["1"].stats.spread.single_token


def test_single_token_failure_rates_against_the_others():
    single = {("sae1", 8), ("sae2", 9), ("sae1", 5), ("sae2", 21)}
    arts = embedded(with_spreads(make_case_artifacts(), single=single), min_activating=1,
                    min_non_activating=1)
    cases, summary = run(arts)
    for kind in FIXTURE_KINDS:
        one, other = [], []
        for p in kept_pairs(arts, kind):
            for sae, f in (("sae1", p.index1), ("sae2", p.index2)):
                (one if (sae, f) in single else other).append(float((sae, f) in FAILED))
        checks = summary.groups[kind].checks
        assert (checks.n_single_token, checks.n_other) == (len(one), len(other))
        assert checks.failure_rate_single_token == (pytest.approx(mean(one)) if one else None)
        assert checks.failure_rate_other == (pytest.approx(mean(other)) if other else None)
    worst = summary.groups["worst"].checks  # features 8 and 9 both fail and are single-token
    assert (worst.failure_rate_single_token, worst.failure_rate_other) == (1.0, 0.0)
    entry = next(c for c in cases if (c.kind, c.rank) == ("worst", 1))
    assert entry.checks[0].single_token and entry.checks[0].top_token_share == 0.9
    written = orjson.loads(summary.model_dump_json())
    assert written["groups"]["worst"]["checks"]["failure_rate_single_token"] == 1.0
    assert "single-token" in render_report(cases, summary, {}, arts.explain)


# ---------------------------------------------------------------- bad settings


@pytest.mark.parametrize("setting", ["embed.min_activating=-1", "embed.min_non_activating=0",
                                     "explain.stock_share=1.5", "explain.stock_share=-0.1",
                                     "windows.single_token_share=2"])
def test_bad_rule_settings_are_one_line_errors(tmp_path, setting):
    config = tmp_path / "run.yaml"
    config.write_text("run_name: t\nhook: blocks.3.hook_resid_pre\nsae1: {path: none1}\n"
                      "sae2: {path: none2}\ncorpus: {source: corpus.txt}\n")
    result = CliRunner().invoke(app, ["match", "-c", str(config), "--out-dir", str(tmp_path / "o"),
                                      "--set", setting])
    text = result.output.strip()
    assert result.exit_code == 2 and len(text.splitlines()) == 1, text
    assert "bad config" in text and setting.split("=")[0] in text and "Traceback" not in text


# ---------------------------------------------------------------- the real pipeline


def test_the_tiny_runs_rules_and_rates_recomputed_from_its_artifacts(tiny_run):
    _, out = tiny_run
    read = lambda name: orjson.loads((out / name).read_bytes())  # noqa: E731
    summary, cases, embed, explain_json = (read("summary.json"), read("case_study.json"),
                                           read("embed.json"), read("explain.json"))
    windows = {s: read(f"windows_{s}.json")["features"] for s in SAE_KEYS}
    rules = summary["config"]["embed"]
    for sae in SAE_KEYS:
        for key, feature in embed["features"][sae].items():
            counted = windows[sae][key]["stats"]["spread"]
            scoring = feature["scoring"]
            assert (scoring["n_activating_windows"], scoring["n_non_activating_windows"]) == (
                counted["n_activating_windows"], counted["n_non_activating_windows"])
            ok = (counted["n_activating_windows"] >= rules["min_activating"]
                  and counted["n_non_activating_windows"] >= rules["min_non_activating"])
            assert scoring["scored"] == ok
            if not ok:
                assert all(s["auroc"] is None and s["reason"] == scoring["reason"]
                           for by in feature["eleuther"].values() for s in by.values())
    groups = {kind: [] for kind in PAIR_KINDS}
    for case in cases:
        if not any(case["silent"]):
            groups[case["kind"]] += list(zip(SAE_KEYS, case["indices"]))
    described = {s: {k: e["explanation"] for k, e in g.items()}
                 for s, g in read("describe.json")["features"].items()}
    described = {s: {k: described.get(s, {}).get(k) for k in windows[s]} for s in SAE_KEYS}
    expected = known_answer_rates({s: {k: [Window(**w) for w in f["windows"]["max"]]
                                       for k, f in windows[s].items()} for s in SAE_KEYS},
                                  explain_json["features"], embed["explainers"]["null"]["record"]["partners"], groups, described)
    html = (out / "report" / "index.html").read_text()
    rows = checks_rows(html)
    for kind, ((rate, n), (null_rate, n_null), (window_rate, n_window)) in expected.items():
        group = summary["groups"][kind]
        checks = group["checks"]
        assert (checks["n_known_answer"], checks["n_known_answer_null"]) == (n, n_null)
        assert checks["known_answer_rate"] == (None if rate is None else pytest.approx(rate))
        assert checks["known_answer_null_rate"] == (None if null_rate is None
                                                     else pytest.approx(null_rate))
        assert checks["n_known_answer_window"] == n_window
        assert checks["known_answer_window_rate"] == (None if window_rate is None
                                                       else pytest.approx(window_rate))
        assert rows[kind][7:10] == [cell(rate, n), cell(window_rate, n_window),
                                    cell(null_rate, n_null)]
        assert group["n_scored"] == sum(embed["features"][s][str(f)]["scoring"]["scored"]
                                        for s, f in groups[kind])
        assert group["n_features"] == len(groups[kind])
        assert rows[kind][1] == f"{group['n_scored']} / {group['n_features']}"
    assert summary["similarity_null"]["pairs"] and summary["rules"]["min_activating"] == 5
