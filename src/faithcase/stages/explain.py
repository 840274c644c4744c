"""The explain stage: self-explanation of SAE features by activation steering.

Method (Kharlapenko, Neverix, Nanda, Conmy, "Self-explaining SAE features", 2024, and their code;
in the spirit of SelfIE and Patchscopes): the model is asked `What is the meaning of the word "X"?`
and its answer is prefilled with `The meaning of the word "X" is "`. During the prompt pass the
residual at every `X` position, at `blocks.{insert_layer}.hook_resid_pre`, is replaced by (or has
added) the feature's unit decoder direction × scale × the median residual norm of that layer, so
scales are relative and one grid fits any model (`steering.py`).

Each scale is scored by two curves, min-max normalised over the feature's grid:
- self-similarity: cosine between the residual at the last prompt position after the read layer
  (`blocks.{read_layer}.hook_resid_post`, default the block at 80% depth) and the feature
  direction, minus its value at scale 0;
- `criterion: ce` (the reference's): the cross-entropy of the steered next-token distribution
  against the neutral placeholder's, 0 at the neutral baseline; `entropy`: the next-token entropy
  minus its value at scale 0.
score = selfsim_weight · selfsim − criterion_weight · curve; the auto grid's lowest scales are
never chosen. At the n_best_scales best scales the model writes one greedy text and n_samples
sampled ones (seeded). Every text is ranked (`rank_by`) by its mean per-token log-probability under
the steered prompt, closing quote included (`logprob`: how firmly the steered model says it), or by
its specificity (that minus the same under the neutral placeholder: how much the steering, not the
prompt, makes the model say it). The first is the explanation (why `logprob` is the default:
the README's "How each score is computed").

Failure test: n_null random unit directions (seeded) go through the same prompt and sweep; their
best self-similarities are the null distribution, and a feature fails when its best
self-similarity is at most the null's `null_quantile` (a fixed `failed_selfsim` overrides it).
An explanation equal to a baseline answer, or a stock text many features give, is flagged
`uninformative` (`numerics/explanation_checks.py`), over every feature of the artifact.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

from faithcase.render.tables import console, fmt, table
from faithcase.artifacts import (
    KNOWN,
    ExplainArtifact,
    ExplainBaseline,
    ExplainSettings,
    FeatureExplanation,
    NullDistribution,
    RankedText,
    SweepPoint,
)
from faithcase.config import ExplainConfig, affecting
from faithcase.numerics.directions import random_directions, unit_directions
from faithcase.numerics.explanation_checks import flag_uninformative
from faithcase.numerics.sweep_scores import best_scales, best_selfsim, score_sweep
from faithcase.run.graph import Stage
from faithcase.run.store import fingerprint
from faithcase.run.errors import FaithcaseError
from faithcase.model.prompt import PromptSpec, build_prompt
from faithcase.model.steering import Sweep, generate, neutral_logprobs, neutral_vector, sweep

READ_DEPTH = 0.8  # default read layer, as a share of the depth
NULL_QUANTILES = {"q05": 0.05, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q95": 0.95, "max": 1.0}

Progress = Callable[[str, int, int], None]  # (what, done, total)


# ---------------------------------------------------------------- scales and layers


def scale_grid(cfg: ExplainConfig) -> list[float]:
    """The scales to sweep: cfg.scales as given, or n_scales geometric steps
    min_scale..max_scale."""
    if cfg.scales == "auto":
        if not cfg.min_scale < cfg.max_scale:
            raise FaithcaseError(f"explain.min_scale ({cfg.min_scale}) must be below "
                                 f"explain.max_scale ({cfg.max_scale}).")
        ratio = math.log(cfg.max_scale / cfg.min_scale) / (cfg.n_scales - 1)
        return [round(cfg.min_scale * math.exp(ratio * i), 6) for i in range(cfg.n_scales)]
    return check_scales(cfg.scales)


def check_scales(scales: Sequence[float]) -> list[float]:
    if len(scales) == 0:
        raise FaithcaseError("explain.scales is empty; give positive scales such as [1, 2, 4] "
                             "or 'auto'.")
    bad = [s for s in scales if not (math.isfinite(s) and s > 0)]
    if bad:
        raise FaithcaseError(f"explain.scales must be positive, got {bad}; "
                             f"scale 0 (the baseline) is always measured.")
    return [float(s) for s in scales]


def eligible_scales(cfg: ExplainConfig, n_scales: int) -> list[bool]:
    """Which grid scales may be chosen: an auto grid skips its skip_lowest lowest; a list is
    used as given."""
    skip = min(cfg.skip_lowest, n_scales - 1) if cfg.scales == "auto" else 0
    return [i >= skip for i in range(n_scales)]


def insert_layer(cfg: ExplainConfig, sae_layer: int | None = None) -> int:
    """The layer whose `hook_resid_pre` is steered: explain.insert_layer, or the SAE's layer
    for "sae"."""
    if cfg.insert_layer != "sae":
        return int(cfg.insert_layer)
    if sae_layer is None:
        raise FaithcaseError("explain.insert_layer is 'sae' but the SAE's hook layer is unknown; "
                             "set explain.insert_layer to a layer number.")
    return int(sae_layer)


def resolve_layers(lm, cfg: ExplainConfig, sae_layer: int | None = None) -> tuple[int, int]:
    """(insert_layer, read_layer). The read residual is `blocks.{read_layer}.hook_resid_post`."""
    insert = insert_layer(cfg, sae_layer)
    read = default_read_layer(lm.n_layers) if cfg.read_layer is None else int(cfg.read_layer)
    for name, layer in (("insert_layer", insert), ("read_layer", read)):
        if not 0 <= layer < lm.n_layers:
            raise FaithcaseError(f"explain.{name} {layer} out of range; "
                                 f"{lm.name} has layers 0..{lm.n_layers - 1}.")
    return insert, read


def default_read_layer(n_layers: int) -> int:
    """The block at 80% depth: the last block's output mostly encodes the next-token prediction."""
    return min(n_layers - 1, int(READ_DEPTH * n_layers))


