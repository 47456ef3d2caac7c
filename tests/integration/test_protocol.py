"""The comparison protocol end to end on the micro preset: experiments/protocol/run.py trains the SFT run, evaluates
the warm-up and converged SFT on test, runs two arms from the warm-up, and `reftkit results` turns the folder into a
results.json entry with one list of test accuracies per arm (aligned with the seeds), a table and a figure. A second
run of the same command finds every job done and starts none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reftkit.cli.main import main

pytestmark = pytest.mark.integration
RUNNER = Path(__file__).parents[2] / "experiments" / "protocol" / "run.py"


def test_protocol_runs_every_arm_and_aggregates(tmp_path):
    config = tmp_path / "micro_protocol.yaml"
    config.write_text("sft: {warmup_epochs: 1, epochs: 2, patience: 1}\nreft: {epochs: 1, eval_every: 2}\n")
    out = tmp_path / "protocol"
    argv = [sys.executable, str(RUNNER), "--preset", "micro", "--config", str(config), "--out", str(out),
            "--seeds", "0", "--arms", "reft_grpo", "online_st_nogold", "--jobs", "2"]  # fmt: skip
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "FAILED" not in first.stdout and first.stdout.count("done after") == 5, first.stdout
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert "0 of 5 jobs to run" in again.stdout and "started" not in again.stdout

    docs = tmp_path / "docs"
    assert main(["results", str(out), "--docs", str(docs)]) == 0
    (entry,) = json.loads((docs / "results.json").read_text())
    assert entry["kind"] == "protocol" and entry["seeds"] == [0]
    assert entry["arms"] == ["warmup", "sft", "reft_grpo", "online_st_nogold"]
    for arm in entry["arms"]:
        (accuracy,) = entry[f"{arm}_test"]
        assert 0.0 <= accuracy <= 1.0
    grpo = json.loads((out / "seed0" / "reft_grpo" / "summary.json").read_text())
    assert entry["reft_grpo_test"] == [grpo["test_acc"]]
    assert entry["selected"]["reft_grpo"] == [f"step {grpo['selected_step']} of {grpo['steps']}"]
    sft_test = json.loads((out / "seed0" / "sft" / "test_sft.json").read_text())
    assert entry["sft_test"] == [sft_test["accuracy"]] and sft_test["split"] == "test"
    curve = entry["curves"]["reft_grpo"][0]
    assert [round(p[1], 4) for p in curve][:2] == [0.0, round(2 * 8 / 48, 4)]  # epochs: 2 steps x 8 of 48 questions
    assert (docs / "img" / "protocol_val_curves.png").stat().st_size > 10_000
    markdown = (docs / "results.md").read_text()
    assert "| ReFT, GRPO (`reft_grpo`) |" in markdown and "reft.advantage=grpo" in markdown
