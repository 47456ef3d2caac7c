"""``reftkit`` command line: wiring only. The arguments are :mod:`reftkit.cli.parser`'s; every input is checked
here before anything is created, loaded or trained; the work is in :mod:`reftkit.pipeline` (``reftkit run``),
:mod:`reftkit.stages` (one stage at a time) and :mod:`reftkit.cli.data` (``reftkit data``)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reftkit.cli.launch import cpu_relaunch
from reftkit.cli.parser import EXIT_USAGE, build_parser, usage_error
from reftkit.config.loading import (
    check_out_dir,
    check_writable,
    dump_yaml_with_docs,
    load_config,
    resumed_config,
)
from reftkit.config.schema import ConfigError, RunConfig, TrainingError
from reftkit.data.registry import check_task, task_info
from reftkit.runtime.interrupt import StopRequested

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def _gives_cot(args: argparse.Namespace) -> bool:
    """Whether the command line or its --config file sets ``task.cot`` (not just the preset)."""
    if any(item.startswith("task.cot=") for item in args.overrides):
        return True
    if args.config:
        import yaml

        loaded = yaml.safe_load(Path(args.config).read_text()) or {}  # already read once by load_config
        return isinstance(loaded.get("task"), dict) and "cot" in loaded["task"]
    return False


def _overrides(args: argparse.Namespace) -> list[str]:
    """``key=value`` overrides, with the shortcut flags (``--data-dir``, ``--limit``, a task name) folded in."""
    extra = []
    if getattr(args, "task", None):
        extra.append(f"task.name={args.task}")
    if getattr(args, "data_dir", None):
        extra.append(f"task.data_dir={args.data_dir}")
    if getattr(args, "limit", None) is not None:
        extra.append(f"task.limit={args.limit}")
    if getattr(args, "n", None) is not None and args.command == "sample":
        extra.append(f"sample.n={args.n}")
    return extra + list(args.overrides)


def _quiet_other_processes() -> None:
    """Under several processes only the main one prints (and draws progress bars, see ``reftkit/__init__``);
    errors still reach stderr."""
    if int(os.environ.get("RANK", "0")) != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


def main(argv: list[str] | None = None) -> int:
    if (status := cpu_relaunch(sys.argv[1:] if argv is None else argv)) is not None:
        return status
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if several:
        _quiet_other_processes()
    args = _parse(argv)
    try:
        return _dispatch(args, argv, several)
    except ConfigError as err:
        if args.debug:
            raise
        print(f"reftkit: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingError as err:  # the run stopped; its checkpoints are kept for --resume
        if args.debug:
            raise
        print(f"reftkit: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C: one line saying how to go on, not the traceback of wherever it landed
        if getattr(args, "debug", False):
            raise
        _close_progress_bars()
        kept = getattr(err, "old_run_kept", False)
        print(f"reftkit: interrupted; {_how_to_continue(args, kept)}", file=sys.stderr)
        return 128 + err.signum if isinstance(err, StopRequested) else EXIT_INTERRUPTED  # as shells report it


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling ``overrides`` at the first flag; items after a flag land here (load_config
    # names any that is not key=value).
    stray = [item for item in extra if item.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        command = [args.command, *(getattr(args, f"{c}_command", None) for c in ("data", "model", "config"))]
        usage_error(" ".join([parser.prog, *filter(None, command)]), f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def _dispatch(args: argparse.Namespace, argv: list[str] | None, several: bool) -> int:
    """The command: its config resolved and its inputs checked (by every process) before it starts."""
    if args.command == "model":  # no run config involved
        return _model_command(args)
    if args.command == "results":
        return _results_command(args)
    config = load_config(args.preset, args.config, _overrides(args))
    if getattr(args, "resume", False):
        explicit = bool(args.config or _overrides(args) or args.preset != "default")
        config = resumed_config(args.out, config, explicit)
    if several:  # every process checks the inputs before the main one creates the run folder
        from reftkit.runtime.distributed import barrier

        barrier()
        check_inputs(args, config)
        barrier()
    else:
        check_inputs(args, config)
    if args.command == "data":
        return _data_command(args, config)
    if args.command == "config":  # config show: the YAML loads back as this config (--config FILE)
        print(dump_yaml_with_docs(config), end="")
        return 0
    from reftkit.run_folder import command_line  # heavy imports only after the arguments are known to be good

    STAGE_COMMANDS[args.command](args, config, command_line(argv))
    return 0


def _print_json(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2))


def _run(args: argparse.Namespace, config: RunConfig, command: str) -> None:
    from reftkit.pipeline import run_pipeline

    run_pipeline(config, args.out, args.overwrite, command, resume=args.resume)


def _sft(args: argparse.Namespace, config: RunConfig, command: str) -> None:
    from reftkit.stages import run_sft_stage

    _print_json(run_sft_stage(config, args.out, args.model, args.overwrite, resume=args.resume))


def _stepwise(args: argparse.Namespace, config: RunConfig, command: str) -> None:
    """``reft`` and ``online-st``."""
    from reftkit.stages import run_reft_stage

    _print_json(
        run_reft_stage(config, args.out, args.model, args.overwrite, command, resume=args.resume, method=args.command)
    )


def _sample(args: argparse.Namespace, config: RunConfig, command: str) -> None:
    from reftkit.stages import run_sample

    _print_json(run_sample(config, args.model, args.split, args.out))


def _rm(args: argparse.Namespace, config: RunConfig, command: str) -> None:
    from reftkit.stages import run_reward_model

    _print_json(run_reward_model(config, args.model, args.samples, args.out, args.val_samples, args.overwrite))


def _eval(args: argparse.Namespace, config: RunConfig, command: str) -> None:
    """Greedy accuracy of ``--model``, or the curves of ``--samples`` (JSON, then their markdown table)."""
    from reftkit.stages import run_eval, run_eval_samples

    if args.samples is None:
        _print_json(run_eval(config, args.model, args.split, args.predictions))
        return
    result = run_eval_samples(config, args.samples, args.rm, args.plot)
    table = result.pop("table")
    _print_json(result)
    print(table)


STAGE_COMMANDS: dict[str, Callable[[argparse.Namespace, RunConfig, str], None]] = {
    "run": _run,
    "sft": _sft,
    "reft": _stepwise,
    "online-st": _stepwise,
    "sample": _sample,
    "eval": _eval,
    "rm": _rm,
}
"""The commands that train, sample or evaluate: each with the command line it was typed with (for the record)."""


def _close_progress_bars() -> None:
    """End the progress bars the interrupt left open, so that the message starts its own line and stays last
    (an open bar would otherwise be redrawn after it when it is garbage-collected)."""
    tqdm_std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm_std, "tqdm", None), "_instances", ())):
        bar.close()


def _how_to_continue(args: argparse.Namespace, old_run_kept: bool = False) -> str:
    """The command that continues an interrupted run (its newest complete checkpoint is kept), or what to do
    when there is nothing to continue (``old_run_kept``: an ``--overwrite`` stopped before its run started)."""
    out = getattr(args, "out", None)
    if args.command not in ("run", "sft", "reft", "online-st") or out is None:
        return "nothing was written; run the command again"
    if old_run_kept:
        return f"the new run had not started, so {out} still holds the old run, untouched; run the command again"
    if not (out / "config.yaml").is_file():
        return f"{out} holds no run yet; run the command again"
    model = ["--model", args.model] if getattr(args, "model", None) else []
    command = shlex.join(["reftkit", args.command, *model, "--out", str(out), "--resume"])
    return f"continue from its newest checkpoint with: {command}"


def check_inputs(args: argparse.Namespace, config: RunConfig) -> None:
    """What a command would otherwise fail on part-way (files, folders, task data, model directories), checked
    before it creates, loads or trains anything: a bad input must cost seconds and leave nothing behind."""
    command = args.command
    if command == "eval" and args.samples is None and (args.rm or args.plot):
        raise ConfigError("--rm and --plot go with --samples; add --samples FILE or drop them")
    for flag in ("samples", "val_samples"):
        path = getattr(args, flag, None)
        if path is not None and not path.is_file():
            raise ConfigError(f"--{flag.replace('_', '-')}: no such file {path}; write one with `reftkit sample`")
    if command in ("run", "sft", "reft", "online-st", "rm"):  # --out is a folder (sample's is a file, written whole)
        check_out_dir(args.out, args.overwrite, getattr(args, "resume", False), resumable=command != "rm")
        if config.report_to:
            from reftkit.runtime.trackers import check_trackers

            check_trackers(config.report_to)
    run_folder = command in ("run", "sft", "reft", "online-st")
    replaced = args.out if run_folder and args.overwrite and args.out.is_dir() else None  # the run it replaces
    if replaced is not None and _inside(Path.cwd(), replaced):
        raise ConfigError(
            f"--out: {args.out} holds the current directory, which --overwrite would delete; run from elsewhere"
        )
    if command == "sample":
        meta = args.out.with_name(args.out.name.removesuffix(".jsonl") + ".meta.json")  # sampling.meta_path
        check_out_file("--out", args.out, args.overwrite, also=meta)
    if command == "eval":
        for flag in ("predictions", "plot"):
            if getattr(args, flag) is not None:
                check_out_file(f"--{flag}", getattr(args, flag), args.overwrite)
    reads_task = (
        command in ("run", "sft", "reft", "online-st", "sample", "rm")
        or (command == "eval" and bool(args.model or args.rm))  # a samples file alone needs no task data
        or (command == "data" and args.data_command in ("stats", "show"))
    )
    if reads_task:
        check_task(config.task)
    model_dirs = {"--model": getattr(args, "model", None), "--rm": getattr(args, "rm", None)}
    if command == "run" or (command == "sft" and not args.model):
        model_dirs["model.path"] = config.model.path
    if any(model_dirs.values()):
        from reftkit.models.loading import check_model_dir  # transformers: only for commands that load a model anyway

        for field, path in model_dirs.items():
            if path and replaced is not None and _inside(Path(path), replaced):
                raise ConfigError(
                    f"{field}: {path} is inside --out {args.out}, which --overwrite replaces; copy the model out "
                    "of it first, or give another --out"
                )
            if path:
                check_model_dir(path, field)
    if config.model.lora.enabled and run_folder:  # LoRA's targets, on the model's architecture alone
        from reftkit.models.trainable import check_lora_before_loading

        check_lora_before_loading(config.model, args.model if command != "run" and args.model else config.model.path)


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def check_out_file(flag: str, path: Path, overwrite: bool, also: Path | None = None) -> None:
    """An output file is never replaced unasked (``--overwrite``), and is not a folder; ``also`` is a file written
    beside it (a samples file's .meta.json)."""
    if path.is_dir():
        raise ConfigError(f"{flag}: {path} is a folder; give a file path")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"{flag}: {path.parent} is a file, so {path.name} cannot be written inside it")
    existing = next((p for p in (path, also) if p is not None and p.exists()), None)
    if existing is not None and not overwrite:
        raise ConfigError(f"{flag}: {existing} exists; pass --overwrite to replace it, or give another path")
    check_writable(flag, path.parent)


