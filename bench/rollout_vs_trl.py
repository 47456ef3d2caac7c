"""Rollout tokens/s and whole PPO-step time of reftkit against TRL's GRPOTrainer, side by side, in one run.

    python bench/rollout_vs_trl.py [--questions 8] [--k 4] [--max-new-tokens 128] [--repeats 5] [--threads 1]
                                   [--model HF_DIR]

Both sides get the same model, the same prompts, the same number of samples and the same limits:

- **Model**: a Llama built by ``reftkit.models.loading.build_tiny`` with the ``default`` preset's ``model.tiny`` config
  (1.9M parameters, BPE tokenizer trained on the synthetic task's training text, seed 0), randomly initialised
  and untrained; or ``--model DIR``, any HF causal LM directory. Either way it is loaded once through
  ``load_tokenizer`` / ``load_causal_lm`` (a pad token added where missing) and saved to a temporary folder that
  both sides load from, so TRL's reference model (built by TRL from the policy's path) is the same model.
  Weights are float32 on both sides, as reftkit keeps them.
- **Prompts**: the first ``--questions`` training questions of the embedded ``synthetic`` task as P-CoT prompts
  (``reftkit.data.base.prompt_text(problem, "python")``), encoded once with the tokenizer's own special tokens;
  TRL's ``_tokenize_prompts`` gives the same ids. Each is sampled ``--k`` times, so a batch is questions x k rows.
- **Sampling**: temperature 1, no top-k / top-p (TRL: ``top_k=0, top_p=1.0``, ``min_p`` and
  ``repetition_penalty`` off), up to ``--max-new-tokens`` new tokens, stop at the tokenizer's EOS. reftkit
  samples with ``argmax(p / q)``, q ~ Exp(1) drawn from its generator, which is what ``torch.multinomial(p, 1)``
  (TRL's path, global generator) computes; both are seeded with the same number per round, so where the two
  forwards give the same probabilities both sides draw the same samples. The report counts the identical rows:
  in (a) they are normally all identical, so both sides decode the very same tokens and lengths.
- **Counted tokens**: only real generated tokens, every token up to and including EOS (all of them for a row
  cut at the limit): reftkit's ``Responses.mask``; TRL's completion ids after its own cut after the first EOS.
  The column "real/(rows x steps)" is the share of the result's rows x decode steps that are real tokens.
  TRL's generator keeps computing finished rows until every row is done, so that is its share of useful work;
  reftkit drops finished rows once they are an eighth of the batch, so it computes less than rows x steps.
- **Precision**: bf16 autocast with float32 weights where the CPU has fast bf16 (``make_accelerator("auto")``
  picks it from the avx512_bf16/amx_bf16 flags; else float32 everywhere). TRL gets the same through
  ``GRPOConfig(bf16=True)``: its Accelerator then has ``mixed_precision="bf16"`` and, once ``train()`` prepares
  the model, wraps its forward in ``torch.autocast("cpu", bfloat16)``. The standalone rollout timing calls
  TRL's generation before ``train()``, so it runs it inside ``trainer.accelerator.autocast()``, the same
  context. A forward hook on TRL's first attention projection records the dtype it actually computed in, and
  TRL's generation is timed a second time inside ``train()`` (the "in the PPO step" rows) as a cross-check.
  reftkit's line names its decoder (``reftkit.rollout.lean``: the lean Llama-family decoder here) and the dtype
  of its matmuls; that decoder keeps the KV cache in float32 on a CPU (the bf16 values, attended in float32).

(a) Rollout tokens/s. reftkit: ``reftkit.trainers.common.sample_policy`` (``rollout.generate`` with
``k`` samples per prompt: each prompt encoded once, its KV cache repeated for its k samples). TRL: the trainer's own
``GRPOTrainer._generate_single_turn`` on the same prompt ids repeated k times as its ``RepeatSampler`` repeats
them: left-pad, ``model.generate(generation_config=...)`` with the ``GenerationConfig`` GRPOTrainer builds
(``do_sample=True``, ``disable_compile=True``, ``cache_implementation=None``: a DynamicCache), the cut after EOS
and the ``.tolist()``; not the prompt tokenisation nor the text decoding (reftkit's timing has neither).
One untimed warm-up round, then ``--repeats`` timed rounds; reftkit and TRL alternate within a round so that a
change in machine load hits both; each side's figure is the median over rounds of tokens/s (wall clock), and
the ratio on the last line is the median over rounds of the two sides' ratio within the round (paired, so
that load which changes between rounds cancels out). "per CPU-s"
divides by the process's CPU time instead: with one thread it leaves out the time the process waited for a
core, a cross-check when other jobs share the machine.

(b) Whole PPO step, one rollout batch of questions x k rows and the optimizer updates made on it:
- reftkit: the body of ``train_reft``'s loop without logging, validation and checkpoints: ``sample_policy``,
  ``decode_responses`` + ``grade_batch`` (P-CoT programs run in reftkit's sandbox), ``make_experience`` (policy
  forward, reference-model forward, k1 KL in the reward, the default preset's advantages: RLOO, no value head;
  with ``gae`` a value head, GAE and whitening) and ``ppo_update``
  (``ppo_epochs`` = 2 passes over minibatches of ``minibatch_size`` = min(32, rows): forward, backward, clip,
  AdamW step each). The policy is a ``PolicyWithValue`` prepared by the same Accelerator, as in ``train_reft``.
- TRL: ``trainer.train()`` with ``max_steps`` = (1 + repeats) rounds x U optimizer steps, where a round is one
  generation followed by U = num_iterations x steps_per_generation optimizer steps, set to match reftkit:
  ``per_device_train_batch_size`` = the minibatch, ``gradient_accumulation_steps=1``, ``steps_per_generation`` =
  rows / minibatch, ``num_iterations`` = 2 (= ppo_epochs); so TRL makes as many optimizer updates per rollout as
  reftkit and, as num_iterations > 1, also scores the rollout once without gradients ("old" log-probs) as reftkit's
  ``make_experience`` does. ``beta`` = reftkit's ``kl_coef`` (0.01) so TRL also runs its reference model;
  ``epsilon`` 0.2, ``learning_rate`` = reftkit's ``reft.lr``, constant schedule, ``max_grad_norm`` 1.0,
  ``gradient_checkpointing=False`` (GRPOConfig defaults to True, which would recompute every forward in the
  backward; reftkit does not checkpoint), ``shuffle_dataset=False`` (rows in reftkit's order, question by
  question), no logging, no saving. Each round's TRL generation starts from ``torch.manual_seed`` of the seed
  reftkit's round used, so the first round's samples are identical and later ones stay close (the two
  policies' weights drift apart only through their different updates). The reward function is
  ``reftkit.reward.answers.trl_reward_function`` (numeric, P-CoT, the same ``RewardTable`` and program timeout), so
  both sides grade with identical code. The first round is a warm-up (it also holds the trainer's set-up);
  a round's time runs from the end of the previous round's last optimizer step to the end of its own (a
  ``TrainerCallback``), so the dataloader and the trainer's own per-step work are included.
  Phases are timed by wrapping the trainer's methods (``_generate_single_turn``, ``_calculate_rewards``,
  ``_get_per_token_logps_and_entropies`` without gradients = scoring); "update" is the rest of the round.

Where the two steps inherently differ: GRPO normalises each group's rewards by their std where RLOO subtracts
the mean of the other samples, puts the KL in the loss rather than in the reward, and computes log-probs with a
fused, chunked LM head (no full [rows, length, vocab] logits) where reftkit materialises the logits (bf16, then
chunked float32 log-probs). Both optimizers are fused AdamW (TRL's ``adamw_torch_fused``; reftkit's since
``62d7531``); TRL shuffles the rows once per rollout, reftkit per PPO epoch; reftkit's step also repeats each
prompt's KV cache for its k samples where TRL encodes the prompt k times. The number of forward and backward
passes over the same rows is the same on both sides.

Figures depend heavily on machine load: take them on an idle machine (nothing else running), and read
figures taken under load only as ratios, and those only roughly. The last line printed is
``rollout tokens/s ratio reftkit/TRL: X.XX``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from reftkit.config.loading import load_config
from reftkit.config.schema import ConfigError, RunConfig
from reftkit.data.base import Problem, TaskData, prompt_text, target_text
from reftkit.data.registry import load_task
from reftkit.models.loading import build_tiny, load_causal_lm, load_tokenizer
from reftkit.models.policy import PolicyWithValue
from reftkit.reward.answers import RewardTable, grade_batch, trl_reward_function
from reftkit.reward.sandbox import shutdown
from reftkit.rl.ppo import ESTIMATORS
from reftkit.rollout.base import Batch, GenerationConfig, Responses, RolloutEngine, generation_config
from reftkit.rollout.engines import make_engine
from reftkit.rollout.generate import decode_responses, encode_prompts
from reftkit.rollout.lean import HFDecoder, make_decoder
from reftkit.trainers.common import adamw, make_accelerator, param_count, sample_policy
from reftkit.trainers.reft import make_experience, ppo_update
from reftkit.trainers.stepwise import Rollout

COT = "python"


def parse_args(description: str = __doc__.split("\n")[0], repeats: int = 5) -> argparse.Namespace:
    """The batch, model and timing options every rollout bench takes (this one and ``utilisation.py``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--questions", type=int, default=8, help="distinct training questions per batch")
    parser.add_argument("--k", type=int, default=4, help="samples per question")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds, after a warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--model", help="HF causal LM directory (default: build_tiny with the default preset)")
    args = parser.parse_args()
    for name in ("questions", "k", "max_new_tokens", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def bench_config(args: argparse.Namespace):
    """The default preset with the bench's batch: questions x k rows, temperature 1, no top-k / top-p."""
    return load_config(
        "default",
        overrides=[
            f"reft.questions_per_step={args.questions}",
            f"reft.samples_per_question={args.k}",
            f"reft.max_new_tokens={args.max_new_tokens}",
            "reft.temperature=1.0",
            "reft.top_k=0",
            "reft.top_p=1.0",
            f"reft.minibatch_size={min(32, args.questions * args.k)}",
        ],
    )


def prepare_model(args: argparse.Namespace, config, data, folder: Path) -> Path:
    """One model directory both sides load: built with build_tiny, or ``--model`` normalised by reftkit's loaders."""
    target = folder / "model"
    if args.model is None:
        texts = [prompt_text(p, COT) + target_text(p, COT) for p in data.train]
        return build_tiny(texts, config.model.tiny, target, seed=config.seed)
    tokenizer = load_tokenizer(args.model)
    load_causal_lm(args.model, tokenizer).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@dataclass
class Bench:
    """The reftkit side as ``train_reft`` sets it up, shared by the benches: the preset with the bench's batch, the
    first ``--questions`` training problems and their prompts, one model folder every side loads, the rollout engine
    and the frozen reference."""

    args: argparse.Namespace
    config: RunConfig
    data: TaskData
    accelerator: Accelerator
    tmp: tempfile.TemporaryDirectory
    model_dir: Path
    tokenizer: PreTrainedTokenizerBase
    prompts: list[list[int]]
    engine: RolloutEngine
    gen: GenerationConfig
    ref: torch.nn.Module

    @property
    def problems(self) -> list[Problem]:
        return self.data.train[: self.args.questions]

    @property
    def question_ids(self) -> list[int]:
        return list(range(self.args.questions))

    @property
    def rows(self) -> list[int]:
        """Each row's question: question 0's k samples, then question 1's, ... (TRL's RepeatSampler order)."""
        return [i for i in self.question_ids for _ in range(self.args.k)]

    def policy(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """A fresh policy (a value head only where the estimator needs one) and its AdamW, prepared."""
        cfg = self.config.reft
        lm = load_causal_lm(self.model_dir, self.tokenizer)
        policy = PolicyWithValue(lm, critic=ESTIMATORS[cfg.advantage].needs_critic)
        optimizer = adamw(policy.param_groups(cfg.lr, cfg.lr))  # as train_reft: fused where torch has the kernel
        policy, optimizer = self.accelerator.prepare(policy, optimizer)
        policy.eval()
        return policy, optimizer

    @property
    def reward_table(self) -> RewardTable:
        """The preset's rewards, as reftkit grades and as TRL's reward function is given."""
        return RewardTable(partial_reward=self.config.reft.partial_reward)

    def graded(self, batch: Batch, responses: Responses) -> Rollout:
        """The step's rollout record: completions decoded and graded by reftkit's code (P-CoT in the sandbox)."""
        texts = decode_responses(self.tokenizer, responses)
        problems = [self.problems[i] for i in self.rows]
        timeout = self.config.eval.program_timeout
        graded = grade_batch(problems, texts, COT, self.data.answer_type, self.reward_table, timeout)
        scores = torch.tensor([g.reward for g in graded], device=self.accelerator.device)
        return Rollout(torch.tensor(self.rows), batch, responses, problems, texts, graded, scores)


def set_up(args: argparse.Namespace, prefix: str = "reftkit-bench-") -> Bench:
    config = bench_config(args)
    data = load_task(config.task)
    if args.questions > len(data.train):
        raise ConfigError(f"--questions: the synthetic task has {len(data.train)} training questions")
    accelerator = make_accelerator(config.mixed_precision)
    tmp = tempfile.TemporaryDirectory(prefix=prefix)
    model_dir = prepare_model(args, config, data, Path(tmp.name))
    tokenizer = load_tokenizer(model_dir)
    prompts = encode_prompts(tokenizer, [prompt_text(p, COT) for p in data.train[: args.questions]])
    ref = load_causal_lm(model_dir, tokenizer).to(accelerator.device).eval().requires_grad_(False)
    engine, gen = make_engine(config.reft.rollout_backend), generation_config(config.reft, tokenizer)
    return Bench(args, config, data, accelerator, tmp, model_dir, tokenizer, prompts, engine, gen, ref)


class DtypeProbe:
    """The dtype of the first attention projection's output in the first forward: what a rollout computed in."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.dtype: torch.dtype | None = None
        layer = next(m for name, m in model.named_modules() if name.endswith(("q_proj", "c_attn", "query_key_value")))
        self.handle = layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        if self.dtype is None:  # the first forward after the probe is set: the rollout's
            self.dtype = output.dtype

    def name(self) -> str:
        self.handle.remove()
        return str(self.dtype).replace("torch.", "") if self.dtype is not None else "?"


def kept_tokens(responses) -> list[list[int]]:
    """Each row's real tokens (up to and including EOS), as TRL's generation returns them."""
    rows = zip(responses.ids.tolist(), responses.mask.tolist(), strict=True)
    return [[t for t, m in zip(ids, mask, strict=True) if m] for ids, mask in rows]


def identical_rows(a: list[list[list[int]]], b: list[list[list[int]]]) -> int:
    return sum(x == y for batch_a, batch_b in zip(a, b, strict=True) for x, y in zip(batch_a, batch_b, strict=True))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    bench = set_up(args)
    config, accelerator, tokenizer = bench.config, bench.accelerator, bench.tokenizer
    problems, prompts, question_ids = bench.problems, bench.prompts, bench.question_ids
    engine, gen, ref, model_dir, folder = bench.engine, bench.gen, bench.ref, bench.model_dir, Path(bench.tmp.name)
    rows = args.questions * args.k
    minibatch = config.reft.minibatch_size
    if rows % minibatch:
        raise ConfigError(f"questions x k = {rows} must be a multiple of the PPO minibatch ({minibatch})")
    bf16 = accelerator.mixed_precision == "bf16"
    repeated = [prompts[i] for i in bench.rows]  # TRL's RepeatSampler order

    # reftkit: as train_reft sets it up
    cfg = config.reft
    policy, optimizer = bench.policy()
    lm = accelerator.unwrap_model(policy).lm

    # TRL: GRPOTrainer on the same model, questions and reward
    updates_per_round = cfg.ppo_epochs * (rows // minibatch)
    rounds = 1 + args.repeats
    trl_args = GRPOConfig(
        output_dir=str(folder / "trl"),
        per_device_train_batch_size=minibatch,
        gradient_accumulation_steps=1,
        steps_per_generation=rows // minibatch,
        num_generations=args.k,
        num_iterations=cfg.ppo_epochs,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        beta=cfg.kl_coef,
        epsilon=cfg.clip_eps,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_epsilon=1e-8,
        max_grad_norm=cfg.grad_clip,
        gradient_checkpointing=False,
        max_steps=rounds * updates_per_round,
        bf16=bf16,
        use_cpu=accelerator.device.type == "cpu",
        logging_steps=10**9,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        shuffle_dataset=False,  # rows in reftkit's order: question 0's k samples, then question 1's, ...
        seed=config.seed,
    )
    dataset = Dataset.from_list([{"prompt": prompt_text(p, COT), "answer": p.answer, "question": p.question}
                                 for p in problems])  # fmt: skip
    reward = trl_reward_function("numeric", COT, rewards=bench.reward_table, timeout=config.eval.program_timeout)
    trainer = GRPOTrainer(
        model=load_causal_lm(model_dir, tokenizer),
        reward_funcs=[reward],
        args=trl_args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)

    n_params = param_count(lm)
    print(f"model: {'build_tiny (default preset, untrained)' if args.model is None else args.model}, "
          f"{n_params / 1e6:.2f}M params; torch {torch.__version__}, trl {trl.__version__}, "
          f"{args.threads} thread(s), {os.cpu_count()} CPUs")  # fmt: skip
    print(f"batch: {args.questions} questions x k={args.k} = {rows} rows, max_new_tokens {args.max_new_tokens}, "
          f"temperature 1; mixed precision {accelerator.mixed_precision}; "
          f"{args.repeats} timed rounds after 1 warm-up")  # fmt: skip

    # ---- (a) rollout tokens/s ----
    def reftkit_rollout(seed: int) -> tuple[float, int, int, float]:
        generator = torch.Generator(device=accelerator.device).manual_seed(seed)
        start, cpu = time.perf_counter(), time.process_time()
        _, responses = sample_policy(engine, lm, prompts, question_ids, gen, args.k, generator, accelerator)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        samples["reftkit"] = kept_tokens(responses)
        return elapsed, int(responses.mask.sum().item()), responses.ids.numel(), cpu

    def trl_rollout(seed: int) -> tuple[float, int, int, float]:
        torch.manual_seed(seed)
        start, cpu = time.perf_counter(), time.process_time()
        with trainer.accelerator.autocast():
            completion_ids, _ = trainer._generate_single_turn(repeated, None, {}, args.k)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        computed = len(completion_ids) * max(map(len, completion_ids))
        samples["TRL"] = [list(c) for c in completion_ids]
        return elapsed, sum(len(c) for c in completion_ids), computed, cpu

    samples: dict[str, list[list[int]]] = {}
    with accelerator.autocast():
        decoder = make_decoder(lm, cfg.rollout_backend)
    probes = {"TRL": DtypeProbe(trainer.model)}
    if isinstance(decoder, HFDecoder):
        probes["reftkit"] = DtypeProbe(lm)
    rollouts: dict[str, list[tuple[float, int, int, float]]] = defaultdict(list)
    same_rows = 0
    for round_ in range(rounds):
        for name, fn in (("reftkit", reftkit_rollout), ("TRL", trl_rollout)):
            result = fn(1000 + round_)
            if round_ > 0:
                rollouts[name].append(result)
        same_rows += sum(a == b for a, b in zip(samples["reftkit"], samples["TRL"], strict=True))
    dtypes = {name: probe.name() for name, probe in probes.items()}
    dtypes.setdefault("reftkit", str(getattr(decoder, "dtype", "?")).replace("torch.", ""))
    dtypes["reftkit"] = f"{type(decoder).__name__}, {dtypes['reftkit']}"

    # ---- (b) whole PPO step ----
    step_samples: dict[str, list[list[list[int]]]] = defaultdict(list)
    ours: list[dict[str, float]] = []
    for round_ in range(rounds):
        times: dict[str, float] = {}
        rng = torch.Generator(device=accelerator.device).manual_seed(2000 + round_)
        start = time.perf_counter()
        batch, responses = sample_policy(engine, lm, prompts, question_ids, gen, args.k, rng, accelerator)
        times["generate"] = time.perf_counter() - start
        times["tokens"] = float(responses.mask.sum())
        times["computed"] = float(responses.ids.numel())
        step_samples["reftkit"].append(kept_tokens(responses))
        t = time.perf_counter()
        rollout = bench.graded(batch, responses)
        times["reward"] = time.perf_counter() - t
        t = time.perf_counter()
        exp = make_experience(policy, ref, rollout, config, accelerator)
        times["score"] = time.perf_counter() - t
        t = time.perf_counter()
        ppo_update(policy, optimizer, exp, config, accelerator)
        times["update"] = time.perf_counter() - t
        times["total"] = time.perf_counter() - start
        if round_ > 0:
            ours.append(times)

    theirs: list[dict[str, float]] = []
    current: dict[str, float] = defaultdict(float)

    def timed(method, phase: str, count_tokens: bool = False):
        def wrapper(*a, **kw):
            grad = torch.is_grad_enabled()
            if count_tokens:  # the generation of round r draws from the seed reftkit's round r used
                torch.manual_seed(2000 + len(theirs))
            t = time.perf_counter()
            out = method(*a, **kw)
            if phase != "score" or not grad:  # a scoring call with gradients is the loss forward: "update"
                current[phase] += time.perf_counter() - t
            if count_tokens:
                current["tokens"] += sum(len(c) for c in out[0])
                current["computed"] += len(out[0]) * max(map(len, out[0]))
                step_samples["TRL"].append([list(c) for c in out[0]])
            return out

        return wrapper

    trainer._generate_single_turn = timed(trainer._generate_single_turn, "generate", count_tokens=True)
    trainer._calculate_rewards = timed(trainer._calculate_rewards, "reward")
    trainer._get_per_token_logps_and_entropies = timed(trainer._get_per_token_logps_and_entropies, "score")

    class RoundTimer(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, cb_args, state, control, **kw):
            if state.global_step % updates_per_round == 0:
                now = time.perf_counter()
                record = dict(current)
                record["total"] = now - self.last
                record["update"] = record["total"] - sum(record.get(k, 0.0) for k in ("generate", "reward", "score"))
                theirs.append(record)
                current.clear()
                self.last = now

    trainer.add_callback(RoundTimer())
    trl_probe = DtypeProbe(trainer.model)
    trainer.train()
    dtypes["TRL in train()"] = trl_probe.name()
    if len(step_samples["TRL"]) != rounds or len(theirs) != rounds:
        print(f"warning: TRL made {len(step_samples['TRL'])} generations and {len(theirs)} rounds, expected {rounds}")
    theirs = theirs[1:]
    shutdown()

    # ---- report ----
    print(f"compute dtype (matmuls): reftkit {dtypes['reftkit']}, TRL {dtypes['TRL']}, "
          f"TRL inside train() {dtypes['TRL in train()']}")  # fmt: skip
    print("\n(a) rollout, same batch, median of timed rounds")
    print(f"  {'':38} {'seconds':>8} {'real tokens':>12} {'real/(rows x steps)':>20} {'tokens/s':>9} {'per CPU-s':>10}")
    rates, cpu_rates = {}, {}
    for name, label in (("reftkit", "reftkit sample_policy"), ("TRL", "TRL GRPOTrainer._generate_single_turn")):
        runs = rollouts[name]
        rates[name] = median([tok / sec for sec, tok, _, _ in runs])
        cpu_rates[name] = median([tok / cpu for _, tok, _, cpu in runs])
        print(f"  {label:<38} {median([r[0] for r in runs]):8.2f} {median([float(r[1]) for r in runs]):12.0f} "
              f"{median([r[1] / r[2] for r in runs]):20.2f} {rates[name]:9.0f} {cpu_rates[name]:10.0f}")  # fmt: skip
    in_step = {
        "reftkit": median([r["tokens"] / r["generate"] for r in ours]),
        "TRL": median([r["tokens"] / r["generate"] for r in theirs if r.get("generate")]),
    }
    print(f"  identical samples (same seed, same noise: reftkit's sampler is torch.multinomial's exponential race): "
          f"{same_rows}/{rows * rounds} rows")  # fmt: skip
    real_share = {name: median([r["tokens"] / r["computed"] for r in records])
                  for name, records in (("reftkit", ours), ("TRL", theirs))}  # fmt: skip
    print(f"  in the PPO step (b): reftkit {in_step['reftkit']:.0f} tokens/s (real/(rows x steps) "
          f"{real_share['reftkit']:.2f}), TRL {in_step['TRL']:.0f} tokens/s ({real_share['TRL']:.2f}); identical "
          f"samples {identical_rows(step_samples['reftkit'], step_samples['TRL'])}/{rows * rounds} rows")  # fmt: skip

    print(f"\n(b) one PPO step = 1 rollout of {rows} rows + {updates_per_round} optimizer updates, median seconds")
    phases = ("generate", "reward", "score", "update", "total")
    print(f"  {'':10}" + "".join(f"{p:>10}" for p in phases))
    for name, records in (("reftkit", ours), ("TRL", theirs)):
        print(f"  {name:<10}" + "".join(f"{median([r.get(p, 0.0) for r in records]):10.2f}" for p in phases))
    step_ratio = median([r["total"] for r in theirs]) / median([r["total"] for r in ours])
    print("  generate: sampling; reward: grading with the same reftkit code (+ reftkit's decode; TRL decodes in")
    print("  'update'); score: the forwards for old log-probs/values and the reference (reftkit with one minibatch")
    print("  of every row: the policy's with gradients, also the first update's); update: the loss forwards,")
    print("  backwards and optimizer steps, and everything else in the step")
    print(f"\nPPO step time ratio TRL/reftkit: {step_ratio:.2f} (above 1: reftkit's step is faster)")
    print(f"in-step rollout tokens/s ratio reftkit/TRL: {in_step['reftkit'] / in_step['TRL']:.2f}")
    print(f"rollout tokens per CPU-second ratio reftkit/TRL: {cpu_rates['reftkit'] / cpu_rates['TRL']:.2f}")
    print(f"rollout tokens/s, ratio of the medians reftkit/TRL: {rates['reftkit'] / rates['TRL']:.2f}")
    bench.tmp.cleanup()
    paired = median([(a[1] / a[0]) / (b[1] / b[0]) for a, b in zip(rollouts["reftkit"], rollouts["TRL"], strict=True)])
    print(f"rollout tokens/s ratio reftkit/TRL: {paired:.2f}")


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        sys.exit(f"error: {err}")
