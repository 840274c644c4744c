"""The known stage: features of known meaning, the case study's positive control.

Each concept of `calibration.concepts` (default: 16 common concepts) becomes a feature at the
run's hook from the run's own residuals (numerics/concepts.py): its direction is the mean residual
at its words minus the mean residual, and it fires where the projection passes the threshold that
best separates its words' positions from the rest. Both are fit on the corpus batches covering its
first `calibration.fit_tokens` tokens, the same batches in every process under torchrun (each rank
runs them: they are few), so the stage may run there. The explain, windows, describe and embed
stages then treat these features like SAE features (the feature set "known"), and assemble
measures each explainer on them against the true answer (summary.json `calibration`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from faithcase.calibration import KnownArtifact, KnownConcept
from faithcase.numerics.concepts import (
    ACTIVATION_RULE,
    DEFAULT_CONCEPTS,
    DIRECTION_RULE,
    best_threshold,
    occurrences,
    word_forms,
)
from faithcase.render.tables import console, fmt, table
from faithcase.run.graph import Stage

KNOWN_FILE = "known.json"


def concept_patterns(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """The token-id sequences of every spelling of the words (word_forms), deduplicated."""
    found = {tuple(tokenizer.encode(form, add_special_tokens=False))
             for word in words for form in word_forms(word.strip())}
    return sorted(list(p) for p in found if p)


def description(name: str, words: Sequence[str]) -> str:
    """The true answer as an explanation: the concept's name, then its other words."""
    others = [w for w in words if w.lower() != name.lower()]
    return f"{name}; {', '.join(others)}" if others else name


def _kept(tokens: torch.Tensor, excluded: torch.Tensor | None) -> torch.Tensor:
    kept = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
    kept[:, 0] = False  # BOS: never counted
    if excluded is not None:
        kept &= ~excluded.to(tokens.device)
    return kept


def known_features(passes, tokenizer, concepts: Mapping[str, Sequence[str]],
                   hook: str = "") -> KnownArtifact:
    """Known features from a corpus pass. `passes()` yields (seq_ids, tokens, resid, excluded)
    batches and is called twice: sums first, then projections; both on the residuals' device."""
    names = list(concepts)
    patterns = [concept_patterns(tokenizer, concepts[name]) for name in names]
    sums, counts, total, n_kept = None, torch.zeros(len(names), dtype=torch.float64), None, 0
    for _, tokens, resid, excluded in passes():
        tokens = tokens.to(resid.device)  # every input meets the residuals on their device
        kept = _kept(tokens, excluded)
        flat, kept_flat = resid.reshape(-1, resid.shape[-1]).double(), kept.reshape(-1)
        if sums is None:
            sums = torch.zeros(len(names), flat.shape[1], dtype=torch.float64, device=flat.device)
            total = torch.zeros(flat.shape[1], dtype=torch.float64, device=flat.device)
        total += flat[kept_flat].sum(0)
        n_kept += int(kept_flat.sum())
        for i, found in enumerate(patterns):
            at = (occurrences(tokens, found) & kept).reshape(-1)
            sums[i] += flat[at].sum(0)
            counts[i] += int(at.sum())
    if sums is None or n_kept == 0:
        return KnownArtifact(enabled=True, hook=hook, direction_rule=DIRECTION_RULE,
                             activation_rule=ACTIVATION_RULE)
    sums, mean = sums.cpu(), total.cpu() / n_kept
    present = [i for i in range(len(names)) if counts[i] > 0]
    directions = torch.zeros(len(names), mean.shape[0], dtype=torch.float64)
    for i in present:
        diff = sums[i] / counts[i] - mean
        directions[i] = diff / diff.norm().clamp_min(1e-12)
    projections, labels = _projections(passes, directions[present].float(),
                                       [patterns[i] for i in present])
    found = {}
    for column, i in enumerate(present):
        threshold, quality = best_threshold(projections[:, column], labels[:, column])
        found[i] = (threshold, quality, int((projections[:, column] > threshold).sum()))
    return KnownArtifact(
        enabled=True, hook=hook, direction_rule=DIRECTION_RULE, activation_rule=ACTIVATION_RULE,
        n_tokens=n_kept, concepts=[_concept(i, name, concepts[name], patterns[i], int(counts[i]),
                                            directions[i], found.get(i))
                                   for i, name in enumerate(names)])


def _projections(passes, directions: torch.Tensor, patterns: list) -> tuple[torch.Tensor, ...]:
    """Every kept position's projection on each direction, and whether it is a word: [N, C] each."""
    values, labels = [], []
    for _, tokens, resid, excluded in passes():
        tokens = tokens.to(resid.device)
        kept = _kept(tokens, excluded).reshape(-1)
        flat = resid.reshape(-1, resid.shape[-1]).float()[kept]
        values.append((flat @ directions.to(flat.device).T).cpu())
        labels.append(torch.stack([occurrences(tokens, p).reshape(-1)[kept]
                                   for p in patterns], dim=1).cpu())
    return torch.cat(values), torch.cat(labels)


def _concept(index: int, name: str, words: Sequence[str], patterns: list, n_occurrences: int,
             direction: torch.Tensor, found) -> KnownConcept:
    concept = KnownConcept(index=index, name=name, words=list(words),
                           description=description(name, words), patterns=patterns,
                           n_occurrences=n_occurrences)
    if found is None:
        concept.reason = "its words never occur in the corpus"
        return concept
    threshold, quality, n_firing = found
    return concept.model_copy(update={
        "threshold": threshold, "n_firing": n_firing, "direction": direction.tolist(),
        **quality})


def disabled() -> KnownArtifact:
    return KnownArtifact(enabled=False)


# ---------------------------------------------------------------- printing


def print_known(artifact: KnownArtifact, inputs: dict) -> None:
    if not artifact.enabled:
        console.print("calibration off: no features of known meaning")
        return
    grid = table(f"features of known meaning ({artifact.n_tokens} kept positions)",
                 ["concept", "word positions", "fires on", "precision", "recall", "F1"])
    for c in artifact.concepts:
        grid.add_row(c.name, str(c.n_occurrences), str(c.n_firing) if c.direction else "—",
                     fmt(c.precision, 2), fmt(c.recall, 2), fmt(c.f1, 2))
    console.print(grid)


# ---------------------------------------------------------------- the stage


def _compute(job) -> KnownArtifact:
    rt, settings = job.ctx, job.settings
    if not settings.enabled:
        artifact = disabled()
    else:
        concepts = settings.concepts or DEFAULT_CONCEPTS
        n_sequences = -(-settings.fit_tokens // rt.cfg.corpus.seq_len)
        artifact = known_features(lambda: rt.prefix_batches(n_sequences, "known features"),
                                  rt.lm.tokenizer, concepts, rt.cfg.hook)
        artifact.min_activating = settings.min_activating
    job.write(job.stage.file, artifact)
    return artifact


STAGE = Stage(
    "known", _compute, section="calibration", uses=("model", "corpus"), artifact=KnownArtifact,
    printer=print_known,
    doc="Features of known meaning (concepts' words) built from the run's residuals: the positive "
        "control that every later stage runs like an SAE feature.")

