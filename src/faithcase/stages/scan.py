"""The scan stage: the first corpus pass, streaming, both SAEs on the same kept tokens.

Per SAE, the load check: FVU and L0 on the kept tokens (positions 1..T-1, BOS and massive
activations left out, as everywhere), and the tokens each feature fires on. Per matched pair of
the assignment, the ground truth of the case study: the activation agreement of its two features
(Pearson correlation, Jaccard overlap of the firing sets, both conditional firing probabilities).
Memory is bounded by the SAE sizes, never by the corpus.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from faithcase.render.tables import console, table
from faithcase.artifacts import (
    AgreementTable,
    Assignment,
    SAEQuality,
    ScanArtifact,
)
from faithcase.artifacts import SAE_KEYS
from faithcase.config import ScanConfig
from faithcase.run.graph import Stage
from faithcase.run.errors import FaithcaseError
from faithcase.model.hooks import same_site
from faithcase.model.outliers import counted_positions
from faithcase.numerics.chunks import row_chunks

CAUSES = ("input normalisation (an SAE trained on normalised inputs loaded without it, or the "
          "reverse)",
          "the wrong hook (the config's hook is not the site the SAE was trained on)",
          "the wrong activation function (e.g. a TopK SAE loaded as ReLU)")


class ScanCollector:
    """Streams batches of the corpus pass; `finish` turns the running sums into the scan
    artifact."""

    def __init__(self, saes: Mapping[str, Any], assignment: Assignment):
        if set(saes) != {"sae1", "sae2"}:
            raise ValueError("the scan reads two SAEs named sae1 and sae2")
        self.saes = dict(saes)
        self.index1 = torch.tensor(assignment.index1, dtype=torch.long)
        self.index2 = torch.tensor(assignment.index2, dtype=torch.long)
        self.n_sequences = self.n_tokens = self.n_excluded = 0
        self.firing = {key: torch.zeros(sae.d_sae, dtype=torch.long)
                       for key, sae in self.saes.items()}
        self.active = {key: 0 for key in self.saes}  # active features, summed over tokens
        self.sse = {key: 0.0 for key in self.saes}
        self.sum_x = torch.zeros(next(iter(self.saes.values())).d_in, dtype=torch.float64)
        self.sum_sq = 0.0
        n = len(self.index1)
        self.pair_sums = {name: torch.zeros(n, dtype=torch.float64)
                          for name in ("a", "b", "aa", "bb", "ab")}
        self.n_both = torch.zeros(n, dtype=torch.long)

    @torch.no_grad()
    def update(self, seq_ids, tokens: torch.Tensor, resid: torch.Tensor,
               excluded: torch.Tensor | None) -> None:
        counted = counted_positions(excluded, tokens.shape)
        self.n_sequences += tokens.shape[0]
        self.n_excluded += int(counted.numel() - counted.sum())
        x = resid[counted.to(resid.device)].float()
        self.n_tokens += len(x)
        for chunk in row_chunks(x, max(sae.d_sae for sae in self.saes.values())):
            self._update_chunk(chunk)

    def _update_chunk(self, x: torch.Tensor) -> None:
        x64 = x.double()
        self.sum_x += x64.sum(0).cpu()
        self.sum_sq += float(x64.pow(2).sum())
        acts = {}
        for key, sae in self.saes.items():
            a = sae.encode(x.to(sae.device))
            fired = a > 0
            self.firing[key] += fired.sum(0).cpu()
            self.active[key] += int(fired.sum())
            error = sae.decode(a, x.to(sae.device)).double() - x64.to(a.device)
            self.sse[key] += float(error.pow(2).sum())
            acts[key] = a
        a = acts["sae1"].index_select(1, self.index1.to(acts["sae1"].device)).double().cpu()
        b = acts["sae2"].index_select(1, self.index2.to(acts["sae2"].device)).double().cpu()
        sums = self.pair_sums
        sums["a"] += a.sum(0)
        sums["b"] += b.sum(0)
        sums["aa"] += a.pow(2).sum(0)
        sums["bb"] += b.pow(2).sum(0)
        sums["ab"] += (a * b).sum(0)
        self.n_both += ((a > 0) & (b > 0)).sum(0)

    def finish(self, settings: ScanConfig | None = None, hook: str | None = None) -> ScanArtifact:
        settings = settings or ScanConfig()
        if self.n_tokens == 0:
            raise FaithcaseError("the corpus gave no kept tokens; check corpus.source, "
                                 "corpus.max_tokens and the outlier rule")
        n = self.n_tokens
        variance = self.sum_sq - float(self.sum_x.pow(2).sum()) / n
        quality = {key: self._quality(key, variance, settings, hook) for key in self.saes}
        return ScanArtifact(n_sequences=self.n_sequences, n_tokens=n,
                            excluded_positions=self.n_excluded, quality=quality,
                            firing={key: counts.tolist() for key, counts in self.firing.items()},
                            agreement=self._agreement())

    def _quality(self, key: str, variance: float, settings: ScanConfig,
                 hook: str | None) -> SAEQuality:
        sae = self.saes[key]
        fvu = self.sse[key] / variance if variance > 0 else math.inf
        l0 = self.active[key] / self.n_tokens
        k = sae.k if sae.activation == "topk" else None
        return SAEQuality(fvu=fvu, l0=l0, k=k, n_silent=int((self.firing[key] == 0).sum()),
                          warnings=load_warnings(key, sae, fvu, l0, settings, hook))

    def _agreement(self) -> AgreementTable:
        n, s = self.n_tokens, self.pair_sums
        cov = s["ab"] / n - (s["a"] / n) * (s["b"] / n)
        var_a = s["aa"] / n - (s["a"] / n) ** 2
        var_b = s["bb"] / n - (s["b"] / n) ** 2
        denominator = (var_a * var_b).clamp_min(0).sqrt()
        defined = ((var_a > 1e-12 * (s["aa"] / n).clamp_min(1e-300))
                   & (var_b > 1e-12 * (s["bb"] / n).clamp_min(1e-300)))
        pearson = torch.where(defined, cov / denominator.clamp_min(1e-300), torch.nan).clamp(-1, 1)
        n1 = self.firing["sae1"][self.index1]
        n2 = self.firing["sae2"][self.index2]
        either = n1 + n2 - self.n_both
        return AgreementTable(pearson=_or_none(pearson), jaccard=_ratio(self.n_both, either),
                              p2_given_1=_ratio(self.n_both, n1),
                              p1_given_2=_ratio(self.n_both, n2),
                              n1=n1.tolist(), n2=n2.tolist(), n_both=self.n_both.tolist())


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> list[float | None]:
    return _or_none(torch.where(denominator > 0, numerator.double() / denominator.clamp_min(1),
                                torch.nan))


def _or_none(values: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values.tolist()]


def load_warnings(key: str, sae, fvu: float, l0: float, settings: ScanConfig,
                  hook: str | None) -> list[str]:
    """Loud, one-line warnings when an SAE does not fit the model's activations at this hook."""
    causes = "likely causes: " + "; ".join(CAUSES)
    warnings = []
    if not fvu <= settings.max_fvu:
        warnings.append(f"{key}: FVU {fvu:.3f} > {settings.max_fvu} on the corpus: the SAE does "
                        f"not reconstruct these activations; {causes}")
    if sae.activation == "topk" and sae.k and abs(l0 - sae.k) > settings.l0_tolerance * sae.k:
        warnings.append(f"{key}: L0 {l0:.1f} is far from the SAE's k={sae.k}; {causes}")
    if sae.activation != "topk" and l0 > 0.1 * sae.d_sae:
        warnings.append(f"{key}: L0 {l0:.1f} is over 10% of its {sae.d_sae} features for a "
                        f"{sae.activation} SAE; {causes}")
    trained_at = getattr(sae, "hook_name", None)
    if hook and trained_at and not same_site(trained_at, hook):
        warnings.append(f"{key}: the SAE was trained at {trained_at}, the config reads {hook}; "
                        f"{causes}")
    return warnings


def scan(saes: Mapping[str, Any], assignment: Assignment, batches: Iterable[Any],
         settings: ScanConfig | None = None, hook: str | None = None) -> ScanArtifact:
    """One pass over `batches` ((seq_ids, tokens, resid, excluded) per batch, as
    `Runtime.activation_batches` gives them): the load check of both SAEs, feature firing counts
    and every matched pair's agreement."""
    collector = ScanCollector(saes, assignment)
    for seq_ids, tokens, resid, excluded in batches:
        collector.update(seq_ids, tokens, resid, excluded)
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
