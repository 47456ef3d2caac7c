"""Task registry: a name in the config becomes a ``TaskData`` with train / validation / test splits."""

from __future__ import annotations

from reftkit.config import ConfigError, TaskConfig
from reftkit.tasks.base import TaskData


def load_task(cfg: TaskConfig) -> TaskData:
    if cfg.name == "synthetic":
        from reftkit.tasks.synthetic import load_synthetic

        return load_synthetic(
            cot=cfg.cot,
            n_train=cfg.n_train,
            n_val=cfg.n_val,
            n_test=cfg.n_test,
            seed=cfg.data_seed,
            max_ops=cfg.max_ops,
        )
    raise ConfigError(f"task.name: unknown task {cfg.name!r}; available: synthetic")
