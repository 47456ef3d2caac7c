"""Typed run configuration: dataclasses, YAML presets, ``key=value`` overrides, early validation.

A config error must cost seconds, not a run: every field is type-checked and range-checked before any
work starts, and unknown keys get a did-you-mean.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from reftkit.reward.kinds import ANSWER_KINDS
from reftkit.rl.ppo import ESTIMATORS, AdvantageEstimator, LossAggregation


class ConfigError(ValueError):
    """A bad configuration value; the message names the field and the fix."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stays non-finite); the message says why and what to change."""


@dataclass
class TinyModelConfig:
    """A small Llama-style model built from scratch, with a BPE tokenizer trained on the task's text."""

    vocab_size: int = 1024
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 512


@dataclass
class LoraConfig:
    """Low-rank adapters (``peft``, installed separately) for every model trained: SFT, the ReFT policy and
    its separate value model, online self-training. Only the adapters (and the value head, in full) get
    gradients and optimizer state; saved checkpoints hold the merged weights, so they stay plain HF directories."""

    enabled: bool = False
    r: int = 8
    """Rank of each adapter."""
    alpha: float = 16.0
    """Scale numerator: the adapter's update is multiplied by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the adapter input; only where the model trains in train mode (SFT), not in ReFT (eval mode)."""
    target_modules: str = "all-linear"
    """Comma-separated module names to adapt (e.g. ``q_proj,v_proj``), or ``all-linear`` (every linear layer
    but the output layer)."""


