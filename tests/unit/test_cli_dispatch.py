"""The CLI's wiring: every verb the parser offers is handled, and ``reftkit run``'s stages are timed as they run."""

import time

from reftkit.cli.main import STAGE_COMMANDS
from reftkit.cli.parser import build_parser
from reftkit.pipeline import Run

HANDLED_BEFORE_THE_TABLE = {"data", "config", "model", "results"}  # see cli.main._dispatch


def test_every_verb_has_a_handler() -> None:
    verbs = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert verbs == set(STAGE_COMMANDS) | HANDLED_BEFORE_THE_TABLE
    assert not set(STAGE_COMMANDS) & HANDLED_BEFORE_THE_TABLE


def test_a_stage_is_timed_from_when_it_started_and_only_once_it_finished() -> None:
    run = Run.__new__(Run)  # only the timings are used here
    run.stage_seconds = {}
    with run.timed("sft", since=time.time() - 10):
        assert run.stage_seconds == {}
    assert 10 <= run.stage_seconds["sft"] < 60
    try:
        with run.timed("test"):
            raise RuntimeError
    except RuntimeError:
        pass
    assert list(run.stage_seconds) == ["sft"]
