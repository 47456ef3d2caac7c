"""``reftkit results``: seeds of an experiment → docs/results.json, results.md and figures that agree."""

import json
import statistics

import pytest

from reftkit.cli.main import main
from reftkit.config.loading import load_config
from reftkit.config.schema import ConfigError
from reftkit.evaluation.report import mean_std
from reftkit.evaluation.results import aggregate
from reftkit.pipeline import run_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp") / "micro_heldout"
    for seed in (0, 1):
        config = load_config("micro", overrides=[f"seed={seed}", "task.n_heldout_test=8"])
        run_pipeline(config, root / f"seed{seed}", command=f"reftkit run --preset micro seed={seed} --out X{seed}")
    return root


def test_results_json_lists_aligned_with_seeds_and_markdown_matches(experiment, tmp_path):
    docs = tmp_path / "docs"
    assert main(["results", str(experiment), "--docs", str(docs)]) == 0
    (entry,) = json.loads((docs / "results.json").read_text())
    summaries = [json.loads((experiment / f"seed{s}" / "summary.json").read_text()) for s in (0, 1)]
    assert entry["seeds"] == [0, 1] and entry["test_set"] == "heldout"
    assert "test: heldout (8)" in entry["experiment"]
    for arm in ("warmup", "sft", "reft"):
        assert entry[f"{arm}_test"] == [s[arm]["test_acc"] for s in summaries]
        assert entry[f"{arm}_synthetic_test"] == [s[arm]["synthetic_test_acc"] for s in summaries]
    assert entry["wall_seconds"] == [s["wall_seconds"] for s in summaries]
    markdown = (docs / "results.md").read_text()
    assert f"**{mean_std(entry['reft_test'])}**" in markdown and entry["command"] in markdown
    for png in ("micro_heldout_val_vs_time.png", "micro_heldout_reward_kl.png"):
        assert (docs / "img" / png).read_bytes()[:4] == b"\x89PNG"
        assert f"img/{png}" in markdown


def test_aggregating_again_replaces_only_that_experiment(experiment, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    other = {"experiment": "another", "seeds": [0], "run_dirs": [str(tmp_path / "gone" / "seed0")],
             "base_model": "m", "test_set": "test", "epochs": {"warmup": 1, "sft": 1, "reft": 1},
             "warmup_test": [0.1], "sft_test": [0.2], "reft_test": [0.3], "warmup_val": [0.1], "sft_val": [0.2],
             "reft_val": [0.3], "selected": {"sft_epoch": [1], "reft_step": [0]}, "wall_seconds": [5.0],
             "command": "c", "commits": ["x"]}  # fmt: skip
    (docs / "results.json").write_text(json.dumps([other]))
    aggregate([experiment], docs)
    entries = aggregate([experiment], docs)
    assert [e["experiment"] for e in entries].count("another") == 1 and len(entries) == 2
    assert "## another" in (docs / "results.md").read_text()


def test_seeds_run_with_different_commands_are_refused(experiment, tmp_path):
    mixed = tmp_path / "mixed"
    for seed in (0, 1):
        (mixed / f"seed{seed}").mkdir(parents=True)
        summary = json.loads((experiment / f"seed{seed}" / "summary.json").read_text())
        if seed:
            summary["command"] += " reft.lr=1e-4"
        (mixed / f"seed{seed}" / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match="different commands"):
        aggregate([mixed], tmp_path / "docs")
    with pytest.raises(ConfigError, match="no run folder"):
        aggregate([tmp_path / "empty"], tmp_path / "docs")


def test_mean_std_is_sample_std_in_percent():
    assert mean_std([0.1, 0.2, 0.3]) == f"20.0 ± {statistics.stdev([10, 20, 30]):.1f}"
    assert mean_std([0.25]) == "25.0"


def test_ablations_from_one_warmup_land_in_results(experiment, tmp_path, capsys):
    warmup = str(experiment / "seed0" / "checkpoints" / "warmup")
    run = tmp_path / "ablations" / "no_partial_reward"
    overrides = ["reft.partial_reward=false", "reft.max_steps=2", "task.n_heldout_test=8"]
    assert main(["reft", "--model", warmup, "--out", str(run), "--preset", "micro", *overrides]) == 0
    capsys.readouterr()
    docs = tmp_path / "docs"
    assert main(["results", str(experiment), "--ablations", str(run), "--docs", str(docs)]) == 0
    (ablation,) = json.loads((docs / "ablations.json").read_text())
    assert ablation["ablation"] == "no_partial_reward" and ablation["changes"] == overrides
    assert ablation["steps"] == 2 and ablation["test_set"] == "heldout" and "synthetic_test_acc" in ablation
    markdown = (docs / "results.md").read_text()
    assert "## Ablations" in markdown and "`reft.partial_reward=false`" in markdown
    assert f"| {100 * ablation['test_acc']:.1f} | {100 * ablation['synthetic_test_acc']:.1f} |" in markdown