# ---------------------------------------------------------------- scores


def criterion_curve(result: Sweep, criterion: str) -> torch.Tensor:
    return result.ce if criterion == "ce" else result.entropy


# ---------------------------------------------------------------- the failure test


def null_distribution(lm, prompt: PromptSpec, cfg: ExplainConfig, residual_norm: float,
                      insert: int, read: int, key: str = "",
                      progress: Progress | None = None) -> NullDistribution:
    """Best self-similarities of cfg.n_null random unit directions through the same prompt and
    sweep."""
    scales = scale_grid(cfg)
    result = sweep(lm, prompt, random_directions(cfg.n_null, lm.d_model, cfg.seed), scales,
                   insert, read, cfg.mode, residual_norm, cfg.batch_size, progress)
    best = best_selfsim(result.selfsim, eligible_scales(cfg, len(scales))).double()
    quantiles = {name: float(torch.quantile(best, q)) for name, q in NULL_QUANTILES.items()}
    return NullDistribution(key=key, n=cfg.n_null, seed=cfg.seed, best_selfsim=best.tolist(),
                            quantiles=quantiles)


def needs_null(cfg: ExplainConfig) -> bool:
    """Whether the failure threshold comes from a null distribution (not fixed, not turned off)."""
    return bool(cfg.n_null) and cfg.failed_selfsim is None


def failure_threshold(cfg: ExplainConfig,
                      null: NullDistribution | None) -> tuple[float | None, str]:
    """(threshold, where it comes from): the fixed explain.failed_selfsim, else the null's
    quantile."""
    if cfg.failed_selfsim is not None:
        return cfg.failed_selfsim, "fixed"
    if null is None or not null.best_selfsim:
        return None, "none (explain.n_null is 0)"
    values = torch.tensor(null.best_selfsim, dtype=torch.float64)
    source = f"null q{cfg.null_quantile:g} of {null.n}"
    return float(torch.quantile(values, cfg.null_quantile)), source


def is_failed(best: float, threshold: float | None) -> bool:
    return threshold is not None and best <= threshold


# ---------------------------------------------------------------- explanations


def _stack(directions: dict[int, torch.Tensor], d_model: int) -> tuple[list[int], torch.Tensor]:
    features = list(directions)
    if not features:
        return [], torch.zeros(0, d_model)
    matrix = torch.stack([directions[f].detach().float().cpu().reshape(-1) for f in features])
    if matrix.shape[1] != d_model:
        raise FaithcaseError(f"feature directions have {matrix.shape[1]} dimensions but the "
                             f"model's residual stream has {d_model}; the SAE does not fit this "
                             "model.")
    return features, matrix


def _check_norm(residual_norm: float) -> float:
    if not (math.isfinite(residual_norm) and residual_norm > 0):
        raise FaithcaseError(f"the median residual norm must be positive, got {residual_norm}.")
    return float(residual_norm)


def mean_logprob(steered: list[float]) -> float | None:
    """Mean per-token log p(text | steered prompt); None for a text of no tokens."""
    return sum(steered) / len(steered) if steered else None


