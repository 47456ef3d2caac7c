"""Experiment trackers (``report_to``): TensorBoard, W&B, ... through ``accelerate``'s tracker classes.

They get the same figures as ``metrics.jsonl`` (see ``reftkit.trainers.common.MetricsLog``), from the main process
only, tagged ``<stage>/<figure>`` at the record's step. The trackers are made here without an ``Accelerator``, so
the metrics log works the same with or without one.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from reftkit.config.schema import ConfigError

PROJECT = "reftkit"
TRACKERS_DIR = "trackers"
# report_to name -> the pip package that provides it
PACKAGES = {
    "tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "comet_ml": "comet-ml", "aim": "aim",
    "mlflow": "mlflow", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
}  # fmt: skip
# figures that name what a record is about (the model and test set of a ``test`` record): part of the tag
QUALIFIERS = ("model", "test_set")


def check_trackers(names: Iterable[str]) -> None:
    """A ConfigError (one line) for a tracker whose package is not installed."""
    names = list(names)
    if not names:
        return
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in PACKAGES:
            raise ConfigError(f"report_to: unknown tracker {name!r}; choose from {', '.join(PACKAGES)}")
        if name not in available:
            extra = f"'reftkit[{name}]' or " if name == "tensorboard" else ""
            raise ConfigError(
                f"report_to: {name} needs the {PACKAGES[name]} package, which is not installed; pip install "
                f"{extra}{PACKAGES[name]}, or drop {name} from report_to"
            )


def open_trackers(names: Sequence[str], folder: Path, run_name: str, fresh: bool = True) -> list[Any]:
    """Started ``accelerate`` trackers (``GeneralTracker``) for ``names``, local logs under ``folder``
    (TensorBoard: ``folder/tensorboard``); none on processes other than the main one. ``fresh`` (a new run, not a
    resumed one) first removes what an earlier run left in ``folder``."""
    from reftkit.runtime.distributed import is_main

    if not is_main():
        return []
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    if not names:
        return []
    check_trackers(names)
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    folder.mkdir(parents=True, exist_ok=True)
    trackers = []
    for name in dict.fromkeys(names):
        cls = LOGGER_TYPE_TO_CLASS[name]
        if name == "tensorboard":  # events straight under folder/tensorboard
            tracker = cls("tensorboard", str(folder))
        elif name == "wandb":
            tracker = cls(PROJECT, name=run_name, dir=str(folder))
        elif cls.requires_logging_directory:
            tracker = cls(PROJECT, str(folder / name))
        else:
            tracker = cls(PROJECT)
        tracker.start()
        trackers.append(tracker)
    return trackers


def tracker_values(stage: str, figures: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite figures of one record as ``<stage>/<figure>`` tags (``<stage>/<model>/<test_set>/...``
    for records about one model); text figures (a skip's reason) and missing values are left out."""
    prefix = "/".join([stage, *(str(figures[q]) for q in QUALIFIERS if isinstance(figures.get(q), str))])
    values = {}
    for key, value in figures.items():
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int | float) and math.isfinite(value):
            values[f"{prefix}/{key}"] = value
    return values