WeightDtype = Literal["float32", "bfloat16", "float16"]
Tracker = Literal["tensorboard", "wandb", "trackio", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab"]
TRACKERS: tuple[str, ...] = typing.get_args(Tracker)


@dataclass
class ModelConfig:
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
    cot: str = "python"
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
    answer_type: str = "numeric"
    """``jsonl`` task: ``numeric``, ``mcq`` (option letters, options written in the question) or ``math``
    (LaTeX answers, ``\\boxed{...}``)."""
    id_field: str = "id"
    question_field: str = "question"
    answer_field: str = "answer"
    cot_field: str = "cot"
    """``jsonl`` task: field names; a missing id is the line number, a missing CoT makes the file RL/eval-only."""


@dataclass
class SFTConfig:
    """Supervised fine-tuning on (question, gold CoT); the warm-up and the SFT baseline are one run of it."""

    warmup_epochs: int = 2
    """Epochs before the snapshot that ReFT starts from (REFERENCE.md A.2: an early checkpoint of the SFT run)."""
    epochs: int | None = None
    """Epochs of continued SFT after the warm-up; None means as many as ReFT runs (equal epochs)."""
    lr: float = 1e-3
    batch_size: int = 32
    lr_warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
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
    questions_per_step: int = 32
    samples_per_question: int = 1
    lr: float = 3e-5
    value_lr: float | None = None
    """Learning rate of the value head (and separate value model); None: ``lr``, as the paper."""
    ppo_epochs: int = 2
    minibatch_size: int = 32
    grad_accum_steps: int = 1
    """Gradient accumulation: each PPO minibatch (and online self-training's batch) is back-propagated in this many
    parts, one at a time, then one optimiser step; the same update as the whole minibatch at once."""
    kl_coef: float = 0.01
    gamma: float = 1.0
    lam: float = 0.95
    clip_eps: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 5.0
    advantage: AdvantageEstimator = "gae"
    """How advantages are made (``reftkit.rl.ppo.ESTIMATORS``): ``gae`` (the paper: a value head, GAE over the
    KL-shaped per-token rewards); critic-free, no value head and no value loss, one advantage per sample from the
    rewards of its question's ``samples_per_question`` samples: ``grpo`` ((r - mean) / std of the group),
    ``rloo`` (r - mean of the other samples), ``reinforce_baseline`` (r - group mean, whitened over the batch),
    ``dr_grpo`` (r - group mean, with the constant loss normaliser)."""
    loss_agg: LossAggregation = "auto"
    """Policy-loss aggregation (``reftkit.rl.ppo.Aggregation``): ``sequence_mean`` (each sample's token mean, then
    the mean over samples: the reference), ``token_mean`` (over all tokens), ``constant`` (token sum over samples x
    ``max_new_tokens``: Dr. GRPO); ``auto``: ``constant`` for ``dr_grpo``, else ``sequence_mean``."""
    kl_mode: Literal["reward", "loss"] = "reward"
    """Where the KL to the warm-up acts: ``reward`` (the paper: -kl_coef x k1 per token in the reward) or ``loss``
    (GRPO: kl_coef x the k3 estimate added to the policy loss). ``kl_coef=0`` loads no reference model."""
    sft_coef: float = 0.0
    """Weight of a cross-entropy term on the gold chains of each minibatch's questions, added to the PPO loss (the
    reference has it commented out); 0: pure RL, as the paper."""
    value_warmup_steps: int = 0
    """The first this many PPO steps train only the value head (and a separate value model); the policy stays
    the warm-up, so its first updates see a trained critic (REFERENCE.md G: the paper blames its first bad epochs
    on the untrained head). No gain was measured on the default task (docs/results-notes.md)."""
    grad_clip: float = 1.0
    whiten_advantages: bool = True
    partial_reward: bool = True
    value_model: str = "shared"
    """``shared``: value head on the policy trunk (the paper); ``detached``: the same head, but its loss stops at the
    trunk, so only the policy loss moves the policy; ``separate``: a value model copied from the warm-up."""
    ref_model: str = "copy"
    """The frozen KL reference: ``copy`` (a copy of the warm-up) or ``lora_off`` (with ``model.lora``: the policy
    with its adapters switched off, which is exactly the warm-up, so no second copy of the weights is kept)."""
    ref_device: str = "same"
    """Where a ``copy`` reference lives: ``same`` (the training device) or ``cpu`` (frees its device memory; its
    forward pass then runs on the CPU in float32)."""
    rollout_backend: str = "auto"
    """How rollouts (ReFT, online self-training) decode: ``auto`` (the lean decoder of ``reftkit.rollout.lean``
    for Llama, Mistral and Qwen2 models, else the model's HF forward), ``hf``, ``lean``, or ``vllm`` (a CUDA GPU
    with vLLM installed: ``reftkit.rollout.vllm_engine``, weights synced after every PPO update)."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 128
    eval_every: int = 20
    """Validation every this many PPO steps (and at the end)."""
    max_steps: int | None = None
    """Stop after this many PPO steps even within an epoch: equal compute across samples-per-question."""


@dataclass
class EvalConfig:
    batch_size: int = 250
    max_new_tokens: int = 128
    program_timeout: float = 2.0


@dataclass
class SampleConfig:
    """Sampled chains of thought (REFERENCE.md B): one pass feeds voting, pass@k, reranking and offline ST."""

    n: int = 0
    """Samples per test question for vote@k / pass@k / rerank@k in ``reftkit run``; 0: greedy only."""
    train_n: int = 8
    """Samples per training question from the warm-up (offline self-training data, reward-model data)."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
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
    lr: float = 1e-4
    batch_size: int = 32
    lr_warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
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
    seed: int = 0
    methods: str = "sft,reft"
    """Comma-separated subset of sft, offline-st, online-st, reft for ``reftkit run``; all start from one warm-up."""
    mixed_precision: str = "auto"
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


_CHOICES = {
    "task.cot": ("nl", "python"),
    "task.answer_type": tuple(ANSWER_KINDS),
    "mixed_precision": ("auto", "bf16", "fp16", "no"),
    "reft.value_model": ("shared", "detached", "separate"),
    "reft.ref_model": ("copy", "lora_off"),
    "reft.ref_device": ("same", "cpu"),
    "reft.rollout_backend": ("auto", "hf", "lean", "vllm"),
}
_POSITIVE = set(
    """
    task.n_train task.n_val task.n_test task.max_ops task.limit model.tiny.vocab_size model.tiny.hidden_size
    model.tiny.intermediate_size model.tiny.num_layers model.tiny.num_heads model.tiny.max_positions
    sft.warmup_epochs sft.lr sft.batch_size reft.epochs reft.questions_per_step
    reft.samples_per_question reft.lr reft.ppo_epochs reft.minibatch_size reft.temperature
    reft.max_new_tokens reft.eval_every eval.batch_size eval.max_new_tokens eval.program_timeout
    reft.value_lr reft.max_steps sample.train_n sample.temperature sample.max_new_tokens
    sample.questions_per_batch sample.vote_draws self_training.max_per_question self_training.offline_epochs
    rm.epochs rm.lr rm.batch_size rm.max_length checkpoint.keep_last checkpoint.max_nonfinite_in_row
    model.lora.r model.lora.alpha sft.patience sft.grad_accum_steps reft.grad_accum_steps rm.grad_accum_steps
    """.split()
)
_NON_NEGATIVE = set(
    """
    task.n_heldout_test sft.epochs sft.weight_decay sft.grad_clip reft.kl_coef reft.clip_eps reft.value_clip
    reft.vf_coef reft.value_warmup_steps reft.grad_clip reft.sft_coef reft.top_k sample.n sample.top_k
    rm.weight_decay rm.grad_clip checkpoint.every_steps
    """.split()
)
_UNIT_INTERVAL = {
    "sft.lr_warmup_ratio", "reft.gamma", "reft.lam", "reft.top_p", "sample.top_p", "rm.lr_warmup_ratio"
}  # fmt: skip
METHODS = ("sft", "offline-st", "online-st", "reft")


def method_list(methods: str) -> list[str]:
    """The methods of ``methods`` in pipeline order; ConfigError naming any unknown one."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ConfigError(f"methods: {methods!r}: give a comma-separated subset of {', '.join(METHODS)}")
    return [m for m in METHODS if m in names]


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in resources.files("reftkit.config.presets").iterdir() if p.name.endswith(".yaml")
    )


def load_config(preset: str | None = "default", file: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Build a config from defaults, then a preset, then a YAML file, then ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if preset:
        if preset not in preset_names():
            raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {', '.join(preset_names())}")
        _merge(
            data,
            yaml.safe_load(resources.files("reftkit.config.presets").joinpath(f"{preset}.yaml").read_text()) or {},
        )
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"--config: no such file {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:  # its own message spans lines (with a caret); keep the gist on one
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark else ""
            problem = getattr(err, "problem", None) or "cannot be parsed"
            raise ConfigError(f"{path}{where}: not valid YAML ({problem}); fix the file") from None
        if not isinstance(loaded, dict | None):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys")
        _merge(data, loaded or {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: write overrides as key=value, e.g. reft.lr=1e-5")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw) if raw != "" else None
    config = _build(RunConfig, data, "")
    validate(config)
    return config


def check_out_dir(out: Path, overwrite: bool, resume: bool, resumable: bool = True) -> None:
    """The one rule for an ``--out`` folder: a folder, never overwritten unasked; a resumed one holds a run.
    ``resumable=False`` for outputs that cannot be resumed (``reftkit rm``)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file; give a folder path")
    if resume:
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"--resume: {out} holds no run to resume (no config.yaml); start it without --resume")
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        hint = " or --resume to continue it" if resumable else ""
        raise ConfigError(f"--out: {out} exists and is not empty; pass --overwrite to replace it{hint}")


