"""Small but complete synthetic artifacts of every stage, consistent with each other, for assemble/report tests."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faithcase.window_artifacts import DescribeArtifact, WindowExplanation
from faithcase.artifacts import (
    CRITERIA,
    PAIR_KINDS,
    AgreementTable,
    Assignment,
    Context,
    Document,
    EmbedArtifact,
    ExplainerRecord,
    ExplainArtifact,
    ExplainBaseline,
    ExplainSettings,
    ExplanationScore,
    FeatureExplanation,
    FeatureStats,
    FeatureWindows,
    Histogram,
    MatchArtifact,
    MatchStats,
    Meta,
    NullDistribution,
    Pair,
    PairsArtifact,
    PairSimilarity,
    RankedText,
    SAEInfo,
    SAEQuality,
    ScanArtifact,
    ScoredFeature,
    SolverInfo,
    SweepPoint,
    Window,
    WindowsArtifact,
)
from faithcase.run.store import write_artifact
from faithcase import plugins
from faithcase.numerics.explanation_checks import peak_tokens

# the built-ins that explain SAE features: self, window, baseline, null (not the known features'
# true answer)
EXPLAINERS = tuple(e.name for e in plugins.explainers() if e.only is None)


def top_token_explanation(feature: FeatureWindows, n_tokens: int = 3) -> str | None:
    """The top-token baseline's text, as explainers/baseline.py writes it."""
    return ", ".join(peak_tokens(feature.windows.get("max", []), n_tokens)) or None

# (kind, rank, index1, index2, decoder similarity)
PAIRS = [
    ("best", 1, 5, 12, 0.97),
    ("best", 2, 17, 3, 0.91),
    ("worst", 1, 8, 30, 0.04),
    ("worst", 2, 21, 9, 0.11),
    ("random", 1, 2, 7, 0.52),
    ("random", 2, 33, 17, 0.38),  # feature 17 of sae2 differs from feature 17 of sae1
    ("stratified", 1, 4, 20, 0.83),
    ("stratified", 2, 11, 21, 0.66),
    ("stratified", 3, 14, 25, 0.45),
    ("stratified", 4, 19, 26, 0.31),
    ("stratified", 5, 26, 27, 0.12),
]
# other matched pairs of the assignment, not selected
OTHERS = [(0, 0, 0.2), (1, 1, 0.25), (3, 2, 0.6), (6, 4, 0.7), (7, 5, 0.5)]
SCALES = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
N_TOKENS = 5000
# tokens that need escaping or are not ASCII
TRICKY_TEXTS = ["<b>", " &amp;", " a<b", "\n", " café", " 日本", " \"q\"", " x&y", "\n\n", " →", "</script>", " 'o'"]
PLAIN_TEXTS = [" the", " cat", " sat", " on", " mat", ".", " It", " was", " warm", " and", " quiet", ","]
# feature whose own AUROC is None (too few activating contexts)
NONE_AUROC = ("sae2", 30)
FAILED = {("sae1", 8), ("sae2", 9)}
SILENT = ("sae2", 25)  # never fires: stratified pair 3 is left out of the group means


def explanation_of(sae: str, feature: int) -> str:
    return f"{sae} f{feature}: tokens like <b>bold</b> & \"quotes\" in café ↵ text"


@dataclass
class CaseArtifacts:
    match: MatchArtifact
    scan: ScanArtifact
    pairs: PairsArtifact
    explain: ExplainArtifact
    windows: dict[str, WindowsArtifact]
    embed: EmbedArtifact
    config: dict[str, Any]
    describe: DescribeArtifact | None = None

    def write(self, out_dir: Path) -> None:
        for name, artifact in (("match", self.match), ("scan", self.scan), ("pairs", self.pairs),
                               ("explain", self.explain), ("embed", self.embed),
                               ("describe", self.describe)):
            write_artifact(out_dir / f"{name}.json", artifact)
        for sae, artifact in self.windows.items():
            write_artifact(out_dir / f"windows_{sae}.json", artifact)


def sae_info(name: str) -> SAEInfo:
    return SAEInfo(path=f"saes/{name}", format="saelens", d_in=16, d_sae=40,
                   hook_name="blocks.2.hook_resid_pre", sha256=f"{name}-sha")


def assignment_rows() -> list[tuple[int, int, float]]:
    return sorted([(i1, i2, sim) for _, _, i1, i2, sim in PAIRS] + OTHERS)