def specificity(steered: list[float], neutral: list[float]) -> float | None:
    """Mean per-token log p(text | steered) − log p(text | neutral); None for a text of no
    tokens."""
    if not steered:
        return None
    return sum(s - n for s, n in zip(steered, neutral)) / len(steered)


def rank_texts(texts: list[RankedText], by: str = "logprob") -> list[RankedText]:
    """Non-empty texts first, then by `by` (highest first); ties keep the greedy text first."""
    def key(text: RankedText):
        value = getattr(text, by)
        return not text.text.strip(), value is None, -(value or 0.0), not text.greedy
    return sorted(texts, key=key)


def explain_features(lm, directions: dict[int, torch.Tensor], cfg: ExplainConfig,
                     residual_norm: float, progress: Progress | None = None,
                     sae_layer: int | None = None, fingerprints: dict[int, str] | None = None,
                     threshold: float | None = None,
                     ) -> tuple[dict[int, FeatureExplanation], ExplainBaseline, ExplainSettings]:
    """Sweep, score, generate and rank the self-explanations of the given unit directions
    (`numerics.directions.unit_directions`); `failed` compares each best self-similarity with
    `threshold` (None: never failed)."""
    residual_norm = _check_norm(residual_norm)
    insert, read = resolve_layers(lm, cfg, sae_layer)
    scales = scale_grid(cfg)
    prompt = build_prompt(lm, cfg)
    features, matrix = _stack(directions, lm.d_model)
    eligible = eligible_scales(cfg, len(scales))
    fingerprints = fingerprints or {}

    result = sweep(lm, prompt, matrix, scales, insert, read, cfg.mode, residual_norm,
                   cfg.batch_size, progress)
    scores = score_sweep(result.selfsim, criterion_curve(result, cfg.criterion),
                         cfg.selfsim_weight, cfg.criterion_weight)
    chosen = best_scales(scores, eligible, cfg.n_best_scales) if features else []
    rows = [(i, j) for i, picks in enumerate(chosen) for j in picks]  # (feature, scale), best first
    vectors = torch.stack([matrix[i] * scales[j] * residual_norm for i, j in rows]) if rows \
        else torch.zeros(0, lm.d_model)
    candidates, (zero_text, unsteered, neutral) = _texts(lm, prompt, rows, vectors, scales, cfg,
                                                         insert, progress)
    best = best_selfsim(result.selfsim, eligible)
    results: dict[int, FeatureExplanation] = {}
    for i, feature in enumerate(features):
        ranking = rank_texts(candidates.get(i, []), cfg.rank_by)
        sweep_points = [SweepPoint(scale=s, selfsim=float(result.selfsim[i, j]),
                                   entropy=float(result.entropy[i, j]), ce=float(result.ce[i, j]),
                                   score=float(scores[i, j]) if eligible[j] else None)
                        for j, s in enumerate(scales)]
        results[feature] = FeatureExplanation(
            feature=feature, fingerprint=fingerprints.get(feature, ""),
            explanations=[t.text for t in ranking], ranking=ranking,
            scale=ranking[0].scale if ranking else None, scales=[scales[j] for j in chosen[i]],
            sweep=sweep_points, failed=is_failed(float(best[i]), threshold),
            best_selfsim=float(best[i]), selfsim_zero=float(result.selfsim_zero[i]))
    replace_zero = zero_text.text if cfg.mode == "replace" else generate(
        lm, prompt, torch.zeros(1, lm.d_model), insert, "replace", cfg.max_new_tokens, 1)[0].text
    baseline = ExplainBaseline(
        replace_zero=replace_zero, add_zero=unsteered.text, neutral=neutral.text,
        selfsim_zero=float(result.selfsim_zero.mean()) if len(features) else 0.0,
        entropy_zero=result.entropy_zero)
    settings = ExplainSettings(
        prompt_text=prompt.text, prompt_tokens=list(zip(prompt.tokens, prompt.pieces)),
        placeholder_token_id=prompt.placeholder_id,
        placeholder_positions=prompt.positions, insert_layer=insert, read_layer=read,
        mode=cfg.mode, residual_norm=residual_norm, scales=scales, criterion=cfg.criterion)
    return results, baseline, settings


