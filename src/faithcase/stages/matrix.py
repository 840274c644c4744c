"""The matrix stage (`faithcase matrix`): every pair of many SAEs of one hook site, side by side.

Per pair: the Hungarian assignment of decoder directions (`match_features`, certified as in the
match stage), FaithfulSAE's shared ratio at the threshold and the top-1 ratio in both directions;
the same assignment on encoder directions beside it, with Paulo & Belrose's shared ratio and the
share of pairs both assignments make (numerics/overlap.py); over all SAEs, in how many of the
others each latent has a shared partner (`overlap`, a histogram under both definitions); then,
from one corpus pass that encodes every SAE on the same kept tokens (numerics/pass_sums.py), the
activation agreement of the matched pairs: mean Pearson (pairs whose Pearson is defined), mean
Jaccard (pairs where either feature fires) and the share of matched pairs with Pearson above
`matrix.pearson_cutoff`. SAEs are ordered by dataset, then seed; pairs of one dataset form its
"within" group, the others "cross-dataset": the paper's seed-stability table, with agreement.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

from faithcase.config import MatchConfig, MatrixConfig, ScanConfig, affecting
from faithcase.matrix_artifacts import (
    MATRIX_FILE,
    MATRIX_STATISTICS,
    OVERLAP_PLOT,
    MatrixArtifact,
    MatrixGroup,
    MatrixOverlap,
    MatrixPair,
    MatrixSAE,
    SAEOverlap,
)
from faithcase.model.hooks import different_sites
from faithcase.saes.load_check import sae_quality
from faithcase.numerics import overlap as shared
from faithcase.numerics.directions import dead_rows
from faithcase.numerics.pass_sums import PassSums
from faithcase.render.tables import console, fmt, table
from faithcase.run.errors import FaithcaseError
from faithcase.run.graph import Stage
from faithcase.run.shards import merge_across

CROSS = "cross-dataset"
HEATMAP_STATISTICS = tuple(MATRIX_STATISTICS)  # one heatmap and one printed table each


def heatmap_file(statistic: str) -> str:
    return f"matrix_{statistic}.png"


def _at_least_two(names: list[str]) -> None:
    if len(names) < 2:
        raise FaithcaseError(f"a matrix needs at least two SAEs, the config gives {len(names)} "
                             f"({', '.join(names) or 'none'}): add entries to saes")


def check_saes(saes: Mapping[str, Any]) -> None:
    """At least two SAEs, all of one hook site (where they declare theirs) and one width."""
    _at_least_two(list(saes))
    declared = {name: sae.hook_name for name, sae in saes.items() if sae.hook_name}
    first = next(iter(declared.items()), None)
    for name, hook in declared.items():
        if different_sites(hook, first[1]):
            raise FaithcaseError(f"the SAEs read different hooks: {first[0]} reads {first[1]}, "
                                 f"{name} reads {hook}; a matrix compares SAEs of one hook site")
    widths = {name: int(sae.d_in) for name, sae in saes.items()}
    if len(set(widths.values())) > 1:
        raise FaithcaseError(f"the SAEs read vectors of different widths: {widths}")


def matrix_order(metadata: Mapping[str, tuple[int | None, str | None]]) -> list[str]:
    """Names by dataset, then seed, then name (SAEs without them last)."""
    def key(name: str):
        seed, dataset = metadata.get(name, (None, None))
        return (dataset is None, dataset or "", seed is None, seed or 0, name)
    return sorted(metadata, key=key)


def pair_group(a: str, b: str, metadata) -> str:
    da, db = metadata[a][1], metadata[b][1]
    return f"within {da or '(no dataset)'}" if da == db else CROSS


def matrix(saes: Mapping[str, Any], batches: Iterable[Any],
           metadata: Mapping[str, tuple[int | None, str | None]] | None = None,
           settings: MatrixConfig | None = None, match_settings: MatchConfig | None = None,
           hook: str | None = None, scan_settings: ScanConfig | None = None,
           infos: Mapping[str, str] | None = None) -> MatrixArtifact:
    """Every pair of `saes` (name -> SAE): matching statistics, and activation agreement from
    one pass over `batches` ((seq_ids, tokens, resid, excluded), as `Runtime.activation_batches`
    gives them). `metadata`: name -> (seed, dataset); `infos`: name -> the files' sha256."""
    check_saes(saes)
    settings, match_settings = settings or MatrixConfig(), match_settings or MatchConfig()
    metadata = {name: tuple((metadata or {}).get(name, (None, None))) for name in saes}
    order = matrix_order(metadata)
    matchings = {}
    for a, b in itertools.combinations(order, 2):
        matchings[(a, b)] = shared.match_saes(saes[a], saes[b], match_settings.threshold,
                                              match_settings.solver, names=(a, b),
                                              encoder=match_settings.encoder)
    sums = PassSums({name: saes[name] for name in order},
                    {key: (m.assignment.index1, m.assignment.index2)
                     for key, m in matchings.items()})
    for seq_ids, tokens, resid, excluded in batches:
        sums.update(seq_ids, tokens, resid, excluded)
    merge_across(sums)  # a pass split over processes (run/shards.py)
    if sums.n_tokens == 0:
        raise FaithcaseError("the corpus gave no kept tokens; check corpus.source, "
                             "corpus.max_tokens and the outlier rule")
    pairs = [_pair(a, b, matchings[(a, b)], sums, settings, metadata) for a, b in matchings]
    scan_settings = scan_settings or ScanConfig()
    entries = [MatrixSAE(name=n, seed=metadata[n][0], dataset=metadata[n][1],
                         d_sae=int(saes[n].d_sae), hook_name=saes[n].hook_name,
                         sha256=(infos or {}).get(n, ""),
                         quality=sae_quality(sums, n, scan_settings, hook)) for n in order]
    return MatrixArtifact(hook=hook or (saes[order[0]].hook_name or ""),
                          threshold=match_settings.threshold,
                          pearson_cutoff=settings.pearson_cutoff, statistics=MATRIX_STATISTICS,
                          n_tokens=sums.n_tokens, n_sequences=sums.n_sequences, order=order,
                          saes=entries, pairs=pairs, tables=_tables(order, pairs),
                          groups=_groups(pairs), overlap=seed_overlap(order, saes, matchings))


