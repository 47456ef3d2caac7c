"""Ctrl-C and SIGTERM during training: stop after the current step, with its checkpoint written.

A training loop runs inside :func:`stop_after_step`. There the first SIGINT (Ctrl-C) or SIGTERM (what schedulers
such as SLURM send before a kill) only asks the loop to stop: the step in flight finishes, the loop's checkpoint
machinery writes a checkpoint at that step and raises :class:`StopRequested`, and ``--resume`` continues exactly
there. A second signal interrupts at once (``KeyboardInterrupt``), as Ctrl-C always does outside the loops. With
several processes each one gets the signal; :func:`stop_agreed` makes them all stop at the same step.

A process that inherited SIGINT as ignored (a background job of a non-interactive shell) keeps ignoring it.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from reftkit.runtime.distributed import reduce_max

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_asked: list[int] = []  # the signal that asked the loop to stop (at most one)


class StopRequested(KeyboardInterrupt):
    """Raised by a loop after it checkpointed the step it was in when a stop was asked; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _ask(signum: int, frame: FrameType | None) -> None:
    if _asked:  # the second signal: stop now
        raise KeyboardInterrupt
    _asked.append(signum)
    print(
        f"\nreftkit: {signal.Signals(signum).name}: stopping after the current step, its checkpoint written "
        "(again to stop at once)",
        file=sys.stderr,
        flush=True,
    )


@contextmanager
def stop_after_step() -> Iterator[None]:
    """Within: SIGINT/SIGTERM ask the loop to stop (see the module doc); the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread only
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, _ask)
    _asked.clear()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        _asked.clear()


def stop_asked() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _asked[0] if _asked else None


def stop_agreed() -> int | None:
    """Whether any process was asked to stop (the same answer on every process: call it at the same point of
    the same step everywhere), and by which signal."""
    return reduce_max(stop_asked() or 0) or None
