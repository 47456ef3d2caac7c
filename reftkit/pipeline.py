"""``reftkit run``: the whole pipeline in one run folder, one function per stage.

warm-up SFT → (continued SFT | offline self-training | online self-training | ReFT) from it → greedy test
evaluation → (sampled test evaluation, reranked by a reward model) → summary and report.

The run folder is what a user keeps: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``report.md``,
``plots/*.png`` and ``checkpoints/`` (plain HF directories). Checkpoints are selected on validation; the
test split is touched once per selected (and last) checkpoint, at the end. Each stage on its own, and the steps
the stages share, are in :mod:`reftkit.stages`; the run folder itself in :mod:`reftkit.run_folder`.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reftkit.config.loading import method_list
from reftkit.config.schema import ConfigError, RunConfig
from reftkit.data.base import TaskData
from reftkit.evaluation.accuracy import EvalResult, inference_curves
from reftkit.evaluation.plots import plot_inference_curves, plot_run, read_metrics
from reftkit.evaluation.report import render_inference_table, render_report, render_table
from reftkit.evaluation.sampling import Sample, by_question, meta_path, read_samples
from reftkit.models.loading import load_causal_lm
from reftkit.run_folder import run_identity
from reftkit.runtime.distributed import is_main
from reftkit.stages import RewardModel, load_base_model, sample_to_file, stage_setup, test_sets
from reftkit.trainers.checkpoints import StageCheckpoints
from reftkit.trainers.common import MetricsLog, param_count, step_plan
from reftkit.trainers.reft import train_reft
from reftkit.trainers.reward_model import load_reward_model, rm_examples, train_reward_model
from reftkit.trainers.self_training import offline_st_problems, train_online_st
from reftkit.trainers.sft import SFTResult, train_sft
from reftkit.trainers.stepwise import StageContext

STEPWISE = {"online-st": train_online_st, "reft": train_reft}
"""The methods trained step by step from the warm-up snapshot, in the order ``methods`` lists them."""


@dataclass
class Arm:
    """One trained model of the comparison: its selected checkpoint and (where it has one) its last."""

    best_dir: Path
    chosen: str  # "epoch 18", "step 35"
    val_acc: float
    last_dir: Path | None = None
    last_val_acc: float | None = None


def _arm(best: Path, last: Path, unit: str, at: int, history: dict[int, float]) -> Arm:
    final = max(history)
    return Arm(best, f"{unit} {at}", history[at], last, None if at == final else history[final])


@dataclass
class Run:
    """What the stages of one ``reftkit run`` share: what it was started with, the models trained so far
    (``arms``) and the timings that go into ``summary.json``."""

    config: RunConfig
    out: Path
    data: TaskData
    log: MetricsLog
    accelerator: Accelerator
    resume: bool
    methods: list[str]
    base: Path
    tokenizer: PreTrainedTokenizerBase
    arms: dict[str, Arm] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    samples_per_second: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, stage: str, since: float | None = None) -> Iterator[None]:
        """Records the seconds ``stage`` took (counted from ``since`` if given) once it has finished."""
        start = time.time() if since is None else since
        yield
        self.stage_seconds[stage] = time.time() - start


def run_pipeline(
    config: RunConfig, out: Path, overwrite: bool = False, command: str | None = None, resume: bool = False
) -> dict[str, Any]:
    """Warm-up SFT, then each of ``config.methods`` from it, then greedy (and sampled) test evaluation.

    With ``resume``, finished stages are read back and the interrupted one continues from its checkpoint."""
    accelerator, log, data, folder = stage_setup(config, out, overwrite, "SFT", resume)
    methods = method_list(config.methods)
    started = time.time()
    with folder.starting():
        # the code that ran, not whatever HEAD is when it ends
        command, commit = run_identity(folder.work, command, resume)
        base, tokenizer, model = load_base_model(config, data, folder.work)
    folder.started(log)
    run = Run(config, out, data, log, accelerator, resume, methods, folder.here(base), tokenizer)

    with run.timed("sft", since=started):
        sft = _sft(run, model)
    warmup_samples: list[Sample] = []
    if "offline-st" in methods or config.rm.enabled:  # one pass feeds offline-ST data and the RM's data
        with run.timed("sample_train"):
            warmup_samples = _sample_warmup(run, sft.warmup_dir)
    if "offline-st" in methods:
        with run.timed("offline_st"):
            _offline_st(run, sft, warmup_samples)
    for method in (m for m in methods if m in STEPWISE):
        with run.timed(method.replace("-", "_")):
            _stepwise(run, method, sft.warmup_dir)
    with run.timed("test"):
        test, extra = _test(run)
    inference = None
    if config.sample.n:
        with run.timed("inference"):
            inference = _inference(run, warmup_samples, test)

    summary = _summary(run, sft, test, extra, inference) | {"command": command, "commit": commit}
    if is_main():
        log.close()
        _write_report(out, summary, inference)
    return summary


def _sft(run: Run, model: PreTrainedModel) -> SFTResult:
    """The SFT run whose early snapshot is the warm-up every method starts from; continued, it is the SFT arm
    (where ``methods`` has no ``sft`` it stops at the warm-up)."""
    config, data = run.config, run.data
    print(
        f"task {data.name}/{config.task.cot}: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test; "
        f"model {run.base} ({param_count(model) / 1e6:.2f}M params), mixed precision "
        f"{run.accelerator.mixed_precision}; methods {', '.join(run.methods)}"
    )
    sft_config = config if "sft" in run.methods else replace(config, sft=replace(config.sft, epochs=0))
    sft = train_sft(sft_config, model, run.tokenizer, data, run.out, run.log, run.accelerator)
    warmup_epochs = config.sft.warmup_epochs
    run.arms["warmup"] = Arm(sft.warmup_dir, f"epoch {warmup_epochs}", sft.val_history[warmup_epochs])
    if "sft" in run.methods:
        run.arms["sft"] = _arm(sft.best_dir, sft.last_dir, "epoch", sft.best_epoch, sft.val_history)
    return sft


def _sample_warmup(run: Run, warmup_dir: Path) -> list[Sample]:
    """The warm-up's samples of the train and val questions (read back if a resumed run has them)."""
    config, data = run.config, run.data
    path = run.out / "samples" / "warmup_train_val.jsonl"
    if run.resume and meta_path(path).is_file():  # written last: the samples are complete
        samples, stats = read_samples(path)
    else:
        samples, stats = sample_to_file(
            config, warmup_dir, run.tokenizer, data, [*data.train, *data.val], config.sample.train_n, path,
            "train+val", run.accelerator,
        )  # fmt: skip
    run.samples_per_second["warmup_train_val"] = stats["samples_per_second"]
    return samples


