"""What a user on real hardware sees: the device line, bf16 weights end to end, TensorBoard curves, Hub ids."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from reftkit.cli.main import main
from reftkit.config.loading import load_config
from reftkit.data.base import prompt_text, target_text
from reftkit.data.registry import load_task
from reftkit.models.loading import build_tiny

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _dtypes(path: Path) -> set[str]:
    with safe_open(path, "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__


def test_micro_run_in_bfloat16_reports_to_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--preset", "micro", "report_to=[tensorboard]", "model.dtype=bfloat16"]) == 0
    printed = capsys.readouterr().err  # stdout stays the command's output
    assert "device cpu, 1 process, mixed precision " in printed and ", weights bfloat16" in printed
    # the weights trained and saved are bfloat16; the value head stays float32
    for name in ("warmup", "sft", "reft", "reft_last"):
        assert _dtypes(out / "checkpoints" / name / "model.safetensors") == {"BF16"}
    assert _dtypes(out / "checkpoints" / "reft" / "value_head.safetensors") == {"F32"}
    # TensorBoard holds the same series as metrics.jsonl, tagged <stage>/<figure> at each record's step
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "trackers" / "tensorboard"))
    events.Reload()
    for stage, figure in (("reft", "reward"), ("reft", "kl"), ("reft_eval", "val_acc"), ("sft_eval", "val_acc")):
        expected = [r for r in records if r["stage"] == stage]
        logged = events.Scalars(f"{stage}/{figure}")
        assert len(expected) >= 1 and [e.step for e in logged] == [r["step"] for r in expected]
        assert [e.value for e in logged] == pytest.approx([r[figure] for r in expected], rel=1e-6)  # float32 there


def _run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "reftkit.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_hub_id_resolves_from_the_local_hf_cache_or_fails_in_one_line(tmp_path):
    """A Hub id is read from an HF cache snapshot offline (HF_HOME, HF_HUB_OFFLINE=1); one that is not cached
    fails before any work with one line that names it and says how to fix it."""
    config = load_config("micro")
    data = load_task(config.task)
    texts = [prompt_text(p, "python") + target_text(p, "python") for p in data.train]
    repo = tmp_path / "hf" / "hub" / "models--someorg--tiny-math"
    commit = "0123456789abcdef0123456789abcdef01234567"
    build_tiny(texts, config.model.tiny, repo / "snapshots" / commit, seed=0)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    work = tmp_path / "work"  # no local folder someorg/tiny-math here
    work.mkdir()
    done = _run_cli(["eval", "--model", "someorg/tiny-math", "--split", "val", "--preset", "micro"], work, env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n"] == 16
    failed = _run_cli(["eval", "--model", "someorg/other-model", "--preset", "micro"], work, env)
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert failed.returncode == 2 and len(lines) == 1, failed.stderr
    assert "--model: someorg/other-model is no local folder, and the Hub id someorg/other-model could not" in lines[0]
    assert "HF_HOME" in lines[0] and "pass the folder" in lines[0]
