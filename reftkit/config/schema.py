"""Typed run configuration: the dataclasses, each field with its doc string, and the Literal choices.

What each setting means lives here, next to its type and default, and nowhere else: ``reftkit config show``
prints these doc strings above the keys (``reftkit.config.loading.field_docs`` reads them from this file's
source). Building a config from presets, files and ``key=value`` overrides, and checking it, is
``reftkit.config.loading``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from reftkit.reward.kinds import AnswerType
from reftkit.reward.programs import CoT
from reftkit.rl.ppo import AdvantageEstimator, LossAggregation

# The choice fields: the loader accepts exactly these values (and says which, with a did-you-mean).
WeightDtype = Literal["float32", "bfloat16", "float16"]
Tracker = Literal["tensorboard", "wandb", "trackio", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab"]
MixedPrecision = Literal["auto", "bf16", "fp16", "no"]
ValueModel = Literal["shared", "detached", "separate"]
RefModel = Literal["copy", "lora_off"]
RefDevice = Literal["same", "cpu"]
RolloutBackend = Literal["auto", "hf", "lean", "vllm"]
KLMode = Literal["reward", "loss"]


class ConfigError(ValueError):
    """A bad configuration value; the message names the field and the fix."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stays non-finite); the message says why and what to change."""


@dataclass
class TinyModelConfig:
    """A small Llama-style model built from scratch, with a BPE tokenizer trained on the task's text."""

    vocab_size: int = 1024
    """Target size of the BPE vocabulary (its 3 special tokens included); a small text can give fewer."""
    hidden_size: int = 192
    """Width of the residual stream; a multiple of ``num_heads``."""
    intermediate_size: int = 512
    """Width of each MLP's hidden layer."""
    num_layers: int = 4
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads (as many key-value heads: no grouped-query attention)."""
    max_positions: int = 512
    """The model's ``max_position_embeddings``: the longest sequence (prompt + completion) it is meant for."""


@dataclass
class LoraConfig:
    """Low-rank adapters (``peft``, installed separately) for every model trained: SFT, the ReFT policy and
    its separate value model, online self-training. Only the adapters (and the value head, in full) get
    gradients and optimizer state; saved checkpoints hold the merged weights, so they stay plain HF directories."""

    enabled: bool = False
    """Train adapters instead of all the weights."""
    r: int = 8
    """Rank of each adapter."""
    alpha: float = 16.0
    """Scale numerator: the adapter's update is multiplied by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the adapter input; only where the model trains in train mode (SFT), not in ReFT (eval mode)."""
    target_modules: str = "all-linear"
    """Comma-separated module names to adapt (e.g. ``q_proj,v_proj``), or ``all-linear`` (every linear layer
    but the output layer)."""


@dataclass
class ModelConfig:
    """The model every method starts from, and how its weights are held while training."""

    path: str | None = None
    """HF model directory, or a Hub id (``org/name``: downloaded to, or read from, the HF cache; ``reftkit model
    import`` brings GGUF files in); None builds the ``tiny`` preset."""
    dtype: WeightDtype = "float32"
    """Weights as loaded for training and sampling (policy, value and reference models; the reward model stays
    float32): ``float32``, ``bfloat16`` (half the memory; the optimizer state is then bfloat16 too, and small
    updates can round away) or ``float16``. Mixed precision still runs matmuls in its autocast dtype either way.
    Checkpoints are saved in this dtype."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of storing them (less memory,
    about a third more compute); active whenever gradients are taken, eval mode (ReFT) included."""


