"""The scan stage: the first corpus pass, streaming, both SAEs on the same kept tokens.

Per SAE, the load check: FVU and L0 on the kept tokens (positions 1..T-1, BOS and massive
activations left out, as everywhere), and the tokens each feature fires on. Per matched pair of
the assignment, the ground truth of the case study: the activation agreement of its two features
(Pearson correlation, Jaccard overlap of the firing sets, both conditional firing probabilities);
and the same for every feature with its nearest decoder neighbour in the other SAE, matched or not
(`nearest`: what an orphan's pair is, stages/pairs.py). Memory is bounded by the SAE sizes, never
by the corpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


from faithcase.render.tables import console, table
from faithcase.artifacts import (
    AgreementTable,
    Assignment,
    NearestTable,
    ScanArtifact,
)
from faithcase.numerics.directions import nearest_rows
from faithcase.artifacts import SAE_KEYS
from faithcase.config import ScanConfig
from faithcase.run.graph import Stage
from faithcase.run.errors import FaithcaseError
from faithcase.saes.load_check import CAUSES, load_warnings, sae_quality
from faithcase.numerics.pass_sums import PassSums
from faithcase.run.shards import merge_across

__all__ = ["CAUSES", "ScanCollector", "load_warnings", "sae_quality", "scan"]

class ScanCollector(PassSums):
    """Streams batches of the corpus pass for the two SAEs sae1 and sae2 and the assignment's
    matched pairs; `finish` turns the running sums into the scan artifact."""

    def __init__(self, saes: Mapping[str, Any], assignment: Assignment,
                 nearest: Mapping[str, tuple[list[int], list[int], list[float]]] | None = None):
        """`nearest`: per SAE, (features, their nearest neighbours, cosines) (directions.py
        nearest_rows): the agreement of those that are not the matched pair is streamed too."""
        if set(saes) != set(SAE_KEYS):
            raise ValueError("the scan reads two SAEs named sae1 and sae2")
        self.nearest = dict(nearest or {})
        self.n_matched = len(assignment.index1)
        self.row = {f: i for i, f in enumerate(assignment.index1)}  # SAE 1 feature -> its row
        partner = {"sae1": dict(zip(assignment.index1, assignment.index2)),
                   "sae2": dict(zip(assignment.index2, assignment.index1))}
        self.own = {key: [i for i, (f, g) in enumerate(zip(found[0], found[1]))
                          if partner[key].get(f) != g] for key, found in self.nearest.items()}
        extra = {key: ([self.nearest[key][0][i] for i in rows],
                       [self.nearest[key][1][i] for i in rows]) for key, rows in self.own.items()}
        first, second = extra.get("sae1", ([], [])), extra.get("sae2", ([], []))
        super().__init__(saes, {SAE_KEYS: (assignment.index1 + first[0],
                                           assignment.index2 + first[1]),
                                SAE_KEYS[::-1]: second})

    def finish(self, settings: ScanConfig | None = None, hook: str | None = None) -> ScanArtifact:
        settings = settings or ScanConfig()
        if self.n_tokens == 0:
            raise FaithcaseError("the corpus gave no kept tokens; check corpus.source, "
                                 "corpus.max_tokens and the outlier rule")
        quality = {key: sae_quality(self, key, settings, hook) for key in self.saes}
        matched = self.agreement(SAE_KEYS)
        return ScanArtifact(n_sequences=self.n_sequences, n_tokens=self.n_tokens,
                            excluded_positions=self.n_excluded, quality=quality,
                            firing={key: counts.tolist() for key, counts in self.firing.items()},
                            agreement=matched.rows(0, self.n_matched),
                            nearest=self._nearest(matched))

    def _nearest(self, matched: AgreementTable) -> dict[str, NearestTable]:
        """Each SAE's nearest-neighbour table: a streamed row, or its matched pair's row (read
        from SAE 2's side, its two features swap)."""
        streamed = {"sae1": matched.rows(self.n_matched, len(matched.n1)),
                    "sae2": self.agreement(SAE_KEYS[::-1])}
        tables = {}
        for key, (features, partners, sims) in self.nearest.items():
            at = {i: k for k, i in enumerate(self.own[key])}
            rows = [(streamed[key], at[i], False) if i in at
                    else (matched, self.row[f if key == "sae1" else g], key == "sae2")
                    for i, (f, g) in enumerate(zip(features, partners))]
            tables[key] = NearestTable(feature=features, partner=partners, similarity=sims,
                                       agreement=_picked(rows))
        return tables


def _picked(rows: list[tuple[AgreementTable, int, bool]]) -> AgreementTable:
    """An agreement table of (table, row, swapped) rows; swapped: its two features trade places."""
    swap = {"p2_given_1": "p1_given_2", "p1_given_2": "p2_given_1", "n1": "n2", "n2": "n1"}
    return AgreementTable(**{name: [getattr(table, swap.get(name, name) if swapped else name)[row]
                                    for table, row, swapped in rows]
                             for name in AgreementTable.model_fields})


def scan(saes: Mapping[str, Any], assignment: Assignment, batches: Iterable[Any],
         settings: ScanConfig | None = None, hook: str | None = None,
         nearest: bool = True) -> ScanArtifact:
    """One pass over `batches` ((seq_ids, tokens, resid, excluded) per batch, as
    `Runtime.activation_batches` gives them): the load check of both SAEs, feature firing counts,
    every matched pair's agreement and (`nearest`) every feature's with its nearest neighbour."""
    neighbours = {"sae1": nearest_rows(saes["sae1"].W_dec, saes["sae2"].W_dec),
                  "sae2": nearest_rows(saes["sae2"].W_dec, saes["sae1"].W_dec)} if nearest else {}
    collector = ScanCollector(saes, assignment, neighbours)
    for seq_ids, tokens, resid, excluded in batches:
        collector.update(seq_ids, tokens, resid, excluded)
    merge_across(collector)  # a pass split over processes (run/shards.py)
    return collector.finish(settings, hook)


# ---------------------------------------------------------------- printing


def print_scan(artifact, inputs: dict) -> None:
    match = inputs["match"]
    grid = table(f"load check on {artifact.n_tokens:,} kept tokens",
                 ["SAE", "FVU", "L0", "k", "never fire"])
    for key, q in artifact.quality.items():
        grid.add_row(key, f"{q.fvu:.3f}", f"{q.l0:.1f}", str(q.k or "—"), str(q.n_silent))
    console.print(grid)
    agreement = [(s, p) for s, p in zip(match.assignment.similarity, artifact.agreement.pearson)
                 if p is not None]
    for label, keep in (("cos > 0.9", lambda s: s > 0.9), ("cos < 0.3", lambda s: s < 0.3)):
        values = [p for s, p in agreement if keep(s)]
        if values:
            console.print(f"mean activation Pearson of matched pairs with {label}: "
                          f"{sum(values) / len(values):.3f} ({len(values)} pairs)")


# ---------------------------------------------------------------- the stage


def _compute(job) -> ScanArtifact:
    rt = job.ctx
    match = job.inputs["match"]
    saes = {key: rt.sae_for_model(key) for key in SAE_KEYS}
    artifact = scan(saes, match.assignment,
                    rt.activation_batches(description="scan: load check and agreement"),
                    job.settings, rt.cfg.hook)
    for key, quality in artifact.quality.items():
        k = f" (k={quality.k})" if quality.k else ""
        rt.console.print(f"load check {key}: FVU {quality.fvu:.3f}, L0 {quality.l0:.1f}{k}, "
                         f"{quality.n_silent} features never fire")
    warnings = [w for quality in artifact.quality.values() for w in quality.warnings]
    for warning in warnings:
        rt.console.print(f"[bold red]warning:[/bold red] {warning}", highlight=False,
                         soft_wrap=True)
    if warnings and job.settings.strict:
        raise FaithcaseError(f"{warnings[0]} (--strict)")
    job.write(job.stage.file, artifact)
    return artifact


STAGE = Stage(
    "scan", _compute, inputs=("match",), section="scan", uses=("model", "corpus"),
    artifact=ScanArtifact, printer=print_scan,
    doc="The first corpus pass: each SAE's load check (FVU, L0) and the activation agreement "
        "of every matched pair and of every feature with its nearest neighbour.")
