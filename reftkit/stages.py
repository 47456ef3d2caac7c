"""Each stage on its own, as the single-stage commands run it (``reftkit sft | reft | online-st | eval | sample |
rm``), and the steps every stage shares, which ``reftkit run`` (:mod:`reftkit.pipeline`) chains as well: a
training command's set-up, the base model, greedy test evaluation, sampling into a samples file.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from reftkit.config.loading import check_out_dir, dump_yaml
from reftkit.config.schema import ConfigError, RunConfig
from reftkit.data.base import Problem, TaskData, prompt_text, target_text
from reftkit.data.registry import load_task, require_training_data
from reftkit.evaluation.accuracy import EvalResult, inference_curves
from reftkit.evaluation.plots import plot_inference_curves, plot_run
from reftkit.evaluation.report import render_inference_table, write_predictions
from reftkit.evaluation.sampling import (
    Sample,
    by_question,
    read_samples,
    sample_problems,
    write_samples,
    write_text_atomically,
)
from reftkit.models.loading import build_tiny, load_causal_lm, load_tokenizer, resolve_model_dir
from reftkit.run_folder import RunFolder, prepare_run_dir, run_identity
from reftkit.runtime.distributed import barrier, broadcast, is_main
from reftkit.runtime.trackers import TRACKERS_DIR, open_trackers
from reftkit.trainers.common import MetricsLog, device_line, greedy_accuracy, make_accelerator, write_atomically
from reftkit.trainers.reft import train_reft
from reftkit.trainers.reward_model import load_reward_model, rm_examples, train_reward_model, with_scores
from reftkit.trainers.self_training import train_online_st
from reftkit.trainers.sft import train_sft
from reftkit.trainers.stepwise import StageContext

RewardModel = tuple[PreTrainedModel, PreTrainedTokenizerBase, str]
"""A loaded reward model: (model, tokenizer, its directory)."""


def base_model_dir(config: RunConfig, data: TaskData, out: Path) -> Path:
    """The model SFT starts from: the user's HF directory, or the ``tiny`` preset built on the train split."""
    if config.model.path:
        return resolve_model_dir(config.model.path)
    target = out / "checkpoints" / "base"
    if is_main() and not (target / "config.json").is_file():  # a resumed run keeps its model and tokenizer
        cot = config.task.cot
        texts = [prompt_text(p, cot) + target_text(p, cot) for p in data.train]
        write_atomically(target, lambda tmp: build_tiny(texts, config.model.tiny, tmp, seed=config.seed))
    barrier()  # the other processes load what the main one wrote
    return target


def load_base_model(
    config: RunConfig, data: TaskData, work: Path
) -> tuple[Path, PreTrainedTokenizerBase, PreTrainedModel]:
    """(directory, tokenizer, model) of the model SFT starts from (see :func:`base_model_dir`)."""
    base = base_model_dir(config, data, work)
    tokenizer = load_tokenizer(base)
    return base, tokenizer, load_causal_lm(base, tokenizer, config.model.dtype)


def announce(line: str) -> None:
    """A status line on stderr (stdout stays the command's JSON result), from the main process only."""
    if is_main():
        print(line, file=sys.stderr, flush=True)


def quiet_transformers() -> None:
    """Our own progress bars and summary replace transformers' per-file loading bars and warnings."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def stage_setup(
    config: RunConfig, out: Path, overwrite: bool, needs: str, resume: bool
) -> tuple[Any, MetricsLog, TaskData, RunFolder]:
    """What every training command does first: data check, run folder, resolved config, seed, accelerator (its
    device line printed), log (its trackers open once the run has started).

    The caller writes into ``folder.work`` until it calls ``folder.started`` (see :class:`RunFolder`)."""
    quiet_transformers()
    data = load_task(config.task)
    require_training_data(data, needs)  # before the run folder exists: a data error must cost nothing
    work, fresh = None, None
    if is_main():  # one process owns the run folder; the others only read what it wrote
        if not resume and not (out.is_dir() and any(out.iterdir())):
            fresh = "was_empty" if out.is_dir() else "created"
        work = prepare_run_dir(out, overwrite, resume)
        if not resume:
            write_text_atomically(work / "config.yaml", dump_yaml(config))
    folder = RunFolder(out, broadcast(work), list(config.report_to), resume, broadcast(fresh))
    barrier()
    set_seed(config.seed)
    accelerator = make_accelerator(config.mixed_precision, config.model.dtype)
    announce(device_line(accelerator, config.model.dtype))
    return accelerator, MetricsLog(folder.work / "metrics.jsonl", resuming=resume), data, folder


def sample_to_file(
    config: RunConfig,
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    data: TaskData,
    problems: list[Problem],
    n: int,
    path: Path,
    split: str,
    accelerator: Accelerator,
    rm: RewardModel | None = None,
) -> tuple[list[Sample], dict[str, float]]:
    """Sample ``n`` chains per problem from ``model_dir`` (scored by the reward model ``rm``, if given) and keep
    them as a samples file."""
    model = load_causal_lm(model_dir, tokenizer, config.model.dtype).to(accelerator.device)
    with accelerator.autocast():
        samples, stats = sample_problems(
            model, tokenizer, problems, config.task.cot, config.sample, config.eval, n,
            seed=config.seed, answer_type=data.answer_type, desc=f"sample {split} ({model_dir.name})",
        )  # fmt: skip
    meta = {"model": str(model_dir), "task": data.name, "split": split, "cot": config.task.cot, "n": n}
    meta["seed"] = config.seed
    if rm is not None:
        samples = scored(config, rm, {p.id: p for p in problems}, samples, accelerator)
        meta["scored_by"] = rm[2]
    if is_main():
        write_samples(path, samples, meta | {"sample": asdict(config.sample)} | stats)
    barrier()
    return samples, stats


def scored(
    config: RunConfig,
    rm: RewardModel,
    problems: dict[str, Problem],
    samples: list[Sample],
    accelerator: Accelerator,
) -> list[Sample]:
    """``samples`` with the reward model's P(correct) as their score."""
    with accelerator.autocast():
        return with_scores(
            rm[0].to(accelerator.device), rm[1], problems, samples, config.task.cot,
            max_length=config.rm.max_length,
        )  # fmt: skip


