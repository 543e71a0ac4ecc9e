"""torchrun's ranks for a verb that splits its work over processes (`ditkit generate --prompts-file`).

torchrun starts N copies of the command and tells each its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; PyTorch's torchrun docs). A split
verb needs only those numbers and a barrier, so the process group is gloo (CPU collectives,
also under CUDA) and lives only as long as the run.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def torchrun_ranks(env: dict | None = None) -> Ranks:
    """This process's place from torchrun's environment; Ranks() (one process) outside torchrun.
    ValueError for numbers that do not make sense (a hand-set environment)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return Ranks()
    values = {}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = env.get(key, "0")
        try:
            values[key] = int(raw)
        except ValueError:
            raise ValueError(f"environment variable {key}={raw!r} must be an integer (torchrun sets it)") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    return Ranks(rank, world, local)


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
