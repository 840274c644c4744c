"""The pairs stage: which matched pairs the case study follows.

- best: the n highest decoder cosines;
- worst: the n lowest, among pairs whose two features both fire on the corpus (a feature that
  never fires has nothing to explain or compare);
- random: n drawn uniformly from the remaining firing pairs, a control;
- stratified: n_stratified drawn from the rest, evenly over `strata` equal-width bins of the
  assignment's cosine range, so every score can be related to decoder cosine over the whole range.

- orphan: n_orphans features (half from each SAE) without a shared partner (`pairs.shared`:
  FaithfulSAE's or Paulo & Belrose's definition, numerics/overlap.py), drawn among features that
  fire, each paired with its nearest decoder neighbour in the other SAE (matched or not), whose
  agreement the scan measured. An orphan pair shares no feature with any other selected pair, so
  every feature has one partner.

The four matched kinds are disjoint; each is ranked by cosine, descending (worst: ascending). The
draws are seeded (`pairs.seed`); with `pairs.require_firing: false` every matched pair is eligible.
"""

from __future__ import annotations

import numpy as np

from faithcase.render.tables import console, fmt, table
from faithcase.artifacts import SAE_KEYS, Assignment, Matching, NearestTable, Pair, PairsArtifact
from faithcase.numerics.overlap import shared_pairs
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


def select_orphans(match: Matching, nearest: dict[str, NearestTable], taken: list[Pair],
                   settings: PairsConfig, firing: dict[str, list[int]]) -> list[Pair]:
    """The orphan pairs: per SAE, a seeded draw of its firing features without a shared partner
    whose nearest neighbour fires too and neither is in `taken` or an earlier orphan pair."""
    shared = shared_pairs(match, settings.shared)
    if shared is None:
        raise FaithcaseError("pairs.shared: paulo_belrose needs the encoder assignment: set "
                             "match.encoder: true")
    assignment = match.assignment
    partnered = {"sae1": {f for f, s in zip(assignment.index1, shared) if s},
                 "sae2": {g for g, s in zip(assignment.index2, shared) if s}}
    used = {"sae1": {p.index1 for p in taken}, "sae2": {p.index2 for p in taken}}
    rng = np.random.default_rng([settings.seed, 1])
    chosen = []
    for side, other, n in (("sae1", "sae2", (settings.n_orphans + 1) // 2),
                           ("sae2", "sae1", settings.n_orphans // 2)):
        table = nearest.get(side)
        if table is None:
            raise FaithcaseError("scan.json has no nearest neighbours (an older scan): run "
                                 "`faithcase scan --force`")
        rows = [r for r, (f, g) in enumerate(zip(table.feature, table.partner))
                if f not in partnered[side] and firing[side][f] >= settings.min_firing
                and firing[other][g] >= settings.min_firing]
        found = []
        for r in rng.permutation(len(rows)).tolist():
            f, g = table.feature[rows[r]], table.partner[rows[r]]
            if len(found) < n and f not in used[side] and g not in used[other]:
                used[side].add(f)
                used[other].add(g)
                found.append((f, g, table.similarity[rows[r]]))
        chosen += [(side, f, g, s) for f, g, s in found]
    chosen.sort(key=lambda c: (-c[3], c[0], c[1]))
    return [Pair(kind="orphan", rank=rank, index1=f if side == "sae1" else g,
                 index2=g if side == "sae1" else f, similarity=s, orphan=side)
            for rank, (side, f, g, s) in enumerate(chosen, start=1)]


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
                      fmt(scan.pair_agreement(p, position).pearson))
    console.print(grid)


# ---------------------------------------------------------------- the stage


def _check(rt) -> None:
    """Selection sizes the matching cannot fill fail before any corpus pass."""
    alive = [int((~dead_rows(rt.sae(key).W_dec.float().cpu())).sum()) for key in SAE_KEYS]
    check_selection(min(alive), rt.cfg.pairs)
    settings = rt.cfg.pairs
    if settings.n_orphans and settings.shared == "paulo_belrose" and not rt.cfg.match.encoder:
        raise FaithcaseError("pairs.shared: paulo_belrose needs the encoder assignment: set "
                             "match.encoder: true")


def _compute(job) -> PairsArtifact:
    settings, scan = job.settings, job.inputs["scan"]
    artifact = select_pairs(job.inputs["match"].assignment, settings, scan.firing)
    if settings.n_orphans:
        artifact.pairs["orphan"] = select_orphans(job.inputs["match"], scan.nearest,
                                                  artifact.all_pairs(), settings, scan.firing)
    wanted = {"worst": settings.n_pairs, "random": settings.n_pairs,
              "stratified": settings.n_stratified, "orphan": settings.n_orphans}
    for kind, count in wanted.items():
        if len(artifact.pairs.get(kind, [])) < count:
            job.ctx.console.print(f"[yellow]only {len(artifact.pairs[kind])} {kind} pairs[/yellow] "
                                  f"of {count}: {artifact.n_eligible} matched pairs have two "
                                  "firing features")
    job.write(job.stage.file, artifact)
    return artifact


STAGE = Stage(
    "pairs", _compute, inputs=("match", "scan"), section="pairs", artifact=PairsArtifact,
    printer=print_pairs, check=_check,
    doc="The pairs of the case study: best, worst, random and stratified over the cosine range.")
