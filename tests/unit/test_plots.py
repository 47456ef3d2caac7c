import json

from reftkit.evaluation.plots import FIGURES, plot_run, rolling_mean


def test_rolling_mean_uses_what_is_there_at_the_start():
    assert rolling_mean([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    assert rolling_mean([2.0], 10) == [2.0]


def test_plot_run_writes_only_panels_with_data(tmp_path):
    records = [{"stage": "reft", "step": i, "epoch": i / 40, "reward": i % 3, "kl": 0.1 * i} for i in range(1, 41)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    written = {p.name for p in plot_run(tmp_path)}
    assert written == {"reward.png", "kl.png"}
    assert (tmp_path / "plots" / "kl.png").read_bytes()[:4] == b"\x89PNG"


def _height(path):
    import matplotlib.image

    return matplotlib.image.imread(path).shape[0]


def test_losses_get_a_panel_each_and_x_axes_say_what_they_count(tmp_path):
    sft = [{"stage": "sft", "step": i, "epoch": i / 4, "loss": 6.0 / i} for i in range(1, 9)]
    reft = [{"stage": "reft", "step": i, "epoch": 2 + i / 4, "policy_loss": 0.01, "value_loss": 0.1} for i in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*sft, *reft]))
    plot_run(tmp_path)
    three = _height(tmp_path / "plots" / "losses.png")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    plot_run(tmp_path)
    assert three > 2.5 * _height(tmp_path / "plots" / "losses.png")  # SFT loss, policy loss, value loss: 3 panels
    losses = FIGURES["losses.png"]
    assert [p.title for p in losses] == ["SFT loss", "PPO policy loss", "PPO value loss"]
    for panels in FIGURES.values():
        for panel in panels:
            assert ("PPO step" in panel.xlabel) == (panel.x == "step")  # the label names what x counts
            if all(stage == "reft" for stage, _, _ in panel.series):  # ReFT-only curves: against PPO steps
                assert panel.x == "step"
    assert "epoch" in losses[0].xlabel and "SFT" in losses[0].xlabel
