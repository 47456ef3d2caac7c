"""Plumbing shared by every trainer: the accelerator, the metrics log, atomic checkpoint writes."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reftkit.config.schema import ReFTConfig, RunConfig, TrainingError
from reftkit.data.base import AnswerType, Problem
from reftkit.evaluation.accuracy import EvalResult, evaluate_greedy
from reftkit.rollout.base import Batch, GenerationConfig, Responses, RolloutEngine
from reftkit.rollout.generate import left_pad
from reftkit.runtime.distributed import is_main, launched
from reftkit.runtime.trackers import tracker_values


def make_accelerator(mixed_precision: str, weight_dtype: str = "float32") -> Accelerator:
    """One process on CPU or GPU, or many under ``accelerate launch``; ``auto`` picks bf16 where supported
    (and no autocast for float16 weights: fp16's gradient scaler cannot unscale float16 gradients)."""
    if mixed_precision == "auto" and weight_dtype == "float16":
        mixed_precision = "no"
    if mixed_precision == "auto":
        if torch.cuda.is_available():
            mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            mixed_precision = "bf16" if _cpu_has_fast_bf16() else "no"
    earlier = AcceleratorState._shared_state.get("_mixed_precision")
    if not launched() and earlier not in (None, mixed_precision):
        # one process calling several commands in turn (the Python API, tests): accelerate keeps the first
        # command's precision in a process-wide state and refuses another; each command sets its own
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=mixed_precision)
    if (plugin := accelerator.state.deepspeed_plugin) is not None:
        # reftkit batches its own rows (no DataLoader), and DeepSpeed's prepare() wants a micro-batch size
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
    return accelerator


def device_line(accelerator: Accelerator, weight_dtype: str) -> str:
    """Where and how a command computes, in one line: device, processes, mixed precision, weight dtype."""
    device = accelerator.device
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        device_text = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    else:
        device_text = str(device)
    n = accelerator.num_processes
    return (
        f"device {device_text}, {n} process{'es' if n > 1 else ''}, mixed precision {accelerator.mixed_precision}, "
        f"weights {weight_dtype}"
    )


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class MetricsLog:
    """Append-only ``metrics.jsonl``: one object per logged step with its stage, step and wall time.

    A resumed run first cuts the file back to where its checkpoint was taken (``resume_at``), so each step
    appears once, and continues the wall clock from there.

    ``trackers`` (``accelerate`` ``GeneralTracker`` objects, see ``reftkit.runtime.trackers``; anything with
    ``log(values, step)`` and ``finish()``) get the same figures, tagged ``<stage>/<figure>``, at the same step.
    A resumed run's trackers get the steps after its checkpoint again (TensorBoard shows both).
    """

    def __init__(
        self, path: Path, start_time: float | None = None, resuming: bool = False, trackers: Sequence[Any] = ()
    ) -> None:
        self.path = path
        self.start = time.time() if start_time is None else start_time
        self._cut_at: int | None = 0 if resuming else None  # resuming with nothing finished: start afresh
        self.writes = is_main()  # under several processes the main one keeps the log
        self.trackers = list(trackers) if self.writes else []

    def write(self, stage: str, step: int, **figures: Any) -> dict[str, Any]:
        if not self.writes:
            return {}
        if self._cut_at is not None:
            with self.path.open("a") as fh:
                fh.truncate(self._cut_at)
            self._cut_at = None
        record = {"stage": stage, "step": step, "wall": round(time.time() - self.start, 3)}
        record.update({k: _plain(v) for k, v in figures.items()})
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.trackers and (values := tracker_values(stage, {k: record[k] for k in figures})):
            for tracker in self.trackers:
                tracker.log(values, step=step)
        return record

    def close(self) -> None:
        """Finish the trackers (flush and close their files; end a W&B run); the log itself needs no closing."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.finish()

    def resume_at(self, size: int, wall: float) -> None:
        """Continue after the first ``size`` bytes (cut on the next write) and ``wall`` seconds of logged time."""
        self._cut_at = size
        self.start = time.time() - wall

    def size(self) -> int:
        if self._cut_at is not None:
            return self._cut_at
        return self.path.stat().st_size if self.path.exists() else 0

    def elapsed(self) -> float:
        return time.time() - self.start


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


@dataclass
class Selection:
    """Validation history of a step-wise trainer and the step it keeps: a strictly better score replaces."""

    best_step: int = -1
    best: float = -1.0
    history: dict[int, float] = field(default_factory=dict)

    def record(self, step: int, accuracy: float) -> bool:
        """Note ``accuracy`` at ``step``; True when it is the new best (the caller saves the checkpoint)."""
        self.history[step] = accuracy
        if accuracy > self.best:
            self.best, self.best_step = accuracy, step
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"best_step": self.best_step, "best": self.best, "history": self.history}

    def restore(self, state: dict[str, Any]) -> None:
        self.best_step, self.best = state["best_step"], state["best"]
        self.history = {int(k): v for k, v in state["history"].items()}  # JSON keys are strings


def adamw(params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """Every trainer's AdamW (eps 1e-8), fused where torch has a fused kernel for the parameters' device and dtype:
    one pass over each weight per step instead of a dozen (3x faster on a 128M-parameter step on one CPU core,
    ``bench/README.md``)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, eps=1e-8, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(params, lr=lr, eps=1e-8, weight_decay=weight_decay)


