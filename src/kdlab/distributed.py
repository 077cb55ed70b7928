"""Many processes, one result: the rank and world of this process, and the few collectives kdlab
needs on top of :class:`torch.nn.parallel.DistributedDataParallel`.

A process belongs to a distributed run when ``torchrun`` (or ``kdlab run --nproc N``, which
launches it) set ``WORLD_SIZE`` > 1 in its environment. Every rank runs the same program; the
process group is created on first need, with Gloo for CPU tensors and object collectives and NCCL
for CUDA tensors, so one group serves a CPU run, a GPU run and the run store's messages alike.

What kdlab guarantees on top of DDP (README "Many processes"):

* ``settings.batch_size`` is the **global** batch; each rank takes a disjoint, equal slice of every
  batch of the epoch's permutation (``shard``), so the averaged gradient is the one-process one.
  The last, short batch is cut to a multiple of the world size (at most ``world - 1`` examples of
  an epoch are left out, a different few each epoch).
* Only rank 0 writes the run store, checkpoints and progress; the other ranks ask it (see
  ``kdlab.store.shared``), so every rank takes the same decisions.
"""

from __future__ import annotations

import atexit
import datetime
import os
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from kdlab.errors import ConfigError

#: How long a collective may wait for a rank before the group gives up (torchrun usually ends
#: the job sooner: it stops every rank as soon as one exits with an error).
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("KDLAB_DDP_TIMEOUT_MINUTES", "30")))


class World(NamedTuple):
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int
    size: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ConfigError(
            f"the environment variable {name}={value!r} is not an integer; it is set by "
            "torchrun: launch with `torchrun ...` or `kdlab run --nproc N`"
        ) from None


def world() -> World:
    """The rank and size of the running process group, else what torchrun's variables say."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    size = _env_int("WORLD_SIZE", 1)
    return World(_env_int("RANK", 0), size, _env_int("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on rank 0 (and in every one-process run): the rank that writes."""
    return world().main


def ensure_process_group() -> World:
    """Join the process group torchrun described (once); returns this process's world."""
    here = world()
    if not here.distributed or dist.is_initialized():
        return here
    if not dist.is_available():
        raise ConfigError(
            "WORLD_SIZE > 1 asks for a distributed run, but this PyTorch build has no "
            "torch.distributed; install a build with it or run one process"
        )
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK") if k not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE is {here.size} but {', '.join(missing)} is not set; launch through "
            "`torchrun --nproc_per_node=N -m kdlab run ...` or `kdlab run --nproc N ...`"
        )
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(here.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=TIMEOUT)
    atexit.register(_leave)
    return world()


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device, here: World) -> torch.device:
    """The device of this rank: under DDP, CUDA means ``cuda:LOCAL_RANK`` (one GPU per rank)."""
    if not here.distributed or device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if device.index not in (None, here.local_rank % count):
        raise ConfigError(
            f"device {device} was given, but under torchrun each process uses the GPU of its "
            f"local rank (cuda:{here.local_rank}); give device: cuda (or auto)"
        )
    if here.local_rank >= count:
        raise ConfigError(
            f"local rank {here.local_rank} has no GPU: this machine has {count}; launch at "
            f"most {count} processes per machine (--nproc / --nproc_per_node)"
        )
    return torch.device("cuda", here.local_rank)


def check_batch_size(batch_size: int, here: World, what: str = "train.batch_size") -> None:
    """Under DDP the global batch must split evenly over the ranks."""
    if here.distributed and batch_size % here.size:
        fit = batch_size - batch_size % here.size or here.size
        raise ConfigError(
            f"{what} is {batch_size}, which {here.size} processes cannot share evenly (it is the "
            f"global batch, split across ranks); use a multiple of {here.size}, e.g. {fit}"
        )


def shard(indices: torch.Tensor, here: World) -> torch.Tensor:
    """This rank's slice of one global batch: equal, disjoint and in order; a batch that does not
    split evenly loses its last ``len % size`` indices."""
    if not here.distributed:
        return indices
    share = len(indices) // here.size
    return indices[here.rank * share : (here.rank + 1) * share]


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (picklable objects; identity in one process)."""
    if not world().distributed:
        return value
    ensure_process_group()
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_across(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``values`` over the ranks (float64 on the CPU; identity alone)."""
    if not world().distributed:
        return values
    total = values.detach().to("cpu", torch.float64).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def mean_across(row: dict[str, float], weight: float = 1.0) -> dict[str, float]:
    """The mean over ranks of each value of ``row`` (same keys on every rank), each rank's
    values counted ``weight`` times (e.g. its number of examples); ``row`` itself alone."""
    if not world().distributed or not row:
        return row
    keys = sorted(row)
    local = [float(row[k]) * weight if weight else 0.0 for k in keys]  # an empty slice: nothing
    total = sum_across(torch.tensor([*local, weight], dtype=torch.float64)).tolist()
    return {k: v / total[-1] for k, v in zip(keys, total[:-1], strict=True)}


def replicate(module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel`, which averages its
    gradients over the ranks during backward (the module itself is unchanged and still holds
    the weights)."""
    ensure_process_group()
    # device_ids=None: the module sits on one device and its inputs are there already.
    return nn.parallel.DistributedDataParallel(
        module, device_ids=None, find_unused_parameters=find_unused_parameters
    )


def trains(module: nn.Module) -> bool:
    """Whether ``module`` has a parameter that trains (DDP refuses modules without one)."""
    return any(p.requires_grad for p in module.parameters())


__all__ = [
    "World",
    "broadcast",
    "check_batch_size",
    "ensure_process_group",
    "is_main",
    "local_device",
    "mean_across",
    "replicate",
    "shard",
    "sum_across",
    "trains",
    "world",
]