def make_match() -> MatchArtifact:
    rows = assignment_rows()
    stats = MatchStats(
        threshold=0.7, n_features1=40, n_features2=40, n_alive1=38, n_alive2=39, n_dead1=2, n_dead2=1,
        n_matched=len(rows), shared_ratio=0.42, top1_ratio=0.47, top1_ratio_sae1=0.45, mean_similarity=0.55,
        histogram=Histogram(edges=[i / 10 for i in range(-2, 11)], counts=[0, 1, 2, 3, 4, 5, 6, 5, 4, 3, 3, 2]),
    )
    solver = SolverInfo(name="dense", exact=True, certified=True, total=20.9, seconds=0.01)
    assignment = Assignment(index1=[r[0] for r in rows], index2=[r[1] for r in rows], similarity=[r[2] for r in rows])
    return MatchArtifact(meta=Meta(stage="match", fingerprint="fp-match"), sae1=sae_info("sae1"), sae2=sae_info("sae2"),
                         stats=stats, solver=solver, assignment=assignment)


def make_scan(match: MatchArtifact) -> ScanArtifact:
    """Agreement that grows with decoder cosine; SAE 2's feature 25 never fires."""
    a = match.assignment
    firing = {"sae1": [50 + i for i in range(40)], "sae2": [60 + i for i in range(40)]}
    firing["sae2"][SILENT[1]] = 0
    n1 = [firing["sae1"][i] for i in a.index1]
    n2 = [firing["sae2"][j] for j in a.index2]
    both = [int(min(x, y) * max(s, 0)) for x, y, s in zip(n1, n2, a.similarity)]
    table = AgreementTable(
        pearson=[None if y == 0 else round(s * 0.9 + 0.05, 3) for s, y in zip(a.similarity, n2)],
        jaccard=[b / (x + y - b) if x + y - b else None for x, y, b in zip(n1, n2, both)],
        p2_given_1=[b / x if x else None for x, b in zip(n1, both)],
        p1_given_2=[b / y if y else None for y, b in zip(n2, both)], n1=n1, n2=n2, n_both=both)
    quality = {key: SAEQuality(fvu=0.12, l0=8.0, k=8, n_silent=int(key == "sae2")) for key in ("sae1", "sae2")}
    quality["sae2"].warnings = ["sae2: a <warning> about the load"]
    return ScanArtifact(meta=Meta(stage="scan", fingerprint="fp-scan"), n_sequences=80, n_tokens=N_TOKENS,
                        excluded_positions=80, quality=quality, firing=firing, agreement=table)


def make_pairs() -> PairsArtifact:
    pairs: dict[str, list[Pair]] = {kind: [] for kind in PAIR_KINDS}
    for kind, rank, i1, i2, sim in PAIRS:
        pairs[kind].append(Pair(kind=kind, rank=rank, index1=i1, index2=i2, similarity=sim))
    return PairsArtifact(meta=Meta(stage="pairs", fingerprint="fp-pairs"), pairs=pairs, n_eligible=15,
                         strata_edges=[0.04 + 0.093 * k for k in range(11)])


FIXTURE_KINDS = tuple(k for k in PAIR_KINDS if k != "orphan")  # the fixture's pairs have no orphans


def make_explain(features: dict[str, list[int]]) -> ExplainArtifact:
    explained: dict[str, dict[str, FeatureExplanation]] = {}
    for sae, indices in features.items():
        explained[sae] = {}
        for feature in indices:
            failed = (sae, feature) in FAILED
            peak = 0.0 if failed else 0.05 + feature / 100
            sweep = [SweepPoint(scale=s, selfsim=peak * s / (1 + s * s / 4), entropy=-0.2 * s + 0.03 * s * s,
                                ce=0.1 * s, score=None) for s in SCALES]
            chosen = max(sweep, key=lambda p: p.selfsim)
            ranking = [RankedText(text=explanation_of(sae, feature), scale=chosen.scale, greedy=True, specificity=1.5),
                       RankedText(text=f"a sample for {feature}", scale=chosen.scale, greedy=False, specificity=0.5)]
            explained[sae][str(feature)] = FeatureExplanation(
                feature=feature, fingerprint=f"fp-{sae}-{feature}", explanations=[t.text for t in ranking],
                ranking=ranking, scale=None if failed else chosen.scale, scales=[chosen.scale], sweep=sweep,
                failed=failed, best_selfsim=chosen.selfsim)
    settings = ExplainSettings(prompt_text='What is "X"?', placeholder_token_id=55, placeholder_positions=[4],
                               insert_layer=2, read_layer=5, mode="replace", residual_norm=3.0, scales=SCALES)
    baseline = ExplainBaseline(replace_zero="nothing <at> all", add_zero="a word", neutral="neutral",
                               selfsim_zero=0.01, entropy_zero=2.5)
    null = NullDistribution(key="k", n=8, seed=0, best_selfsim=[0.001 * i for i in range(8)],
                            quantiles={"q05": 0.0, "q50": 0.0035, "q95": 0.0067, "max": 0.007})
    return ExplainArtifact(meta=Meta(stage="explain", fingerprint="fp-explain", upstream={"pairs.json": "fp-pairs"}),
                           settings=settings, baseline=baseline, null=null, threshold=0.0067,
                           threshold_source="null q0.95 of 8", features=explained)


