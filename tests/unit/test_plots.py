import json

from reftkit.plots import plot_run, rolling_mean


def test_rolling_mean_uses_what_is_there_at_the_start():
    assert rolling_mean([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    assert rolling_mean([2.0], 10) == [2.0]


def test_plot_run_writes_only_panels_with_data(tmp_path):
    records = [{"stage": "reft", "step": i, "epoch": i / 40, "reward": i % 3, "kl": 0.1 * i} for i in range(1, 41)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    written = {p.name for p in plot_run(tmp_path)}
    assert written == {"reward.png", "kl.png"}
    assert (tmp_path / "plots" / "kl.png").read_bytes()[:4] == b"\x89PNG"
