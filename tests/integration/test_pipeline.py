"""The whole pipeline on the ``micro`` preset: every artefact a user keeps, loadable and reproducible."""

import json

import pytest
from transformers import AutoModelForCausalLM

from reftkit.config.loading import load_config
from reftkit.pipeline import run_pipeline

pytestmark = pytest.mark.integration

REFT_FIGURES = {
    "reward", "frac_correct", "frac_wrong", "frac_no_answer", "kl", "policy_loss", "value_loss",
    "clipfrac", "explained_variance", "response_length",
}  # fmt: skip


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro")
    summary = run_pipeline(load_config("micro"), out, overwrite=True, command="pytest micro")
    return out, summary


def test_summary_has_every_stage_as_fractions(micro_run):
    out, summary = micro_run
    assert json.loads((out / "summary.json").read_text()) == summary
    for key in ("task", "cot", "seed", "wall_seconds"):
        assert key in summary
    for stage in ("warmup", "sft", "reft"):
        for split in ("val_acc", "test_acc"):
            assert 0.0 <= summary[stage][split] <= 1.0
    assert summary["epochs"] == {"warmup": 1, "sft": 1, "reft": 1}


def test_checkpoints_are_plain_hf_directories(micro_run):
    out, _ = micro_run
    for name in ("warmup", "sft", "reft", "reft_last"):
        model = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / name)
        assert model.config.model_type == "llama"
    assert (out / "checkpoints" / "reft" / "value_head.safetensors").is_file()


def test_metrics_plots_and_report(micro_run):
    out, _ = micro_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    stages = {r["stage"] for r in records}
    assert {"sft", "sft_eval", "reft", "reft_eval", "test"} <= stages
    reft = [r for r in records if r["stage"] == "reft"]
    assert set(reft[0]) >= REFT_FIGURES
    assert reft[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-2)  # the first PPO ratio starts at 1
    classes = ("frac_correct", "frac_wrong", "frac_no_answer", "frac_error", "frac_timeout")
    for r in reft:
        assert sum(r[c] for c in classes) == pytest.approx(1.0)
    for name in ("reward", "kl", "accuracy", "length", "val_vs_time"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| ReFT |" in report and "pytest micro" in report
    assert not (out / "trackers").exists()  # no report_to, no tracker logs


def test_same_seed_same_run(micro_run, tmp_path):
    out, summary = micro_run
    again = run_pipeline(load_config("micro"), tmp_path / "again", command="pytest micro")

    def figures(path):
        return [{k: v for k, v in json.loads(line).items() if k not in ("wall", "step_seconds")}
                for line in (path / "metrics.jsonl").read_text().splitlines()]  # fmt: skip

    assert figures(tmp_path / "again") == figures(out)
    for stage in ("warmup", "sft", "reft"):
        assert again[stage] == summary[stage]
