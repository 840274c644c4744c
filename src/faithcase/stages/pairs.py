"""The pairs stage: which matched pairs the case study follows.

- best: the n highest decoder cosines;
- worst: the n lowest, among pairs whose two features both fire on the corpus (a feature that
  never fires has nothing to explain or compare);
- random: n drawn uniformly from the remaining firing pairs, a control;
- stratified: n_stratified drawn from the rest, evenly over `strata` equal-width bins of the
  assignment's cosine range, so every score can be related to decoder cosine over the whole range.

The four kinds are disjoint; each is ranked by cosine, descending (worst: ascending). The draws
are seeded (`pairs.seed`); with `pairs.require_firing: false` every matched pair is eligible.
"""

from __future__ import annotations

import numpy as np

from faithcase.render.tables import console, fmt, table
from faithcase.artifacts import SAE_KEYS, Assignment, Pair, PairsArtifact
from faithcase.config import PairsConfig
from faithcase.numerics.directions import dead_rows
from faithcase.run.graph import Stage
from faithcase.run.errors import FaithcaseError


def check_selection(n_matched: int, settings: PairsConfig) -> None:
    """Refuse selection sizes the matching cannot fill (before any corpus pass)."""
    if settings.n_pairs > n_matched:
        raise FaithcaseError(f"--n-pairs {settings.n_pairs} is larger than the {n_matched} "
                             f"matched features: choose at most {n_matched}")
    if settings.n_stratified > n_matched:
        raise FaithcaseError(f"pairs.n_stratified {settings.n_stratified} is larger than the "
                             f"{n_matched} matched pairs: choose at most {n_matched}")


def firing_pairs(assignment: Assignment, firing: dict[str, list[int]] | None,
                 min_firing: int) -> np.ndarray:
    """Boolean mask over the matched pairs: both features fire on at least min_firing tokens."""
    if firing is None:
        return np.ones(len(assignment.index1), dtype=bool)
    n1 = np.asarray(firing["sae1"])[np.asarray(assignment.index1, dtype=np.int64)]
    n2 = np.asarray(firing["sae2"])[np.asarray(assignment.index2, dtype=np.int64)]
    return (n1 >= min_firing) & (n2 >= min_firing)


def select_pairs(assignment: Assignment, settings: PairsConfig | None = None,
                 firing: dict[str, list[int]] | None = None) -> PairsArtifact:
    """Best, worst, random and stratified pairs of a matching; `firing` (from the scan) gives, per
    SAE, the tokens each feature fires on, and restricts worst/random/stratified to firing pairs."""
    settings = settings or PairsConfig()
    n_matched = len(assignment.index1)
    check_selection(n_matched, settings)
    sims = np.asarray(assignment.similarity, dtype=np.float64)
    index1 = np.asarray(assignment.index1)
    eligible = firing_pairs(assignment, firing if settings.require_firing else None,
                            settings.min_firing)
    rng = np.random.default_rng(settings.seed)

    by_similarity = np.lexsort((index1, -sims))  # descending, ties by SAE 1 index
    best = by_similarity[:settings.n_pairs].tolist()
    taken = set(best)
    worst = [i for i in by_similarity[::-1].tolist()
             if eligible[i] and i not in taken][:settings.n_pairs]
    taken |= set(worst)
    rest = np.array([i for i in range(n_matched) if eligible[i] and i not in taken], dtype=np.int64)
    drawn = (rng.choice(rest, size=min(settings.n_pairs, len(rest)), replace=False).tolist()
             if len(rest) else [])
    taken |= set(drawn)
    edges = np.linspace(sims.min(), sims.max(), settings.strata + 1)
    pool = np.array([i for i in rest.tolist() if i not in taken], dtype=np.int64)
    stratified = _stratified(pool, sims, edges, settings.n_stratified, rng)

    def ranked(positions: list[int], descending: bool = True) -> list[int]:
        return sorted(positions, key=lambda i: ((-sims[i] if descending else sims[i]), index1[i]))

    chosen = {"best": best, "worst": worst, "random": ranked(drawn),
              "stratified": ranked(stratified)}
    pairs = {kind: [Pair(kind=kind, rank=rank, index1=assignment.index1[i],
                         index2=assignment.index2[i], similarity=assignment.similarity[i])
                    for rank, i in enumerate(positions, start=1)]
             for kind, positions in chosen.items()}
    return PairsArtifact(pairs=pairs, n_eligible=int(eligible.sum()),
                         strata_edges=edges.tolist())


def _stratified(pool: np.ndarray, sims: np.ndarray, edges: np.ndarray, n: int, rng) -> list[int]:
    """n positions of `pool`, spread evenly over the bins `edges` of their similarity: each bin gets
    n // bins (the first n % bins one more); a bin with too few pairs gives its share to the others,
    one at a time in bin order. Within a bin the pairs are a seeded uniform draw."""
    n_bins = len(edges) - 1
    bins = np.clip(np.searchsorted(edges, sims[pool], side="right") - 1, 0, n_bins - 1)
    members = [rng.permutation(pool[bins == b]).tolist() for b in range(n_bins)]
    quota = [n // n_bins + (1 if b < n % n_bins else 0) for b in range(n_bins)]
    taken = [min(q, len(m)) for q, m in zip(quota, members)]
    left = min(n, len(pool)) - sum(taken)
    while left > 0:
        for b in range(n_bins):
            if left and taken[b] < len(members[b]):
                taken[b] += 1
                left -= 1
    return [i for b in range(n_bins) for i in members[b][:taken[b]]]


# ---------------------------------------------------------------- printing


def print_pairs(artifact, inputs: dict) -> None:
    match, scan = inputs["match"], inputs["scan"]
    position = {index: i for i, index in enumerate(match.assignment.index1)}
    grid = table(f"selected pairs ({artifact.n_eligible} matched pairs have two firing features)",
                   ["kind", "rank", "sae1", "sae2", "cosine", "activation Pearson"])
    for p in artifact.all_pairs():
        grid.add_row(p.kind, str(p.rank), str(p.index1), str(p.index2), f"{p.similarity:.3f}",
                      fmt(scan.agreement.pearson[position[p.index1]]))
    console.print(grid)


# ---------------------------------------------------------------- the stage


def _check(rt) -> None:
    """Selection sizes the matching cannot fill fail before any corpus pass."""
    alive = [int((~dead_rows(rt.sae(key).W_dec.float().cpu())).sum()) for key in SAE_KEYS]
    check_selection(min(alive), rt.cfg.pairs)


def _compute(job) -> PairsArtifact:
    settings = job.settings
    artifact = select_pairs(job.inputs["match"].assignment, settings, job.inputs["scan"].firing)
    wanted = {"worst": settings.n_pairs, "random": settings.n_pairs,
              "stratified": settings.n_stratified}
    for kind, count in wanted.items():
        if len(artifact.pairs[kind]) < count:
            job.ctx.console.print(f"[yellow]only {len(artifact.pairs[kind])} {kind} pairs[/yellow] "
                                  f"of {count}: {artifact.n_eligible} matched pairs have two "
                                  "firing features")
    job.write(job.stage.file, artifact)
    return artifact


STAGE = Stage(
    "pairs", _compute, inputs=("match", "scan"), section="pairs", artifact=PairsArtifact,
    printer=print_pairs, check=_check,
    doc="The pairs of the case study: best, worst, random and stratified over the cosine range.")