def greedy_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    config: RunConfig,
    answer_type: AnswerType,
    accelerator: Accelerator,
    desc: str | None = None,
) -> EvalResult:
    """Greedy results of ``model`` on ``problems`` under the run's autocast and eval settings: what checkpoints are
    selected by on validation and what the test sets report."""
    with accelerator.autocast():
        return evaluate_greedy(
            model, tokenizer, problems, config.task.cot, config.eval, desc=desc, answer_type=answer_type
        )


def step_plan(n_questions: int, cfg: ReFTConfig) -> tuple[int, int]:
    """(steps per epoch, total steps) of a step-wise trainer: ``epochs`` passes, capped by ``max_steps``."""
    steps_per_epoch = math.ceil(n_questions / cfg.questions_per_step)
    total = cfg.epochs * steps_per_epoch
    return steps_per_epoch, total if cfg.max_steps is None else min(total, cfg.max_steps)


def question_batches(
    n_questions: int, cfg: ReFTConfig, generator: torch.Generator, total_steps: int, done: int = 0
) -> Iterator[tuple[int, list[int]]]:
    """(step, question indices) per step: a fresh seeded order each epoch, cut into ``questions_per_step``.
    Steps up to ``done`` (before the checkpoint a run resumes from) are drawn and dropped: the generator is
    replayed, never stored."""
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n_questions, generator=generator).tolist()
        for start in range(0, n_questions, cfg.questions_per_step):
            if step == total_steps:
                return
            step += 1
            if step > done:
                yield step, order[start : start + cfg.questions_per_step]


class NonFiniteGuard:
    """Skips, counts and logs steps whose loss, KL or gradient norm is not finite, so a NaN never reaches the
    weights; stops the run after ``max_in_row`` such steps in a row. The trainer sets ``step`` as it goes."""

    def __init__(self, max_in_row: int, log: MetricsLog, stage: str) -> None:
        self.max_in_row, self.log, self.stage = max_in_row, log, stage
        self.step = 0
        self.in_row = 0
        self.skipped = 0

    def ok(self, finite: bool | torch.Tensor, what: str) -> bool:
        """True when the step may be applied; otherwise records the skip (and raises after too many)."""
        if bool(finite):
            self.in_row = 0
            return True
        self.in_row += 1
        self.skipped += 1
        self.log.write(f"{self.stage}_skipped", self.step, reason=f"non-finite {what}", skipped=self.skipped)
        if self.in_row >= self.max_in_row:
            raise TrainingError(
                f"{self.stage}: {self.in_row} steps in a row with a non-finite {what} (step {self.step}); none of them "
                "was applied. Lower the learning rate, or check the data and mixed precision (mixed_precision=no)"
            )
        return False

    def state(self) -> dict[str, int]:
        return {"in_row": self.in_row, "skipped": self.skipped}

    def restore(self, state: dict[str, int]) -> None:
        self.in_row, self.skipped = state["in_row"], state["skipped"]


def apply_gradients(
    accelerator: Accelerator,
    loss: torch.Tensor,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    grad_clip: float,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    guard: NonFiniteGuard | None = None,
    frozen: Iterable[torch.nn.Parameter] = (),
    backward: bool = True,
) -> torch.Tensor:
    """One optimiser step on ``loss``: backward, clip the gradient norm, step (and the schedule), zero grads.
    ``backward=False``: the gradients are already there (``backward_parts``) and ``loss`` is only checked.
    ``frozen`` parameters lose their gradients before the step, so the optimiser neither moves them nor
    counts the step in their state.
    With a ``guard``, a non-finite loss or gradient norm skips the optimiser step (the schedule
    still advances with the data). Returns the gradient norm before clipping (nan under DeepSpeed, which
    clips, and steps, inside ``backward``)."""
    if backward:
        accelerator.backward(loss)
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    if grad_norm is None:
        grad_norm = torch.tensor(float("nan"))
        finite = torch.isfinite(loss.detach())
    else:
        finite = torch.isfinite(loss.detach()) & torch.isfinite(torch.as_tensor(grad_norm))
    for param in frozen:
        param.grad = None
    if guard is None or guard.ok(finite, "loss or gradient norm"):
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def backward_parts(accelerator: Accelerator, parts: Iterable[torch.Tensor]) -> torch.Tensor:
    """Gradient accumulation: back-propagate each part of a loss as it is made, so only one part's activations are
    alive at a time; returns the parts' sum, detached (the loss of the whole batch when the parts are its shares).
    One part is exactly a plain backward."""
    total = torch.zeros(())
    for i, part in enumerate(parts):
        accelerator.backward(part)
        total = part.detach() if i == 0 else total + part.detach()
    return total


def split_rows(rows: list[Any], parts: int) -> list[list[Any]]:
    """``rows`` in ``parts`` contiguous, nearly equal chunks (fewer when there are fewer rows), in order."""
    size = -(-len(rows) // max(1, parts))
    return [rows[i : i + size] for i in range(0, len(rows), size)] or [rows]


def sample_policy(
    engine: RolloutEngine,
    lm: PreTrainedModel,
    prompts: list[list[int]],
    questions: list[int],
    gen: GenerationConfig,
    k: int,
    generator: torch.Generator,
    accelerator: Accelerator,
) -> tuple[Batch, Responses]:
    """``k`` rollouts of each question by ``engine`` (rows grouped by question, each prompt encoded once) and the
    left-padded prompts repeated to match those rows."""
    batch = left_pad([prompts[i] for i in questions], gen.pad_id)
    with accelerator.autocast():
        responses = engine.generate(lm, batch, gen, k, generator)
    return Batch(batch.ids.repeat_interleave(k, 0), batch.mask.repeat_interleave(k, 0)), responses
