"""Building a run config: defaults, then a preset, then a YAML file, then ``key=value`` overrides; checking it.

A config error must cost seconds, not a run: every value is coerced to its field's type (``reftkit.config.schema``)
and range-checked before any work starts, and unknown keys get a did-you-mean. Also here: the ``--out`` and
``--resume`` rules, and the YAML a run writes (``config.yaml``) and ``reftkit config show`` prints.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import os
import tempfile
import textwrap
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from reftkit.config.schema import ConfigError, RunConfig
from reftkit.rl.ppo import ESTIMATORS

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


def check_writable(flag: str, path: Path) -> None:
    """``path`` (a file or folder to be written) can be made: its nearest existing folder takes a new entry. Probed
    by making and removing an empty folder there, because permission bits do not tell for root, read-only mounts
    or /sys."""
    base = path
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        return  # a file in the way: the caller's own check names it
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".reftkit-probe-", dir=base))
    except OSError as err:
        raise ConfigError(
            f"{flag}: {base} is not writable ({err.strerror}); give a path in a folder you can write to"
        ) from None


def check_out_dir(out: Path, overwrite: bool, resume: bool, resumable: bool = True) -> None:
    """The one rule for an ``--out`` folder: a folder, never overwritten unasked, in a place that can be written; a
    resumed one holds a run. ``resumable=False`` for outputs that cannot be resumed (``reftkit rm``)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file; give a folder path")
    check_writable("--out", out)
    if overwrite and out.is_dir():
        check_writable("--out", out.parent)  # --overwrite builds the new run beside the old one
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
    """Doc strings of the config dataclasses, read from the source of ``reftkit.config.schema``: (class, field) ->
    the string literal written after the field, and (class, None) -> the class doc string."""
    tree = ast.parse(Path(inspect.getfile(RunConfig)).read_text(encoding="utf-8"))
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
    for key, choices in _choice_fields(RunConfig).items():
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


def _choice_fields(cls: type, prefix: str = "") -> dict[str, tuple[Any, ...]]:
    """``{"task.cot": ("nl", "python"), ...}``: every Literal-typed field, so that a config built in code (not
    through ``load_config``, which coerces) is held to the same choices."""
    hints = typing.get_type_hints(cls)
    choices: dict[str, tuple[Any, ...]] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            choices.update(_choice_fields(hint, f"{prefix}{f.name}."))
        elif typing.get_origin(hint) is Literal:
            choices[f"{prefix}{f.name}"] = typing.get_args(hint)
    return choices


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
        if value is False:  # YAML 1.1 reads a bare no (mixed_precision=no) as false
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
    if hint is str and value is False:  # YAML 1.1 reads a bare no as false
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