def test_sets(
    config: RunConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: TaskData,
    name: str,
    log: MetricsLog,
    accelerator: Accelerator,
    extras: bool = True,
) -> dict[str, EvalResult]:
    """Greedy results of one checkpoint on the test split (keyed ``data.test_name``) and, with ``extras``, on
    ``data.extra_tests``; each logged as a ``test`` record."""
    sets = {data.test_name: data.test, **(data.extra_tests if extras else {})}
    model = model.to(accelerator.device)
    results = {}
    for test_name, problems in sets.items():
        result = greedy_accuracy(
            model, tokenizer, problems, config, data.answer_type, accelerator, f"{test_name} {name}"
        )
        log.write(
            "test",
            0,
            model=name,
            test_set=test_name,
            test_acc=result.accuracy,
            **{f"test_{k}": v for k, v in result.counts.items()},
        )
        results[test_name] = result
    return results


def run_sft_stage(
    config: RunConfig, out: Path, model_path: str | None, overwrite: bool = False, resume: bool = False
) -> dict[str, Any]:
    """``reftkit sft``: SFT from an HF directory (or the tiny preset); writes warmup/, sft/ and sft_last/."""
    accelerator, log, data, folder = stage_setup(config, out, overwrite, "SFT", resume)
    if model_path:
        config.model.path = model_path
    with folder.starting():
        _, tokenizer, model = load_base_model(config, data, folder.work)
    folder.started(log)
    result = train_sft(config, model, tokenizer, data, out, log, accelerator)
    log.close()
    if is_main():
        plot_run(out)
    return {
        "warmup": str(result.warmup_dir),
        "best": str(result.best_dir),
        "best_epoch": result.best_epoch,
        "val_acc": result.val_history,
    }


def run_reft_stage(
    config: RunConfig,
    out: Path,
    model_path: str,
    overwrite: bool = False,
    command: str | None = None,
    resume: bool = False,
    method: str = "reft",
) -> dict[str, Any]:
    """``reftkit reft`` (PPO; writes reft/, best on val, and reft_last/) or ``reftkit online-st`` (writes
    online_st/ and online_st_last/) from a warm-up HF directory, then the selected checkpoint's test accuracy."""
    accelerator, log, data, folder = stage_setup(config, out, overwrite, "ReFT", resume)
    with folder.starting():
        command, commit = run_identity(folder.work, command, resume)
        model_path = str(resolve_model_dir(model_path, "--model"))
        tokenizer = load_tokenizer(model_path)
        if folder.replacing:  # the trainer loads the policy itself: it must load before the old run is deleted
            load_causal_lm(model_path, tokenizer, config.model.dtype)
    folder.started(log)
    train = {"reft": train_reft, "online-st": train_online_st}[method]
    result = train(StageContext(config, Path(model_path), tokenizer, data, out, log, accelerator))
    name = method.replace("-", "_")
    model = load_causal_lm(result.best_dir, tokenizer, config.model.dtype)
    tests = test_sets(config, model, tokenizer, data, name, log, accelerator)
    log.close()
    summary: dict[str, Any] = {
        "task": data.name,
        "cot": config.task.cot,
        "seed": config.seed,
        "warmup_model": model_path,
        "method": method,
        "selected_step": result.best_step,
        "steps": max(result.val_history),
        "val_acc": result.val_history[result.best_step],
        "test_set": data.test_name,
        "test_acc": tests.pop(data.test_name).accuracy,
        **{f"{test_name}_acc": r.accuracy for test_name, r in tests.items()},
    }
    summary |= {"wall_seconds": round(log.elapsed(), 1), "command": command, "commit": commit}
    if is_main():
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_run(out)
    return summary


