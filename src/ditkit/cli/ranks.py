"""torchrun's ranks for a verb that splits its work over processes (`ditkit generate --prompts-file`).

torchrun starts N copies of the command and tells each its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; PyTorch's torchrun docs). A split
verb needs only those numbers and a barrier, so the process group is gloo (CPU collectives,
also under CUDA) and lives only as long as the run.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from ditkit.training.distributed import torchrun_env


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def torchrun_ranks(env: dict | None = None) -> Ranks:
    """This process's place from torchrun's environment (training.distributed.torchrun_env, the
    one reader of it); Ranks() (one process) outside torchrun. ValueError for numbers that do
    not make sense (a hand-set environment)."""
    place = torchrun_env(env)
    return Ranks() if place is None else Ranks(*place)


def rank_device(device: str, ranks: Ranks) -> str:
    """`cuda` means this rank's own GPU (cuda:LOCAL_RANK) when torchrun runs several processes."""
    return f"cuda:{ranks.local_rank}" if device == "cuda" and ranks.world > 1 else device


@contextmanager
def barriers(ranks: Ranks) -> Iterator[Callable[[], None]]:
    """A barrier() over all ranks for the block (a gloo process group from torchrun's
    MASTER_ADDR/MASTER_PORT); a no-op for one process, which needs no group at all."""
    if ranks.world == 1:
        yield lambda: None
        return
    import torch.distributed as dist  # only a torchrun run needs the distributed package

    dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world)
    try:
        yield dist.barrier
    finally:
        dist.destroy_process_group()
