"""The run folder: where a run lives, how ``--overwrite`` replaces an old run without ever losing it for a new one
that does not start, and the identity (command, commit) a run records when it starts.

Pipeline level (it opens the run's trackers and reads the stages' resume folder), used by ``reftkit run`` and by
every single-stage command that writes a run folder.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reftkit.config.loading import check_out_dir
from reftkit.evaluation.sampling import write_text_atomically
from reftkit.runtime.distributed import barrier, is_main
from reftkit.runtime.trackers import TRACKERS_DIR, open_trackers
from reftkit.trainers.checkpoints import RESUME_DIR
from reftkit.trainers.common import MetricsLog


def prepare_run_dir(out: Path, overwrite: bool, resume: bool = False) -> Path:
    """The folder a run writes into until it has started (main process only; see :class:`RunFolder`).

    A new ``out`` is created and returned; with ``resume`` the existing one is returned as it is. With
    ``overwrite`` onto a folder that holds anything, ``out`` is left untouched: an empty hidden sibling
    ``.<name>.new-<pid>`` is returned, the new run is built there and swapped in by :meth:`RunFolder.started`.
    Never overwritten unasked; what an earlier, killed ``--overwrite`` left beside ``out`` is cleaned up first.
    """
    clean_leftovers(out)
    check_out_dir(out, overwrite, resume)
    if resume:
        return out
    if overwrite and out.is_dir() and any(out.iterdir()):
        work = _beside(out, "new", os.getpid())
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        return work
    out.mkdir(parents=True, exist_ok=True)
    return out


_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>new|old)-(?P<pid>\d+)")


def _beside(out: Path, kind: str, pid: int) -> Path:
    """The temporary sibling of the real folder ``out`` names (a symlinked ``out`` is replaced where it points)."""
    target = Path(os.path.realpath(out))
    return target.with_name(f".{target.name}.{kind}-{pid}")


def clean_leftovers(out: Path) -> None:
    """Undo what a killed ``--overwrite`` left beside ``out``: a new run that never started (``.new-<pid>``) is
    removed, and so is an old run already replaced (``.old-<pid>``), unless ``out`` itself is missing (killed
    between the two renames of a swap without an atomic exchange): then the old run is put back. Folders of a
    process that is still running are left alone."""
    target = Path(os.path.realpath(out))
    if not target.parent.is_dir():
        return
    found = []
    for path in target.parent.iterdir():
        match = _LEFTOVER.fullmatch(path.name)
        if match and match["name"] == target.name and not _alive(int(match["pid"])):
            found.append((match["kind"], path))
    old = sorted((p for kind, p in found if kind == "old"), key=lambda p: p.stat().st_mtime)
    if old and not target.exists():
        old.pop().rename(target)
    for _, path in found:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # our own leftovers (an earlier call in this process): nothing is using them
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, under another user
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not
    available (another system, an old kernel or C library, a file system without it)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def swap_into_place(work: Path, out: Path) -> None:
    """Put the new run ``work`` where the old run ``out`` is, then delete the old one. With an atomic exchange
    ``out`` is always one whole run, the old or the new; otherwise the old run is renamed aside first, and a
    kill between the two renames is undone by :func:`clean_leftovers`."""
    target = Path(os.path.realpath(out))
    aside = _beside(out, "old", os.getpid())
    if _exchange(work, target):
        work.rename(aside)  # the old run now; under a name that says so
    else:
        target.rename(aside)
        work.rename(target)
    shutil.rmtree(aside, ignore_errors=True)


@dataclass
class RunFolder:
    """Where a run lives (``out``) and where it is written until it has started (``work``; the same folder
    unless ``--overwrite`` replaces an existing run).

    ``--overwrite`` never loses the old run for a new one that does not start: the new run is built in a hidden
    sibling folder and :meth:`started` swaps it in once its base model is loaded, just before the first stage
    trains; only then is the old run deleted. Until that moment ``out`` is the old run, whole and untouched (a
    failure removes the new folder; a kill leaves it beside ``out`` for the next start to remove), and after it
    ``out`` holds only the new run's files: never a mix of the two.

    Why the swap comes there and not at the first checkpoint or metrics record: every stage records paths inside
    the run folder as it goes (its resume record, samples' metadata, the report), so the folder must have its
    final name before the first stage writes anything, or ``--resume`` would later look for a folder that no
    longer exists. And by then everything that can fail before training is behind us: the config, the task's
    data, building the tiny base model and loading the model the run starts from.
    """

    out: Path
    work: Path
    report_to: list[str] = field(default_factory=list)
    """Trackers (``report_to``) to open once the run is in its place: their files must not follow a rename."""
    resume: bool = False
    fresh: Literal["created", "was_empty"] | None = None
    """A new run in ``out`` itself: whether this command created the folder or found it empty. If the start
    fails, what it wrote goes, so the same command can simply be run again (no ``--overwrite`` needed)."""

    @property
    def replacing(self) -> bool:
        return self.work != self.out

    def here(self, path: Path) -> Path:
        """``path`` under ``work`` as it is once the run has its place; any other path as it is."""
        if self.replacing and path.is_relative_to(self.work):
            return self.out / path.relative_to(self.work)
        return path

    @contextmanager
    def starting(self) -> Iterator[None]:
        """The steps before :meth:`started`: if one fails, the new folder goes and ``out`` is as it was."""
        try:
            yield
        except BaseException as err:
            if self.replacing:
                if is_main():
                    shutil.rmtree(self.work, ignore_errors=True)
                if isinstance(err, KeyboardInterrupt):  # the CLI's message must not offer to resume the old run
                    err.old_run_kept = True  # type: ignore[attr-defined]
            elif self.fresh is not None and is_main():
                shutil.rmtree(self.out, ignore_errors=True)
                if self.fresh == "was_empty":
                    self.out.mkdir()
            raise

    def started(self, log: MetricsLog) -> None:
        """The run has started: it moves to ``out`` (the old run there is deleted), ``log`` follows it and its
        trackers open there."""
        if self.replacing:
            barrier()  # every process has read what it needed from the new folder
            if is_main():
                swap_into_place(self.work, self.out)
            barrier()
            log.path = self.here(log.path)
        log.trackers = open_trackers(self.report_to, self.out / TRACKERS_DIR, self.out.resolve().name,
                                     fresh=not self.resume)  # fmt: skip


def run_identity(out: Path, command: str | None, resume: bool) -> tuple[str | None, str | None]:
    """(command, commit) of the run: recorded when it starts, read back when it resumes, so a resumed run
    reports the code and command it started with."""
    path = out / RESUME_DIR / "run.json"
    if resume and path.is_file():
        known = json.loads(path.read_text())
        return known["command"], known["commit"]
    identity = {"command": command, "commit": _git_commit()}
    if is_main():
        write_text_atomically(path, json.dumps(identity) + "\n")
    return identity["command"], identity["commit"]


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (``argv`` when called through ``cli.main(argv)``), for reports and summaries."""
    return "reftkit " + shlex.join(sys.argv[1:] if argv is None else argv)