def _offline_st(run: Run, sft: SFTResult, warmup_samples: list[Sample]) -> None:
    """Offline self-training: plain SFT from the base model on the warm-up's correct chains (and the gold)."""
    config, data = run.config, run.data
    st_train = offline_st_problems(
        data.train,
        warmup_samples,
        config.task.cot,
        config.self_training.max_per_question,
        random.Random(config.seed),
    )
    print(f"offline self-training: {len(st_train)} chains for {len(data.train)} questions (gold once)")
    epochs = config.self_training.offline_epochs or max(sft.val_history)
    offline = train_sft(
        config, load_causal_lm(run.base, run.tokenizer, config.model.dtype), run.tokenizer,
        replace(data, train=st_train), run.out, run.log, run.accelerator, name="offline-st", epochs=epochs,
    )  # fmt: skip
    run.arms["offline_st"] = _arm(offline.best_dir, offline.last_dir, "epoch", offline.best_epoch, offline.val_history)


def _stepwise(run: Run, method: str, warmup_dir: Path) -> None:
    """ReFT or online self-training from the warm-up snapshot; its epochs count on from the warm-up's."""
    result = STEPWISE[method](
        StageContext(run.config, warmup_dir, run.tokenizer, run.data, run.out, run.log, run.accelerator,
                     warmup_val_acc=run.arms["warmup"].val_acc, epoch_offset=run.config.sft.warmup_epochs)
    )  # fmt: skip
    run.arms[method.replace("-", "_")] = _arm(
        result.best_dir, result.last_dir, "step", result.best_step, result.val_history
    )


