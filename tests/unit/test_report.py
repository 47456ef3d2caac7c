"""The markdown tables of a run's report, from a hand-made summary."""

from reftkit.evaluation.report import render_inference_table, render_table


def test_the_accuracy_table_has_one_row_per_trained_model_in_pipeline_order() -> None:
    summary = {
        "test_set": "heldout",
        "extra_test_sets": ["svamp"],
        "reft": {"selected_step": 7, "val_acc": 0.5, "test_acc": 0.25, "svamp_acc": 0.1,
                 "last": {"val_acc": 0.4, "test_acc": 0.2}},
        "warmup": {"epoch": 2, "val_acc": 0.125, "test_acc": 0.0, "svamp_acc": 0.05},
    }  # fmt: skip
    assert render_table(summary).splitlines() == [
        "| model | selected on val | val acc | heldout acc | heldout acc (last) | svamp |",
        "|---|---|---|---|---|---|",
        "| warm-up | epoch 2 | 12.5 | 0.0 | – | 5.0 |",
        "| ReFT | step 7 | 50.0 | 25.0 | 20.0 | 10.0 |",
    ]


def test_the_inference_table_shows_full_n_then_every_k() -> None:
    inference = {"n": 4, "k": [1, 4], "methods": {"reft": {"greedy": 0.5, "vote": [0.25, 0.75], "pass": [0.25, 1.0]}}}
    assert render_inference_table(inference).splitlines() == [
        "| method | greedy | vote@4 | pass@4 |",
        "|---|---|---|---|",
        "| ReFT | 50.0 | 75.0 | 100.0 |",
        "",
        "| method | metric | k=1 | k=4 |",
        "|---|---|---|---|",
        "| ReFT | vote@k | 25.0 | 75.0 |",
        "| ReFT | pass@k | 25.0 | 100.0 |",
    ]
