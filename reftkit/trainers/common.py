"""Plumbing shared by every trainer: the accelerator, the metrics log, atomic checkpoint writes."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator


def make_accelerator(mixed_precision: str) -> Accelerator:
    """One process on CPU or GPU, or many under ``accelerate launch``; ``auto`` picks bf16 where supported."""
    if mixed_precision == "auto":
        if torch.cuda.is_available():
            mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            mixed_precision = "bf16" if _cpu_has_fast_bf16() else "no"
    return Accelerator(mixed_precision=mixed_precision)


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class MetricsLog:
    """Append-only ``metrics.jsonl``: one object per logged step with its stage, step and wall time."""

    def __init__(self, path: Path, start_time: float | None = None) -> None:
        self.path = path
        self.start = time.time() if start_time is None else start_time

    def write(self, stage: str, step: int, **figures: Any) -> dict[str, Any]:
        record = {"stage": stage, "step": step, "wall": round(time.time() - self.start, 3)}
        record.update({k: _plain(v) for k, v in figures.items()})
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        return record


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Write a directory next to ``target`` and rename it into place, so a crash never leaves half a checkpoint."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