def resumed_config(run_dir: Path, given: RunConfig, explicit: bool) -> RunConfig:
    """The config a resumed run continues with: its own ``config.yaml``; config arguments given with
    ``--resume`` must agree with it field for field."""
    check_out_dir(Path(run_dir), overwrite=False, resume=True)
    saved_path = Path(run_dir) / "config.yaml"
    saved = load_config(None, saved_path)
    if explicit:
        there, here = _flatten(to_dict(saved)), _flatten(to_dict(given))
        for key in there:
            if there[key] != here[key]:
                raise ConfigError(
                    f"--resume: {key} is {here[key]!r} here but {there[key]!r} in {saved_path}; resume with no "
                    "config arguments, or start afresh with --overwrite"
                )
    return saved


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def dump_yaml_with_docs(config: RunConfig) -> str:
    """``config`` as YAML (it loads back as the same config), each key preceded by its doc string as comments:
    what ``reftkit config show`` prints."""
    docs = field_docs()
    lines: list[str] = []

    def emit(node: Any, indent: int) -> None:
        pad = " " * indent
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            doc = docs.get((type(node).__name__, f.name))
            if doc is None and dataclasses.is_dataclass(value):
                doc = docs.get((type(value).__name__, None))
            if doc:
                text = " ".join(doc.replace("``", "`").split())
                lines.extend(pad + "# " + line for line in textwrap.wrap(text, max(40, 116 - indent)))
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:")
                emit(value, indent + 2)
            else:
                text = yaml.safe_dump(value, default_flow_style=True, width=math.inf)
                lines.append(f"{pad}{f.name}: {text.removesuffix(chr(10) + '...' + chr(10)).strip()}")

    emit(config, 0)
    return "\n".join(lines) + "\n"


