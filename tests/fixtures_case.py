"""Small but complete synthetic artifacts of every stage, with consistent fingerprints, for assemble/report tests."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faithcase.artifacts import (
    CRITERIA,
    Assignment,
    Context,
    CrossScore,
    EmbedArtifact,
    ExplainArtifact,
    ExplainBaseline,
    ExplainSettings,
    FeatureExplanation,
    FeatureScore,
    FeatureStats,
    FeatureWindows,
    Histogram,
    MatchArtifact,
    MatchStats,
    Meta,
    Pair,
    SAEInfo,
    ScoredContext,
    SolverInfo,
    SweepPoint,
    Window,
    WindowsArtifact,
    write_artifact,
)

# (kind, rank, index1, index2, decoder similarity)
PAIRS = [
    ("best", 1, 5, 12, 0.97),
    ("best", 2, 17, 3, 0.91),
    ("worst", 1, 8, 30, 0.04),
    ("worst", 2, 21, 9, 0.11),
    ("random", 1, 2, 7, 0.52),
    ("random", 2, 33, 17, 0.38),  # feature 17 of sae2 differs from feature 17 of sae1
]
SCALES = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
# tokens that need escaping or are not ASCII
TRICKY_TEXTS = ["<b>", " &amp;", " a<b", "\n", " café", " 日本", " \"q\"", " x&y", "\n\n", " →", "</script>", " 'o'"]
PLAIN_TEXTS = [" the", " cat", " sat", " on", " mat", ".", " It", " was", " warm", " and", " quiet", ","]
# feature whose own AUROC is None (too few activating contexts)
NONE_AUROC = ("sae2", 30)
FAILED = {("sae1", 8), ("sae2", 9)}


def explanation_of(sae: str, feature: int) -> str:
    return f"{sae} f{feature}: tokens like <b>bold</b> & \"quotes\" in café ↵ text"


@dataclass
class CaseArtifacts:
    match: MatchArtifact
    explain: ExplainArtifact
    windows: dict[str, WindowsArtifact]
    embed: EmbedArtifact
    config: dict[str, Any]

    def write(self, out_dir: Path) -> None:
        write_artifact(out_dir / "match.json", self.match)
        write_artifact(out_dir / "explain.json", self.explain)
        for sae, artifact in self.windows.items():
            write_artifact(out_dir / f"windows_{sae}.json", artifact)
        write_artifact(out_dir / "embed.json", self.embed)


def sae_info(name: str) -> SAEInfo:
    return SAEInfo(path=f"saes/{name}", format="saelens", d_in=16, d_sae=40,
                   hook_name="blocks.2.hook_resid_pre", sha256=f"{name}-sha")


def make_match() -> MatchArtifact:
    pairs: dict[str, list[Pair]] = {"best": [], "worst": [], "random": []}
    for kind, rank, i1, i2, sim in PAIRS:
        pairs[kind].append(Pair(kind=kind, rank=rank, index1=i1, index2=i2, similarity=sim))
    stats = MatchStats(
        threshold=0.7, n_features1=40, n_features2=40, n_alive1=38, n_alive2=39, n_dead1=2, n_dead2=1, n_matched=38,
        shared_ratio=0.42, top1_ratio=0.47, mean_similarity=0.55,
        histogram=Histogram(edges=[i / 10 for i in range(-2, 11)], counts=[0, 1, 2, 3, 4, 5, 6, 5, 4, 3, 3, 2]),
    )
    solver = SolverInfo(name="dense", exact=True, certified=True, total=20.9, seconds=0.01)
    assignment = Assignment(index1=[p[2] for p in PAIRS], index2=[p[3] for p in PAIRS], similarity=[p[4] for p in PAIRS])
    return MatchArtifact(meta=Meta(stage="match", fingerprint="fp-match"), sae1=sae_info("sae1"), sae2=sae_info("sae2"),
                         stats=stats, solver=solver, pairs=pairs, assignment=assignment)


def make_explain(features: dict[str, list[int]], match_fp: str) -> ExplainArtifact:
    explained: dict[str, dict[str, FeatureExplanation]] = {}
    for sae, indices in features.items():
        explained[sae] = {}
        for feature in indices:
            failed = (sae, feature) in FAILED
            peak = 0.0 if failed else 0.05 + feature / 100
            sweep = [
                SweepPoint(scale=s, selfsim=peak * s / (1 + s * s / 4), entropy=-0.2 * s + 0.03 * s * s, score=None)
                for s in SCALES
            ]
            chosen = max(sweep, key=lambda p: p.selfsim)
            explained[sae][str(feature)] = FeatureExplanation(
                feature=feature, fingerprint=f"fp-{sae}-{feature}",
                explanations=[explanation_of(sae, feature), f"a sample for {feature}"],
                scale=None if failed else chosen.scale, scales=[chosen.scale], sweep=sweep,
                failed=failed, best_selfsim=chosen.selfsim,
            )
    settings = ExplainSettings(prompt_text='What is "X"?', placeholder_token_id=55, placeholder_positions=[4],
                               insert_layer=2, read_layer=5, mode="replace", residual_norm=3.0, scales=SCALES)
    baseline = ExplainBaseline(replace_zero="nothing <at> all", add_zero="a word", selfsim_zero=0.01, entropy_zero=2.5)
    return ExplainArtifact(meta=Meta(stage="explain", fingerprint="fp-explain", upstream={"match.json": match_fp}),
                           settings=settings, baseline=baseline, features=explained)


def make_window(rng: random.Random, length: int, seq_id: int, peak: float) -> Window:
    texts = [rng.choice(TRICKY_TEXTS if rng.random() < 0.35 else PLAIN_TEXTS) for _ in range(length)]
    acts = [0.0 if rng.random() < 0.5 else round(rng.uniform(0, peak), 3) for _ in range(length)]
    acts[length // 2] = peak
    return Window(tokens=[rng.randrange(1000) for _ in range(length)], texts=texts, acts=acts,
                  seq_id=seq_id, start=rng.randrange(50), value=peak)


def make_feature_windows(rng: random.Random, feature: int) -> FeatureWindows:
    peak = round(1.0 + feature / 10, 3)
    windows = {c: [make_window(rng, 12, seq, round(peak * (1 - 0.15 * seq), 3)) for seq in range(3)] for c in CRITERIA}
    stats = FeatureStats(n_tokens=5000, n_active=40 + feature, frequency=(40 + feature) / 5000, max=peak,
                         mean_nonzero=peak / 3, histogram=Histogram(edges=[0, peak / 2, peak], counts=[30, 10]))
    activating = [Context(**make_window(rng, 8, 100 + q, peak).model_dump(exclude={"value"}), max_act=peak, quantile=q)
                  for q in range(3)]
    non_activating = [Context(tokens=[1, 2], texts=[" no", " fire"], acts=[0.0, 0.0], seq_id=200 + i, start=0, max_act=0.0)
                      for i in range(2)]
    return FeatureWindows(feature=feature, windows=windows, stats=stats, activating=activating, non_activating=non_activating)


def make_windows(features: dict[str, list[int]], match_fp: str) -> dict[str, WindowsArtifact]:
    artifacts = {}
    for sae, indices in features.items():
        rng = random.Random(f"windows-{sae}")
        artifacts[sae] = WindowsArtifact(
            meta=Meta(stage="windows", fingerprint=f"fp-windows-{sae}", upstream={"match.json": match_fp}),
            sae=sae, n_sequences=64, n_tokens=4096, seq_len=64, window=12, excluded_positions=64,
            quantile_method="deciles", features={str(f): make_feature_windows(rng, f) for f in indices},
        )
    return artifacts


def own_auroc(sae: str, feature: int) -> float | None:
    if (sae, feature) == NONE_AUROC:
        return None
    return round(0.5 + ((feature * 7 + (3 if sae == "sae2" else 0)) % 45) / 100, 3)


def score(sae: str, feature: int, auroc: float | None, explanation: str) -> FeatureScore:
    return FeatureScore(
        feature=feature, explanation=explanation, auroc=auroc,
        reason="too few activating contexts" if auroc is None else None,
        n_activating=3 if auroc is not None else 1, n_non_activating=2,
        contexts=[ScoredContext(text="the cat & <dog>", label=1, similarity=0.4, quantile=0),
                  ScoredContext(text="no fire", label=0, similarity=0.1)],
    )


def make_embed(features: dict[str, list[int]], match: MatchArtifact, upstream: dict[str, str]) -> EmbedArtifact:
    scores = {sae: {str(f): score(sae, f, own_auroc(sae, f), explanation_of(sae, f)) for f in indices}
              for sae, indices in features.items()}
    cross = []
    for pair in match.all_pairs():
        cross_auroc_12 = round(0.3 + (pair.index1 % 7) / 10, 3)
        cross_auroc_21 = None if pair.kind == "random" and pair.rank == 2 else round(0.35 + (pair.index2 % 5) / 10, 3)
        cross.append(CrossScore(
            kind=pair.kind, rank=pair.rank, index1=pair.index1, index2=pair.index2,
            sae1_on_sae2=score("sae2", pair.index2, cross_auroc_12, explanation_of("sae1", pair.index1)),
            sae2_on_sae1=score("sae1", pair.index1, cross_auroc_21, explanation_of("sae2", pair.index2)),
            explanation_similarity=None if pair.kind == "worst" and pair.rank == 1 else round(0.2 + pair.similarity / 2, 3),
        ))
    return EmbedArtifact(meta=Meta(stage="embed", fingerprint="fp-embed", upstream=upstream), embedder="mini",
                         query_template="Query: {explanation}", scores=scores, cross=cross)


def make_case_artifacts() -> CaseArtifacts:
    match = make_match()
    features = match.selected_features()
    match_fp = match.meta.fingerprint
    explain = make_explain(features, match_fp)
    windows = make_windows(features, match_fp)
    embed_upstream = {"match.json": match_fp, "explain.json": explain.meta.fingerprint,
                      **{f"windows_{sae}.json": w.meta.fingerprint for sae, w in windows.items()}}
    embed = make_embed(features, match, embed_upstream)
    config = {"run_name": "fixture", "model": {"name": "tiny/Model-<test>"}, "hook": "blocks.2.hook_resid_pre",
              "match": {"threshold": 0.7, "n_pairs": 2}}
    return CaseArtifacts(match=match, explain=explain, windows=windows, embed=embed, config=config)
