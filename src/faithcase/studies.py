"""Case studies of chosen pairs of a many-SAE config, side by side.

`faithcase run` on a config with `studies: [[a, b], …]` runs the matrix, then the whole
single-pair pipeline for each study in `studies/a__b/` inside the run folder (its own ledger and
lock; the model, the corpus and the corpus pass are the matrix's, so the model runs over the
corpus once), then the `compare` stage (stages/compare.py).
"""

from __future__ import annotations

from pathlib import Path


def run_studies(rt, force: tuple[str, ...] = (), strict: bool = False, wait: bool = True,
                each=None) -> list[Path]:
    """Every study's pipeline, in order, on the runtime's model and corpus pass; `each(i, a, b)`
    is called before study i."""
    from faithcase.pipeline import STAGES, open_run
    from faithcase.run.runtime import Runtime
    from faithcase.stages.assemble import print_summary

    folders = []
    for i, (a, b) in enumerate(rt.cfg.studies, start=1):
        if each:
            each(i, a, b)
        sub = Runtime(rt.cfg.for_study(a, b), console=rt.console, parent=rt)
        with open_run(sub, force, strict=strict, wait=wait) as run:
            for name in STAGES:
                run.get(name)
            print_summary(run.get("assemble")[1])
        folders.append(sub.out_dir)
    return folders