def _test(run: Run) -> tuple[dict[str, EvalResult], dict[str, dict[str, EvalResult]]]:
    """Greedy test results of every arm's selected and last checkpoint (keyed ``<arm>`` and ``<arm>_last``), and
    of the selected ones on the further test sets (beside a held-out split)."""
    test: dict[str, EvalResult] = {}
    extra: dict[str, dict[str, EvalResult]] = {}
    for name, arm in run.arms.items():
        for ckpt, path in ((name, arm.best_dir), (f"{name}_last", arm.last_dir)):
            if path is None:
                continue
            if ckpt != name and arm.last_val_acc is None:  # the selected checkpoint is the last one
                test[ckpt] = test[name]
                continue
            model = load_causal_lm(path, run.tokenizer, run.config.model.dtype)
            results = test_sets(
                run.config, model, run.tokenizer, run.data, ckpt, run.log, run.accelerator, extras=ckpt == name
            )
            test[ckpt] = results.pop(run.data.test_name)
            if ckpt == name:
                extra[name] = results
    return test, extra


def _reward_model(run: Run, warmup_samples: list[Sample]) -> tuple[RewardModel | None, dict[str, Any]]:
    """The reward model trained on the warm-up's samples of training questions (selected on those of validation
    questions), and what the report says of it; (None, why) where it could not be trained."""
    config, data, arms = run.config, run.data, run.arms
    init = arms["sft"].best_dir if "sft" in arms else arms["warmup"].best_dir
    train_ids = {p.id for p in data.train}
    problems = {p.id: p for p in [*data.train, *data.val]}
    try:
        result = train_reward_model(
            init,
            rm_examples(problems, [s for s in warmup_samples if s.id in train_ids], config.task.cot),
            config.rm, run.out / "checkpoints" / "rm", run.log, run.accelerator, config.seed,
            val=(problems, [s for s in warmup_samples if s.id not in train_ids]), cot=config.task.cot,
            checkpoints=StageCheckpoints(run.out, "rm", config.checkpoint, run.log, run.accelerator),
            max_nonfinite_in_row=config.checkpoint.max_nonfinite_in_row,
        )  # fmt: skip
    except ConfigError as err:  # e.g. no correct sample at all: report voting, keep what was trained
        print(f"reftkit: warning: no reranking: {err}", file=sys.stderr)
        return None, {"skipped": str(err)}
    return (*load_reward_model(result["dir"]), result["dir"]), result | {"init": str(init)}


def _inference(run: Run, warmup_samples: list[Sample], test: dict[str, EvalResult]) -> dict[str, Any]:
    """Sample every method's selected checkpoint on the test split; vote@k, pass@k and (with an RM) rerank@k."""
    config, data = run.config, run.data
    rm = None
    info: dict[str, Any] = {"n": config.sample.n, "test_set": data.test_name}
    if config.rm.enabled:
        rm, info["rm"] = _reward_model(run, warmup_samples)
    info["methods"] = {}
    for name, arm in run.arms.items():
        if name == "warmup":
            continue
        path = run.out / "samples" / f"test_{name}.jsonl"
        samples, stats = sample_to_file(
            config, arm.best_dir, run.tokenizer, data, data.test, config.sample.n, path, data.test_name,
            run.accelerator, rm,
        )  # fmt: skip
        run.samples_per_second[f"test_{name}"] = stats["samples_per_second"]
        curves = inference_curves(by_question(samples), config.sample.vote_draws, config.seed, rerank=rm is not None)
        info["k"] = curves.pop("k")
        info["methods"][name] = {"greedy": test[name].accuracy, **curves}
        run.log.write("inference", 0, model=name, **{f"{m}@{config.sample.n}": v[-1] for m, v in curves.items()})
    return info


