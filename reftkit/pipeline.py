"""The whole pipeline in one run folder: warm-up SFT → (continued SFT | ReFT) → evaluation → report.

The run folder is what a user keeps: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``report.md``,
``plots/*.png`` and ``checkpoints/`` (plain HF directories). Checkpoints are selected on validation; the
test split is touched once per selected (and last) checkpoint, at the end.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from reftkit.config.schema import ConfigError, RunConfig, check_out_dir, dump_yaml, method_list
from reftkit.data.base import Problem, TaskData, prompt_text, target_text
from reftkit.data.registry import load_task, require_training_data
from reftkit.evaluation.accuracy import EvalResult, evaluate_greedy, inference_curves
from reftkit.evaluation.plots import plot_inference_curves, plot_run, read_metrics
from reftkit.evaluation.sampling import (
    Sample,
    by_question,
    meta_path,
    read_samples,
    sample_problems,
    write_samples,
    write_text_atomically,
)
from reftkit.models.loading import build_tiny, load_causal_lm, load_tokenizer, resolve_model_dir
from reftkit.runtime.distributed import barrier, broadcast, is_main
from reftkit.runtime.trackers import TRACKERS_DIR, open_trackers
from reftkit.trainers.checkpoints import RESUME_DIR, StageCheckpoints
from reftkit.trainers.common import (
    MetricsLog,
    device_line,
    make_accelerator,
    param_count,
    step_plan,
    write_atomically,
)
from reftkit.trainers.reft import train_reft
from reftkit.trainers.reward_model import load_reward_model, rm_examples, train_reward_model, with_scores
from reftkit.trainers.self_training import offline_st_problems, train_online_st
from reftkit.trainers.sft import train_sft
from reftkit.trainers.stepwise import StageContext


def prepare_run_dir(out: Path, overwrite: bool, resume: bool = False) -> Path:
    """The folder a run writes into until it has started (main process only; see :class:`RunFolder`).

    A new ``out`` is created and returned; with ``resume`` the existing one is returned as it is. With
    ``overwrite`` onto a folder that holds anything, ``out`` is left untouched: an empty hidden sibling
    ``.<name>.new-<pid>`` is returned, the new run is built there and swapped in by :meth:`RunFolder.started`.
    Never overwritten unasked; what an earlier, killed ``--overwrite`` left beside ``out`` is cleaned up first.
    """
    clean_leftovers(out)
    check_out_dir(out, overwrite, resume)
    if resume:
        return out
    if overwrite and out.is_dir() and any(out.iterdir()):
        work = _beside(out, "new", os.getpid())
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        return work
    out.mkdir(parents=True, exist_ok=True)
    return out


_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>new|old)-(?P<pid>\d+)")


def _beside(out: Path, kind: str, pid: int) -> Path:
    """The temporary sibling of the real folder ``out`` names (a symlinked ``out`` is replaced where it points)."""
    target = Path(os.path.realpath(out))
    return target.with_name(f".{target.name}.{kind}-{pid}")


def clean_leftovers(out: Path) -> None:
    """Undo what a killed ``--overwrite`` left beside ``out``: a new run that never started (``.new-<pid>``) is
    removed, and so is an old run already replaced (``.old-<pid>``), unless ``out`` itself is missing (killed
    between the two renames of a swap without an atomic exchange): then the old run is put back. Folders of a
    process that is still running are left alone."""
    target = Path(os.path.realpath(out))
    if not target.parent.is_dir():
        return
    found = []
    for path in target.parent.iterdir():
        match = _LEFTOVER.fullmatch(path.name)
        if match and match["name"] == target.name and not _alive(int(match["pid"])):
            found.append((match["kind"], path))
    old = sorted((p for kind, p in found if kind == "old"), key=lambda p: p.stat().st_mtime)
    if old and not target.exists():
        old.pop().rename(target)
    for _, path in found:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # our own leftovers (an earlier call in this process): nothing is using them
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, under another user
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not
    available (another system, an old kernel or C library, a file system without it)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def swap_into_place(work: Path, out: Path) -> None:
    """Put the new run ``work`` where the old run ``out`` is, then delete the old one. With an atomic exchange
    ``out`` is always one whole run, the old or the new; otherwise the old run is renamed aside first, and a
    kill between the two renames is undone by :func:`clean_leftovers`."""
    target = Path(os.path.realpath(out))
    aside = _beside(out, "old", os.getpid())
    if _exchange(work, target):
        work.rename(aside)  # the old run now; under a name that says so
    else:
        target.rename(aside)
        work.rename(target)
    shutil.rmtree(aside, ignore_errors=True)


@dataclass
class RunFolder:
    """Where a run lives (``out``) and where it is written until it has started (``work``; the same folder
    unless ``--overwrite`` replaces an existing run).

    ``--overwrite`` never loses the old run for a new one that does not start: the new run is built in a hidden
    sibling folder and :meth:`started` swaps it in once its base model is loaded, just before the first stage
    trains; only then is the old run deleted. Until that moment ``out`` is the old run, whole and untouched (a
    failure removes the new folder; a kill leaves it beside ``out`` for the next start to remove), and after it
    ``out`` holds only the new run's files: never a mix of the two.

    Why the swap comes there and not at the first checkpoint or metrics record: every stage records paths inside
    the run folder as it goes (its resume record, samples' metadata, the report), so the folder must have its
    final name before the first stage writes anything, or ``--resume`` would later look for a folder that no
    longer exists. And by then everything that can fail before training is behind us: the config, the task's
    data, building the tiny base model and loading the model the run starts from.
    """

    out: Path
    work: Path
    report_to: list[str] = field(default_factory=list)
    """Trackers (``report_to``) to open once the run is in its place: their files must not follow a rename."""
    resume: bool = False

    @property
    def replacing(self) -> bool:
        return self.work != self.out

    def here(self, path: Path) -> Path:
        """``path`` under ``work`` as it is once the run has its place; any other path as it is."""
        if self.replacing and path.is_relative_to(self.work):
            return self.out / path.relative_to(self.work)
        return path

    @contextmanager
    def starting(self) -> Iterator[None]:
        """The steps before :meth:`started`: if one fails, the new folder goes and ``out`` is as it was."""
        try:
            yield
        except BaseException as err:
            if self.replacing:
                if is_main():
                    shutil.rmtree(self.work, ignore_errors=True)
                if isinstance(err, KeyboardInterrupt):  # the CLI's message must not offer to resume the old run
                    err.old_run_kept = True  # type: ignore[attr-defined]
            raise

    def started(self, log: MetricsLog) -> None:
        """The run has started: it moves to ``out`` (the old run there is deleted), ``log`` follows it and its
        trackers open there."""
        if self.replacing:
            barrier()  # every process has read what it needed from the new folder
            if is_main():
                swap_into_place(self.work, self.out)
            barrier()
            log.path = self.here(log.path)
        log.trackers = open_trackers(self.report_to, self.out / TRACKERS_DIR, self.out.resolve().name,
                                     fresh=not self.resume)  # fmt: skip


def run_identity(out: Path, command: str | None, resume: bool) -> tuple[str | None, str | None]:
    """(command, commit) of the run: recorded when it starts, read back when it resumes, so a resumed run
    reports the code and command it started with."""
    path = out / RESUME_DIR / "run.json"
    if resume and path.is_file():
        known = json.loads(path.read_text())
        return known["command"], known["commit"]
    identity = {"command": command, "commit": _git_commit()}
    if is_main():
        write_text_atomically(path, json.dumps(identity) + "\n")
    return identity["command"], identity["commit"]


def base_model_dir(config: RunConfig, data: TaskData, out: Path) -> Path:
    """The model SFT starts from: the user's HF directory, or the ``tiny`` preset built on the train split."""
    if config.model.path:
        return resolve_model_dir(config.model.path)
    target = out / "checkpoints" / "base"
    if is_main() and not (target / "config.json").is_file():  # a resumed run keeps its model and tokenizer
        cot = config.task.cot
        texts = [prompt_text(p, cot) + target_text(p, cot) for p in data.train]  # type: ignore[arg-type]
        write_atomically(target, lambda tmp: build_tiny(texts, config.model.tiny, tmp, seed=config.seed))
    barrier()  # the other processes load what the main one wrote
    return target


def _announce(line: str) -> None:
    """A status line on stderr (stdout stays the command's JSON result), from the main process only."""
    if is_main():
        print(line, file=sys.stderr, flush=True)


def _quiet_transformers() -> None:
    """Our own progress bars and summary replace transformers' per-file loading bars and warnings."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _stage_setup(
    config: RunConfig, out: Path, overwrite: bool, needs: str, resume: bool
) -> tuple[Any, MetricsLog, TaskData, RunFolder]:
    """What every training command does first: data check, run folder, resolved config, seed, accelerator (its
    device line printed), log (its trackers open once the run has started).

    The caller writes into ``folder.work`` until it calls ``folder.started`` (see :class:`RunFolder`)."""
    _quiet_transformers()
    data = load_task(config.task)
    require_training_data(data, needs)  # before the run folder exists: a data error must cost nothing
    work = None
    if is_main():  # one process owns the run folder; the others only read what it wrote
        work = prepare_run_dir(out, overwrite, resume)
        if not resume:
            write_text_atomically(work / "config.yaml", dump_yaml(config))
    folder = RunFolder(out, broadcast(work), list(config.report_to), resume)
    barrier()
    set_seed(config.seed)
    accelerator = make_accelerator(config.mixed_precision, config.model.dtype)
    _announce(device_line(accelerator, config.model.dtype))
    return accelerator, MetricsLog(folder.work / "metrics.jsonl", resuming=resume), data, folder


@dataclass
class Arm:
    """One trained model of the comparison: its selected checkpoint and (where it has one) its last."""

    best_dir: Path
    chosen: str  # "epoch 18", "step 35"
    val_acc: float
    last_dir: Path | None = None
    last_val_acc: float | None = None


def run_pipeline(
    config: RunConfig, out: Path, overwrite: bool = False, command: str | None = None, resume: bool = False
) -> dict[str, Any]:
    """Warm-up SFT, then each of ``config.methods`` from it, then greedy (and sampled) test evaluation.

    With ``resume``, finished stages are read back and the interrupted one continues from its checkpoint."""
    accelerator, log, data, folder = _stage_setup(config, out, overwrite, "SFT", resume)
    methods = method_list(config.methods)
    cot = config.task.cot
    stage_seconds: dict[str, float] = {}
    warmup_epochs = config.sft.warmup_epochs

    t = time.time()
    with folder.starting():
        # the code that ran, not whatever HEAD is when it ends
        command, commit = run_identity(folder.work, command, resume)
        base = base_model_dir(config, data, folder.work)
        tokenizer = load_tokenizer(base)
        model = load_causal_lm(base, tokenizer, config.model.dtype)
    folder.started(log)
    base = folder.here(base)
    print(
        f"task {data.name}/{cot}: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test; "
        f"model {base} ({param_count(model) / 1e6:.2f}M params), mixed precision {accelerator.mixed_precision}; "
        f"methods {', '.join(methods)}"
    )
    sft_config = config if "sft" in methods else replace(config, sft=replace(config.sft, epochs=0))
    sft = train_sft(sft_config, model, tokenizer, data, out, log, accelerator)
    stage_seconds["sft"] = time.time() - t
    warmup_val = sft.val_history[warmup_epochs]
    arms = {"warmup": Arm(sft.warmup_dir, f"epoch {warmup_epochs}", warmup_val)}
    if "sft" in methods:
        arms["sft"] = _arm(sft.best_dir, sft.last_dir, "epoch", sft.best_epoch, sft.val_history)

    samples_per_second: dict[str, float] = {}
    warmup_samples: list[Sample] = []
    if "offline-st" in methods or config.rm.enabled:  # one pass feeds offline-ST data and the RM's data
        t = time.time()
        path = out / "samples" / "warmup_train_val.jsonl"
        if resume and meta_path(path).is_file():  # written last: the samples are complete
            warmup_samples, stats = read_samples(path)
        else:
            warmup_samples, stats = _sample_to_file(
                config, sft.warmup_dir, tokenizer, data, [*data.train, *data.val], config.sample.train_n, path,
                "train+val", accelerator,
            )  # fmt: skip
        samples_per_second["warmup_train_val"] = stats["samples_per_second"]
        stage_seconds["sample_train"] = time.time() - t
    if "offline-st" in methods:
        t = time.time()
        st_train = offline_st_problems(
            data.train,
            warmup_samples,
            cot,
            config.self_training.max_per_question,
            random.Random(config.seed),  # type: ignore[arg-type]
        )
        print(f"offline self-training: {len(st_train)} chains for {len(data.train)} questions (gold once)")
        epochs = config.self_training.offline_epochs or max(sft.val_history)
        offline = train_sft(
            config, load_causal_lm(base, tokenizer, config.model.dtype), tokenizer, replace(data, train=st_train),
            out, log, accelerator, name="offline-st", epochs=epochs,
        )  # fmt: skip
        arms["offline_st"] = _arm(offline.best_dir, offline.last_dir, "epoch", offline.best_epoch, offline.val_history)
        stage_seconds["offline_st"] = time.time() - t
    stepwise = {"online-st": train_online_st, "reft": train_reft}
    for method in (m for m in methods if m in stepwise):
        t = time.time()
        result = stepwise[method](
            StageContext(config, sft.warmup_dir, tokenizer, data, out, log, accelerator,
                         warmup_val_acc=warmup_val, epoch_offset=warmup_epochs)
        )  # fmt: skip
        key = method.replace("-", "_")
        arms[key] = _arm(result.best_dir, result.last_dir, "step", result.best_step, result.val_history)
        stage_seconds[key] = time.time() - t

    t = time.time()
    test: dict[str, EvalResult] = {}
    extra: dict[str, dict[str, EvalResult]] = {}  # further test sets (beside a held-out split): selected only
    for name, arm in arms.items():
        for ckpt, path in ((name, arm.best_dir), (f"{name}_last", arm.last_dir)):
            if path is None:
                continue
            if ckpt != name and arm.last_val_acc is None:  # the selected checkpoint is the last one
                test[ckpt] = test[name]
                continue
            model = load_causal_lm(path, tokenizer, config.model.dtype)
            results = _test_sets(config, model, tokenizer, data, ckpt, log, accelerator, extras=ckpt == name)
            test[ckpt] = results.pop(data.test_name)
            if ckpt == name:
                extra[name] = results
    stage_seconds["test"] = time.time() - t

    inference = None
    if config.sample.n:
        t = time.time()
        inference = _inference(config, arms, tokenizer, data, warmup_samples, test, out, log, accelerator)
        samples_per_second |= inference.pop("samples_per_second")
        stage_seconds["inference"] = time.time() - t

    summary: dict[str, Any] = {
        "task": data.name,
        "cot": cot,
        "seed": config.seed,
        "base_model": str(config.model.path or "tiny"),
        "methods": methods,
        "wall_seconds": round(log.elapsed(), 1),
        "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
        "epochs": {
            "warmup": warmup_epochs,
            "sft": max(sft.val_history) - warmup_epochs,
            "reft": _reft_epochs(config, data),
        },
        "test_set": data.test_name,
        "extra_test_sets": list(data.extra_tests),
    }
    for name, arm in arms.items():
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
    summary["val_curves"] = _val_curves(log.path, warmup_epochs)
    if inference is not None:
        summary["inference"] = inference
    if samples_per_second:
        summary["samples_per_second"] = samples_per_second
    summary |= {"command": command, "commit": commit}
    if not is_main():
        return summary
    log.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots = plot_run(out)
    if inference is not None:
        plots.append(plot_inference_curves(inference, out / "plots" / "inference.png"))
    (out / "report.md").write_text(render_report(summary, plots, out))
    print(render_table(summary))
    if inference is not None:
        print(render_inference_table(inference))
    return summary


def _arm(best: Path, last: Path, unit: str, at: int, history: dict[int, float]) -> Arm:
    final = max(history)
    return Arm(best, f"{unit} {at}", history[at], last, None if at == final else history[final])


def _sample_to_file(
    config: RunConfig,
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    data: TaskData,
    problems: list[Problem],
    n: int,
    path: Path,
    split: str,
    accelerator: Accelerator,
    rm: tuple[PreTrainedModel, PreTrainedTokenizerBase, str] | None = None,
) -> tuple[list[Sample], dict[str, float]]:
    """Sample ``n`` chains per problem from ``model_dir`` (scored by the reward model ``rm`` = (model,
    tokenizer, directory), if given) and keep them as a samples file."""
    model = load_causal_lm(model_dir, tokenizer, config.model.dtype).to(accelerator.device)
    with accelerator.autocast():
        samples, stats = sample_problems(
            model, tokenizer, problems, config.task.cot, config.sample, config.eval, n,  # type: ignore[arg-type]
            seed=config.seed, answer_type=data.answer_type, desc=f"sample {split} ({model_dir.name})",
        )  # fmt: skip
    meta = {"model": str(model_dir), "task": data.name, "split": split, "cot": config.task.cot, "n": n}
    meta["seed"] = config.seed
    if rm is not None:
        samples = _scored(config, rm, {p.id: p for p in problems}, samples, accelerator)
        meta["scored_by"] = rm[2]
    if is_main():
        write_samples(path, samples, meta | {"sample": asdict(config.sample)} | stats)
    barrier()
    return samples, stats


def _scored(
    config: RunConfig,
    rm: tuple[PreTrainedModel, PreTrainedTokenizerBase, str],
    problems: dict[str, Problem],
    samples: list[Sample],
    accelerator: Accelerator,
) -> list[Sample]:
    """``samples`` with the reward model's P(correct) as their score."""
    with accelerator.autocast():
        return with_scores(
            rm[0].to(accelerator.device), rm[1], problems, samples, config.task.cot,  # type: ignore[arg-type]
            max_length=config.rm.max_length,
        )  # fmt: skip


def _inference(
    config: RunConfig,
    arms: dict[str, Arm],
    tokenizer: PreTrainedTokenizerBase,
    data: TaskData,
    warmup_samples: list[Sample],
    test: dict[str, EvalResult],
    out: Path,
    log: MetricsLog,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """Sample every method's selected checkpoint on the test split; vote@k, pass@k and (with an RM) rerank@k."""
    rm = None
    info: dict[str, Any] = {"n": config.sample.n, "test_set": data.test_name}
    if config.rm.enabled:
        init = arms["sft"].best_dir if "sft" in arms else arms["warmup"].best_dir
        train_ids = {p.id for p in data.train}
        problems = {p.id: p for p in [*data.train, *data.val]}
        try:
            result = train_reward_model(
                init,
                rm_examples(problems, [s for s in warmup_samples if s.id in train_ids], config.task.cot),  # type: ignore[arg-type]
                config.rm, out / "checkpoints" / "rm", log, accelerator, config.seed,
                val=(problems, [s for s in warmup_samples if s.id not in train_ids]), cot=config.task.cot,  # type: ignore[arg-type]
                checkpoints=StageCheckpoints(out, "rm", config.checkpoint, log, accelerator),
                max_nonfinite_in_row=config.checkpoint.max_nonfinite_in_row,
            )  # fmt: skip
        except ConfigError as err:  # e.g. no correct sample at all: report voting, keep what was trained
            print(f"reftkit: warning: no reranking: {err}", file=sys.stderr)
            info["rm"] = {"skipped": str(err)}
        else:
            info["rm"] = result | {"init": str(init)}
            rm = (*load_reward_model(result["dir"]), result["dir"])
    speeds = {}
    info["methods"] = {}
    for name, arm in arms.items():
        if name == "warmup":
            continue
        path = out / "samples" / f"test_{name}.jsonl"
        samples, stats = _sample_to_file(
            config, arm.best_dir, tokenizer, data, data.test, config.sample.n, path, data.test_name, accelerator, rm
        )
        speeds[f"test_{name}"] = stats["samples_per_second"]
        curves = inference_curves(by_question(samples), config.sample.vote_draws, config.seed, rerank=rm is not None)
        info["k"] = curves.pop("k")
        info["methods"][name] = {"greedy": test[name].accuracy, **curves}
        log.write("inference", 0, model=name, **{f"{m}@{config.sample.n}": v[-1] for m, v in curves.items()})
    info["samples_per_second"] = speeds
    return info


def _test_sets(
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
        with accelerator.autocast():
            result = evaluate_greedy(
                model,
                tokenizer,
                problems,
                config.task.cot,  # type: ignore[arg-type]
                config.eval,
                desc=f"{test_name} {name}",
                answer_type=data.answer_type,
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


ARM_NAMES = {
    "warmup": "warm-up",
    "sft": "SFT (continued)",
    "offline_st": "offline self-training",
    "online_st": "online self-training",
    "reft": "ReFT",
}


def _reft_epochs(config: RunConfig, data: TaskData) -> float:
    """Epochs over the training questions that ReFT / online self-training run: ``reft.epochs``, or fewer where
    ``reft.max_steps`` stops them first (the default preset: 126 steps of 8 questions, half an epoch)."""
    steps_per_epoch, total = step_plan(len(data.train), config.reft)
    return round(total / steps_per_epoch, 3)


def render_table(summary: dict[str, Any]) -> str:
    """Greedy accuracy of every trained model: selected checkpoint, validation, test (selected and last)."""
    test_set = summary.get("test_set", "test")
    extras = summary.get("extra_test_sets", [])
    header = ["model", "selected on val", "val acc", f"{test_set} acc", f"{test_set} acc (last)", *extras]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, name in ARM_NAMES.items():
        s = summary.get(key)
        if s is None:
            continue
        unit = next(u for u in ("epoch", "selected_epoch", "selected_step") if u in s)
        chosen = f"{unit.removeprefix('selected_')} {s[unit]}"
        last = f"{100 * s['last']['test_acc']:.1f}" if "last" in s else "–"
        cells = [name, chosen, f"{100 * s['val_acc']:.1f}", f"{100 * s['test_acc']:.1f}", last]
        cells += [f"{100 * s[f'{extra}_acc']:.1f}" for extra in extras]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_inference_table(inference: dict[str, Any]) -> str:
    """Method × greedy / vote@N / rerank@N / pass@N, then every metric along k."""
    n, ks = inference["n"], inference["k"]
    metrics = [m for m in ("vote", "rerank", "pass") if any(m in row for row in inference["methods"].values())]
    header = ["method", "greedy", *(f"{m}@{n}" for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in inference["methods"].items():
        greedy = f"{100 * row['greedy']:.1f}" if "greedy" in row else "–"
        cells = [ARM_NAMES.get(name, name), greedy, *(f"{100 * row[m][-1]:.1f}" for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| method | metric | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for name, row in inference["methods"].items():
        for m in metrics:
            lines.append(
                f"| {ARM_NAMES.get(name, name)} | {m}@k | " + " | ".join(f"{100 * v:.1f}" for v in row[m]) + " |"
            )
    return "\n".join(lines)


def render_report(summary: dict[str, Any], plots: list[Path], out: Path) -> str:
    e = summary["epochs"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in summary["stage_seconds"].items())
    methods = ", ".join(summary.get("methods", ["sft", "reft"]))
    text = [
        f"# reftkit run: {summary['task']} / {summary['cot']} (seed {summary['seed']})",
        "",
        f"Base model `{summary['base_model']}`; warm-up {e['warmup']} SFT epochs, then from it: {methods} "
        f"({e['sft']} more SFT epochs; {e['reft']} epochs of ReFT / online self-training). "
        "Checkpoints selected on validation; test accuracy is greedy.",
        "",
        render_table(summary),
        "",
    ]
    if "inference" in summary:
        inf = summary["inference"]
        rm = inf.get("rm")
        text += [
            f"## Sampled chains: {inf['n']} per {inf['test_set']} question",
            "",
            "vote@k: majority of the valid answers of k samples (ties: the answer sampled first); rerank@k: the "
            "valid answer the reward model scores highest; pass@k: unbiased estimate. For k < n, vote and rerank "
            "average random k-subsets.",
            "",
            render_inference_table(inf),
            "",
        ]
        if rm and "skipped" in rm:
            text += [f"No reranking: {rm['skipped']}", ""]
        elif rm:
            text += [f"Reward model `{rm['dir']}` from `{rm['init']}`: {rm['examples']} training chains "
                     f"({rm['positives']} correct), selected epoch {rm['best_epoch']}.", ""]  # fmt: skip
    if "samples_per_second" in summary:
        speeds = ", ".join(f"{k} {v:.1f}" for k, v in summary["samples_per_second"].items())
        text += [f"Sampling throughput (samples/s, grading included): {speeds}.", ""]
    text += [
        f"Wall time {summary['wall_seconds']:.0f} s ({stages}).",
        "",
        f"Command: `{summary['command']}`  ",
        f"Commit: `{summary['commit']}`",
        "",
    ]
    text += [f"![{p.stem}]({p.relative_to(out)})" for p in plots]
    return "\n".join(text) + "\n"


def write_predictions(path: Path, problems: list[Problem], result: EvalResult) -> None:
    """One JSON object per problem (completion, extracted answer, outcome), to read what a model actually wrote."""
    rows = [
        {"id": p.id, "gold": p.answer, "outcome": g.outcome.value, "answer": g.answer, "completion": text}
        for p, g, text in zip(problems, result.graded, result.completions, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (``argv`` when called through ``cli.main(argv)``), for reports and summaries."""
    return "reftkit " + shlex.join(sys.argv[1:] if argv is None else argv)


def run_sft_stage(
    config: RunConfig, out: Path, model_path: str | None, overwrite: bool = False, resume: bool = False
) -> dict[str, Any]:
    """``reftkit sft``: SFT from an HF directory (or the tiny preset); writes warmup/, sft/ and sft_last/."""
    accelerator, log, data, folder = _stage_setup(config, out, overwrite, "SFT", resume)
    if model_path:
        config.model.path = model_path
    with folder.starting():
        base = base_model_dir(config, data, folder.work)
        tokenizer = load_tokenizer(base)
        model = load_causal_lm(base, tokenizer, config.model.dtype)
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
    accelerator, log, data, folder = _stage_setup(config, out, overwrite, "ReFT", resume)
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
    tests = _test_sets(config, model, tokenizer, data, name, log, accelerator)
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
    _quiet_transformers()
    accelerator = make_accelerator(config.mixed_precision, config.model.dtype)
    data = load_task(config.task)
    problems = _split(data, split)
    model_path = str(resolve_model_dir(model_path, "--model"))
    tokenizer = load_tokenizer(model_path)
    with accelerator.autocast():
        result = evaluate_greedy(
            load_causal_lm(model_path, tokenizer, config.model.dtype).to(accelerator.device),
            tokenizer,
            problems,
            config.task.cot,  # type: ignore[arg-type]
            config.eval,
            desc=f"eval {split}",
            answer_type=data.answer_type,
        )
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


def _split(data: TaskData, split: str) -> list[Problem]:
    return {"train": data.train, "val": data.val, "test": data.test}[split]


def run_sample(config: RunConfig, model_path: str, split: str, out: Path) -> dict[str, Any]:
    """``reftkit sample``: ``sample.n`` graded chains per question of a split, as a samples file."""
    _quiet_transformers()
    if not config.sample.n:
        raise ConfigError("sample.n: give the number of samples per question (--n N or sample.n=N)")
    accelerator = make_accelerator(config.mixed_precision, config.model.dtype)
    data = load_task(config.task)
    model_path = str(resolve_model_dir(model_path, "--model"))
    tokenizer = load_tokenizer(model_path)
    _, stats = _sample_to_file(
        config, Path(model_path), tokenizer, data, _split(data, split), config.sample.n, out, split, accelerator,
    )  # fmt: skip
    return {"samples_file": str(out), "split": split, **stats}


def run_eval_samples(
    config: RunConfig, samples_path: Path, rm_path: str | None = None, plot: Path | None = None
) -> dict[str, Any]:
    """``reftkit eval --samples``: vote@k, pass@k (and with a reward model rerank@k) from a samples file;
    writes the curves as a PNG and returns them with a markdown table."""
    samples, meta = read_samples(samples_path)
    if rm_path is not None:
        _quiet_transformers()
        data = load_task(config.task)
        problems = {p.id: p for p in [*data.train, *data.val, *data.test]}
        rm = (*load_reward_model(resolve_model_dir(rm_path, "--rm")), rm_path)
        samples = _scored(config, rm, problems, samples, make_accelerator(config.mixed_precision))
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
    _quiet_transformers()
    data = load_task(config.task)
    samples, _ = read_samples(samples_path)
    val = read_samples(val_samples)[0] if val_samples else None
    check_out_dir(out, overwrite, resume=False, resumable=False)
    set_seed(config.seed)
    problems = {p.id: p for p in [*data.train, *data.val, *data.test]}
    cot = config.task.cot
    accelerator = make_accelerator(config.mixed_precision)
    _announce(device_line(accelerator, "float32"))  # the reward model is always loaded in float32
    # beside the RM directory (a plain HF folder), as its metrics file is
    trackers = open_trackers(config.report_to, out.with_name(out.name + "." + TRACKERS_DIR), out.resolve().name)
    log = MetricsLog(out.with_name(out.name + ".metrics.jsonl"), trackers=trackers)
    result = train_reward_model(
        resolve_model_dir(init, "--model"), rm_examples(problems, samples, cot), config.rm, out, log,  # type: ignore[arg-type]
        accelerator, config.seed, val=(problems, val) if val else None, cot=cot,  # type: ignore[arg-type]
    )  # fmt: skip
    log.close()
    return result
