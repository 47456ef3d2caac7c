"""The whole pipeline in one run folder: warm-up SFT → (continued SFT | ReFT) → evaluation → report.

The run folder is what a user keeps: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``report.md``,
``plots/*.png`` and ``checkpoints/`` (plain HF directories). Checkpoints are selected on validation; the
test split is touched once per selected (and last) checkpoint, at the end.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from reftkit.config import ConfigError, RunConfig, dump_yaml
from reftkit.evaluation import EvalResult, evaluate_greedy
from reftkit.models import build_tiny, load_causal_lm, load_tokenizer
from reftkit.plots import plot_run, read_metrics
from reftkit.tasks import load_task, require_training_data
from reftkit.tasks.base import Problem, TaskData, prompt_text, target_text
from reftkit.trainers.common import MetricsLog, make_accelerator, param_count
from reftkit.trainers.reft import train_reft
from reftkit.trainers.sft import train_sft


def prepare_run_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out: {out} exists and is not empty; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)


def base_model_dir(config: RunConfig, data: TaskData, out: Path) -> Path:
    """The model SFT starts from: the user's HF directory, or the ``tiny`` preset built on the train split."""
    if config.model.path:
        return Path(config.model.path)
    cot = config.task.cot
    texts = [prompt_text(p, cot) + target_text(p, cot) for p in data.train]  # type: ignore[arg-type]
    return build_tiny(texts, config.model.tiny, out / "checkpoints" / "base", seed=config.seed)