def field_docs() -> dict[tuple[str, str | None], str]:
    """Doc strings of the config dataclasses, read from this module's source: (class, field) -> the string literal
    written after the field, and (class, None) -> the class doc string."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    docs: dict[tuple[str, str | None], str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        if (doc := ast.get_docstring(node)) is not None:
            docs[(node.name, None)] = doc
        for stmt, after in zip(node.body, node.body[1:], strict=False):
            target = stmt.target if isinstance(stmt, ast.AnnAssign) else None
            text = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else None
            if isinstance(target, ast.Name) and isinstance(text, str):
                docs[(node.name, target.id)] = inspect.cleandoc(text)
    return docs


def validate(config: RunConfig) -> None:
    """Range checks that types alone cannot express."""
    flat = _flatten(to_dict(config))
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"{key}: {flat[key]!r} is not one of {', '.join(choices)}")
    for key in _POSITIVE:
        if flat[key] is not None and flat[key] <= 0:
            raise ConfigError(f"{key}: must be > 0, got {flat[key]}")
    for key in _NON_NEGATIVE:
        if flat[key] is not None and flat[key] < 0:
            raise ConfigError(f"{key}: must be >= 0, got {flat[key]}")
    for key in _UNIT_INTERVAL:
        if not 0 <= flat[key] <= 1:
            raise ConfigError(f"{key}: must be in [0, 1], got {flat[key]}")
    if config.reft.minibatch_size > config.reft.questions_per_step * config.reft.samples_per_question:
        raise ConfigError(
            "reft.minibatch_size: larger than the samples of one step "
            f"({config.reft.questions_per_step} questions x {config.reft.samples_per_question} samples); lower it "
            "or raise reft.questions_per_step"
        )
    method_list(config.methods)
    reft = config.reft
    if ESTIMATORS[reft.advantage].needs_groups and reft.samples_per_question < 2:
        raise ConfigError(
            f"reft.advantage: {reft.advantage} compares the samples of a question, so it needs "
            f"reft.samples_per_question >= 2 (got {reft.samples_per_question}); e.g. reft.samples_per_question=4 "
            "reft.questions_per_step=8"
        )
    if reft.value_warmup_steps and not ESTIMATORS[reft.advantage].needs_critic:
        raise ConfigError(f"reft.value_warmup_steps: {reft.advantage} has no value head to warm up; set it to 0")
    if config.rm.enabled and not config.sample.n:
        raise ConfigError("rm.enabled: reranking needs sampled test chains; set sample.n (e.g. sample.n=8)")
    if config.model.tiny.hidden_size % config.model.tiny.num_heads:
        raise ConfigError("model.tiny.hidden_size: must be a multiple of model.tiny.num_heads")
    lora = config.model.lora
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"model.lora.dropout: must be in [0, 1), got {lora.dropout}")
    if not [m for m in lora.target_modules.split(",") if m.strip()]:
        raise ConfigError("model.lora.target_modules: give module names (e.g. q_proj,v_proj) or all-linear")
    if config.reft.ref_model == "lora_off" and not lora.enabled:
        raise ConfigError("reft.ref_model: lora_off needs model.lora.enabled=true; or use reft.ref_model=copy")
    if config.model.dtype == "float16" and config.mixed_precision == "fp16":
        raise ConfigError(
            "model.dtype: float16 weights cannot train under mixed_precision=fp16 (its gradient scaler cannot unscale "
            "float16 gradients); use mixed_precision=no, or model.dtype=bfloat16 or float32"
        )
    if config.reft.ref_model == "lora_off" and config.reft.ref_device != "same":
        raise ConfigError("reft.ref_device: a lora_off reference is the policy itself; use reft.ref_device=same")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{prefix}{key}: unknown config key{hint}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if typing.get_origin(hint) is list:  # a YAML list; a bare or comma-separated string; null or [] for none
        if value is None:
            return []
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list (e.g. {key}=[a,b]), got {value!r}")
        (item,) = typing.get_args(hint)
        return list(dict.fromkeys(_coerce(item, v, key) for v in value))
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value is False and "no" in choices:  # YAML 1.1 reads a bare no as false
            value = "no"
        if value not in choices or isinstance(value, bool):
            close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}{hint}")
        return value
    if isinstance(hint, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
    if hint is float:
        number = _float(value)
        if number is not None and math.isfinite(number):
            return number
        if number is not None:  # nan passes every range check, inf every upper bound
            raise ConfigError(f"{key}: expected a finite float, got {value!r}")
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if hint is str and value is False:  # YAML 1.1 reads a bare no (mixed_precision=no) as false
        return "no"
    if hint is bool:
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    raise ConfigError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _float(value: Any) -> float | None:
    """A YAML number as float (YAML 1.1 reads 1e-4 and nan as strings); None if it is not one. bool is no number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