@dataclass
class TaskConfig:
    """Which problems to train and evaluate on; ``reftkit data list`` shows the registered tasks."""

    name: str = "synthetic"
    """``synthetic`` (embedded), ``gsm8k``, ``svamp``, ``mathqa_mcq``, ``mathqa_numeric`` or ``jsonl`` (your files)."""
    cot: CoT = "python"
    """Chain-of-thought style: ``nl`` (N-CoT) or ``python`` (P-CoT)."""
    data_dir: str | None = None
    """Directory holding ``gsm8k/``, ``svamp/``, ``mathqa/``; None reads ``$REFTKIT_DATA_DIR``."""
    limit: int | None = None
    """Keep only the first N problems of each split (a small slice for smoke runs)."""
    n_val: int = 200
    """Validation questions carved from train (seeded by ``data_seed``, stable across runs) for selection."""
    n_heldout_test: int = 0
    """Questions held out of train (disjoint from validation) as the test split; the task's own test split
    is then reported beside it. For models that cannot yet be judged on a test set built to be hard (SVAMP)."""
    data_seed: int = 0
    """Seed of the validation carve and of the generated synthetic data; the run's ``seed`` drives training."""
    n_train: int = 2000
    """Synthetic task only: training questions to generate (real datasets use all their items)."""
    n_test: int = 500
    """Synthetic task only: test questions to generate."""
    max_ops: int = 4
    """Synthetic task only: most operations per question."""
    train_file: str | None = None
    """``jsonl`` task: training file (JSONL, or a directory saved by ``datasets.save_to_disk``)."""
    val_file: str | None = None
    """``jsonl`` task: validation file; None carves ``n_val`` questions from train."""
    test_file: str | None = None
    """``jsonl`` task: test file."""
    answer_type: AnswerType = "numeric"
    """``jsonl`` task: ``numeric``, ``mcq`` (option letters, options written in the question) or ``math``
    (LaTeX answers, ``\\boxed{...}``)."""
    id_field: str = "id"
    """``jsonl`` task: the field holding each problem's id."""
    question_field: str = "question"
    """``jsonl`` task: the field holding the question."""
    answer_field: str = "answer"
    """``jsonl`` task: the field holding the gold answer."""
    cot_field: str = "cot"
    """``jsonl`` task: the field holding the gold chain of thought. A missing id is the line number; a missing CoT
    makes the file RL/eval-only."""


