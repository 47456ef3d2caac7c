"""A run killed with SIGKILL, during PPO or while it writes a checkpoint, resumes and ends exactly as a run
that was never interrupted: the same summary figures, metrics and bit-identical weights."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# The micro preset with 12 PPO steps (48 questions, 16 per step, 4 epochs) and a checkpoint after every step.
RUN = ["--preset", "micro", "reft.epochs=4", "checkpoint.every_steps=1"]
PPO_STEPS = 12
TIMING = {"wall_seconds", "stage_seconds", "command"}  # clock readings, and the --out path in the command

# Runs reftkit, but SIGKILLs itself while writing the second PPO checkpoint: its files are there, its
# manifest (written last) is not.
DIE_WHILE_SAVING = """
import os, signal, sys
from reftkit.trainers import checkpoints
real, seen = checkpoints.write_manifest, []
def write_manifest(folder):
    if folder.parent.name == "reft" and folder.name.startswith(".step-"):
        seen.append(folder)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    real(folder)
checkpoints.write_manifest = write_manifest
from reftkit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _reftkit(*args: str | Path, script: str | None = None) -> subprocess.Popen[str]:
    head = ["-c", script] if script else ["-m", "reftkit.cli"]
    return subprocess.Popen(
        [sys.executable, *head, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )


def _finish(proc: subprocess.Popen[str]) -> str:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    _finish(_reftkit("run", "--out", out, *RUN))
    return out


def _ppo_steps_logged(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}") and '"stage": "reft"' in line]
    return max(steps, default=0)


def _assert_same_run(resumed: Path, reference: Path) -> None:
    a, b = (json.loads((run / "summary.json").read_text()) for run in (resumed, reference))
    for key in (set(a) | set(b)) - TIMING:
        if key == "val_curves":  # [seconds, accuracy] pairs: the accuracies must agree
            a[key], b[key] = ({arm: [acc for _, acc in curve] for arm, curve in s[key].items()} for s in (a, b))
        assert a.get(key) == b.get(key), key
    records = [
        [{k: v for k, v in json.loads(line).items() if k not in ("wall", "step_seconds")} for line in lines]
        for lines in ((run / "metrics.jsonl").read_text().splitlines() for run in (resumed, reference))
    ]
    assert records[0] == records[1]  # every step logged once, with the same figures

    def digests(run: Path) -> dict[str, str]:
        files = sorted(p for p in (run / "checkpoints").rglob("*") if p.is_file())
        return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    assert digests(resumed) == digests(reference)  # weights of every kept model, bit for bit


def test_sigkill_at_a_random_point_of_ppo_then_resume_is_exact(uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    target = random.randint(1, PPO_STEPS - 2)
    proc = _reftkit("run", "--out", out, *RUN)
    deadline = time.time() + 600
    while _ppo_steps_logged(out) < target:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(random.uniform(0, 0.5))  # anywhere inside the next step: rollout, update or checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (out / "summary.json").exists(), f"the run ended before the kill (target step {target})"

    err = _finish(_reftkit("run", "--out", out, "--resume"))
    assert "resuming reft from" in err, err[-2000:]
    _assert_same_run(out, uninterrupted)


def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _reftkit("run", "--out", out, *RUN, script=DIE_WHILE_SAVING)
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    reft = out / "resume" / "reft"
    assert [p.name for p in reft.iterdir() if p.name.startswith(".step-")], "the half-written checkpoint is gone"

    err = _finish(_reftkit("run", "--out", out, "--resume"))
    assert f"resuming reft from {reft / 'step-00000001'} (step 1)" in err, err[-2000:]
    assert not [p for p in reft.iterdir() if p.name.startswith(".")]  # leftovers of the killed write removed
    _assert_same_run(out, uninterrupted)
