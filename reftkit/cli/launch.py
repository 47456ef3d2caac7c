"""``accelerate launch --cpu --num_processes N`` as N processes (light: no torch import).

accelerate's launcher starts a single process for ``--cpu`` unless MPI is set up (accelerate issue #2741).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def cpu_relaunch(argv: Sequence[str]) -> int | None:
    """Start ``reftkit argv`` as N processes when ``accelerate launch --cpu --num_processes N`` started one.

    The launcher sets MASTER_ADDR when more than one process was asked for; then N is read from its own
    command line and the command restarted under ``torch.distributed.run``, which sets what accelerate's
    PartialState needs for a gloo process group. Returns the exit status, or None when nothing was done.
    """
    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1") or "MASTER_ADDR" not in env:
        return None
    if any(k in env for k in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")):
        return None
    n = _requested_processes(os.getppid())
    if n is None or n < 2:
        return None
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
        f"--master_addr={env['MASTER_ADDR']}", f"--master_port={env.get('MASTER_PORT', '29500')}",
        "-m", "reftkit.cli", *argv,
    ]  # fmt: skip
    return subprocess.call(command)


def _requested_processes(pid: int) -> int | None:
    """The process count of the ``accelerate launch`` command line of process ``pid`` (Linux /proc):
    ``--num_processes N``, or ``num_processes`` of its ``--config_file``."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    return processes_from_args(args)


def processes_from_args(args: list[str]) -> int | None:
    """``--num_processes N`` (or ``--num-processes=N``) of a launcher's argv, else its config file's value."""
    flags = {}
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        name = name.replace("-", "_")
        if name in ("__num_processes", "__config_file"):
            flags[name] = value if eq else (args[i + 1] if i + 1 < len(args) else "")
    if "__num_processes" in flags:
        return int(flags["__num_processes"])
    if "__config_file" in flags:
        import yaml

        config = yaml.safe_load(Path(flags["__config_file"]).read_text()) or {}
        return int(config.get("num_processes", 1))
    return None
