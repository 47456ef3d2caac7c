"""``--overwrite`` never loses the old run for a new one that does not start: the new run is built beside it
and swapped in once its model is loaded; a kill or a failure before that leaves the old run byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reftkit import stages
from reftkit.cli.main import main

pytestmark = pytest.mark.integration

OLD = ["--preset", "micro", "checkpoint.every_steps=1"]
NEW = ["--preset", "micro", "checkpoint.every_steps=1", "seed=1", "methods=sft"]  # fewer files than the old run


def _reftkit(*args: str | Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "reftkit.cli", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _tree(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``: files by SHA-256, folders as "dir"."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished micro run (SFT and ReFT, summary, report and plots)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = _reftkit("run", "--out", out, *OLD)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert {"summary.json", "report.md", "plots/reward.png", "checkpoints/reft/model.safetensors"} <= set(_tree(out))
    return out


@pytest.fixture
def old_run(finished: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out, _tree(out)


def test_killed_before_the_new_run_starts_leaves_the_old_run_whole(old_run: tuple[Path, dict[str, str]]) -> None:
    """SIGKILL at random moments in its first seconds (imports, config, data), each moved up to the moment the
    new run's folder appears beside the old one if that comes first, and once right then (config written, base
    model being built or loaded): the swap comes only after the model is loaded, so each kill precedes it."""
    out, before = old_run
    rng = random.Random(int(time.time()))
    killed = []
    for delay in [rng.uniform(0.2, 3.0) for _ in range(3)] + [0.0]:
        proc = _reftkit("run", "--out", out, "--overwrite", *NEW)
        deadline = time.time() + (delay or 120)
        while time.time() < deadline and not [name for name in _leftovers(out) if ".new-" in name]:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.002)
        assert delay or time.time() < deadline, "the new run's folder never appeared"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed.append(proc.pid)
        assert _tree(out) == before, f"killed after {delay:.2f} s"
    # the last one was killed while the new run was being built; the next start removes what it left
    assert f".run.new-{killed[-1]}" in _leftovers(out)
    assert set(_leftovers(out)) <= {f".run.new-{pid}" for pid in killed}


def test_a_model_that_fails_to_load_leaves_the_old_run_whole(
    old_run: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out, before = old_run

    def broken(path: str | Path, tokenizer: object, *dtype: object) -> None:
        assert Path(path).parent.parent.name.startswith(".run.new-")  # the new run's own base model, beside
        raise RuntimeError("model.safetensors: truncated")

    monkeypatch.setattr(stages, "load_causal_lm", broken)
    with pytest.raises(RuntimeError, match="truncated"):
        main(["run", "--out", str(out), "--overwrite", *NEW])
    assert _tree(out) == before
    assert _leftovers(out) == []

    def interrupted(path: str | Path, tokenizer: object, *dtype: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "load_causal_lm", interrupted)
    assert main(["run", "--out", str(out), "--overwrite", *NEW]) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"reftkit: interrupted; the new run had not started, so {out} still holds the old run, " + (
        "untouched; run the command again"
    )
    assert _tree(out) == before
    assert _leftovers(out) == []


def test_a_finished_overwrite_holds_only_the_new_run(old_run: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    out, before = old_run
    (out / "notes.txt").write_text("the user's own file in the old run folder\n")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".run.new-{int(dead.stdout)}"  # what a killed --overwrite leaves (its process is gone)
    (stale / "checkpoints").mkdir(parents=True)
    proc = _reftkit("run", "--out", out, "--overwrite", *NEW)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    after = _tree(out)
    assert _leftovers(out) == []
    assert json.loads((out / "summary.json").read_text())["methods"] == ["sft"]
    assert "seed: 1" in (out / "config.yaml").read_text()
    old_only = {"notes.txt", "plots/reward.png", "plots/kl.png", "checkpoints/reft", "resume/reft"}
    assert not old_only & set(after), old_only & set(after)
    for name in ("config.yaml", "summary.json", "report.md", "metrics.jsonl", "checkpoints/warmup/model.safetensors"):
        assert after[name] != before[name], f"{name} is the old run's"
    for text in (out / "report.md", out / "resume" / "sft" / "done" / "result.json", out / "resume" / "run.json"):
        assert ".new-" not in text.read_text()  # the new run names its final folder, never the temporary one
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in lines} <= {"sft", "sft_eval", "test"}, "old ReFT records kept in metrics.jsonl"


def test_overwrite_refuses_a_model_inside_the_run_it_replaces(
    old_run: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, before = old_run
    warmup = out / "checkpoints" / "warmup"
    assert main(["reft", "--model", str(warmup), "--out", str(out), "--overwrite", "--preset", "micro"]) == 2
    assert f"--model: {warmup} is inside --out {out}, which --overwrite replaces" in capsys.readouterr().err
    assert _tree(out) == before
