"""Run the comparison protocol: converged SFT, online self-training with and without gold, and ReFT arms, all from
one early warm-up per seed, for several seeds, as independent ``reftkit`` commands, ``--jobs`` at a time.

    python experiments/protocol/run.py --config experiments/protocol/default.yaml --out ~/runs/protocol \\
        --seeds 0 1 2 [--jobs 2] [--arms reft_gae reft_grpo ...]

Each job is one process with one thread (``OMP_NUM_THREADS=1``): two torch processes that share a core run
several times slower than one. A seed's SFT job writes ``seed<S>/sft`` (warm-up snapshot, best epoch); its arms
start once the warm-up snapshot exists, each in ``seed<S>/<arm>`` with ``summary.json`` (selected step, val and
test accuracy). A job whose ``summary.json`` exists is skipped, and an interrupted one continues with
``--resume``, so rerunning the same command after a stop finishes the protocol. ``protocol.json`` records the
commands, the commit and the CPU flags; ``experiments/protocol/collect.py`` turns the folder into results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from reftkit.config.loading import load_config

K4 = ["reft.samples_per_question=4", "reft.questions_per_step=8", "reft.max_steps={group_steps}"]
K2 = ["reft.samples_per_question=2", "reft.questions_per_step=16", "reft.max_steps={group_steps}"]
POS = "reft.positive_only=true"
LONG = ["reft.epochs={long_epochs}", "reft.eval_every={long_eval_every}"]  # 4x the budget, validated as often
ARMS: dict[str, tuple[str, list[str]]] = {
    "online_st": ("online-st", []),
    "online_st_nogold": ("online-st", ["self_training.online_gold=false"]),
    "reft_gae": ("reft", []),
    "reft_gae_lam1_detached": ("reft", ["reft.lam=1.0", "reft.value_model=detached", "reft.value_lr=1e-3"]),
    "reft_grpo": ("reft", ["reft.advantage=grpo", *K4]),
    "reft_rloo": ("reft", ["reft.advantage=rloo", *K4]),
    "reft_reinforce_baseline": ("reft", ["reft.advantage=reinforce_baseline", *K4]),
    "reft_dr_grpo": ("reft", ["reft.advantage=dr_grpo", *K4]),
    "reft_rloo_k2": ("reft", ["reft.advantage=rloo", *K2]),
    "reft_rloo_lr1e-4": ("reft", ["reft.advantage=rloo", *K4, "reft.lr=1e-4"]),
    "reft_rloo_k2_lr1e-4": ("reft", ["reft.advantage=rloo", *K2, "reft.lr=1e-4"]),
    "online_st_nogold_lr1e-4": ("online-st", ["self_training.online_gold=false", "reft.lr=1e-4"]),
    "reft_rloo_positive": ("reft", ["reft.advantage=rloo", *K4, POS]),
    "reft_rloo_nopartial": ("reft", ["reft.advantage=rloo", *K4, "reft.partial_reward=false"]),
    "reft_rloo_positive_k2": ("reft", ["reft.advantage=rloo", *K2, POS]),
    "reft_rloo_positive_kl0": ("reft", ["reft.advantage=rloo", *K4, POS, "reft.kl_coef=0"]),
    "reft_rloo_positive_4x": ("reft", ["reft.advantage=rloo", *K4[:2], *LONG, "reft.max_steps={long_steps}", POS]),
    "reft_rloo_4x": ("reft", ["reft.advantage=rloo", *K4[:2], *LONG, "reft.max_steps={long_steps}"]),
    "online_st_nogold_4x": ("online-st", ["self_training.online_gold=false", *LONG]),
    "reft_reinforce": ("reft", ["reft.advantage=reinforce", "reft.positive_only=false"]),  # else the preset's true
    "reft_reinforce_positive": ("reft", ["reft.advantage=reinforce", POS]),
}
"""Arm name -> (reftkit command, overrides over the protocol config). The group arms (k = 4 samples of 8 questions a
step; k = 2: 16 questions) stop after ``--group-steps`` steps: set it to the k = 1 arms' step count, so every arm
samples as many chains. The ``_4x`` arms train 4 times as long (``reft.epochs`` and the group steps of the protocol
config, times 4), validated at 12 points like the others at 6 (every ``2 * reft.eval_every`` steps)."""
OVERRIDE = re.compile(r"^[a-z_]+(\.[a-z_0-9]+)*=")  # key=value config overrides
FILE_FLAGS = ("--config", "--preset", "--data-dir")  # config arguments: a resumed run keeps its own config.yaml
DEFAULT_ARMS = ["reft_grpo", "reft_rloo", "reft_gae", "online_st", "online_st_nogold"]


@dataclass
class Job:
    name: str
    argv: list[str]
    folder: Path
    needs: Path | None = None  # a path that must exist first
    output: Path | None = None  # the job's stdout, kept (renamed into place) when it succeeds
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.folder.with_name(self.folder.name + ".log")

    def done(self) -> bool:
        if self.output is not None:
            return self.output.is_file()
        if self.argv[0] == "sft":
            return (self.folder / "resume" / "sft" / "done").is_dir()
        return (self.folder / "summary.json").is_file()

    def ready(self) -> bool:
        return self.needs is None or self.needs.exists()

    @property
    def pid_file(self) -> Path:
        return self.folder.with_name(f".{self.folder.name}.pid")

    def taken(self) -> bool:
        """Whether a live process (of another runner on the same folder) is running this job."""
        try:
            os.kill(int(self.pid_file.read_text()), 0)
        except (OSError, ValueError):
            return False
        return True


def jobs_for(
    config: Path, out: Path, seed: int, arms: list[str], data_dir: str | None, preset: str, group_steps: int
) -> list[Job]:
    common = ["--preset", preset, "--config", str(config), f"seed={seed}"]
    common += [] if data_dir is None else ["--data-dir", data_dir]
    root = out / f"seed{seed}"
    sft = Job(f"seed{seed}/sft", ["sft", "--out", str(root / "sft"), *common], root / "sft")
    warmup = root / "sft" / "checkpoints" / "warmup"
    reft = load_config(preset, config).reft
    fields = {"group_steps": group_steps, "long_steps": 4 * group_steps, "long_epochs": 4 * reft.epochs,
              "long_eval_every": 2 * reft.eval_every}  # fmt: skip
    jobs = [sft]
    for name in ("warmup", "sft"):  # greedy test accuracy of the warm-up and of converged SFT (its best epoch)
        argv = ["eval", "--model", str(root / "sft" / "checkpoints" / name), "--split", "test", *common]
        jobs.append(
            Job(
                f"seed{seed}/test_{name}",
                argv,
                root / "sft" / f"test_{name}",
                needs=root / "sft" / "resume" / "sft" / "done",
                output=root / "sft" / f"test_{name}.json",
            )
        )
    for arm in arms:
        command, overrides = ARMS[arm]
        overrides = [o.format(**fields) for o in overrides]
        folder = root / arm
        jobs.append(Job(f"seed{seed}/{arm}", [command, "--model", str(warmup), "--out", str(folder), *common,
                                             *overrides], folder, needs=warmup / "config.json"))  # fmt: skip
    return jobs


def merge_record(path: Path, record: dict) -> dict:
    """A later runner on the same folder (more arms or seeds) adds to its ``protocol.json``, never replaces it: the
    arms, seeds, commands and CPU flags are the union, ``commit`` stays the first runner's and ``commits`` lists
    each runner's. A different config is refused: it would be another protocol."""
    if not path.is_file():
        return record | {"commits": [record["commit"]]}
    old = json.loads(path.read_text())
    if old["config_text"] != record["config_text"] or old.get("preset") != record["preset"]:
        sys.exit(f"{path}: written for another config or preset; use another --out for this one")
    return old | {
        "seeds": sorted(set(old["seeds"]) | set(record["seeds"])),
        "arms": _union(old["arms"], record["arms"]),
        "commits": _union(old.get("commits", [old["commit"]]), [record["commit"]]),
        "cpu_flags": _union(old["cpu_flags"], record["cpu_flags"]),
        "commands": old["commands"] | record["commands"],
    }


