"""The match stage: the features of two SAEs matched by the cosine similarity of their decoder rows.

The matching is the optimal one-to-one assignment that maximizes the total cosine similarity
(Hungarian; the solvers are in `assignment.py`), over alive features only: a decoder row that is
all zero or holds a non-finite value is a dead feature, counted and never matched. The statistics
are FaithfulSAE's (`scripts/feat_match.py`): rows L2-normalized, the shared ratio is the share of
matched pairs above the threshold, the top-1 ratio the share of SAE 2 features whose best SAE 1
cosine is above it (`top1_ratio_sae1` is the other direction). The same assignment on encoder
directions sits beside it (`encoder`: each feature's encoder partner and cosine, Paulo & Belrose's
shared ratio and the share of pairs both assignments make; numerics/overlap.py).
"""

from __future__ import annotations

from collections.abc import Callable


from faithcase.render.tables import console, table
from faithcase.artifacts import MatchArtifact, SAEInfo
from faithcase.config import MatchConfig
from faithcase.artifacts import MATCH_PLOT
from faithcase.run.graph import Stage
from faithcase.numerics.matching import HISTOGRAM_BINS, dead_rows, match_features
from faithcase.numerics.overlap import match_saes

__all__ = ["HISTOGRAM_BINS", "dead_rows", "match", "match_features"]

# ----------------------------------------------------------------------------------------------
# The public entry point


def match(sae1, sae2, settings: MatchConfig | None = None,
          sae_infos: tuple[SAEInfo, SAEInfo] | None = None,
          progress: Callable[[str, int, int], None] | None = None) -> MatchArtifact:
    """Match two SAEs (anything with a `W_dec` [d_sae, d_in]; with a `W_enc` [d_in, d_sae] the
    encoder assignment too): statistics, solver report and the full assignment. Which pairs the
    case study follows is the pairs stage's (`stages/pairs.py`)."""
    settings = settings or MatchConfig()
    matching = match_saes(sae1, sae2, threshold=settings.threshold, solver=settings.solver,
                          progress=progress, encoder=settings.encoder)
    infos = sae_infos or (_info(sae1), _info(sae2))
    return MatchArtifact(sae1=infos[0], sae2=infos[1], **dict(matching))


def _info(sae) -> SAEInfo:
    return SAEInfo(path=str(getattr(sae, "path", "")), format=str(getattr(sae, "format", "")),
                   d_in=int(sae.W_dec.shape[1]), d_sae=int(sae.W_dec.shape[0]),
                   hook_name=getattr(sae, "hook_name", None), sha256="",
                   dtype=str(sae.W_dec.dtype).removeprefix("torch."))


# ---------------------------------------------------------------- printing


def print_match(artifact, inputs: dict) -> None:
    s = artifact.stats
    a = artifact.assignment
    order = sorted(range(len(a.similarity)), key=lambda i: -a.similarity[i])
    grid = table(f"{s.n_matched} matched pairs · shared ratio (>{s.threshold}) "
                 f"{s.shared_ratio:.3f} · top-1 ratio {s.top1_ratio:.3f} "
                 f"(SAE 1 → 2: {s.top1_ratio_sae1:.3f}) · mean {s.mean_similarity:.3f}",
                 ["", "sae1", "sae2", "cosine"])
    for label, positions in (("highest", order[:5]), ("lowest", order[::-1][:5])):
        for i in positions:
            grid.add_row(label, str(a.index1[i]), str(a.index2[i]), f"{a.similarity[i]:.3f}")
    console.print(grid)
    solver = artifact.solver
    proof = "exact" if solver.exact else ("certified" if solver.certified else "not certified")
    console.print(f"solver {solver.name} ({proof}), {solver.seconds:.2f} s; "
                  f"dead features {s.n_dead1} / {s.n_dead2}")
    encoder = artifact.encoder
    if encoder is not None:
        both = (f"paulo_belrose {encoder.paulo_belrose:.3f} · encoder/decoder agreement "
                f"{encoder.agreement:.3f}" if encoder.reason is None
                else f"paulo_belrose — ({encoder.reason})")
        console.print(f"shared (>{s.threshold}): faithfulsae {encoder.faithfulsae:.3f} · {both}")


# ---------------------------------------------------------------- the stage


def _compute(job) -> MatchArtifact:
    from faithcase.render.plots import similarity_histogram

    rt = job.ctx
    with rt.console.status("matching decoder and encoder directions …"):
        artifact = match(rt.sae("sae1"), rt.sae("sae2"), job.settings,
                         sae_infos=(rt.sae_info("sae1"), rt.sae_info("sae2")))
    job.write(job.stage.file, artifact)
    job.write_bytes(MATCH_PLOT, similarity_histogram(artifact.stats))
    return artifact


STAGE = Stage(
    "match", _compute, section="match", uses=("saes",), artifact=MatchArtifact,
    printer=print_match,
    doc="Match the two SAEs' features: Hungarian assignment on decoder cosine similarity, and "
        "the paper's statistics.")
