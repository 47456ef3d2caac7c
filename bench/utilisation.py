"""How much of this machine's matmul throughput reftkit's generation turns into model FLOPs.

    python bench/utilisation.py [--questions 8] [--k 4] [--max-new-tokens 128] [--repeats 3] [--threads 1]
                                [--model HF_DIR]

1. Matmul throughput: ``torch.matmul`` of [M, K] x [K, N] in bf16 and fp32 for the shapes the model runs
   (taken from its config): decoding rows = questions x k against hidden->hidden, hidden->intermediate,
   intermediate->hidden and hidden->vocab, the same projections over a whole scored batch (rows x 128
   positions, as in the PPO forwards), and one square 1024^3 product as the machine's large-matmul figure.
   Each: warm-up, then repeated until ~0.2 s, best of ``--repeats``. GFLOP/s = 2*M*K*N / seconds.
2. Generation: reftkit's ``sample_policy`` (``rollout.generate``, bf16 autocast where ``make_accelerator("auto")``
   picks it) on the same model and prompts as ``bench/rollout_vs_trl.py`` (the default preset's tiny Llama,
   untrained, or ``--model``; the synthetic task's P-CoT prompts), median real tokens/s over ``--repeats``.
3. Utilisation: model FLOPs per generated token = 2 x (parameters that multiply: every linear layer and the
   LM head; the embedding lookup is not a matmul, a tied LM head counts once) + attention 4 x layers x
   hidden x mean context (q.k and p.v over the cached positions), times tokens/s, as a fraction of the measured
   matmul throughput: of the decoding-shape figure (what the model's matmuls could at best reach at that batch)
   and of the large-square figure (the machine). The prompts' prefill is not counted (it is done once per
   question, not per token), so the figure is a slight underestimate of the work done.

Take figures on an idle machine: under load both sides of the fraction move, and not by the same factor.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from rollout_vs_trl import (  # the same model, prompts and batch as that bench
    COT,
    bench_config,
    parse_args,
    prepare_model,
    quiet,
)

from reftkit.data.base import prompt_text
from reftkit.data.registry import load_task
from reftkit.models.loading import load_causal_lm, load_tokenizer
from reftkit.rollout.base import generation_config
from reftkit.rollout.engines import make_engine
from reftkit.rollout.generate import encode_prompts
from reftkit.trainers.common import make_accelerator, sample_policy


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.05:
        torch.matmul(a, b)
        calls += 1
    calls = max(1, int(calls * 0.2 / 0.05))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b)
        best = min(best, (time.perf_counter() - start) / calls)
    return 2 * m * k * n / best / 1e9


def linear_params(model: torch.nn.Module) -> int:
    """Weights that take part in a matmul per token: every nn.Linear (a tied LM head counted once)."""
    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def main() -> None:
    args = parse_args(__doc__.split("\n")[0], repeats=3)
    torch.set_num_threads(args.threads)
    quiet()

    rows = args.questions * args.k
    config = bench_config(args)
    data = load_task(config.task)
    problems = data.train[: args.questions]
    with tempfile.TemporaryDirectory(prefix="reftkit-util-") as tmp:
        model_dir = prepare_model(args, config, data, Path(tmp))
        tokenizer = load_tokenizer(model_dir)
        lm = load_causal_lm(model_dir, tokenizer).eval()
    accelerator = make_accelerator(config.mixed_precision)
    text = lm.config.get_text_config()
    hidden, inter, vocab, layers = text.hidden_size, text.intermediate_size, len(tokenizer), text.num_hidden_layers

    print(f"threads {args.threads}; model {'build_tiny (default preset)' if args.model is None else args.model}: "
          f"hidden {hidden}, intermediate {inter}, vocab {vocab}, {layers} layers")  # fmt: skip
    print("matmul throughput, GFLOP/s (best of repeats)")
    print(f"  {'shape [M,K]x[K,N]':<52} {'bf16':>8} {'fp32':>8}")
    shapes = [
        ("decode: hidden->hidden", rows, hidden, hidden),
        ("decode: hidden->intermediate", rows, hidden, inter),
        ("decode: intermediate->hidden", rows, inter, hidden),
        ("decode: hidden->vocab", rows, hidden, vocab),
        ("scoring: hidden->intermediate", rows * 128, hidden, inter),
        ("scoring: hidden->vocab", rows * 128, hidden, vocab),
        ("square 1024", 1024, 1024, 1024),
    ]
    measured: dict[str, dict[str, float]] = {}
    for label, m, k, n in shapes:
        measured[label] = {
            name: matmul_gflops(m, k, n, dtype, args.repeats)
            for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))
        }
        print(f"  {label + f' [{m},{k}]x[{k},{n}]':<52} {measured[label]['bf16']:8.1f} {measured[label]['fp32']:8.1f}")
    decode_labels = [label for label, *_ in shapes if label.startswith("decode")]
    # the decoding matmuls weighted by their FLOPs: 4 hidden->hidden and 3 MLP projections per layer, one LM head
    weights = {decode_labels[0]: 4 * layers * hidden * hidden, decode_labels[1]: 2 * layers * hidden * inter,
               decode_labels[2]: layers * inter * hidden, decode_labels[3]: hidden * vocab}  # fmt: skip
    precision = "bf16" if accelerator.mixed_precision == "bf16" else "fp32"
    decode_rate = sum(weights.values()) / sum(w / measured[lbl][precision] for lbl, w in weights.items())

    prompts = encode_prompts(tokenizer, [prompt_text(p, COT) for p in problems])
    questions = list(range(args.questions))
    rates, contexts = [], []
    engine, gen = make_engine(config.reft.rollout_backend), generation_config(config.reft, tokenizer)
    for round_ in range(1 + args.repeats):
        generator = torch.Generator().manual_seed(round_)
        start = time.perf_counter()
        batch, responses = sample_policy(
            engine, lm, prompts, questions, gen, config.reft.samples_per_question, generator, accelerator
        )
        elapsed = time.perf_counter() - start
        if round_ == 0:
            continue
        real = responses.mask.sum().item()
        rates.append(real / elapsed)
        # mean context per generated token: the prompt's own tokens plus the position within the response
        prompt_lengths = batch.mask.sum(1, keepdim=True).float()
        position = torch.arange(responses.mask.size(1)).float()
        contexts.append(((prompt_lengths + position) * responses.mask).sum().item() / real)
    tokens_per_s = statistics.median(rates)
    context = statistics.median(contexts)
    matmul = linear_params(lm)
    flops_per_token = 2 * matmul + 4 * layers * hidden * context
    achieved = flops_per_token * tokens_per_s / 1e9
    print(f"\nreftkit generation ({rows} rows, {accelerator.mixed_precision}): {tokens_per_s:.0f} real tokens/s "
          f"(median of {args.repeats})")  # fmt: skip
    print(f"model FLOPs per token: 2 x {matmul / 1e6:.2f}M matmul params + attention 4 x {layers} x {hidden} x "
          f"{context:.0f} mean context = {flops_per_token / 1e6:.2f} MFLOP")  # fmt: skip
    print(f"achieved: {achieved:.2f} GFLOP/s")
    print(f"utilisation vs {precision} matmuls at the decoding shapes ({decode_rate:.1f} GFLOP/s): "
          f"{achieved / decode_rate:.1%}")  # fmt: skip
    print(f"utilisation vs {precision} square 1024 matmul ({measured['square 1024'][precision]:.1f} GFLOP/s): "
          f"{achieved / measured['square 1024'][precision]:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
