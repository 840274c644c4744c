"""The artifacts of many SAEs: the matrix (matrix.json) and the studies' comparison
(comparison.json)."""

from __future__ import annotations

from faithcase.artifacts import (
    Artifact,
    Model,
    PairedComparison,
    SAEQuality,
)
from faithcase.case_study import GroupSummary

MATRIX_FILE = "matrix.json"
OVERLAP_PLOT = "matrix_overlap.png"  # the "in how many of the others" histogram
COMPARISON_FILE, COMPARISON_HTML = "comparison.json", "comparison.html"
MATRIX_STATISTICS = {  # name -> what it is, as the tables and heatmaps say it
    "shared_ratio": "faithfulsae: share of Hungarian-matched pairs with decoder cosine > "
                    "threshold",
    "paulo_belrose": "paulo_belrose: share of matched pairs that the encoder assignment also "
                     "makes, both cosines > threshold",
    "agreement": "share of decoder-matched pairs that the encoder assignment also makes",
    "top1_ratio": "share of the column SAE's features whose best row-SAE cosine > threshold",
    "mean_similarity": "mean decoder cosine of the matched pairs",
    "mean_pearson": "mean activation Pearson of the matched pairs (both features firing)",
    "mean_jaccard": "mean Jaccard of the firing sets of the matched pairs (either firing)",
    "share_pearson": "share of matched pairs (both firing) with activation Pearson > cutoff",
}


class MatrixSAE(Model):
    name: str
    seed: int | None
    dataset: str | None
    d_sae: int
    hook_name: str | None
    sha256: str
    quality: SAEQuality  # the load check on the matrix's corpus pass


class MatrixPair(Model):
    """One unordered pair of SAEs (a before b in the matrix order)."""

    a: str
    b: str
    group: str  # "within <dataset>" (same dataset, different SAEs) or "cross-dataset"
    n_matched: int
    shared_ratio: float
    top1_ratio_ab: float  # share of b's features whose best a cosine > threshold
    top1_ratio_ba: float  # share of a's features whose best b cosine > threshold
    mean_similarity: float
    solver: str
    certified: bool
    n_pearson: int  # matched pairs whose Pearson is defined (both features fire, not constant)
    n_jaccard: int  # matched pairs whose Jaccard is defined (either feature fires)
    mean_pearson: float | None
    mean_jaccard: float | None
    share_pearson: float | None  # share of the n_pearson pairs with Pearson > cutoff
    # the encoder assignment beside the decoder's (numerics/overlap.py); shared_ratio is the
    # faithfulsae definition. None, with encoder_reason, where an SAE has no usable encoder
    paulo_belrose: float | None = None
    agreement: float | None = None
    encoder_mean_similarity: float | None = None
    encoder_certified: bool | None = None
    encoder_reason: str | None = None


class MatrixGroup(Model):
    """The pairs of one group (`MatrixPair.group`), averaged: the paper's table."""

    group: str
    n_pairs: int
    pairs: list[str]  # "a × b"
    shared_ratio: float
    top1_ratio: float  # mean of both directions
    mean_pearson: float | None
    mean_jaccard: float | None
    share_pearson: float | None
    paulo_belrose: float | None = None
    agreement: float | None = None


class SAEOverlap(Model):
    """One SAE's alive latents by the number k = 0 .. N-1 of the other SAEs in which each has a
    shared partner, under each definition (numerics/overlap.py)."""

    name: str
    n_latents: int  # alive latents (decoder rows not zero, finite)
    faithfulsae: list[int]  # [k]: latents shared with exactly k others
    paulo_belrose: list[int] | None  # None where an SAE has no usable encoder


class MatrixOverlap(Model):
    """Many seeds: in how many of the other N-1 SAEs each latent has a shared partner."""

    definitions: dict[str, str]
    n_others: int  # N - 1
    encoder_reason: str | None = None  # why paulo_belrose is missing, when it is
    saes: list[SAEOverlap]
    total: dict[str, list[int] | None]  # definition -> summed over the SAEs


class MatrixArtifact(Artifact):
    hook: str
    threshold: float
    pearson_cutoff: float
    statistics: dict[str, str]  # MATRIX_STATISTICS
    n_tokens: int  # kept tokens of the one corpus pass
    n_sequences: int
    order: list[str]  # the SAEs by dataset, then seed, then name
    saes: list[MatrixSAE]
    pairs: list[MatrixPair]
    # statistic -> [row][column] in `order`; None on the diagonal and where undefined;
    # top1_ratio[i][j]: share of SAE j's features whose best SAE i cosine is above threshold
    tables: dict[str, list[list[float | None]]]
    groups: list[MatrixGroup]
    overlap: MatrixOverlap | None = None

    def pair(self, a: str, b: str) -> MatrixPair:
        for pair in self.pairs:
            if {pair.a, pair.b} == {a, b}:
                return pair
        raise KeyError((a, b))


class StudyEntry(Model):
    """One study of the comparison: a pair of SAEs and the numbers of its case study."""

    name: str
    a: str
    b: str
    folder: str  # its run folder, relative to the comparison's
    matrix: MatrixPair
    groups: dict[str, GroupSummary]  # its summary.groups, as its own report shows them
    comparison: dict[str, list[PairedComparison]] = {}  # its summary.comparison
    explainers: list[str] = []  # the explainers it scored (not the controls), self first
    # per pair kind, over the pairs kept in the group means (both features fire):
    pearson: dict[str, list[float | None]]  # activation Pearson of each pair
    auroc: dict[str, list[float]]  # each scored self-explanation's AUROC on its own feature
    known_answer: dict[str, list[bool]]  # each checked self-explanation: names a peak token


class ComparisonArtifact(Artifact):
    studies: list[StudyEntry]