def run_eval(config: RunConfig, model_path: str, split: str, predictions: Path | None = None) -> dict[str, Any]:
    """``reftkit eval``: greedy accuracy of an HF directory on one split; optionally every completion as JSONL."""
    quiet_transformers()
    accelerator = make_accelerator(config.mixed_precision, config.model.dtype)
    data = load_task(config.task)
    problems = split_problems(data, split)
    model_path = str(resolve_model_dir(model_path, "--model"))
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, tokenizer, config.model.dtype).to(accelerator.device)
    result = greedy_accuracy(model, tokenizer, problems, config, data.answer_type, accelerator, f"eval {split}")
    if predictions is not None and is_main():
        write_predictions(predictions, problems, result)
    return {
        "model": model_path,
        "split": split,
        "n": len(problems),
        "accuracy": result.accuracy,
        "outcomes": result.counts,
        "mean_length": result.mean_length,
    }


def split_problems(data: TaskData, split: str) -> list[Problem]:
    return {"train": data.train, "val": data.val, "test": data.test}[split]


def run_sample(config: RunConfig, model_path: str, split: str, out: Path) -> dict[str, Any]:
    """``reftkit sample``: ``sample.n`` graded chains per question of a split, as a samples file."""
    quiet_transformers()
    if not config.sample.n:
        raise ConfigError("sample.n: give the number of samples per question (--n N or sample.n=N)")
    accelerator = make_accelerator(config.mixed_precision, config.model.dtype)
    data = load_task(config.task)
    model_path = str(resolve_model_dir(model_path, "--model"))
    tokenizer = load_tokenizer(model_path)
    problems = split_problems(data, split)
    _, stats = sample_to_file(
        config, Path(model_path), tokenizer, data, problems, config.sample.n, out, split, accelerator
    )
    return {"samples_file": str(out), "split": split, **stats}


def run_eval_samples(
    config: RunConfig, samples_path: Path, rm_path: str | None = None, plot: Path | None = None
) -> dict[str, Any]:
    """``reftkit eval --samples``: vote@k, pass@k (and with a reward model rerank@k) from a samples file;
    writes the curves as a PNG and returns them with a markdown table."""
    samples, meta = read_samples(samples_path)
    if rm_path is not None:
        quiet_transformers()
        data = load_task(config.task)
        problems = {p.id: p for p in [*data.train, *data.val, *data.test]}
        rm = (*load_reward_model(resolve_model_dir(rm_path, "--rm")), rm_path)
        samples = scored(config, rm, problems, samples, make_accelerator(config.mixed_precision))
    groups = by_question(samples)
    curves = inference_curves(groups, config.sample.vote_draws, config.seed, rerank=rm_path is not None)
    ks = curves.pop("k")
    name = str(meta.get("model", samples_path.stem))
    inference = {"n": ks[-1], "k": ks, "test_set": meta.get("split", "samples"), "methods": {name: curves}}
    plot = plot or samples_path.with_name(samples_path.name.removesuffix(".jsonl") + ".curves.png")
    plot_inference_curves(inference, plot)
    return {
        "samples_file": str(samples_path),
        "questions": len(groups),
        "reward_model": rm_path,
        **inference,
        "plot": str(plot),
        "table": render_inference_table(inference),
    }


def run_reward_model(
    config: RunConfig, init: str, samples_path: Path, out: Path, val_samples: Path | None, overwrite: bool
) -> dict[str, Any]:
    """``reftkit rm``: an outcome reward model trained on a samples file of training questions."""
    quiet_transformers()
    data = load_task(config.task)
    samples, _ = read_samples(samples_path)
    val = read_samples(val_samples)[0] if val_samples else None
    check_out_dir(out, overwrite, resume=False, resumable=False)
    set_seed(config.seed)
    problems = {p.id: p for p in [*data.train, *data.val, *data.test]}
    cot = config.task.cot
    accelerator = make_accelerator(config.mixed_precision)
    announce(device_line(accelerator, "float32"))  # the reward model is always loaded in float32
    # beside the RM directory (a plain HF folder), as its metrics file is
    trackers = open_trackers(config.report_to, out.with_name(out.name + "." + TRACKERS_DIR), out.resolve().name)
    log = MetricsLog(out.with_name(out.name + ".metrics.jsonl"), trackers=trackers)
    result = train_reward_model(
        resolve_model_dir(init, "--model"), rm_examples(problems, samples, cot), config.rm, out, log,
        accelerator, config.seed, val=(problems, val) if val else None, cot=cot,
    )  # fmt: skip
    log.close()
    return result
