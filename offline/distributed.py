"""Data-parallel training under torchrun: one process per rank, gloo on CPU and NCCL on GPU, the gradients
averaged by DistributedDataParallel. A single process (no torchrun) is world size 1 and every helper here is a
no-op, so the trainers run one code path.

What the trainers rely on:
  * `batch_size` is the global batch: every rank draws the same per-epoch permutation (`epoch_permutation`, seeded
    by seed and epoch, so it does not depend on how much randomness dropout used) and takes its slice of each
    global batch (`local_rows`). Same seed + same global batch = the same examples per optimiser step as one
    process, whatever the world size.
  * rank 0 alone writes checkpoints, logs and results (`is_main`); every rank reads the checkpoint to resume.
  * decisions that stop a loop (time budget, early stopping) are agreed across ranks (`any_true`, `max_float`,
    `broadcast_object`), so no rank waits forever in an all-reduce the others have left.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "Context",
    "any_true",
    "barrier",
    "broadcast_object",
    "context",
    "epoch_permutation",
    "init",
    "is_main",
    "local_rows",
    "max_float",
    "sum_float",
    "wrap",
]


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> Context:
    """The current process's place in the job (world size 1 when not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Context()


def init(device: torch.device) -> Context:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR, ... in the environment); a
    plain process stays world size 1. NCCL for CUDA devices, gloo otherwise. Idempotent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return context()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    ctx = context()
    log.info("rank %d/%d joined (%s)", ctx.rank, ctx.world_size, backend)
    return ctx


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU (cuda:LOCAL_RANK) when training on CUDA under torchrun; the device itself otherwise."""
    if device.type == "cuda" and context().enabled:
        return torch.device("cuda", context().local_rank)
    return device


def is_main() -> bool:
    return context().is_main


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The shuffled example order of one epoch, identical on every rank and across resumes."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).to(device)


def local_rows(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of one global batch (sizes differ by at most one row)."""
    ctx = context()
    if not ctx.enabled:
        return batch
    return torch.tensor_split(batch, ctx.world_size)[ctx.rank]


def _reduce(value: float, op: str) -> float:
    """`value` reduced over ranks with ReduceOp `op` (the value itself in a single process)."""
    if not context().enabled:
        return float(value)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return float(t.item())


def any_true(flag: bool) -> bool:
    """True on every rank when it is true on any (e.g. one rank's clock passed the deadline)."""
    return _reduce(1.0 if flag else 0.0, "MAX") > 0


def max_float(value: float) -> float:
    return _reduce(value, "MAX")


def sum_float(value: float) -> float:
    return _reduce(value, "SUM")


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value on every rank (metrics early stopping acts on)."""
    if not context().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if context().enabled:
        dist.barrier()


class _Call(nn.Module):
    """Lets DistributedDataParallel run any loss function of the model, not only `forward`: the trainers call
    `model.sequence_loss(...)` or a subclass's batch loss, and DDP must see the forward to sync gradients."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def wrap(model: nn.Module, find_unused_parameters: bool = False) -> Callable[..., Any]:
    """`step(fn, *args)` that runs `fn(*args)` (a loss over `model`'s parameters) so backward averages the
    gradients over ranks. The model itself is not wrapped: its state_dict keys and methods stay as they are."""
    ctx = context()
    if not ctx.enabled:
        return lambda fn, *args: fn(*args)
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(_Call(model), device_ids=ids,
                                               find_unused_parameters=find_unused_parameters)
