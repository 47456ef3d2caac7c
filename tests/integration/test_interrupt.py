"""Ctrl-C on a training command: exit code 130 and one stderr line with the command that continues the run
(no traceback), and that command finishes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

RUN = ["--preset", "micro", "reft.epochs=4", "checkpoint.every_steps=1"]  # 12 PPO steps, each checkpointed


def _reftkit(*args: str | Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "reftkit.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a terminal's Ctrl-C, even where pytest itself runs as a background job that ignores SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _reft_steps(out: Path) -> list[int]:
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [m["step"] for m in metrics if m.get("stage") == "reft"]


def test_ctrl_c_exits_130_with_the_resume_command_which_finishes_the_run(tmp_path):
    out = tmp_path / "run"
    proc = _reftkit("run", "--out", out, *RUN)
    deadline = time.time() + 240
    while not list((out / "resume" / "reft").glob("step-*/manifest.json")):  # the first PPO checkpoint is complete
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no PPO checkpoint within 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = lines[-1]
    assert last.startswith("reftkit: interrupted; continue from its newest checkpoint with: reftkit run --out ")
    assert last.endswith(f"{out} --resume")
    assert not (out / "summary.json").exists()

    command = last.split("with: reftkit ", 1)[1].split()
    resumed = _reftkit(*command)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert json.loads((out / "summary.json").read_text())["epochs"]["reft"] == 4
    assert max(_reft_steps(out)) == 12  # every PPO step, once resumed


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_after_the_current_step_with_its_checkpoint(tmp_path, sig, code):
    """No checkpoint is due (``every_steps=0``), yet the step in flight when the signal came is checkpointed and
    the resumed run does each remaining step once."""
    out = tmp_path / "run"
    proc = _reftkit("run", "--out", out, "--preset", "micro", "reft.epochs=4", "checkpoint.every_steps=0")
    deadline = time.time() + 240
    while not ((out / "metrics.jsonl").is_file() and _reft_steps(out)):  # PPO has done its first step
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no PPO step within 240 s"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "stopping after the current step" in err, err[-3000:]
    assert err.strip().splitlines()[-1].endswith(f"{out} --resume")
    done = _reft_steps(out)
    (checkpoint,) = (out / "resume" / "reft").glob("step-*")  # the one the stop wrote
    assert int(checkpoint.name.split("-")[1]) == max(done) < 12
    resumed = _reftkit("run", "--out", out, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    steps = _reft_steps(out)
    assert sorted(steps) == list(range(1, 13)), steps  # each step once: the stopped one is not redone


def test_ctrl_c_before_the_run_folder_exists_says_to_start_again(tmp_path):
    from argparse import Namespace

    from reftkit.cli.main import _how_to_continue

    args = Namespace(command="reft", out=tmp_path / "run", model="warm up")
    assert _how_to_continue(args) == f"{tmp_path / 'run'} holds no run yet; run the command again"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")
    assert _how_to_continue(args).endswith(f"reftkit reft --model 'warm up' --out {tmp_path / 'run'} --resume")
    assert _how_to_continue(Namespace(command="sample", out=tmp_path)) == "nothing was written; run the command again"
