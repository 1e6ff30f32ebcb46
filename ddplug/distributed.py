"""Several processes under ``torchrun``: the process group from the environment torchrun sets,
each rank's share of independent work, and what rank 0 alone does (files, progress, output).

A single process is a world of one: every function here then does what a plain run does.
Work is shared where its parts are independent and seeded by their index (the evaluation's
fresh networks, MTT's experts) or where a loss is a sum of terms (DM's and gradient
matching's classes, kernel matching's real rows: each rank computes its terms, gradients are
summed), so a run on N ranks gives what one process gives, up to the order of float sums.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

import torch
import torch.distributed as dist

from ddplug.errors import DdplugError

T = TypeVar("T")


def world_size() -> int:
    """Processes in the run (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files and prints: rank 0."""
    return rank() == 0


def join_from_environment(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment (Gloo on the CPU,
    NCCL on GPUs, one GPU per local rank), once; without ``WORLD_SIZE`` > 1, nothing.
    Returns the device this rank computes on."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if not dist.is_available():
        raise DdplugError("this torch has no torch.distributed: run in one process, without torchrun")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise DdplugError(f"local rank {local} has no GPU ({torch.cuda.device_count()} here): "
                              "lower --nproc-per-node to the GPUs of the machine")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def my_share(count: int) -> range:
    """The indices of ``count`` independent parts that this rank computes: every
    ``world_size()``-th one from its rank."""
    return range(rank(), count, world_size())


def sum_over_ranks(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its sum over the ranks, in place (nothing in a world of one)."""
    if world_size() > 1:
        for tensor in tensors:
            dist.all_reduce(tensor)


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` is true on any rank (``flag`` itself in a world of one): what every
    rank decides alike, e.g. to stop at the same step when a signal reached only some.
    ``device`` is where the collective runs (a GPU's under NCCL)."""
    if world_size() == 1:
        return flag
    vote = torch.tensor([int(flag)], device=device)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def wait_for_all() -> None:
    """Return when every rank has reached this point (their files are written)."""
    if world_size() > 1:
        dist.barrier()


def gather(parts: Mapping[int, T]) -> dict[int, T]:
    """Every rank's ``{index: result}`` merged, on every rank, by index."""
    if world_size() == 1:
        return dict(sorted(parts.items()))
    everyone: list[Mapping[int, T] | None] = [None] * world_size()
    dist.all_gather_object(everyone, dict(parts))
    merged = {index: value for part in everyone for index, value in (part or {}).items()}
    return dict(sorted(merged.items()))
