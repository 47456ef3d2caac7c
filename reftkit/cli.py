"""``reftkit`` command line: argument parsing and wiring only; the work is in ``reftkit.run``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reftkit.config import ConfigError, load_config, preset_names

EXIT_USAGE = 2


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file of config fields, applied over the preset")
    parser.add_argument(
        "--preset", default="default", help=f"named preset ({', '.join(preset_names())}); default: default"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. reft.lr=1e-5 seed=1")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for configuration errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reftkit",
        description="Reinforced Fine-Tuning (ReFT) of causal LMs on problems with checkable answers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="warm-up SFT → continued SFT and ReFT from the warm-up → evaluation → report")
    run.add_argument("--out", required=True, type=Path, help="run folder to create")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    _config_args(run)

    sft = sub.add_parser("sft", help="supervised fine-tuning (warm-up and SFT baseline) from an HF model directory")
    sft.add_argument("--model", help="HF model directory; default: the config's model.path or the tiny preset")
    sft.add_argument("--out", required=True, type=Path)
    sft.add_argument("--overwrite", action="store_true")
    _config_args(sft)

    reft = sub.add_parser("reft", help="PPO (ReFT) from a warm-up HF model directory")
    reft.add_argument("--model", required=True, help="warm-up HF model directory (e.g. RUN/checkpoints/warmup)")
    reft.add_argument("--out", required=True, type=Path)
    reft.add_argument("--overwrite", action="store_true")
    _config_args(reft)

    ev = sub.add_parser("eval", help="greedy accuracy of an HF model directory on a split")
    ev.add_argument("--model", required=True, help="HF model directory")
    ev.add_argument("--split", choices=("train", "val", "test"), default="test")
    _config_args(ev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.preset, args.config, args.overrides)
        for name in ("model",):
            path = getattr(args, name, None)
            if path and not Path(path, "config.json").is_file():
                raise ConfigError(f"--{name}: {path} is not a Hugging Face model directory (no config.json)")
        from reftkit import run as pipeline  # heavy imports only after the arguments are known to be good

        command = pipeline.command_line()
        if args.command == "run":
            pipeline.run_pipeline(config, args.out, args.overwrite, command)
        elif args.command == "sft":
            print(json.dumps(pipeline.run_sft_stage(config, args.out, args.model, args.overwrite), indent=2))
        elif args.command == "reft":
            print(json.dumps(pipeline.run_reft_stage(config, args.out, args.model, args.overwrite), indent=2))
        else:
            print(json.dumps(pipeline.run_eval(config, args.model, args.split), indent=2))
    except ConfigError as err:
        if args.debug:
            raise
        print(f"reftkit: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