def make_window(rng: random.Random, length: int, seq_id: int, peak: float) -> Window:
    texts = [rng.choice(TRICKY_TEXTS if rng.random() < 0.35 else PLAIN_TEXTS) for _ in range(length)]
    acts = [0.0 if rng.random() < 0.5 else round(rng.uniform(0, peak), 3) for _ in range(length)]
    acts[length // 2] = peak
    return Window(tokens=[rng.randrange(1000) for _ in range(length)], texts=texts, acts=acts,
                  seq_id=seq_id, start=rng.randrange(50), value=peak)


def make_feature_windows(rng: random.Random, feature: int) -> FeatureWindows:
    peak = round(1.0 + feature / 10, 3)
    windows = {c: [make_window(rng, 12, seq, round(peak * (1 - 0.15 * seq), 3)) for seq in range(3)] for c in CRITERIA}
    stats = FeatureStats(n_tokens=N_TOKENS, n_active=40 + feature, frequency=(40 + feature) / N_TOKENS, max=peak,
                         mean_nonzero=peak / 3, histogram=Histogram(edges=[0, peak / 2, peak], counts=[30, 10]))
    activating = [Context(**make_window(rng, 8, 100 + q, peak).model_dump(exclude={"value"}), max_act=peak, quantile=q)
                  for q in range(3)]
    non_activating = [Context(tokens=[1, 2], texts=[" no", " fire"], acts=[0.0, 0.0], seq_id=200 + i, start=0, max_act=0.0)
                      for i in range(2)]
    return FeatureWindows(feature=feature, windows=windows, stats=stats, activating=activating, non_activating=non_activating)


def make_windows(features: dict[str, list[int]]) -> dict[str, WindowsArtifact]:
    artifacts = {}
    for sae, indices in features.items():
        rng = random.Random(f"windows-{sae}")
        artifacts[sae] = WindowsArtifact(
            meta=Meta(stage="windows", fingerprint=f"fp-windows-{sae}", upstream={"pairs.json": "fp-pairs"}),
            sae=sae, n_sequences=64, n_tokens=4096, seq_len=64, window=12, excluded_positions=64,
            quantile_method="deciles", features={str(f): make_feature_windows(rng, f) for f in indices},
        )
    return artifacts


N_ACTIVATING = N_NON_ACTIVATING = 10  # each feature's embed documents: AUROCs are multiples of 0.01


def auroc(documents_of: str, feature: int, explanation_of: str, explainer: str) -> float | None:
    """A deterministic AUROC per (documents, explanation); None for the unscorable feature."""
    if (documents_of, feature) == NONE_AUROC:
        return None
    offset = {"self": 0, "window": 17, "baseline": 11, "null": 23}[explainer] + 3 * (documents_of == "sae2")
    step = 7 if explanation_of == documents_of else 29  # cross scores rank the features differently
    return round(0.3 + ((feature * step + offset) % 60) / 100, 2)


def similarities_with_auroc(target: float) -> list[float]:
    """Similarities of N_ACTIVATING activating then N_NON_ACTIVATING non-activating documents whose
    AUROC is `target`: activating document i ranks above exactly beaten[i] non-activating ones."""
    wins = round(target * N_ACTIVATING * N_NON_ACTIVATING)
    beaten = [wins // N_ACTIVATING + (i < wins % N_ACTIVATING) for i in range(N_ACTIVATING)]
    return [(b - 0.5) / 100 for b in beaten] + [k / 100 for k in range(N_NON_ACTIVATING)]


def embed_documents(sae: str, feature: int) -> list[Document]:
    n_activating = 1 if (sae, feature) == NONE_AUROC else N_ACTIVATING
    return ([Document(text=f"{sae} f{feature} fires {i}: the cat & <dog>", label=1, quantile=0)
             for i in range(n_activating)]
            + [Document(text=f"{sae} f{feature} quiet {i}", label=0)
               for i in range(N_NON_ACTIVATING)])


def score_of(value: float | None, explanation: str | None) -> ExplanationScore:
    if value is None:
        return ExplanationScore(explanation=explanation, auroc=None,
                                reason="too few activating contexts")
    return ExplanationScore(explanation=explanation, auroc=value, auroc_per_quantile=[value],
                            similarities=similarities_with_auroc(value))


def make_embed(pairs: PairsArtifact, windows: dict[str, WindowsArtifact]) -> EmbedArtifact:
    """Each selected feature's documents scored by its own SAE's explanations and by its partner's;
    the null of a feature is the next selected feature of its SAE."""
    selected = pairs.selected_features()
    nulls = {sae: {str(f): features[(i + 1) % len(features)] for i, f in enumerate(features)}
             for sae, features in selected.items()}
    texts = {sae: {f: {"self": explanation_of(sae, f), "window": window_explanation_of(sae, f),
                       "baseline": top_token_explanation(windows[sae].features[str(f)]),
                       "null": explanation_of(sae, nulls[sae][str(f)])} for f in selected[sae]}
             for sae in selected}
    features: dict[str, dict[str, ScoredFeature]] = {"sae1": {}, "sae2": {}}
    for p in pairs.all_pairs():
        whose = {"sae1": p.index1, "sae2": p.index2}
        for sae, index in whose.items():
            features[sae][str(index)] = ScoredFeature(
                feature=index, documents=embed_documents(sae, index),
                eleuther={of: {n: score_of(auroc(sae, index, of, n), texts[of][g][n])
                               for n in EXPLAINERS} for of, g in whose.items()})
    similarities = [PairSimilarity(kind=p.kind, rank=p.rank, index1=p.index1, index2=p.index2,
                                   explanation_similarity=None if (p.kind, p.rank) == ("worst", 1)
                                   else round(0.2 + p.similarity / 2, 3)) for p in pairs.all_pairs()]
    return EmbedArtifact(meta=Meta(stage="embed", fingerprint="fp-embed"), embedder="mini",
                         query_template="Query: {explanation}", features=features, pairs=similarities,
                         explainers={e.name: ExplainerRecord(
                             doc=e.doc, control=e.control,
                             record={"partners": nulls} if e.name == "null" else {}, only=e.only)
                             for e in plugins.explainers()},
                         templates={"{explanation}": 0.51, "Query:{explanation}": 0.5})


def make_case_artifacts() -> CaseArtifacts:
    match = make_match()
    pairs = make_pairs()
    features = pairs.selected_features()
    config = {"run_name": "fixture", "model": {"name": "tiny/Model-<test>"}, "hook": "blocks.2.hook_resid_pre",
              "match": {"threshold": 0.7, "n_pairs": 2, "seed": 0}}
    windows = make_windows(features)
    return CaseArtifacts(match=match, scan=make_scan(match), pairs=pairs, explain=make_explain(features),
                         windows=windows, embed=make_embed(pairs, windows), config=config,
                         describe=make_describe(features))


def window_explanation_of(sae: str, feature: int) -> str:
    return f"window explanation of {sae} feature {feature}"


def make_describe(features: dict[str, list[int]]) -> DescribeArtifact:
    from faithcase.stages.describe import METHOD, SEPARATION

    entries = {sae: {str(f): WindowExplanation(feature=f, explanation=window_explanation_of(sae, f), reply="",
                                               prompt="", shown=[], fingerprint=f"fp-{sae}-{f}")
                     for f in indices} for sae, indices in features.items()}
    return DescribeArtifact(meta=Meta(stage="describe", fingerprint="fp-describe"), enabled=True,
                            explainer="fake", method=METHOD, system="", few_shot=[], prefill=None,
                            separation=SEPARATION, features=entries)
