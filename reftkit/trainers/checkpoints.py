"""Resumable training state, so that a killed run continues exactly where it stopped.

Layout inside a run folder::

    resume/<stage>/step-00000120/   model.pt  trainer.pt  state.json  manifest.json   (newest ``keep_last``)
    resume/<stage>/done/            result.json  rng.pt  manifest.json                 (the stage finished)

A checkpoint is written into a hidden temporary folder and renamed into place, and its manifest, written
last, holds the size and SHA-256 of every file: a checkpoint whose manifest is missing or whose files do not
match it is skipped, with a warning naming it, for the one before. So a crash while saving never costs the
last good checkpoint.

A resume is exact because a checkpoint holds everything the next step depends on: weights (value head
included), optimiser and scheduler state, every random state (python, numpy, torch CPU and CUDA, and the
trainer's own generators), the trainer's counters (step, validation history, best so far, skipped steps) and
the length of ``metrics.jsonl`` when it was taken, which is cut back to it. Data order is not stored: each
trainer draws it from a generator seeded by the run's seed and replays it up to the step.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import sys
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from reftkit.models.gguf import file_digest
from reftkit.runtime.interrupt import StopRequested, stop_agreed
from reftkit.trainers.common import MetricsLog, NonFiniteGuard, Selection, write_atomically

if TYPE_CHECKING:
    from accelerate import Accelerator

    from reftkit.config.schema import CheckpointConfig

R = TypeVar("R")
RESUME_DIR = "resume"
MANIFEST = "manifest.json"
DONE = "done"
STEP_PREFIX = "step-"


def write_manifest(folder: Path) -> None:
    """Size and SHA-256 of every file in ``folder``; written last, so its presence means the rest is complete."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in sorted(folder.iterdir())}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=2) + "\n")


def verify(folder: Path) -> str | None:
    """None when every file of ``folder``'s manifest is there with its size and checksum; else what is wrong."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no readable manifest (incomplete write)"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"] or file_digest(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random state a step can draw from, in types ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])


def result_to_json(result: Any) -> dict[str, Any]:
    """A trainer's result dataclass as JSON-able data (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()}


def result_from_json(cls: type[R], data: dict[str, Any]) -> R:
    """Inverse of ``result_to_json``: paths back to ``Path``, history keys (steps, epochs) back to ``int``."""
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        if hints[name] is Path:
            value = Path(value)
        elif typing.get_origin(hints[name]) is dict:
            value = {int(k): v for k, v in value.items()}
        values[name] = value
    return cls(**values)


def warn(message: str) -> None:
    print(f"reftkit: warning: {message}", file=sys.stderr)


class StageCheckpoints:
    """The resume folder of one stage (``sft``, ``reft``, ``rm``, ...) of a run."""

    def __init__(
        self, run_dir: Path, stage: str, cfg: CheckpointConfig, log: MetricsLog, accelerator: Accelerator
    ) -> None:
        self.dir = Path(run_dir) / RESUME_DIR / stage
        self.cfg, self.log, self.accelerator = cfg, log, accelerator
        self.stop_signal: int | None = None  # set by due() when a signal asked the loop to stop

    def finished(self) -> dict[str, Any] | None:
        """The result of this stage if it already finished (random states restored to its end), else None."""
        path = self.dir / DONE
        if not path.exists():
            return None
        problem = verify(path)
        if problem is not None:
            warn(f"stage record {path} is unusable ({problem}); running the stage again")
            return None
        meta = json.loads((path / "result.json").read_text())
        set_rng_state(torch.load(path / "rng.pt", weights_only=True), {})
        self.log.resume_at(meta["metrics_bytes"], meta["wall"])
        return meta["result"]

    def finish(self, result: dict[str, Any]) -> None:
        """Record the stage as finished with its JSON-able ``result``; its step checkpoints are then dropped."""
        meta = {"result": result, "metrics_bytes": self.log.size(), "wall": self.log.elapsed()}

        def write(tmp: Path) -> None:
            (tmp / "result.json").write_text(json.dumps(meta, indent=2) + "\n")
            torch.save(rng_state({}), tmp / "rng.pt")
            write_manifest(tmp)

        if self.accelerator.is_main_process:
            write_atomically(self.dir / DONE, write)
            for old in self._step_dirs():
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def due(self, step: int) -> bool:
        """Whether to checkpoint after ``step``: every ``every_steps``, and at once when a signal asked the loop to
        stop (``reftkit.runtime.interrupt``; :meth:`save` then raises ``StopRequested`` once the checkpoint is on
        disk). Every process calls it at the same step, so all agree."""
        self.stop_signal = stop_agreed()
        return (self.cfg.every_steps > 0 and step % self.cfg.every_steps == 0) or self.stop_signal is not None

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        generators: dict[str, torch.Generator],
        counters: dict[str, Any],
    ) -> None:
        """Checkpoint the stage after ``step``; keeps the newest ``keep_last``."""
        state = {"step": step, "metrics_bytes": self.log.size(), "wall": self.log.elapsed(), "counters": counters}
        trainer = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(generators),
        }

        def write(tmp: Path) -> None:
            torch.save(self.accelerator.unwrap_model(model).state_dict(), tmp / "model.pt")
            torch.save(trainer, tmp / "trainer.pt")
            (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
            write_manifest(tmp)

        if self.accelerator.is_main_process:
            write_atomically(self.dir / f"{STEP_PREFIX}{step:08d}", write)
            for old in self._step_dirs()[: -self.cfg.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        if self.stop_signal is not None:
            raise StopRequested(self.stop_signal)

    def load(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        generators: dict[str, torch.Generator],
    ) -> tuple[int, dict[str, Any]] | None:
        """Restore the newest complete checkpoint into the given objects: (its step, its counters), or None."""
        path = self._latest()
        if path is None:
            return None
        state = json.loads((path / "state.json").read_text())
        weights = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        self.accelerator.unwrap_model(model).load_state_dict(weights)
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(trainer["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(trainer["scheduler"])
        set_rng_state(trainer["rng"], generators)
        self.log.resume_at(state["metrics_bytes"], state["wall"])
        print(f"reftkit: resuming {self.dir.name} from {path} (step {state['step']})", file=sys.stderr)
        return state["step"], state["counters"]

    def load_stepwise(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: dict[str, torch.Generator],
        selection: Selection,
        guard: NonFiniteGuard,
    ) -> int:
        """For ReFT and online ST: restore the newest checkpoint with its selection and guard; the step to go
        on after (0: a fresh start)."""
        if (resumed := self.load(model, optimizer, None, generators)) is None:
            return 0
        step, counters = resumed
        selection.restore(counters["selection"])
        guard.restore(counters["guard"])
        return step

    def save_stepwise(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        generators: dict[str, torch.Generator],
        selection: Selection,
        guard: NonFiniteGuard,
    ) -> None:
        """For ReFT and online ST: checkpoint after ``step`` if one is due."""
        if self.due(step):
            counters = {"selection": selection.state(), "guard": guard.state()}
            self.save(step, model, optimizer, None, generators, counters)

    def _step_dirs(self) -> list[Path]:
        return sorted(self.dir.glob(f"{STEP_PREFIX}*"))  # zero-padded: name order is step order

    def _latest(self) -> Path | None:
        for leftover in self.dir.glob(f".{STEP_PREFIX}*"):  # temporary folders of a save that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        for path in reversed(self._step_dirs()):
            problem = verify(path)
            if problem is None:
                return path
            warn(f"skipping checkpoint {path}: {problem}")
        return None
