"""The protocol runner's bookkeeping: the command that resumes a started job, and protocol.json kept whole when a
second runner adds arms to the same folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from reftkit.evaluation.report import PROTOCOL_ARM_NAMES

RUNNER = Path(__file__).parents[2] / "experiments" / "protocol" / "run.py"
_spec = importlib.util.spec_from_file_location("protocol_runner", RUNNER)
runner = importlib.util.module_from_spec(_spec)
sys.modules["protocol_runner"] = runner  # its dataclasses look their module up
_spec.loader.exec_module(runner)


def test_resume_argv_drops_every_config_argument():
    start = ["reft", "--model", "/r/warmup", "--out", "/r/seed0/reft_rloo"]
    argv = [*start, "--preset", "default", "--config", "p.yaml", "seed=0", "--data-dir", "../shared/data",
            "reft.advantage=rloo", "reft.lr=1e-4"]  # fmt: skip
    assert runner.resume_argv(argv) == [*start, "--resume"]
    sft = ["sft", "--out", "/r/a=b"]  # a path with '=' in it is no override
    assert runner.resume_argv([*sft, "--config", "p.yaml"]) == [*sft, "--resume"]


def _record(arms, seeds, commit, config="seed: 0\n"):
    commands = {f"seed{s}/{a}": f"reftkit {a}" for s in seeds for a in arms}
    return {"config_text": config, "preset": "default", "arms": arms, "seeds": seeds, "commit": commit,
            "cpu_flags": ["avx2"], "commands": commands}  # fmt: skip


def test_a_second_runner_adds_to_protocol_json(tmp_path):
    path = tmp_path / "protocol.json"
    first = runner.merge_record(path, _record(["reft_rloo", "online_st"], [0, 1, 2], "aaa"))
    path.write_text(json.dumps(first))
    merged = runner.merge_record(path, _record(["reft_rloo_k2", "reft_rloo"], [2, 3], "bbb"))
    assert merged["arms"] == ["reft_rloo", "online_st", "reft_rloo_k2"]
    assert merged["seeds"] == [0, 1, 2, 3]
    assert merged["commit"] == "aaa" and merged["commits"] == ["aaa", "bbb"]
    assert "seed0/online_st" in merged["commands"] and "seed3/reft_rloo_k2" in merged["commands"]


def test_another_config_is_refused(tmp_path):
    path = tmp_path / "protocol.json"
    path.write_text(json.dumps(runner.merge_record(path, _record(["reft_rloo"], [0], "aaa"))))
    with pytest.raises(SystemExit, match="another config"):
        runner.merge_record(path, _record(["reft_rloo"], [0], "bbb", config="seed: 1\n"))


def test_long_arms_train_four_times_the_budget(tmp_path):
    config = Path(__file__).parents[2] / "experiments" / "protocol" / "default.yaml"  # reft: epochs 2, eval_every 21
    jobs = runner.jobs_for(config, tmp_path, 0, ["reft_rloo", "reft_rloo_4x", "online_st_nogold_4x"], None,
                           "default", 126)  # fmt: skip
    argv = {job.name.split("/")[1]: job.argv for job in jobs}
    assert "reft.max_steps=126" in argv["reft_rloo"]
    assert {"reft.max_steps=504", "reft.epochs=8", "reft.eval_every=42", "reft.advantage=rloo",
            "reft.samples_per_question=4", "reft.questions_per_step=8"} <= set(argv["reft_rloo_4x"])  # fmt: skip
    assert {"reft.epochs=8", "reft.eval_every=42", "self_training.online_gold=false"} <= set(
        argv["online_st_nogold_4x"]
    )
    assert not any(a.startswith("reft.max_steps") for a in argv["online_st_nogold_4x"])


def fake_job(name: str, command: str = "reft", ready: bool = True, taken: bool = False):
    return SimpleNamespace(name=name, argv=[command], ready=lambda: ready, taken=lambda: taken)


def test_jobs_another_runner_runs_count_against_the_cores():
    queue = [fake_job("a"), fake_job("b"), fake_job("c"), fake_job("sft", "sft"), fake_job("d", taken=True)]
    assert [job.name for job in runner.to_start(queue, running=0, jobs=2)] == ["sft"]  # d holds the other core
    assert runner.to_start(queue, running=1, jobs=2) == []
    assert runner.to_start(queue, running=2, jobs=1) == []  # more running than allowed: none, not "all but one"
    assert [job.name for job in runner.to_start(queue[:4], running=0, jobs=3)] == ["sft", "a", "b"]
    assert runner.to_start([fake_job("x", ready=False)], running=0, jobs=2) == []


def test_every_arm_has_a_name_in_the_results_tables():
    assert set(runner.ARMS) <= set(PROTOCOL_ARM_NAMES)