def _texts(lm, prompt, rows: list[tuple[int, int]], vectors: torch.Tensor, scales: list[float],
           cfg: ExplainConfig, insert: int, progress: Progress | None):
    """({feature row: candidate texts}, (zeroed, unsteered, neutral) baseline texts): greedy texts
    and the baselines in the same batches, then the sampled texts, each scored for ranking."""
    zero = torch.zeros(1, lm.d_model)
    references = torch.cat([zero, zero, neutral_vector(lm).cpu()[None]])
    steer = torch.ones(len(rows) + 3, dtype=torch.bool)
    steer[len(rows) + 1] = False  # the unsteered baseline
    greedy = generate(lm, prompt, torch.cat([vectors, references]), insert, cfg.mode,
                      cfg.max_new_tokens, cfg.batch_size, steer_mask=steer, progress=progress)
    greedy, baselines = greedy[:len(rows)], greedy[len(rows):]
    sampled = generate(lm, prompt, vectors.repeat_interleave(cfg.n_samples, dim=0), insert,
                       cfg.mode, cfg.max_new_tokens, cfg.batch_size, temperature=cfg.temperature,
                       seed=cfg.seed, progress=progress) if cfg.n_samples and rows else []
    texts = greedy + sampled
    neutral_scores = neutral_logprobs(lm, prompt, [t.ids for t in texts], insert, cfg.mode,
                                      cfg.batch_size)
    candidates: dict[int, list[RankedText]] = {}
    text_rows = rows + [row for row in rows for _ in range(cfg.n_samples)]
    for n, ((i, j), text) in enumerate(zip(text_rows, texts)):
        candidates.setdefault(i, []).append(RankedText(
            text=text.text, scale=scales[j], greedy=n < len(rows),
            logprob=mean_logprob(text.logprobs),
            specificity=specificity(text.logprobs, neutral_scores[n])))
    return candidates, tuple(baselines)


# ---------------------------------------------------------------- the public entry point


def explain(lm, saes, features, settings: ExplainConfig | None = None,
            residual_norm: float | None = None, sae_layer: int | None = None,
            fingerprints: Mapping[str, Mapping[int, str]] | None = None,
            previous: ExplainArtifact | None = None, null_key: str = "",
            progress: Progress | None = None) -> ExplainArtifact:
    """Self-explanations of SAE features by steering, with the scale chosen per feature and the
    failure test calibrated by random directions.

    `saes` is one SAE or a mapping {name: SAE}, `features` its feature indices (or a mapping with
    the same names); one SAE is stored under the name "sae". `residual_norm` is the median
    residual norm at the insert layer, the unit of the scales (`Runtime.residual_norm`).
    `previous` is an earlier artifact: its features whose `fingerprints` entry is unchanged are
    reused, and its null distribution when it was made with the same `null_key`. `lm` and
    `residual_norm` may be functions returning them, called only when something must be steered.
    """
    settings = settings or ExplainConfig()
    if not isinstance(saes, Mapping):
        saes, features = {"sae": saes}, {"sae": features}
    fingerprints = fingerprints or {}
    reused = _reusable(previous, features, fingerprints)
    todo = {key: [f for f in features[key] if str(f) not in reused[key]] for key in saes}
    null = previous.null if previous and previous.null and previous.null.key == null_key else None
    compute_null = null is None and needs_null(settings)
    if compute_null or any(todo.values()):
        lm, residual_norm = _called(lm), _called(residual_norm)
        if residual_norm is None:
            raise FaithcaseError("explain needs residual_norm: the median residual norm at the "
                                 "insert layer.")
        residual_norm = _check_norm(residual_norm)
    if compute_null:
        insert, read = resolve_layers(lm, settings, sae_layer)
        null = null_distribution(lm, build_prompt(lm, settings), settings, residual_norm, insert,
                                 read, null_key, progress)
    threshold, source = failure_threshold(settings, null)
    explained = {key: dict(reused[key]) for key in saes}
    run_settings, baseline = (previous.settings, previous.baseline) if previous else (None, None)
    for key in [k for k in saes if todo[k]]:
        results, baseline, run_settings = explain_features(
            lm, unit_directions(saes[key].W_dec, todo[key]), settings, residual_norm, progress,
            sae_layer=sae_layer, fingerprints=fingerprints.get(key))
        explained[key].update({str(f): r for f, r in results.items()})
    if run_settings is None:
        raise FaithcaseError("explain needs at least one SAE and one feature.")
    for group in explained.values():
        for feature in group.values():
            feature.failed = is_failed(feature.best_selfsim, threshold)
    zeros = [explained[k][f].selfsim_zero for k in sorted(explained)
             for f in sorted(explained[k], key=int) if explained[k][f].selfsim_zero is not None]
    if zeros:  # over every feature of the artifact, reused or new: the same as a fresh run
        baseline = baseline.model_copy(update={"selfsim_zero": math.fsum(zeros) / len(zeros)})
    rule = flag_uninformative(explained, baseline, settings.stock_share, settings.stock_min)
    return ExplainArtifact(settings=run_settings, baseline=baseline, null=null, threshold=threshold,
                           threshold_source=source, uninformative=rule,
                           features={key: dict(sorted(group.items(), key=lambda kv: int(kv[0])))
                                     for key, group in explained.items()})