def _quiet_transformers() -> None:
    """Our own progress bars and summary replace transformers' per-file loading bars and warnings."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _stage_setup(config: RunConfig, out: Path, overwrite: bool, needs: str) -> tuple[Any, MetricsLog, TaskData]:
    """What every training command does first: data check, run folder, resolved config, seed, accelerator, log."""
    _quiet_transformers()
    data = load_task(config.task)
    require_training_data(data, needs)  # before the run folder exists: a data error must cost nothing
    prepare_run_dir(out, overwrite)
    (out / "config.yaml").write_text(dump_yaml(config))
    set_seed(config.seed)
    return make_accelerator(config.mixed_precision), MetricsLog(out / "metrics.jsonl"), data


def run_pipeline(config: RunConfig, out: Path, overwrite: bool = False, command: str | None = None) -> dict[str, Any]:
    accelerator, log, data = _stage_setup(config, out, overwrite, needs="SFT")
    started, commit = log.start, _git_commit()  # the code that ran, not whatever HEAD is when it ends
    cot = config.task.cot
    stage_seconds: dict[str, float] = {}

    t = time.time()
    base = base_model_dir(config, data, out)
    tokenizer = load_tokenizer(base)
    model = load_causal_lm(base, tokenizer)
    print(
        f"task {data.name}/{cot}: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test; "
        f"model {base} ({param_count(model) / 1e6:.2f}M params), mixed precision {accelerator.mixed_precision}"
    )
    sft = train_sft(config, model, tokenizer, data, out, log, accelerator)
    stage_seconds["sft"] = time.time() - t

    t = time.time()
    warmup_epochs = config.sft.warmup_epochs
    reft = train_reft(
        config,
        sft.warmup_dir,
        tokenizer,
        data,
        out,
        log,
        accelerator,
        warmup_val_acc=sft.val_history[warmup_epochs],
        epoch_offset=warmup_epochs,
    )
    stage_seconds["reft"] = time.time() - t

    t = time.time()
    last_sft_epoch = max(sft.val_history)
    last_reft_step = max(reft.val_history)
    selected = {"warmup": sft.warmup_dir, "sft": sft.best_dir, "reft": reft.best_dir}
    test: dict[str, EvalResult] = {}
    extra: dict[str, dict[str, EvalResult]] = {}  # further test sets (beside a held-out split): selected only
    for name, path in [*selected.items(), ("sft_last", sft.last_dir), ("reft_last", reft.last_dir)]:
        if (name == "sft_last" and sft.best_epoch == last_sft_epoch) or (
            name == "reft_last" and reft.best_step == last_reft_step
        ):
            test[name] = test[name.removesuffix("_last")]  # the selected checkpoint is the last one
            continue
        results = _test_sets(
            config, load_causal_lm(path, tokenizer), tokenizer, data, name, log, accelerator, extras=name in selected
        )
        test[name] = results.pop(data.test_name)
        if name in selected:
            extra[name] = results
    stage_seconds["test"] = time.time() - t

    summary = {
        "task": data.name,
        "cot": cot,
        "seed": config.seed,
        "base_model": str(config.model.path or "tiny"),
        "wall_seconds": round(time.time() - started, 1),
        "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
        "epochs": {"warmup": warmup_epochs, "sft": last_sft_epoch - warmup_epochs, "reft": config.reft.epochs},
        "test_set": data.test_name,
        "extra_test_sets": list(data.extra_tests),
        "warmup": {
            "val_acc": sft.val_history[warmup_epochs],
            "test_acc": test["warmup"].accuracy,
            "epoch": warmup_epochs,
        },
        "sft": {
            "val_acc": sft.val_history[sft.best_epoch],
            "test_acc": test["sft"].accuracy,
            "selected_epoch": sft.best_epoch,
            "last": {"val_acc": sft.val_history[last_sft_epoch], "test_acc": test["sft_last"].accuracy},
        },
        "reft": {
            "val_acc": reft.val_history[reft.best_step],
            "test_acc": test["reft"].accuracy,
            "selected_step": reft.best_step,
            "last": {"val_acc": reft.val_history[last_reft_step], "test_acc": test["reft_last"].accuracy},
        },
        "test_outcomes": {name: r.counts for name, r in test.items()},
        "val_curves": _val_curves(log.path, warmup_epochs),
        "command": command,
        "commit": commit,
    }
    for name, results in extra.items():
        summary[name] |= {f"{test_name}_acc": result.accuracy for test_name, result in results.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plots = plot_run(out)
    (out / "report.md").write_text(render_report(summary, plots, out))
    print(render_table(summary))
    return summary


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


def render_table(summary: dict[str, Any]) -> str:
    rows = [
        ("warm-up", summary["warmup"], f"epoch {summary['warmup']['epoch']}"),
        ("SFT (continued)", summary["sft"], f"epoch {summary['sft']['selected_epoch']}"),
        ("ReFT", summary["reft"], f"step {summary['reft']['selected_step']}"),
    ]
    test_set = summary.get("test_set", "test")
    extras = summary.get("extra_test_sets", [])
    header = ["model", "selected on val", "val acc", f"{test_set} acc", f"{test_set} acc (last)", *extras]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s, chosen in rows:
        last = f"{100 * s['last']['test_acc']:.1f}" if "last" in s else "–"
        cells = [name, chosen, f"{100 * s['val_acc']:.1f}", f"{100 * s['test_acc']:.1f}", last]
        cells += [f"{100 * s[f'{extra}_acc']:.1f}" for extra in extras]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(summary: dict[str, Any], plots: list[Path], out: Path) -> str:
    e = summary["epochs"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in summary["stage_seconds"].items())
    text = [
        f"# reftkit run: {summary['task']} / {summary['cot']} (seed {summary['seed']})",
        "",
        f"Base model `{summary['base_model']}`; warm-up {e['warmup']} SFT epochs, then {e['sft']} more epochs of SFT "
        f"or {e['reft']} epochs of ReFT from the warm-up. Checkpoints selected on validation; test accuracy is greedy.",
        "",
        render_table(summary),
        "",
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


def run_sft_stage(config: RunConfig, out: Path, model_path: str | None, overwrite: bool = False) -> dict[str, Any]:
    """``reftkit sft``: SFT from an HF directory (or the tiny preset); writes warmup/, sft/ and sft_last/."""
    accelerator, log, data = _stage_setup(config, out, overwrite, needs="SFT")
    if model_path:
        config.model.path = model_path
    base = base_model_dir(config, data, out)
    tokenizer = load_tokenizer(base)
    result = train_sft(config, load_causal_lm(base, tokenizer), tokenizer, data, out, log, accelerator)
    plot_run(out)
    return {
        "warmup": str(result.warmup_dir),
        "best": str(result.best_dir),
        "best_epoch": result.best_epoch,
        "val_acc": result.val_history,
    }


def run_reft_stage(
    config: RunConfig, out: Path, model_path: str, overwrite: bool = False, command: str | None = None
) -> dict[str, Any]:
    """``reftkit reft``: PPO from a warm-up HF directory; writes reft/ (best on val) and reft_last/."""
    accelerator, log, data = _stage_setup(config, out, overwrite, needs="ReFT")
    tokenizer = load_tokenizer(model_path)
    result = train_reft(config, Path(model_path), tokenizer, data, out, log, accelerator)
    tests = _test_sets(config, load_causal_lm(result.best_dir, tokenizer), tokenizer, data, "reft", log, accelerator)
    summary: dict[str, Any] = {
        "task": data.name,
        "cot": config.task.cot,
        "seed": config.seed,
        "warmup_model": model_path,
        "selected_step": result.best_step,
        "steps": max(result.val_history),
        "val_acc": result.val_history[result.best_step],
        "test_set": data.test_name,
        "test_acc": tests.pop(data.test_name).accuracy,
        **{f"{test_name}_acc": r.accuracy for test_name, r in tests.items()},
    }
    summary |= {"wall_seconds": round(time.time() - log.start, 1), "command": command, "commit": _git_commit()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_run(out)
    return summary


def run_eval(config: RunConfig, model_path: str, split: str, predictions: Path | None = None) -> dict[str, Any]:
    """``reftkit eval``: greedy accuracy of an HF directory on one split; optionally every completion as JSONL."""
    _quiet_transformers()
    accelerator = make_accelerator(config.mixed_precision)
    data = load_task(config.task)
    problems = {"train": data.train, "val": data.val, "test": data.test}[split]
    tokenizer = load_tokenizer(model_path)
    with accelerator.autocast():
        result = evaluate_greedy(
            load_causal_lm(model_path, tokenizer).to(accelerator.device),
            tokenizer,
            problems,
            config.task.cot,  # type: ignore[arg-type]
            config.eval,
            desc=f"eval {split}",
            answer_type=data.answer_type,
        )
    if predictions is not None:
        write_predictions(predictions, problems, result)
    return {
        "model": model_path,
        "split": split,
        "n": len(problems),
        "accuracy": result.accuracy,
        "outcomes": result.counts,
        "mean_length": result.mean_length,
    }