def _data_command(args: argparse.Namespace, config: RunConfig) -> int:
    from reftkit.cli import data as data_commands

    task = config.task
    if args.data_command == "list":
        print(data_commands.list_tasks(task))
    elif args.data_command == "stats":
        cots = [args.cot] if args.cot else list(task_info(task.name).cots)
        print(data_commands.task_stats(task, cots, args.tokenizer))
    elif args.data_command == "show":
        print(data_commands.show_examples(task, args.split, args.n))
    else:  # every problem on stderr, in file order; then the summary (by kind, if any) on stdout
        summary, problems = data_commands.validate_file(args.file, task, args.sft, detect_cot=not _gives_cot(args))
        for line in problems:
            print(line, file=sys.stderr)
        if summary:
            sys.stderr.flush()
            print(summary, flush=True)
        if problems:
            print(f"reftkit: error: {len(problems)} problem(s) in {args.file}; nothing was written", file=sys.stderr)
            return EXIT_USAGE
    return 0


def _results_command(args: argparse.Namespace) -> int:
    from reftkit.evaluation.results import aggregate

    check_writable("--docs", args.docs)
    for entry in aggregate(args.experiments, args.docs, args.ablations):
        print(f"{entry['experiment']}: {len(entry['seeds'])} seeds")
    print(f"wrote {args.docs / 'results.json'} and {args.docs / 'results.md'}")
    return 0


def _model_command(args: argparse.Namespace) -> int:
    """``model import``: its errors are ModelImportError, a ConfigError, so ``main`` reports them in one line."""
    from reftkit.models.gguf import PROVENANCE_FILE, find_packaged_gguf, import_gguf

    source = Path(args.gguf) if args.gguf else find_packaged_gguf(args.package)
    check_writable("--out", args.out)
    out = import_gguf(source, args.out, args.overwrite)
    print(json.dumps({"out": str(out), **json.loads((out / PROVENANCE_FILE).read_text())}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
