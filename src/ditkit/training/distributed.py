"""Training over several processes: the process group from torchrun's environment, the model
wrapped for DDP or sharded with FSDP2, and the two collectives the loop needs.

`torchrun --nproc_per_node=N -m ditkit train CONFIG` starts N copies of the command and tells
each its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT; PyTorch's torchrun docs). `start` turns that into a `Ranks`: the process group
(gloo on the CPU, NCCL on CUDA, where each process takes GPU LOCAL_RANK), the parallel mode and
the device. Every rank trains on its slice of the step's global batch (train.batch_size is
global); the gradients are averaged over the ranks (DDP's all-reduce or FSDP's
reduce-scatter), so N ranks x b samples take the same step as one process with N x b.

Modes (train.parallel):
- "none": one process, no process group; under torchrun (WORLD_SIZE > 1) it runs as "ddp".
- "ddp": torch.nn.parallel.DistributedDataParallel; every rank holds the whole model, EMA and
  optimizer state.
- "fsdp": FSDP2 (`torch.distributed.fsdp.fully_shard`) on each DiT block and then the root,
  with a MixedPrecisionPolicy from train.precision (bf16: bf16 parameters in the forward and
  backward, gradients reduced in fp32; fp32: no policy). The EMA is a second model sharded the
  same way, so each rank averages only its own shards (exported by gathering full tensors).
ddp and fsdp also run without torchrun, as a world of one process (a local store; no
network), which is how a run saved by N ranks is continued on one.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ditkit.core.config import PARALLEL_MODES
from ditkit.data import check_world

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass
class Ranks:
    """This process's place in the run: rank of world, the mode, and its device."""
    parallel: str = "none"
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # start() made the process group, so close() ends it

    @property
    def main(self) -> bool:
        """Rank 0 writes every file of the run (log, model folder, plots) and runs the evaluations."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group carries the run (ddp or fsdp, on any number of ranks)."""
        return self.parallel != "none"

    def mean(self, x: torch.Tensor) -> float:
        """The mean of a scalar over the ranks (the global batch's mean loss: the ranks' slices
        are the same size, so the mean of their means is the mean over all samples)."""
        y = x.detach().float().reshape(1).clone()
        if self.world > 1:
            dist.all_reduce(y, op=dist.ReduceOp.SUM)
            y /= self.world
        return float(y)

    def from_rank0(self, value: int) -> int:
        """Rank 0's value of an integer on every rank (e.g. the step count a time budget cut)."""
        if self.world == 1:
            return value
        y = torch.tensor([value], dtype=torch.int64, device=self._comm_device())
        dist.broadcast(y, src=0)
        return int(y)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """End the process group this process made (every rank calls it on the way out)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def torchrun_env(env: dict | None = None) -> tuple[int, int, int] | None:
    """(rank, world, local_rank) from torchrun's environment, or None outside torchrun."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    values = []
    for key in TORCHRUN_VARS:
        raw = env.get(key, "0")
        try:
            values.append(int(raw))
        except ValueError:
            raise ValueError(f"environment variable {key}={raw!r} must be an integer (torchrun sets it)") from None
    rank, world, local = values
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: need WORLD_SIZE >= 1, "
                         "0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return rank, world, local


def resolve_parallel(parallel: str, world: int) -> str:
    """The mode a run uses: train.parallel, except that "none" under torchrun with several
    processes means "ddp" (N copies of a one-process run would each train alone)."""
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"unknown train.parallel {parallel!r}; allowed: {', '.join(PARALLEL_MODES)}")
    return "ddp" if parallel == "none" and world > 1 else parallel


def start(parallel: str, batch_size: int, device: torch.device) -> Ranks:
    """Join (or, for one process, make) the process group of a run. Checks come first, so a
    bad setting fails on every rank before any rank waits for the others: the global batch
    must split evenly over the ranks (data.check_world), and the device must have a backend."""
    place = torchrun_env()
    rank, world, local = place if place is not None else (0, 1, 0)
    parallel = resolve_parallel(parallel, world)
    check_world(batch_size, world)
    if parallel == "none":
        return Ranks("none", 0, 1, 0, device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"train.parallel {parallel} runs on cpu (gloo) or cuda (NCCL), not {device.type}")
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if place is None:  # one process without torchrun: a local store, no network
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:  # torchrun's MASTER_ADDR / MASTER_PORT rendezvous (env://)
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    device_id=device if device.type == "cuda" else None)
        owns = True
    elif (dist.get_rank(), dist.get_world_size()) != (rank, world):
        raise RuntimeError(f"a process group of rank {dist.get_rank()}/{dist.get_world_size()} exists, "
                           f"but the environment says {rank}/{world}")
    return Ranks(parallel, rank, world, local, device, owns)


# ----------------------------------------------------------------------------
# the model on the ranks
# ----------------------------------------------------------------------------

def wrap_ddp(model: nn.Module, ranks: Ranks) -> nn.Module:
    """DistributedDataParallel around the model: rank 0's weights are broadcast at the start
    and the gradients averaged over the ranks in backward."""
    ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard_fsdp(model: nn.Module, precision: str) -> nn.Module:
    """FSDP2 in place: each block is its own unit (gathered just before it runs, freed after),
    then the root takes the rest (embeddings, head). bf16 computes in bf16 and reduces the
    gradients in fp32 (PyTorch's FSDP2 guidance; bf16 sums lose the small gradients)."""
    # why not torch.distributed.fsdp.FullyShardedDataParallel (FSDP1): FSDP2 shards each
    # parameter as a DTensor, so the optimizer and the state-dict API see ordinary
    # per-parameter tensors and a checkpoint reshards to any world size.
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # FSDP2 shards contiguous parameters only; the DiT keeps its convolutions channels-last
    # for CPU speed (core/model.py), so they go back to the default layout first.
    model.to(memory_format=torch.contiguous_format)
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if precision == "bf16" else MixedPrecisionPolicy())
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def sharded_ema(model: nn.Module, precision: str) -> nn.Module:
    """The EMA copy of a model about to be sharded, sharded the same way: each rank keeps the
    average of its own shards, which is the shard of the average (the update is elementwise)."""
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    return shard_fsdp(ema, precision)


def full_state(module: nn.Module, ranks: Ranks) -> dict[str, torch.Tensor] | None:
    """The module's full state dict on CPU on rank 0 (None elsewhere). Every rank must call it:
    under FSDP it gathers the shards; a DDP or plain module is already whole on each rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if ranks.parallel != "fsdp":
        return {k: v.detach().cpu() for k, v in module.state_dict().items()} if ranks.main else None
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if ranks.main else None
