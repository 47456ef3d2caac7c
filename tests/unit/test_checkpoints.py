"""Checkpoints: complete or skipped with a warning, pruned to the newest few, random states restored; the
non-finite guard keeps NaN out of the weights."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from reftkit.config.schema import CheckpointConfig, TrainingError
from reftkit.trainers.checkpoints import StageCheckpoints, rng_state, set_rng_state
from reftkit.trainers.common import MetricsLog, NonFiniteGuard, apply_gradients, make_accelerator


def _trainer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.fixture
def stage(tmp_path: Path) -> StageCheckpoints:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    cfg = CheckpointConfig(every_steps=1, keep_last=2)
    return StageCheckpoints(tmp_path, "sft", cfg, log, make_accelerator("auto"))


def test_save_and_load_restore_weights_optimizer_counters_and_generators(stage: StageCheckpoints) -> None:
    model, optimizer = _trainer()
    generator = torch.Generator().manual_seed(5)
    _step(model, optimizer)
    stage.log.write("sft", 1, loss=1.0)
    stage.save(1, model, optimizer, None, {"g": generator}, {"best": 0.5, "history": {"1": 0.5}})
    expected_weights = {k: v.clone() for k, v in model.state_dict().items()}
    expected_draw = torch.rand(3, generator=generator)
    expected_global = torch.rand(2)

    _step(model, optimizer)  # what happened after the checkpoint is undone by loading it
    stage.log.write("sft", 2, loss=2.0)
    step, counters = stage.load(model, optimizer, None, {"g": generator})
    assert (step, counters) == (1, {"best": 0.5, "history": {"1": 0.5}})
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected_weights[key])
    assert torch.equal(torch.rand(3, generator=generator), expected_draw)
    assert torch.equal(torch.rand(2), expected_global)
    stage.log.write("sft", 2, loss=3.0)  # the first write after resuming cuts the log back to the checkpoint
    records = [json.loads(line) for line in stage.log.path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 3.0)]


def test_keeps_the_newest_complete_checkpoints(stage: StageCheckpoints) -> None:
    model, optimizer = _trainer()
    for step in range(1, 5):
        stage.save(step, model, optimizer, None, {}, {})
    assert sorted(p.name for p in stage.dir.iterdir()) == ["step-00000003", "step-00000004"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: (d / "model.pt").write_bytes(b"torn"), "model.pt does not match its checksum"),
        (lambda d: (d / "manifest.json").unlink(), "no readable manifest"),
        (lambda d: (d / "trainer.pt").unlink(), "trainer.pt is missing"),
    ],
)
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(stage, damage, reason, capsys) -> None:
    model, optimizer = _trainer()
    stage.save(1, model, optimizer, None, {}, {"at": 1})
    _step(model, optimizer)
    stage.save(2, model, optimizer, None, {}, {"at": 2})
    damage(stage.dir / "step-00000002")
    step, counters = stage.load(model, optimizer, None, {})
    assert (step, counters) == (1, {"at": 1})
    err = capsys.readouterr().err
    assert f"skipping checkpoint {stage.dir / 'step-00000002'}: {reason}" in err


def test_a_half_written_checkpoint_is_removed_and_ignored(stage: StageCheckpoints) -> None:
    model, optimizer = _trainer()
    stage.save(1, model, optimizer, None, {}, {})
    leftover = stage.dir / ".step-00000002.tmp-999"
    leftover.mkdir()
    (leftover / "model.pt").write_bytes(b"partial")
    assert stage.load(model, optimizer, None, {})[0] == 1
    assert not leftover.exists()


def test_finished_stage_returns_its_result_and_drops_step_checkpoints(stage: StageCheckpoints) -> None:
    model, optimizer = _trainer()
    stage.save(1, model, optimizer, None, {}, {})
    assert stage.finished() is None
    state_at_end = torch.get_rng_state()
    stage.finish({"best_epoch": 3})
    torch.rand(5)
    assert stage.finished() == {"best_epoch": 3}
    assert torch.equal(torch.get_rng_state(), state_at_end)
    assert [p.name for p in stage.dir.iterdir()] == ["done"]


def test_rng_state_round_trips_python_numpy_torch() -> None:
    state = rng_state({})
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state, {})
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path: Path) -> None:
    model, optimizer = _trainer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = MetricsLog(tmp_path / "metrics.jsonl")
    guard = NonFiniteGuard(max_in_row=3, log=log, stage="sft")
    accelerator = make_accelerator("auto")
    for step in (1, 2):
        guard.step = step
        loss = model(torch.ones(1, 3)).sum() * float("nan")
        apply_gradients(accelerator, loss, model, optimizer, 1.0, guard=guard)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])  # nothing applied
    assert guard.state() == {"in_row": 2, "skipped": 2}
    guard.step = 3
    apply_gradients(accelerator, model(torch.ones(1, 3)).sum(), model, optimizer, 1.0, guard=guard)
    assert guard.state() == {"in_row": 0, "skipped": 2}  # a good step resets the run of bad ones
    assert not torch.equal(model.weight, before["weight"])
    records = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in records] == [("sft_skipped", 1), ("sft_skipped", 2)]
    with pytest.raises(TrainingError, match="3 steps in a row with a non-finite loss or gradient norm"):
        for step in (4, 5, 6):
            guard.step = step
            apply_gradients(
                accelerator, model(torch.ones(1, 3)).sum() * float("inf"), model, optimizer, 1.0, guard=guard
            )