def _called(value):
    return value() if callable(value) else value


def _reusable(previous: ExplainArtifact | None, features: Mapping[str, Sequence[int]],
              fingerprints: Mapping[str, Mapping[int, str]]) -> dict[str, dict]:
    """Per SAE, the earlier explanations of the requested features made with the same
    fingerprint."""
    found: dict[str, dict] = {key: {} for key in features}
    for key, wanted in fingerprints.items():
        earlier = previous.features.get(key, {}) if previous else {}
        for feature in features.get(key, []):
            old = earlier.get(str(feature))
            if old is not None and old.fingerprint and old.fingerprint == wanted.get(feature):
                found[key][str(feature)] = old
    return found


# ---------------------------------------------------------------- printing


def print_explain(artifact, inputs: dict) -> None:
    pairs = inputs["pairs"]
    grid = table(f"self-explanations (failed: best self-similarity ≤ "
                 f"{fmt(artifact.threshold, 4)}, {artifact.threshold_source})",
                 ["kind", "rank", "sae1 explanation", "scale", "sae2 explanation", "scale "])
    for p in pairs.all_pairs():
        e1 = artifact.features["sae1"].get(str(p.index1))
        e2 = artifact.features["sae2"].get(str(p.index2))
        grid.add_row(p.kind, str(p.rank), _explanation(e1), _scale(e1), _explanation(e2),
                     _scale(e2))
    console.print(grid)


def _explanation(e) -> str:
    if e is None:
        return "—"
    text = e.explanations[0] if e.explanations else ""
    return f"{text}{' [failed]' if e.failed else ''}{' [uninformative]' if e.uninformative else ''}"


def _scale(e) -> str:
    return "—" if e is None or e.scale is None else f"{e.scale:g}"


# ---------------------------------------------------------------- the stage

SAE_LEVEL = ("nothing", "failure test", "failure threshold", "flags")  # left out of a feature's key


def feature_fingerprints(rt, features: Mapping[str, Sequence[int]],
                         known=None) -> dict[str, dict[int, str]]:
    """Per feature: what its explanation depends on (settings, model, corpus, SAE or direction)."""
    common = [affecting(rt.cfg.explain, SAE_LEVEL), rt.resource_key("model"),
              rt.resource_key("corpus")]
    sources = {key: [rt.sae_hash(key), getattr(rt.cfg, key).dtype] for key in features
               if key != KNOWN}  # a known feature's: its direction
    return {key: {f: fingerprint("explain-feature", *common,
                                 *(sources[key] if key != KNOWN else [known.concept(f).direction]),
                                 f) for f in chosen}
            for key, chosen in features.items()}


def null_key(rt) -> str:
    return fingerprint("explain-null", affecting(rt.cfg.explain,
                                                 ("nothing", "failure threshold", "flags")),
                       rt.resource_key("model"), rt.resource_key("corpus"))


def _compute(job) -> ExplainArtifact:
    """Explains the features no trusted earlier explain.json holds with the same per-feature
    fingerprint, and reuses its null distribution when the failure test's settings are the same."""
    rt, cfg, known = job.ctx, job.settings, job.inputs["known"]
    features = job.inputs["pairs"].selected_features() | known.selection()
    wanted = feature_fingerprints(rt, features, known)
    previous = job.previous(job.stage.file, ExplainArtifact)
    reused = _reusable(previous, features, wanted)
    for key, found in reused.items():
        if found:
            rt.console.print(f"[green]cached[/green] explain {key}: {len(found)} features reused, "
                             f"{len(features[key]) - len(found)} to explain")
    with rt.console.status(f"explaining {sum(map(len, features.values()))} features …"):
        saes = {key: rt.sae(key) for key in features if key != KNOWN} | known.encoders(rt.device)
        artifact = explain(lambda: rt.lm, saes, features, cfg,
                           lambda: rt.residual_norm(insert_layer(cfg, rt.cfg.hook_layer)),
                           rt.cfg.hook_layer, wanted, previous, null_key(rt))
    job.write(job.stage.file, artifact)
    return artifact


STAGE = Stage(
    "explain", _compute, inputs=("pairs", "known"), section="explain",
    uses=("model", "corpus", "saes"), artifact=ExplainArtifact, printer=print_explain,
    doc="Self-explanations by steering the placeholder token, with automatic scale search "
        "(--scales auto) and a failure test calibrated on random directions.")
