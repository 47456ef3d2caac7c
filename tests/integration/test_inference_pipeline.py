"""All four methods in one run, sampled-chain metrics in its report, and the sample → rm → eval commands."""

import json

import pytest
from transformers import AutoModelForSequenceClassification

from reftkit.cli.main import main
from reftkit.config.loading import load_config
from reftkit.data.base import target_text
from reftkit.data.registry import load_task
from reftkit.evaluation.sampling import Sample, read_samples, write_samples
from reftkit.pipeline import run_pipeline

pytestmark = pytest.mark.integration

OVERRIDES = ["methods=sft,offline-st,online-st,reft", "sample.n=4", "sample.train_n=2", "rm.enabled=true"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("methods")
    summary = run_pipeline(load_config("micro", None, OVERRIDES), out, overwrite=True, command="pytest methods")
    return out, summary


def test_every_method_is_trained_selected_and_tested(run):
    out, summary = run
    assert summary["methods"] == ["sft", "offline-st", "online-st", "reft"]
    for name, unit in (("sft", "epoch"), ("offline_st", "epoch"), ("online_st", "step"), ("reft", "step")):
        assert 0 <= summary[name]["test_acc"] <= 1 and f"selected_{unit}" in summary[name]
        assert (out / "checkpoints" / name / "config.json").is_file()
        assert (out / "checkpoints" / f"{name}_last" / "config.json").is_file()
    stages = {json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert {"offline_st", "offline_st_eval", "online_st", "online_st_eval", "inference"} <= stages


def test_sampled_metrics_reach_summary_report_and_plot(run):
    out, summary = run
    inference = summary["inference"]
    assert inference["n"] == 4 and inference["k"] == [1, 2, 4]
    assert set(inference["methods"]) == {"sft", "offline_st", "online_st", "reft"}
    for row in inference["methods"].values():
        assert len(row["vote"]) == len(row["pass"]) == 3
        assert row["pass"] == sorted(row["pass"])  # pass@k never falls with k
    samples, meta = read_samples(out / "samples" / "test_reft.jsonl")
    assert len(samples) == 4 * 16 and meta["n"] == 4
    train, _ = read_samples(out / "samples" / "warmup_train_val.jsonl")
    assert len(train) == 2 * (48 + 16)
    assert all(v > 0 for v in summary["samples_per_second"].values())
    report = (out / "report.md").read_text()
    assert "| method | greedy | vote@4 |" in report and "pytest methods" in report
    assert "| online self-training |" in report and "| offline self-training |" in report
    # nothing learns in the micro preset, so the reward model has one label class: skipped, said so
    assert "skipped" in inference["rm"] and "No reranking" in report
    assert (out / "plots" / "inference.png").read_bytes()[:4] == b"\x89PNG"


def test_sample_rm_and_eval_commands(run, tmp_path, capsys):
    out, _ = run
    micro = ["--preset", "micro"]
    test_file = tmp_path / "test.jsonl"
    assert (
        main(["sample", *micro, "--model", str(out / "checkpoints" / "sft"), "--n", "2", "--out", str(test_file)]) == 0
    )
    assert len(read_samples(test_file)[0]) == 2 * 16
    # reward-model data with both labels: gold chains (correct) and a constant wrong program per question
    data = load_task(load_config("micro").task)

    def labelled(problems):
        rows = []
        for p in problems:
            rows.append(Sample(p.id, 0, target_text(p, "python"), float(p.answer), "correct", -1.0, 9, p.answer))
            rows.append(Sample(p.id, 1, "    result = 0\n    return result", 0.0, "wrong", -1.0, 9, p.answer))
        return rows

    write_samples(tmp_path / "train.jsonl", labelled(data.train), {})
    write_samples(tmp_path / "val.jsonl", labelled(data.val), {})
    rm_dir = tmp_path / "rm"
    rm_args = ["rm", *micro, "--model", str(out / "checkpoints" / "sft"), "--samples", str(tmp_path / "train.jsonl")]
    assert main([*rm_args, "--val-samples", str(tmp_path / "val.jsonl"), "--out", str(rm_dir), "rm.epochs=1"]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    assert model.config.num_labels == 2
    capsys.readouterr()
    assert main(["eval", *micro, "--samples", str(test_file), "--rm", str(rm_dir)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed[: printed.rindex("}") + 1])
    (row,) = result["methods"].values()
    assert set(row) == {"vote", "pass", "rerank"} and len(row["rerank"]) == 2
    assert "rerank@2" in printed
    assert (tmp_path / "test.curves.png").is_file()


def test_eval_options_that_need_samples_fail_clearly(run, capsys):
    out, _ = run
    code = main(["eval", "--preset", "micro", "--model", str(out / "checkpoints" / "sft"), "--rm", "x"])
    assert code == 2
    assert "--rm" in capsys.readouterr().err