@dataclass
class SFTConfig:
    """Supervised fine-tuning on (question, gold CoT); the warm-up and the SFT baseline are one run of it."""

    warmup_epochs: int = 2
    """Epochs before the snapshot that ReFT starts from (REFERENCE.md A.2: an early checkpoint of the SFT run)."""
    epochs: int | None = None
    """Epochs of continued SFT after the warm-up; None means as many as ReFT runs (equal epochs)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW; linear warm-up, then linear decay to 0 over the whole run."""
    batch_size: int = 32
    """(question, gold CoT) pairs per optimiser step."""
    lr_warmup_ratio: float = 0.1
    """Fraction of the run's optimiser steps over which the learning rate rises from 0 to ``lr``."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    grad_clip: float = 1.0
    """Largest gradient norm; a larger gradient is scaled down to it."""
    grad_accum_steps: int = 1
    """Gradient accumulation: each batch of ``batch_size`` is back-propagated in this many parts, one at a time
    (activation memory of one part), then one optimiser step; the same update as the whole batch at once."""
    patience: int | None = None
    """Stop continued SFT once validation has not improved for this many epochs ("converged SFT": train long, keep
    the best epoch); None trains every epoch."""


@dataclass
class ReFTConfig:
    """PPO on sampled CoTs with the answer reward (REFERENCE.md A.3)."""

    epochs: int = 4
    """Passes over the training questions."""
    questions_per_step: int = 32
    """Questions sampled for each PPO step (a fresh seeded order every epoch)."""
    samples_per_question: int = 1
    """Completions sampled per question in a step (the group the critic-free estimators compare)."""
    lr: float = 3e-5
    """Learning rate of the policy (AdamW, constant)."""
    value_lr: float | None = None
    """Learning rate of the value head (and separate value model); None: ``lr``, as the paper."""
    ppo_epochs: int = 2
    """Passes over each step's samples, in shuffled minibatches."""
    minibatch_size: int = 32
    """Samples per PPO minibatch, i.e. per optimiser step; at most ``questions_per_step x samples_per_question``."""
    grad_accum_steps: int = 1
    """Gradient accumulation: each PPO minibatch (and online self-training's batch) is back-propagated in this many
    parts, one at a time, then one optimiser step; the same update as the whole minibatch at once."""
    kl_coef: float = 0.01
    """Weight of the KL to the warm-up (see ``kl_mode``)."""
    gamma: float = 1.0
    """Discount of GAE."""
    lam: float = 0.95
    """GAE's lambda: 1 is the Monte Carlo return, 0 one-step TD."""
    clip_eps: float = 0.2
    """PPO's clip range: the probability ratio to the rollout policy is clipped to [1 - clip_eps, 1 + clip_eps]
    (the pessimistic min of the clipped and unclipped objective is taken)."""
    value_clip: float = 0.2
    """Value predictions are clipped to within this of their rollout-time values (the larger of the clipped and
    unclipped squared errors is taken)."""
    vf_coef: float = 5.0
    """Weight of the value loss in the PPO loss."""
    advantage: AdvantageEstimator = "gae"
    """How advantages are made (``reftkit.rl.ppo.ESTIMATORS``): ``gae`` (the paper: a value head, GAE over the
    KL-shaped per-token rewards); critic-free, no value head and no value loss, one advantage per sample from the
    rewards of its question's ``samples_per_question`` samples: ``grpo`` ((r - mean) / std of the group),
    ``rloo`` (r - mean of the other samples), ``reinforce_baseline`` (r - group mean, whitened over the batch),
    ``dr_grpo`` (r - group mean, with the constant loss normaliser); ``reinforce`` (REINFORCE++: r - the step's
    mean reward, whitened over the batch) needs no groups and works with ``samples_per_question=1``."""
    loss_agg: LossAggregation = "auto"
    """Policy-loss aggregation (``reftkit.rl.ppo.Aggregation``): ``sequence_mean`` (each sample's token mean, then
    the mean over samples: the reference), ``token_mean`` (over all tokens), ``constant`` (token sum over samples x
    ``max_new_tokens``: Dr. GRPO); ``auto``: ``constant`` for ``dr_grpo``, else ``sequence_mean``."""
    kl_mode: KLMode = "reward"
    """Where the KL to the warm-up acts: ``reward`` (the paper: -kl_coef x k1 per token in the reward) or ``loss``
    (GRPO: kl_coef x the k3 estimate added to the policy loss). ``kl_coef=0`` loads no reference model."""
    sft_coef: float = 0.0
    """Weight of a cross-entropy term on the gold chains of each minibatch's questions, added to the PPO loss (the
    reference has it commented out); 0: pure RL, as the paper."""
    positive_only: bool = False
    """Critic-free estimators: zero every negative sequence advantage, so only samples better than their group's
    baseline are reinforced and worse ones are not pushed down, as rejection-sampling fine-tuning (RAFT; online
    self-training without gold) learns from. No effect with ``gae`` (its token advantages have no per-sample sign).
    With a whitening estimator (``reinforce``, ``reinforce_baseline``) the whitening then only rescales.
    The default preset sets it: it was above or level with plain RLOO on validation on all six seeds tried."""
    value_warmup_steps: int = 0
    """The first this many PPO steps train only the value head (and a separate value model); the policy stays
    the warm-up, so its first updates see a trained critic (REFERENCE.md G: the paper blames its first bad epochs
    on the untrained head). No gain was measured on the default task (docs/results-notes.md)."""
    grad_clip: float = 1.0
    """Largest gradient norm; a larger gradient is scaled down to it."""
    whiten_advantages: bool = True
    """With ``gae``: whiten the advantages over every counted token of the step (variance 1, mean 0)."""
    partial_reward: bool = True
    """Reward 0.1 for a wrong answer that could be read (the paper's partial reward); false: 0, like no answer."""
    value_model: ValueModel = "shared"
    """``shared``: value head on the policy trunk (the paper); ``detached``: the same head, but its loss stops at the
    trunk, so only the policy loss moves the policy; ``separate``: a value model copied from the warm-up."""
    ref_model: RefModel = "copy"
    """The frozen KL reference: ``copy`` (a copy of the warm-up) or ``lora_off`` (with ``model.lora``: the policy
    with its adapters switched off, which is exactly the warm-up, so no second copy of the weights is kept)."""
    ref_device: RefDevice = "same"
    """Where a ``copy`` reference lives: ``same`` (the training device) or ``cpu`` (frees its device memory; its
    forward pass then runs on the CPU in float32)."""
    rollout_backend: RolloutBackend = "auto"
    """How rollouts (ReFT, online self-training) decode: ``auto`` (the lean decoder of ``reftkit.rollout.lean``
    for Llama, Mistral and Qwen2 models, else the model's HF forward), ``hf``, ``lean``, or ``vllm`` (a CUDA GPU
    with vLLM installed: ``reftkit.rollout.vllm_engine``, weights synced after every PPO update)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    top_k: int = 0
    """Sample only from the ``top_k`` most likely tokens; 0: no limit."""
    top_p: float = 1.0
    """Sample only from the smallest set of tokens whose probabilities reach ``top_p`` (nucleus); 1: no limit."""
    max_new_tokens: int = 128
    """Longest completion sampled in a rollout; a cut-off one is graded as it stands."""
    eval_every: int = 20
    """Validation every this many PPO steps (and at the end)."""
    max_steps: int | None = None
    """Stop after this many PPO steps even within an epoch: equal compute across samples-per-question."""


@dataclass
class EvalConfig:
    """Greedy evaluation (validation and test accuracy) and the grading of every completion."""

    batch_size: int = 250
    """Questions per greedy generation batch (batched by prompt length)."""
    max_new_tokens: int = 128
    """Longest greedy completion."""
    program_timeout: float = 2.0
    """Seconds a P-CoT program may run in the sandbox before it counts as a timeout (reward 0)."""


@dataclass
class SampleConfig:
    """Sampled chains of thought (REFERENCE.md B): one pass feeds voting, pass@k, reranking and offline ST."""

    n: int = 0
    """Samples per test question for vote@k / pass@k / rerank@k in ``reftkit run``; 0: greedy only."""
    train_n: int = 8
    """Samples per training question from the warm-up (offline self-training data, reward-model data)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_k: int = 0
    """Sample only from the ``top_k`` most likely tokens; 0: no limit."""
    top_p: float = 1.0
    """Sample only from the smallest set of tokens whose probabilities reach ``top_p`` (nucleus); 1: no limit."""
    max_new_tokens: int | None = None
    """None: ``eval.max_new_tokens``."""
    questions_per_batch: int = 32
    """Prompts per generation batch; each is encoded once and its KV cache shared by its ``n`` samples."""
    vote_draws: int = 20
    """vote@k / rerank@k for k < n average this many random k-subsets of the n samples (seeded)."""


