"""One AdamW step over SmolLM2-135M-sized weights, torch's foreach implementation against the fused kernel that
``reftkit.trainers.common.adamw`` picks, alternating, on one thread.

    OMP_NUM_THREADS=1 python bench/adamw.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = [(49152, 576)] + [(576, 576)] * 60 + [(1536, 576)] * 90  # a 576-wide, 30-layer model: ~128M weights


def seconds_per_step(implementation: str, steps: int = 3) -> float:
    weights = [torch.nn.Parameter(torch.randn(shape) * 0.02) for shape in SHAPES]
    for weight in weights:
        weight.grad = torch.randn_like(weight) * 1e-3
    flag = {"fused": True} if implementation == "fused" else {"foreach": True}
    optimizer = torch.optim.AdamW(weights, lr=3e-5, eps=1e-8, weight_decay=0.0, **flag)
    optimizer.step()  # the moments exist from here on, as in training
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios, times = [], {"foreach": [], "fused": []}
    for _ in range(args.repeats):
        pair = {name: seconds_per_step(name) for name in ("foreach", "fused")}
        for name, value in pair.items():
            times[name].append(value)
        ratios.append(pair["foreach"] / pair["fused"])
    print(f"{sum(s[0] * s[1] for s in SHAPES) / 1e6:.0f}M weights, 1 thread, torch {torch.__version__}")
    for name, values in times.items():
        print(f"{name}: {statistics.median(values):.3f} s per step")
    print(f"ratio foreach/fused: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
