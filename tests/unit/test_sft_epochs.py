"""SFT's pieces around its loop: the epoch plan, the selection across epochs (and what a checkpoint keeps of it),
and the AdamW + linear schedule that SFT and the reward model share."""

import json
from pathlib import Path

import pytest
import torch

from reftkit.config.schema import RunConfig, SFTConfig
from reftkit.trainers.common import MetricsLog, NonFiniteGuard
from reftkit.trainers.sft import SFTResult, _epoch_plan, _Epochs, adamw_with_schedule


def test_the_warmup_run_trains_warmup_then_continued_epochs() -> None:
    config = RunConfig()
    config.sft.warmup_epochs, config.sft.epochs, config.reft.epochs = 2, 5, 9
    assert _epoch_plan(config, "sft", epochs=None) == (2, 7)
    config.sft.epochs = None  # the same budget as ReFT
    assert _epoch_plan(config, "sft", epochs=3) == (2, 11)
    assert _epoch_plan(config, "offline-st", epochs=4) == (None, 4)
    with pytest.raises(ValueError, match="needs epochs"):
        _epoch_plan(config, "offline-st", epochs=None)


def _epochs() -> _Epochs:
    return _Epochs(SFTResult(Path("w"), Path("b"), Path("l"), best_epoch=-1))


def test_selection_starts_at_the_warmup_and_keeps_the_first_of_equals() -> None:
    epochs = _epochs()
    news = [epochs.record(e, acc, first=2) for e, acc in [(1, 0.9), (2, 0.3), (3, 0.5), (4, 0.5), (5, 0.4)]]
    assert news == [False, True, True, False, False]  # epoch 1 is before the warm-up: recorded, never selected
    assert epochs.result.val_history == {1: 0.9, 2: 0.3, 3: 0.5, 4: 0.5, 5: 0.4}
    assert (epochs.best, epochs.result.best_epoch) == (0.5, 3)
    assert not epochs.converged(5, patience=3, first=2)  # 5 - 3 = 2 epochs without a better one
    assert epochs.converged(6, patience=3, first=2)
    assert not epochs.converged(100, patience=None, first=2)


def test_counters_restore_the_selection_from_json(tmp_path: Path) -> None:
    guard = NonFiniteGuard(3, MetricsLog(tmp_path / "m.jsonl"), "sft")
    epochs = _epochs()
    epochs.record(1, 0.25, first=1)
    epochs.loss = 1.5
    counters = epochs.counters(guard)
    assert list(counters) == ["best", "best_epoch", "epoch_loss", "val_history", "guard"]  # the checkpoint's keys
    restored = _epochs()
    restored.restore(json.loads(json.dumps(counters)), guard)  # as a checkpoint keeps them
    assert (restored.best, restored.loss, restored.result.best_epoch) == (0.25, 1.5, 1)
    assert restored.result.val_history == {1: 0.25}  # int keys again


def test_the_schedule_warms_up_linearly_then_decays_to_zero() -> None:
    cfg = SFTConfig(lr=1.0, lr_warmup_ratio=0.2, weight_decay=0.5)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer, scheduler = adamw_with_schedule([weight], cfg, total_steps=10)  # 2 warm-up steps
    assert optimizer.defaults["eps"] == 1e-8 and optimizer.defaults["weight_decay"] == 0.5
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
