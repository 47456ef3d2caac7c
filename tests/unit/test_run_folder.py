"""The run folder an ``--overwrite`` builds beside the old run, the swap, and what a killed swap leaves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reftkit import run_folder
from reftkit.config.schema import ConfigError
from reftkit.run_folder import RunFolder, clean_leftovers, prepare_run_dir, swap_into_place


def _run(folder: Path, marker: str) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(marker)
    return folder


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_new_folder_is_the_run_folder_and_an_existing_run_gets_a_sibling(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    assert prepare_run_dir(fresh, overwrite=False) == fresh and fresh.is_dir()
    assert prepare_run_dir(fresh, overwrite=True) == fresh  # empty: nothing to keep
    old = _run(tmp_path / "old", "old")
    with pytest.raises(ConfigError, match="pass --overwrite"):
        prepare_run_dir(old, overwrite=False)
    assert prepare_run_dir(old, overwrite=False, resume=True) == old
    work = prepare_run_dir(old, overwrite=True)
    assert work == tmp_path / f".old.new-{os.getpid()}" and work.is_dir() and not any(work.iterdir())
    assert (old / "config.yaml").read_text() == "old"


@pytest.mark.parametrize("atomic", [True, False])
def test_the_swap_leaves_only_the_new_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, atomic: bool) -> None:
    if not atomic:
        monkeypatch.setattr(run_folder, "_exchange", lambda a, b: False)
    out = _run(tmp_path / "run", "old")
    (out / "summary.json").write_text("{}")
    work = _run(prepare_run_dir(out, overwrite=True), "new")
    folder = RunFolder(out, work)
    assert folder.here(work / "checkpoints" / "base") == out / "checkpoints" / "base"
    assert folder.here(Path("/elsewhere/model")) == Path("/elsewhere/model")
    swap_into_place(work, out)
    assert (out / "config.yaml").read_text() == "new"
    assert not (out / "summary.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_symlinked_run_folder_is_replaced_where_it_points(tmp_path: Path) -> None:
    real = _run(tmp_path / "real", "old")
    link = tmp_path / "link"
    link.symlink_to(real)
    work = _run(prepare_run_dir(link, overwrite=True), "new")
    assert work.parent == tmp_path and work.name.startswith(".real.new-")
    swap_into_place(work, link)
    assert link.is_symlink() and (link / "config.yaml").read_text() == "new"


def test_leftovers_of_a_killed_overwrite_are_cleaned_up(tmp_path: Path) -> None:
    out = _run(tmp_path / "run", "old")
    dead = _dead_pid()
    _run(tmp_path / f".run.new-{dead}", "never started")
    _run(tmp_path / f".run.old-{dead}", "already replaced")
    _run(tmp_path / f".run.new-{os.getppid()}", "a run still going")  # a live process: not ours to remove
    _run(tmp_path / f".other.new-{dead}", "another run's")
    clean_leftovers(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["run", f".run.new-{os.getppid()}", f".other.new-{dead}"]
    )
    assert (out / "config.yaml").read_text() == "old"


def test_a_swap_killed_between_its_two_renames_gets_the_old_run_back(tmp_path: Path) -> None:
    dead = _dead_pid()
    _run(tmp_path / f".run.old-{dead}", "old")  # ``run`` was renamed aside, the new one not yet into place
    _run(tmp_path / f".run.new-{dead}", "new")
    out = tmp_path / "run"
    clean_leftovers(out)
    assert (out / "config.yaml").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failure_before_the_start_removes_the_new_folder(tmp_path: Path) -> None:
    out = _run(tmp_path / "run", "old")
    folder = RunFolder(out, prepare_run_dir(out, overwrite=True))
    with pytest.raises(KeyboardInterrupt) as caught, folder.starting():
        (folder.work / "config.yaml").write_text("new")
        raise KeyboardInterrupt
    assert caught.value.old_run_kept  # type: ignore[attr-defined]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (out / "config.yaml").read_text() == "old"


@pytest.mark.parametrize("existed", [False, True])
def test_a_failure_before_the_start_of_a_new_run_leaves_nothing(tmp_path: Path, existed: bool) -> None:
    """A new run that fails to start (a model that does not load, say) takes what it wrote with it, so the same
    command runs again without --overwrite; a folder the user made empty stays, empty."""
    out = tmp_path / "run"
    if existed:
        out.mkdir()
    folder = RunFolder(out, prepare_run_dir(out, overwrite=False), fresh="was_empty" if existed else "created")
    with pytest.raises(ValueError), folder.starting():
        (folder.work / "config.yaml").write_text("new")
        (folder.work / "checkpoints" / "base").mkdir(parents=True)
        raise ValueError("no tokenizer could be loaded")
    assert [p.name for p in tmp_path.iterdir()] == (["run"] if existed else [])
    assert not existed or list(out.iterdir()) == []
    prepare_run_dir(out, overwrite=False)  # and it starts again unasked


def test_a_failure_of_a_resumed_run_keeps_it(tmp_path: Path) -> None:
    out = _run(tmp_path / "run", "old")
    folder = RunFolder(out, prepare_run_dir(out, overwrite=False, resume=True), resume=True)
    with pytest.raises(ValueError), folder.starting():
        raise ValueError("no tokenizer could be loaded")
    assert (out / "config.yaml").read_text() == "old"
