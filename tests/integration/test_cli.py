"""The ``reftkit`` command line: help everywhere, one-line errors with exit code 2, and the stages chained."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from reftkit.cli.main import main

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "argv", [["--help"], ["run", "--help"], ["sft", "--help"], ["reft", "--help"], ["eval", "--help"]]
)
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: reftkit" in capsys.readouterr().out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "reftkit.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "reft" in result.stdout


def test_stages_chain_sft_reft_eval(tmp_path, capsys):
    assert main(["sft", "--out", str(tmp_path / "sft"), "--preset", "micro"]) == 0
    sft = json.loads(capsys.readouterr().out)
    warmup = sft["warmup"]
    reft_args = ["reft", "--model", warmup, "--out", str(tmp_path / "reft"), "--preset", "micro", "reft.max_steps=1"]
    assert main(reft_args) == 0
    reft = json.loads(capsys.readouterr().out)
    assert reft["steps"] == 1 and reft["selected_step"] in (0, 1)  # max_steps stops within the epoch
    assert json.loads((tmp_path / "reft" / "summary.json").read_text()) == reft
    best = str(tmp_path / "reft" / "checkpoints" / "reft")
    assert main(["eval", "--model", best, "--split", "val", "--preset", "micro"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 16 and result["accuracy"] == reft["val_acc"]
    assert sum(result["outcomes"].values()) == 16
    assert main(["eval", "--model", best, "--split", "test", "--preset", "micro"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == reft["test_acc"]


DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (the shared datasets) is not present")
@pytest.mark.parametrize(("task", "cot"), [("svamp", "python"), ("gsm8k", "nl")])
def test_sft_and_reft_on_a_slice_of_a_real_dataset(task, cot, tmp_path, capsys):
    common = ["--preset", "micro", "--data-dir", str(DATA), "--limit", "12", f"task.name={task}", f"task.cot={cot}"]
    assert main(["sft", "--out", str(tmp_path / "sft"), *common]) == 0
    warmup = json.loads(capsys.readouterr().out)["warmup"]
    assert main(["reft", "--model", warmup, "--out", str(tmp_path / "reft"), *common]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["test_acc"] <= 1.0
    best = tmp_path / "reft" / "checkpoints" / "reft"
    for path in (warmup, best):
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(path))
    steps = [json.loads(line) for line in (tmp_path / "reft" / "metrics.jsonl").read_text().splitlines()]
    assert any(s.get("stage") == "reft" and "frac_correct" in s for s in steps)


def test_evaluation_only_task_refuses_training_before_writing(tmp_path, capsys):
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is not present")
    out = str(tmp_path / "run")
    code = main(["sft", "--out", out, "--preset", "micro", "--data-dir", str(DATA), "task.name=mathqa_mcq"])
    assert code == 2
    assert "mathqa_mcq has no training questions here" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
