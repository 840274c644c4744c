"""The corpus pass split over processes (torch.distributed: gloo on CPU, NCCL on GPU).

Under `torchrun --nproc_per_node N faithcase scan …` every process reads the same config. Rank r
runs the model on corpus batches r, r + N, r + 2N, … (the single pass's batches, so every
per-batch rule, e.g. the outlier median, sees the same rows), its collectors stream them, and
`merge_across` combines every rank's collector state in rank order: counts and pools exactly,
float64 sums as compensated sums (numerics/exact_sum.py), so every rank ends with the single
pass's state. Rank 0 writes the run folder; the other ranks work in `.shards/rank<r>/` inside it
and print nothing. The stages that read the corpus (CORPUS_STAGES) run on every rank together,
so they are recomputed under torchrun, never taken from a cache that only one rank sees; a
command that reaches any other stage but match, known and pairs is a one-line error under torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CORPUS_STAGES = ("scan", "windows", "matrix")
# what a rank may run: the rest repeats (known fits on a few batches that every rank runs itself)
SPLIT_STAGES = (*CORPUS_STAGES, "match", "known", "pairs")


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    @property
    def split(self) -> bool:
        return self.world > 1

    def owns(self, batch_index: int) -> bool:
        return batch_index % self.world == self.rank


def current() -> Shard:
    """This process's shard: from an initialized process group, else the whole pass."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def init_from_env(device: str = "cpu") -> Shard:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            import torch

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return current()


def merge_across(collector) -> None:
    """Every rank's collector state merged into `collector`, in rank order, on every rank."""
    shard = current()
    if not shard.split:
        return
    import torch.distributed as dist

    states = [None] * shard.world
    dist.all_gather_object(states, collector.state())
    collector.reset()
    for state in states:
        collector.merge_state(state)