def seed_overlap(order: list[str], saes: Mapping[str, Any], matchings) -> MatrixOverlap:
    """Per SAE, its alive latents by the number of other SAEs holding a shared partner."""
    n = len(order)
    alive = {name: (~dead_rows(saes[name].W_dec.detach().cpu().float())).numpy() for name in order}
    sizes = {name: len(alive[name]) for name in order}
    counts = {d: shared.shared_counts(order, sizes, matchings, d) for d in shared.DEFINITIONS}

    def histogram(definition: str, name: str) -> list[int] | None:
        found = counts[definition]
        return None if found is None else shared.overlap_histogram(found[name], alive[name], n)

    entries = [SAEOverlap(name=name, n_latents=int(alive[name].sum()),
                          faithfulsae=histogram("faithfulsae", name),
                          paulo_belrose=histogram("paulo_belrose", name)) for name in order]
    total = {d: None if counts[d] is None else
             [sum(getattr(e, d)[k] for e in entries) for k in range(n)] for d in counts}
    reasons = [m.encoder.reason for m in matchings.values() if m.encoder and m.encoder.reason]
    return MatrixOverlap(definitions=shared.DEFINITIONS, n_others=n - 1, saes=entries,
                         total=total, encoder_reason=reasons[0] if reasons else None)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _pair(a: str, b: str, matching, sums: PassSums, settings: MatrixConfig,
          metadata) -> MatrixPair:
    agreement = sums.agreement((a, b))
    pearson = [p for p in agreement.pearson if p is not None]
    jaccard = [j for j in agreement.jaccard if j is not None]
    above = sum(p > settings.pearson_cutoff for p in pearson)
    stats, solver, encoder = matching.stats, matching.solver, matching.encoder
    return MatrixPair(a=a, b=b, group=pair_group(a, b, metadata), n_matched=stats.n_matched,
                      shared_ratio=stats.shared_ratio, top1_ratio_ab=stats.top1_ratio,
                      top1_ratio_ba=stats.top1_ratio_sae1, mean_similarity=stats.mean_similarity,
                      solver=solver.name, certified=bool(solver.exact or solver.certified),
                      n_pearson=len(pearson), n_jaccard=len(jaccard), mean_pearson=_mean(pearson),
                      mean_jaccard=_mean(jaccard),
                      share_pearson=above / len(pearson) if pearson else None,
                      paulo_belrose=encoder.paulo_belrose, agreement=encoder.agreement,
                      encoder_mean_similarity=encoder.mean_similarity,
                      encoder_certified=None if encoder.solver is None else
                      bool(encoder.solver.exact or encoder.solver.certified),
                      encoder_reason=encoder.reason)


def _tables(order: list[str], pairs: list[MatrixPair]) -> dict[str, list[list[float | None]]]:
    where = {name: i for i, name in enumerate(order)}
    tables = {name: [[None] * len(order) for _ in order] for name in MATRIX_STATISTICS}
    for p in pairs:
        i, j = where[p.a], where[p.b]
        for name in MATRIX_STATISTICS:
            if name == "top1_ratio":  # [row][column]: column's features, best row cosine
                tables[name][i][j], tables[name][j][i] = p.top1_ratio_ab, p.top1_ratio_ba
            else:
                tables[name][i][j] = tables[name][j][i] = getattr(p, name)
    return tables


def _groups(pairs: list[MatrixPair]) -> list[MatrixGroup]:
    names = sorted({p.group for p in pairs}, key=lambda g: (g == CROSS, g))
    groups = []
    for name in names:
        members = [p for p in pairs if p.group == name]

        def mean_of(field: str) -> float | None:
            return _mean([getattr(p, field) for p in members if getattr(p, field) is not None])

        groups.append(MatrixGroup(
            group=name, n_pairs=len(members), pairs=[f"{p.a} × {p.b}" for p in members],
            shared_ratio=mean_of("shared_ratio"), paulo_belrose=mean_of("paulo_belrose"),
            agreement=mean_of("agreement"),
            top1_ratio=_mean([v for p in members for v in (p.top1_ratio_ab, p.top1_ratio_ba)]),
            mean_pearson=mean_of("mean_pearson"), mean_jaccard=mean_of("mean_jaccard"),
            share_pearson=mean_of("share_pearson")))
    return groups


