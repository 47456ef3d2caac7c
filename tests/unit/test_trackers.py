"""report_to: the figures of metrics.jsonl reach accelerate's trackers from the metrics log, tagged <stage>/<figure>."""

import json

import pytest

from reftkit.cli.main import main
from reftkit.config.schema import ConfigError
from reftkit.runtime.trackers import check_trackers, open_trackers, tracker_values
from reftkit.trainers.common import MetricsLog


class FakeTracker:
    def __init__(self):
        self.logged, self.finished = [], False

    def log(self, values, step=None):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def test_tags_are_stage_slash_figure_and_only_numbers():
    values = tracker_values("reft", {"reward": 0.5, "kl": None, "reason": "non-finite loss", "ok": True, "n": 3})
    assert values == {"reft/reward": 0.5, "reft/ok": 1, "reft/n": 3}
    test = tracker_values("test", {"model": "sft_last", "test_set": "gsm8k", "test_acc": 0.25})
    assert test == {"test/sft_last/gsm8k/test_acc": 0.25}


def test_metrics_log_feeds_its_trackers_the_same_figures(tmp_path):
    tracker = FakeTracker()
    log = MetricsLog(tmp_path / "metrics.jsonl", trackers=[tracker])
    log.write("reft", 3, reward=0.5, kl=float("nan"), reason="x")
    log.write("reft_skipped", 4, reason="non-finite loss")  # nothing numeric: no tracker call
    assert tracker.logged == [(3, {"reft/reward": 0.5})]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["kl"] is None
    log.close()
    assert tracker.finished and log.trackers == []


def test_no_trackers_asked_none_made(tmp_path):
    assert open_trackers([], tmp_path / "trackers", "run") == []
    assert not (tmp_path / "trackers").exists()


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tracker,) = open_trackers(["tensorboard"], tmp_path / "trackers", "run")
    log = MetricsLog(tmp_path / "metrics.jsonl", trackers=[tracker])
    for step in (1, 2):
        log.write("sft", step, loss=6.0 / step)
    log.close()
    events = EventAccumulator(str(tmp_path / "trackers" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("sft/loss")] == [(1, 6.0), (2, 3.0)]


def test_missing_tracker_package_is_one_line(tmp_path, monkeypatch, capsys):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ConfigError, match=r"report_to: tensorboard needs the tensorboard package.*reftkit\[tensor"):
        check_trackers(["tensorboard"])
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--preset", "micro", "report_to=[tensorboard]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install" in err
    assert not out.exists()
