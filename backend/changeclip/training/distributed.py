"""Many processes: torchrun's environment, the process group, DDP, and small collectives.

``torchrun --nproc-per-node=G [--nnodes N --rdzv-endpoint HOST:PORT] -m changeclip train ...``
sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; this module
reads them and starts the process group (NCCL on CUDA, gloo on the CPU). Without them a run is
one process and nothing here communicates.

Rules every caller follows: each process holds a full replica and its own micro-batches
(per-process batch = ``--batch-size``); only rank 0 writes files and logs; decisions that
end or change the loop (cancel, early stop, errors in the checks) are agreed with
:func:`any_true` so that no process waits forever in a collective the others skipped.

``find_unused_parameters``: False, by measurement. One forward/backward of every variant
(``tests/backend/training/test_distributed.py::test_every_parameter_gets_a_gradient``) gives
every trainable parameter a gradient, for every prompt mode and ``--freeze`` choice (frozen
parameters have ``requires_grad`` False and are not registered with DDP). The official
configs set it to True, which only costs an extra graph traversal per step here.

BatchNorm stays plain ``nn.BatchNorm2d`` (the official model; SyncBatchNorm is GPU-only and
the official configs never reach the backbone BNs with it): each replica normalises with its
own micro-batch's statistics, exactly as one process does with each accumulated micro-batch.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from changeclip.errors import InputError

log = logging.getLogger(__name__)

FIND_UNUSED_PARAMETERS = False
"""Measured: every trainable parameter receives a gradient in every step (see module docstring)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands.

    Attributes:
        world_size: processes in the run (1 without torchrun).
        rank: this process (0 writes files).
        local_rank: this process on its machine (its GPU index).
        backend: ``nccl``, ``gloo`` or ``""`` (single process).
        owns_group: True when :func:`init_from_env` started the group (and ends it).
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str = ""
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not a whole number (set by torchrun)") from None


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Start the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    Args:
        device: the ``--device`` option: ``cpu`` forces gloo; otherwise NCCL when CUDA exists.
        timeout_s: collective timeout (a validation on rank 0 must fit in it).

    Returns:
        The context; single-process when ``WORLD_SIZE`` is unset or 1.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_initialized():
        return DistContext(world, dist.get_rank(), local_rank, dist.get_backend(), owns_group=False)
    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                             "device(s): start at most that many processes per node (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    log.info("process group: %s, rank %d of %d (local rank %d)", backend, rank, world, local_rank)
    return DistContext(world, dist.get_rank(), local_rank, backend, owns_group=True)


def cleanup(ctx: DistContext) -> None:
    """End the process group this module started."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def process_device(ctx: DistContext, device: str) -> str:
    """The device of this process: ``cuda:LOCAL_RANK`` under NCCL, else ``device``."""
    if ctx.backend == "nccl":
        return f"cuda:{ctx.local_rank}"
    return device


def wrap(model: nn.Module, ctx: DistContext, device: str) -> nn.Module:
    """DistributedDataParallel around ``model`` (unchanged for one process).

    ``broadcast_buffers`` stays True (DDP's default, as in mmengine): rank 0's BatchNorm running
    statistics are copied to every replica before each forward, so validation and checkpoints
    (which use rank 0's module) see one consistent set.
    """
    if not ctx.distributed:
        return model
    kwargs = {"device_ids": [torch.device(device).index]} if device.startswith("cuda") else {}
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=FIND_UNUSED_PARAMETERS, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside a DDP wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _flag_device(ctx: DistContext) -> str:
    return f"cuda:{ctx.local_rank}" if ctx.backend == "nccl" else "cpu"


def any_true(ctx: DistContext, flag: bool) -> bool:
    """True on every process when ``flag`` is True on any of them."""
    if not ctx.distributed:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_flag_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_ints(ctx: DistContext, values: list[int]) -> list[int]:
    """Element-wise sum of integer lists over the processes (confusion-matrix counts)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=_flag_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(v) for v in t.tolist()]


def mean_float(ctx: DistContext, value: float) -> float:
    """Mean of a float over the processes (logged losses)."""
    if not ctx.distributed:
        return float(value)
    t = torch.tensor([value], dtype=torch.float64, device=_flag_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / ctx.world_size


def broadcast_object(ctx: DistContext, obj: object) -> object:
    """Rank 0's ``obj`` on every process."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    """Wait for every process."""
    if ctx.distributed:
        dist.barrier()