def _union(first: list, second: list) -> list:
    return list(dict.fromkeys([*first, *second]))


def resume_argv(argv: list[str]) -> list[str]:
    """The command that continues a started job: no config arguments (files, ``--data-dir``, ``key=value``), since
    ``reftkit --resume`` takes the run's own ``config.yaml`` and refuses arguments that differ from it."""
    argv = [a for a in argv if not OVERRIDE.match(a)]
    kept = [a for i, a in enumerate(argv) if a not in FILE_FLAGS and (i == 0 or argv[i - 1] not in FILE_FLAGS)]
    return [*kept, "--resume"]


def launch(job: Job) -> subprocess.Popen:
    argv = list(job.argv)
    if job.output is None and (job.folder / "config.yaml").is_file():  # started before: continue from its checkpoint
        argv = resume_argv(argv)
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_MININTERVAL": "30"}
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with job.log.open("a") as fh:
        fh.write(f"\n$ reftkit {' '.join(argv)}\n")
        fh.flush()
        stdout = fh if job.output is None else _partial(job).open("w")
        proc = subprocess.Popen([sys.executable, "-m", "reftkit.cli", *argv], stdout=stdout, stderr=fh, env=env)
    job.pid_file.write_text(str(proc.pid))
    return proc


def _partial(job: Job) -> Path:
    assert job.output is not None
    return job.output.with_name(job.output.name + ".part")


