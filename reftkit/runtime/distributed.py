"""Data parallelism on ``accelerate`` without a runtime of our own.

Every process runs the same program on the same global data (the same seeded batches, the same sampling
generator) and gets the same results back; only the expensive work is split inside the calls that do it:
generation (``reftkit.rollout.generate.generate``), grading (``reftkit.reward.answers.grade_batch``) and the forward and
backward passes of training, where each process takes its share of the rows of a global batch and
gradients are averaged by accelerate's DDP/DeepSpeed/FSDP wrapper. Process ``p`` of ``W`` owns rows
``p, p + W, p + 2W, ...``. Results are gathered back into global order, so the code around these calls
reads as if there were one process, and one process computes exactly what it always did.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(this process's index, number of processes); (0, 1) outside ``accelerate launch``/``torchrun``."""
    if not launched():
        return 0, 1
    state = _state()
    return state.process_index, state.num_processes


def _state() -> PartialState:
    """accelerate's process state; on CPU it must be told so, or it sees one process (as ``accelerate launch``
    does through ACCELERATE_USE_CPU, which only the Accelerator reads)."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def launched() -> bool:
    """Whether this process is one of several; read from the environment, so one process never starts a
    process group (and tests that build their own accelerators keep working)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    return world()[0] == 0


def owned(n: int) -> list[int]:
    """The indices of ``range(n)`` this process works on."""
    rank, size = world()
    return list(range(rank, n, size))


def gather_rows(local: Sequence[T], n: int) -> list[T]:
    """Inverse of ``owned``: every process's rows back in global order (``n`` of them), on every process."""
    size = world()[1]
    if size == 1:
        return list(local)
    parts = gather_object([list(local)])
    rows: list[T] = [None] * n  # type: ignore[list-item]
    for p, part in enumerate(parts):
        rows[p::size] = part
    return rows


def map_rows(fn: Callable[[list[int]], Sequence[T]], n: int) -> list[T]:
    """``fn`` applied to this process's indices of ``range(n)``, the results gathered in global order."""
    return gather_rows(fn(owned(n)), n)


def reduce_max(value: int) -> int:
    if world()[1] == 1:
        return value
    return max(gather_object([value]))


def broadcast(value: T) -> T:
    """The main process's ``value``, on every process (each passes its own; only the main one's counts)."""
    if world()[1] == 1:
        return value
    return broadcast_object_list([value], from_process=0)[0]


def barrier() -> None:
    if world()[1] > 1:
        _state().wait_for_everyone()


def local_rows(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``x[rows]``, or ``x`` itself when the rows are all of it (one process: no copy, same numerics)."""
    return x if len(rows) == x.size(0) else x[rows]