# ---------------------------------------------------------------- printing


def print_matrix(artifact: MatrixArtifact, inputs: dict | None = None) -> None:
    order = artifact.order
    for name in HEATMAP_STATISTICS:
        label = MATRIX_STATISTICS[name].replace("threshold", str(artifact.threshold))
        label = label.replace("cutoff", str(artifact.pearson_cutoff))
        grid = table(f"{name}: {label}", ["", *order])
        for i, row in enumerate(artifact.tables[name]):
            grid.add_row(order[i], *[fmt(v) for v in row])
        console.print(grid)
    groups = table(f"seed stability by dataset ({artifact.n_tokens:,} kept tokens, one pass)",
                   ["group", "pairs", "faithfulsae", "paulo_belrose", "agree", "top-1",
                    "Pearson", "Jaccard", f"P > {artifact.pearson_cutoff}"])
    groups.columns[0].no_wrap = True
    groups.columns[0].min_width = max(len(g.group) for g in artifact.groups)
    for g in artifact.groups:
        groups.add_row(g.group, str(g.n_pairs), fmt(g.shared_ratio), fmt(g.paulo_belrose),
                       fmt(g.agreement), fmt(g.top1_ratio), fmt(g.mean_pearson),
                       fmt(g.mean_jaccard), fmt(g.share_pearson))
    console.print(groups)
    if artifact.overlap is not None:
        print_overlap(artifact.overlap)
    uncertified = [f"{p.a} × {p.b}" for p in artifact.pairs
                   if not p.certified or p.encoder_certified is False]
    if uncertified:
        console.print(f"[yellow]not certified optimal:[/] {', '.join(uncertified)}")
    reasons = sorted({p.encoder_reason for p in artifact.pairs if p.encoder_reason})
    if reasons:
        console.print(f"[yellow]decoder definition only:[/] {'; '.join(reasons)}")


def print_overlap(overlap: MatrixOverlap) -> None:
    """Share of each SAE's alive latents with a shared partner in exactly k of the others."""
    n = overlap.n_others + 1
    grid = table(f"in how many of the other {overlap.n_others} SAEs a latent has a shared "
                 "partner (share of its alive latents)", ["SAE", "definition", "latents",
                                                         *map(str, range(n))])
    rows = [(e.name, e.n_latents, e) for e in overlap.saes]
    rows.append(("all", sum(e.n_latents for e in overlap.saes), None))
    for name, n_latents, entry in rows:
        for definition in overlap.definitions:
            counts = getattr(entry, definition) if entry else overlap.total[definition]
            cells = ["—"] * n if counts is None else [fmt(c / max(n_latents, 1)) for c in counts]
            grid.add_row(name, definition, str(n_latents), *cells)
    console.print(grid)


# ---------------------------------------------------------------- the stage


def _metadata(cfg) -> dict[str, tuple[int | None, str | None]]:
    return {name: (cfg.sae_config(name).seed, cfg.sae_config(name).dataset)
            for name in cfg.matrix_names()}


def _check(rt) -> None:
    _at_least_two(rt.cfg.matrix_names())


def _compute(job) -> MatrixArtifact:
    from faithcase.render.plots import matrix_heatmap, overlap_histogram

    rt, cfg = job.ctx, job.ctx.cfg
    _check(rt)
    check_saes({name: rt.sae(name) for name in cfg.matrix_names()})  # before the model loads
    saes = {name: rt.sae_for_model(name) for name in cfg.matrix_names()}
    with rt.console.status(f"matching {math.comb(len(saes), 2)} pairs of SAEs …"):
        batches = rt.activation_batches(description=f"matrix: {len(saes)} SAEs on one pass")
        artifact = matrix(saes, batches, _metadata(cfg), job.settings, cfg.match, cfg.hook,
                          cfg.scan, {name: rt.sae_hash(name) for name in saes})
    job.write(MATRIX_FILE, artifact)
    for name in HEATMAP_STATISTICS:
        job.write_bytes(heatmap_file(name), matrix_heatmap(artifact, name))
    job.write_bytes(OVERLAP_PLOT, overlap_histogram(artifact.overlap))
    return artifact


def _key(rt) -> dict:
    return {"saes": rt.resource_key("all_saes"), "model": rt.resource_key("model"),
            "corpus": rt.resource_key("corpus"), "settings": affecting(rt.cfg.matrix),
            "match": affecting(rt.cfg.match), "scan": affecting(rt.cfg.scan)}


STAGE = Stage(
    "matrix", _compute, section="matrix", artifact=MatrixArtifact, printer=print_matrix,
    key=_key, check=_check,
    doc="Every pair of the config's SAEs: shared ratios (decoder; decoder and encoder), top-1 "
        "ratios and activation agreement from one corpus pass, with heatmaps, the "
        "seed-stability table and the in-how-many-others histogram.")