@dataclass
class SelfTrainingConfig:
    """The paper's baselines (REFERENCE.md A.5) on the same footing as ReFT."""

    max_per_question: int = 10
    """Offline: unique correct samples kept per question, chosen at random; the gold CoT is added once."""
    offline_epochs: int | None = None
    """Offline: SFT epochs from the base model; None: as many as the SFT baseline (warm-up + continued)."""
    online_gold: bool = True
    """Online: add ½·CE on the gold chains of each step's questions (the paper); false trains only on the correct
    samples, the like-for-like comparison with ReFT, which never sees the gold chains."""


@dataclass
class RewardModelConfig:
    """Outcome reward model for best-of-N reranking (REFERENCE.md B): correctness of warm-up samples."""

    enabled: bool = False
    """Train it in ``reftkit run`` (needs ``sample.n`` > 0) and report rerank@k."""
    epochs: int = 3
    """Passes over the (question, sampled completion) pairs."""
    lr: float = 1e-4
    """Peak learning rate of AdamW; linear warm-up, then linear decay to 0."""
    batch_size: int = 32
    """Pairs per optimiser step."""
    lr_warmup_ratio: float = 0.1
    """Fraction of the optimiser steps over which the learning rate rises from 0 to ``lr``."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    grad_clip: float = 1.0
    """Largest gradient norm; a larger gradient is scaled down to it."""
    max_length: int = 512
    """Tokens per (question, completion) input; longer ones are cut from the left of the question."""
    grad_accum_steps: int = 1
    """Gradient accumulation: each batch is back-propagated in this many parts, then one optimiser step."""


@dataclass
class CheckpointConfig:
    """Resumable training state (``--resume``): written atomically with checksums, pruned to the newest few."""

    every_steps: int = 50
    """Save a stage's full training state every this many of its steps (SFT/RM batches, PPO steps); 0: never
    mid-stage (a killed stage then restarts from its beginning; finished stages are always kept)."""
    keep_last: int = 2
    """Complete checkpoints kept per stage; older ones are deleted, never the newest complete one."""
    max_nonfinite_in_row: int = 10
    """Steps in a row whose loss, KL or gradient norm is not finite (each is skipped, never applied) before the
    run stops with an error."""


@dataclass
class RunConfig:
    """A whole run: ``reftkit run`` and every single-stage command read their settings from it."""

    seed: int = 0
    """Seed of training: initialisation, data order, sampling (the data split has ``task.data_seed``)."""
    methods: str = "sft,reft"
    """Comma-separated subset of sft, offline-st, online-st, reft for ``reftkit run``; all start from one warm-up."""
    mixed_precision: MixedPrecision = "auto"
    """``auto`` (bf16 where the hardware supports it), ``bf16``, ``fp16`` or ``no``."""
    report_to: list[Tracker] = field(default_factory=list)
    """Experiment trackers (through ``accelerate``) that get the figures of ``metrics.jsonl`` too, tagged
    ``<stage>/<figure>``: any of tensorboard, wandb, trackio, comet_ml, aim, mlflow, clearml, dvclive, swanlab
    (each needs its package); local logs go to ``RUN/trackers/``. Empty: none."""
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reft: ReFTConfig = field(default_factory=ReFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)
    rm: RewardModelConfig = field(default_factory=RewardModelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