def _summary(
    run: Run,
    sft: SFTResult,
    test: dict[str, EvalResult],
    extra: dict[str, dict[str, EvalResult]],
    inference: dict[str, Any] | None,
) -> dict[str, Any]:
    """What ``summary.json`` holds (the run's command and commit are added by the caller)."""
    config, data = run.config, run.data
    warmup_epochs = config.sft.warmup_epochs
    summary: dict[str, Any] = {
        "task": data.name,
        "cot": config.task.cot,
        "seed": config.seed,
        "base_model": str(config.model.path or "tiny"),
        "methods": run.methods,
        "wall_seconds": round(run.log.elapsed(), 1),
        "stage_seconds": {k: round(v, 1) for k, v in run.stage_seconds.items()},
        "epochs": {
            "warmup": warmup_epochs,
            "sft": max(sft.val_history) - warmup_epochs,
            "reft": _reft_epochs(config, data),
        },
        "test_set": data.test_name,
        "extra_test_sets": list(data.extra_tests),
    }
    for name, arm in run.arms.items():
        entry: dict[str, Any] = {"val_acc": arm.val_acc, "test_acc": test[name].accuracy}
        if name == "warmup":
            entry["epoch"] = warmup_epochs
        else:
            unit, _, at = arm.chosen.partition(" ")
            entry[f"selected_{unit}"] = int(at)
            last_val = arm.val_acc if arm.last_val_acc is None else arm.last_val_acc
            entry["last"] = {"val_acc": last_val, "test_acc": test[f"{name}_last"].accuracy}
        summary[name] = entry | {f"{test_name}_acc": r.accuracy for test_name, r in extra[name].items()}
    summary["test_outcomes"] = {name: r.counts for name, r in test.items()}
    summary["val_curves"] = _val_curves(run.log.path, warmup_epochs)
    if inference is not None:
        summary["inference"] = inference
    if run.samples_per_second:
        summary["samples_per_second"] = run.samples_per_second
    return summary


def _write_report(out: Path, summary: dict[str, Any], inference: dict[str, Any] | None) -> None:
    """``summary.json``, the plots and ``report.md``; the accuracy tables on stdout."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots = plot_run(out)
    if inference is not None:
        plots.append(plot_inference_curves(inference, out / "plots" / "inference.png"))
    (out / "report.md").write_text(render_report(summary, plots, out))
    print(render_table(summary))
    if inference is not None:
        print(render_inference_table(inference))


def _val_curves(metrics: Path, warmup_epochs: int) -> dict[str, list[list[float]]]:
    """Validation accuracy against seconds of training since the warm-up snapshot, for SFT and for ReFT.

    Both arms start from the warm-up, so this is the equal-time comparison of the two.
    """
    records = read_metrics(metrics)
    sft = [r for r in records if r["stage"] == "sft_eval" and r["epoch"] >= warmup_epochs]
    reft = [r for r in records if r["stage"] == "reft_eval"]
    return {
        "sft": [[round(r["wall"] - sft[0]["wall"], 1), r["val_acc"]] for r in sft],
        "reft": [[round(r["wall"] - reft[0]["wall"], 1), r["val_acc"]] for r in reft],
    }


def _reft_epochs(config: RunConfig, data: TaskData) -> float:
    """Epochs over the training questions that ReFT / online self-training run: ``reft.epochs``, or fewer where
    ``reft.max_steps`` stops them first (the default preset: 126 steps of 8 questions, half an epoch)."""
    steps_per_epoch, total = step_plan(len(data.train), config.reft)
    return round(total / steps_per_epoch, 3)