def to_start(pending: list[Job], running: int, jobs: int) -> list[Job]:
    """The jobs to launch now: SFT first (every arm of its seed waits on it), and at most ``jobs`` running in all,
    counting the jobs of ``pending`` that another runner on the same folder is running (they use cores too). When
    those alone fill the cores, none (a negative count once sliced all but the last job of the queue: 12 at once)."""
    elsewhere = sum(job.taken() for job in pending)
    ready = sorted((job for job in pending if job.ready() and not job.taken()), key=lambda job: job.argv[0] != "sft")
    return ready[: max(0, jobs - running - elsewhere)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=sorted(ARMS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir")
    parser.add_argument("--preset", default="default", help="the reftkit preset under --config")
    parser.add_argument(
        "--group-steps",
        type=int,
        default=126,
        help="steps of the k=4 arms: the k=1 arms' steps (126 for the default task's 2 epochs)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    queue = [job for seed in args.seeds
             for job in jobs_for(args.config, args.out, seed, args.arms, args.data_dir, args.preset,
                                     args.group_steps)]  # fmt: skip
    record = {
        "config": str(args.config), "config_text": args.config.read_text(), "preset": args.preset,
        "seeds": args.seeds, "arms": args.arms,
        "commit": commit, "cpu_flags": cpu, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commands": {job.name: "OMP_NUM_THREADS=1 reftkit " + " ".join(job.argv) for job in queue},
    }  # fmt: skip
    record = merge_record(args.out / "protocol.json", record)
    (args.out / "protocol.json").write_text(json.dumps(record, indent=2) + "\n")
    running: dict[str, tuple[Job, subprocess.Popen, float]] = {}
    pending = [job for job in queue if not job.done()]
    print(f"{len(pending)} of {len(queue)} jobs to run, {args.jobs} at a time (commit {commit}, cpu {cpu})")
    while pending or running:
        for name, (job, proc, started) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                if proc.returncode == 0 and job.output is not None:
                    _partial(job).rename(job.output)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {job.log})"
                print(f"{time.strftime('%H:%M:%S')} {name}: {status} after {time.time() - started:.0f} s", flush=True)
        pending = [job for job in pending if not job.done()]  # another runner may have finished some
        for job in to_start(pending, len(running), args.jobs):
            pending.remove(job)
            running[job.name] = (job, launch(job), time.time())
            print(f"{time.strftime('%H:%M:%S')} {job.name}: started", flush=True)
        time.sleep(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
