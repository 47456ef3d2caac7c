"""Attention forward + backward on a CPU: torch's ``scaled_dot_product_attention`` (what transformers' ``sdpa``
calls) against ``reftkit.models.attention.cpu_aware_attention`` (what reftkit's models run), side by side in one
run. With gradients in bf16 the latter is the explicit matmul-softmax-matmul; in float32 it hands over to ``sdpa``,
so the float32 rows show that choice (ratio ~1), and ``--explicit`` forces the explicit path there to show why.

    OMP_NUM_THREADS=1 python bench/attention.py [--repeats 10] [--threads 1]

Shapes: the default preset's tiny Llama in a ReFT update (32 rows of 191 tokens, 4 heads of 48) and SmolLM2-135M's
(16 rows of 164 tokens, 9 heads of 64, 3 key/value heads), left padding of 20 tokens on every row (the padding mask
makes ``sdpa`` take its masked kernel, as prompts batched for training do), bf16 and float32. Both sides get the
same q, k, v and the same boolean mask (``sdpa_mask``'s format: True where a query may attend) and back-propagate
the same loss. Rounds alternate the two sides; the ratio is the median over rounds of the paired ratio. The third
case is the one training meets: under bf16 autocast a Llama's query reaches attention in float32 (RoPE multiplies
the bf16 projection by float32 tables), and autocast computes ``sdpa`` in bf16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from reftkit.models.attention import cpu_aware_attention, explicit_attention

SHAPES = {"tiny (default preset)": (32, 4, 4, 191, 48), "SmolLM2-135M": (16, 9, 3, 164, 64)}  # b, heads, kv, L, d
CASES = [  # (label, dtype of q, k, v, under bf16 autocast)
    ("bf16", torch.bfloat16, False),
    ("float32", torch.float32, False),
    ("float32 under bf16 autocast (a Llama training in mixed precision)", torch.float32, True),
]


class Attention(torch.nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups


def inputs(b: int, heads: int, kv: int, length: int, d: int, dtype: torch.dtype):
    torch.manual_seed(0)
    valid = torch.ones(b, length, dtype=torch.bool)
    valid[:, :20] = False
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    mask = ((causal[None] & valid[:, None]) | torch.eye(length, dtype=torch.bool)[None])[:, None]
    q = torch.randn(b, heads, length, d, dtype=dtype)
    k, v = (torch.randn(b, kv, length, d, dtype=dtype) for _ in range(2))
    return q, k, v, mask


def sdpa_side(q, k, v, mask, groups):
    k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


def reftkit_side(q, k, v, mask, groups):
    return cpu_aware_attention(Attention(groups), q, k, v, mask)[0]


def explicit_side(q, k, v, mask, groups):
    """The explicit path whatever the dtype."""
    return explicit_attention(Attention(groups), q, k, v, mask)[0]


def seconds(side, tensors, mask, groups, autocast: bool) -> float:
    q, k, v = (t.clone().requires_grad_() for t in tensors)
    start = time.perf_counter()
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out = side(q, k, v, mask, groups)
    out.float().square().mean().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--explicit", action="store_true", help="time the explicit path in float32 too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in Path("/proc/cpuinfo").read_text()]
    print(f"torch {torch.__version__}, {args.threads} thread(s), cpu flags {flags}, {args.repeats} timed rounds")
    print("| shapes | dtype | sdpa (ms) | reftkit (ms) | ratio |")
    print("|---|---|---|---|---|")
    for name, (b, heads, kv, length, d) in SHAPES.items():
        for label, dtype, autocast in CASES:
            q, k, v, mask = inputs(b, heads, kv, length, d, dtype)
            groups = heads // kv
            ours_side = explicit_side if args.explicit else reftkit_side
            rounds = []
            for _ in range(args.repeats + 1):
                sdpa_seconds = seconds(sdpa_side, (q, k, v), mask, groups, autocast)
                rounds.append((sdpa_seconds, seconds(ours_side, (q, k, v), mask, groups, autocast)))
            rounds = rounds[1:]
            theirs = statistics.median(r[0] for r in rounds) * 1e3
            ours = statistics.median(r[1] for r in rounds) * 1e3
            ratio = statistics.median(r[0] / r[1] for r in rounds)
            print(f"| {name} | {label} | {theirs:.1f} | {ours:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
