import dataclasses
import typing

import pytest

from reftkit.config.loading import dump_yaml, field_docs, load_config, preset_names, validate
from reftkit.config.schema import ConfigError, RunConfig


def test_defaults_and_presets_load():
    assert {"default", "micro"} <= set(preset_names())
    for name in preset_names():
        assert isinstance(load_config(name), RunConfig)


def test_overrides_are_typed():
    config = load_config("default", None, ["reft.lr=1e-4", "seed=3", "task.cot=nl", "sft.epochs=null"])
    assert config.reft.lr == pytest.approx(1e-4) and isinstance(config.reft.lr, float)
    assert config.seed == 3 and config.task.cot == "nl" and config.sft.epochs is None


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("reft:\n  epochs: 7\n  kl_coef: 0.05\nseed: 5\n")
    config = load_config("default", path, ["seed=6"])
    assert (config.reft.epochs, config.reft.kl_coef, config.seed) == (7, 0.05, 6)


def test_resolved_config_round_trips(tmp_path):
    config = load_config("micro", None, ["reft.lr=2e-5"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(config))
    assert load_config(None, path) == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("reft.lrr=1", "reft.lrr: unknown config key; did you mean reft.lr?"),
        ("reft.lr=fast", "reft.lr: expected float"),
        ("sft.batch_size=-4", "sft.batch_size: must be > 0"),
        ("task.cot=latex", "task.cot: 'latex' is not one of nl, python"),
        ("reft.lam=1.5", "reft.lam: must be in [0, 1]"),
        ("reft.samples_per_question=0", "reft.samples_per_question: must be > 0"),
        ("reft.minibatch_size=4096", "reft.minibatch_size: larger than the samples of one step"),
        ("reft=3", "reft: expected a mapping"),
        ("seed", "write overrides as key=value"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("?", r"\?")):
        load_config("default", None, [override])


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="no such file"):
        load_config("default", tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("report_to=[tensorboard]", ["tensorboard"]),
        ("report_to=tensorboard", ["tensorboard"]),
        ("report_to=tensorboard,wandb", ["tensorboard", "wandb"]),
        ("report_to=[wandb, wandb]", ["wandb"]),
        ("report_to=[]", []),
        ("report_to=", []),
    ],
)
def test_report_to_is_a_list_of_tracker_names(override, expected):
    assert load_config("micro", None, [override]).report_to == expected
    assert load_config("micro").report_to == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("report_to=[tensorbord]", "report_to: 'tensorbord' is not one of tensorboard, wandb, "),
        ("report_to=3", "report_to: expected a list"),
        ("model.dtype=fp16", "model.dtype: 'fp16' is not one of float32, bfloat16, float16"),
    ],
)
def test_report_to_and_dtype_reject_unknown_names(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config("micro", None, [override])


def test_float16_weights_refuse_fp16_autocast():
    assert load_config("micro", None, ["model.dtype=bfloat16"]).model.dtype == "bfloat16"
    with pytest.raises(ConfigError, match=r"model\.dtype: float16 weights cannot train under mixed_precision=fp16"):
        load_config("micro", None, ["model.dtype=float16", "mixed_precision=fp16"])


def test_config_show_is_commented_yaml_of_the_same_config(tmp_path, capsys):
    import yaml

    from reftkit.cli.main import main

    overrides = ["report_to=[tensorboard]", "model.dtype=bfloat16", "reft.lr=2e-5", "mixed_precision=no"]
    assert main(["config", "show", "--preset", "micro", *overrides]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text)["report_to"] == ["tensorboard"]
    path = tmp_path / "shown.yaml"
    path.write_text(text)
    assert load_config(None, path) == load_config("micro", None, overrides)
    assert "\n    # Rank of each adapter.\n    r: 8\n" in text  # each key's doc string above it, indented with it
    assert "# Gradient accumulation: each batch of `batch_size` is back-propagated" in text


@pytest.mark.parametrize(
    ("key", "choices"),
    [
        ("task.cot", "nl, python"),
        ("task.answer_type", "numeric, mcq, math"),
        ("mixed_precision", "auto, bf16, fp16, no"),
        ("model.dtype", "float32, bfloat16, float16"),
        ("reft.value_model", "shared, detached, separate"),
        ("reft.ref_model", "copy, lora_off"),
        ("reft.ref_device", "same, cpu"),
        ("reft.rollout_backend", "auto, hf, lean, vllm"),
        ("reft.kl_mode", "reward, loss"),
        ("reft.advantage", "gae, grpo, rloo, reinforce, reinforce_baseline, dr_grpo"),
        ("reft.loss_agg", "auto, sequence_mean, token_mean, constant"),
    ],
)
def test_choice_fields_name_their_values(key, choices):
    with pytest.raises(ConfigError, match=f"^{key}: 'bogus' is not one of {choices}$"):
        load_config("micro", None, [f"{key}=bogus"])


def test_choice_typos_get_a_did_you_mean_and_a_bare_no_is_no():
    with pytest.raises(ConfigError, match=r"reft\.ref_device: 'gpu' is not one of same, cpu; did you mean cpu\?"):
        load_config("micro", None, ["reft.ref_device=gpu"])
    assert load_config("micro", None, ["mixed_precision=no"]).mixed_precision == "no"  # YAML 1.1 reads no as false


def test_a_config_built_in_code_is_held_to_the_same_choices():
    config = RunConfig()
    validate(config)
    config.reft.ref_device = "gpu"  # type: ignore[assignment]  # what the Literal forbids, done anyway
    with pytest.raises(ConfigError, match=r"reft\.ref_device: 'gpu' is not one of same, cpu"):
        validate(config)


def test_every_setting_has_a_doc_string():
    """``reftkit config show`` prints them; a section is documented by its class doc string."""
    docs = field_docs()
    missing, sections = [], [RunConfig]
    while sections:
        cls = sections.pop()
        if (cls.__name__, None) not in docs:
            missing.append(cls.__name__)
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                sections.append(hint)
            elif (cls.__name__, f.name) not in docs:
                missing.append(f"{cls.__name__}.{f.name}")
    assert missing == []
