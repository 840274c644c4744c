"""A toy pipeline run as its own process, for the soak test: three stages, several files each,
small sleeps so a kill can land anywhere, the run folder's lock held for the whole run.

    python toy_pipeline.py FOLDER A B   # settings of stages a and b
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from faithcase.run.graph import Graph, Stage
from faithcase.run.lock import RunLock
from faithcase.run.store import fingerprint

N_FILES = 3


def _stage(name: str, inputs: tuple[str, ...]) -> Stage:
    def compute(job):
        value = job.ctx[name] + sum(job.inputs.values())
        for i in range(N_FILES):
            time.sleep(0.02)
            job.write(f"{name}{i}.json", {"value": value, "part": i, "pad": "x" * 2000 * i})
        return value

    return Stage(name, compute, inputs, key=lambda ctx: ctx[name],
                 load=lambda job: job.read(f"{name}0.json", dict)["value"])


GRAPH = Graph([_stage("a", ()), _stage("b", ("a",)), _stage("c", ("a", "b"))], hasher=fingerprint)


def main(folder: str, a: str, b: str) -> None:
    ctx = {"a": int(a), "b": int(b), "c": 1}
    with RunLock(Path(folder), report=lambda message: None):
        run = GRAPH.run(ctx, Path(folder) / "stages.json")
        print(run.get("c"), ",".join(run.ran))


if __name__ == "__main__":
    main(*sys.argv[1:4])
