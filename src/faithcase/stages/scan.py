"""The scan stage: the first corpus pass, streaming, both SAEs on the same kept tokens.

Per SAE, the load check: FVU and L0 on the kept tokens (positions 1..T-1, BOS and massive
activations left out, as everywhere), and the tokens each feature fires on. Per matched pair of
the assignment, the ground truth of the case study: the activation agreement of its two features
(Pearson correlation, Jaccard overlap of the firing sets, both conditional firing probabilities).
Memory is bounded by the SAE sizes, never by the corpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


from faithcase.render.tables import console, table
from faithcase.artifacts import (
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
        nearest_rows): their agreement is streamed too."""
        if set(saes) != set(SAE_KEYS):
            raise ValueError("the scan reads two SAEs named sae1 and sae2")
        self.nearest = dict(nearest or {})
        self.n_matched = len(assignment.index1)
        none = ([], [], [])
        first, second = self.nearest.get("sae1", none), self.nearest.get("sae2", none)
        super().__init__(saes, {SAE_KEYS: (assignment.index1 + first[0],
                                           assignment.index2 + first[1]),
                                SAE_KEYS[::-1]: (second[0], second[1])})

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

    def _nearest(self, matched) -> dict[str, NearestTable]:
        tables = {"sae1": matched.rows(self.n_matched, len(matched.n1)),
                  "sae2": self.agreement(SAE_KEYS[::-1])}
        return {key: NearestTable(feature=features, partner=partners, similarity=sims,
                                  agreement=tables[key])
                for key, (features, partners, sims) in self.nearest.items()}


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
        "of every matched pair.")
