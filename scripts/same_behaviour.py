"""Prove that a change kept behaviour: run the same reftkit commands at a reference commit and at the working tree,
then compare every checkpoint byte for byte, every sample file, and every figure of summary.json and metrics.jsonl
(wall times, paths and commits aside).

    python scripts/same_behaviour.py --before 4ffacb2                 # the micro checks, one thread each
    python scripts/same_behaviour.py --before 4ffacb2 --demo          # and the default run of scripts/demo

The reference commit is checked out in a temporary git worktree; both sides run with ``OMP_NUM_THREADS=1`` on this
machine (float results depend on the CPU and the thread count, so compare only runs made side by side here).
Exit 0 when everything matches, 1 with the first differences listed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MICRO = {
    "micro_all_methods": ["run", "--preset", "micro", "methods=sft,offline-st,online-st,reft", "sample.n=4",
                          "rm.enabled=true"],
    "micro_rloo_k3_loss": ["run", "--preset", "micro", "reft.advantage=rloo", "reft.kl_mode=loss", "reft.sft_coef=0.5",
                           "reft.temperature=0.8", "reft.top_k=20"],
}  # fmt: skip
DEMO = {"demo_default": ["run"]}
VOLATILE = {"wall", "wall_seconds", "seconds", "step_seconds", "stage_seconds", "samples_per_second", "minutes", "eta",
            "commit", "command", "run_dir", "out", "started", "elapsed", "path", "warmup_model", "model"}  # fmt: skip
SECONDS = re.compile(r"val_curves\.\w+\.\d+\.0$")  # a curve point is [seconds since the warm-up, epoch, accuracy]


def _figures(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key not in VOLATILE:
                out |= _figures(value, f"{prefix}{key}.")
        return out
    if isinstance(node, list):
        out = {}
        for i, value in enumerate(node):
            out |= _figures(value, f"{prefix}{i}.")
        return out
    return {prefix.rstrip("."): node}


def fingerprint(run: Path) -> dict[str, Any]:
    """What must not change: checkpoint and sample bytes, summary and metrics figures."""
    prints: dict[str, Any] = {}
    for file in sorted(run.rglob("*")):
        rel = str(file.relative_to(run))
        if file.suffix == ".safetensors" or (rel.startswith("samples/") and file.suffix == ".jsonl"):
            prints[rel] = hashlib.sha256(file.read_bytes()).hexdigest()
    summary = _figures(json.loads((run / "summary.json").read_text()))
    prints |= {f"summary.json:{k}": v for k, v in summary.items() if not SECONDS.match(k)}
    for i, line in enumerate((run / "metrics.jsonl").read_text().splitlines()):
        prints |= {f"metrics.jsonl:{i}:{k}": v for k, v in _figures(json.loads(line)).items()}
    return prints


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the reference commit")
    parser.add_argument("--demo", action="store_true", help="also the default run (about 20 min per side)")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder")
    args = parser.parse_args()
    checks = MICRO | (DEMO if args.demo else {})
    with tempfile.TemporaryDirectory(prefix="same_behaviour_") as tmp:
        work = args.keep or Path(tmp)
        before = Path(tmp) / "before_tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            failed = 0
            for name, argv in checks.items():
                runs = {side: work / name / side for side in ("before", "after")}
                procs = []  # the two sides side by side, one core each
                for side, code in (("before", before), ("after", ROOT)):
                    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(code)}
                    cmd = [sys.executable, "-m", "reftkit.cli", argv[0], "--out", str(runs[side]), "--overwrite",
                           *argv[1:]]  # fmt: skip
                    procs.append((code, subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.PIPE, text=True)))  # fmt: skip
                for code, proc in procs:
                    _, err = proc.communicate()
                    if proc.returncode != 0:
                        sys.exit(f"{code}: {name} failed (exit {proc.returncode}):\n{err[-3000:]}")
                a, b = fingerprint(runs["before"]), fingerprint(runs["after"])
                diffs = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
                files = sum(1 for k in a if ":" not in k)
                if diffs:
                    failed += 1
                    print(f"{name}: {len(diffs)} DIFFERENCES, first: " + "; ".join(
                        f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diffs[:8]))  # fmt: skip
                else:
                    print(f"{name}: same ({files} checkpoint/sample files byte-identical, {len(a) - files} figures)")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
