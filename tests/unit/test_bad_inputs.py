"""Bad input fails before any work starts: exit code 2, one stderr line naming the field and the fix, no
traceback, and nothing written where the command would have written (the whole tmp folder is compared)."""

import json
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from reftkit.cli.data import validate_file
from reftkit.cli.main import check_out_file, main
from reftkit.config.loading import dump_yaml, load_config
from reftkit.config.schema import ConfigError
from reftkit.models.loading import VALUE_HEAD_FILE, check_model_dir

RUN = ["run", "--out", "{tmp}/run", "--preset", "micro"]
SFT = ["sft", "--out", "{tmp}/run", "--preset", "micro"]

ROWS = [
    # config keys and types
    (["run", "sed=1", "--out", "{tmp}/run", "--preset", "micro"], "sed: unknown config key; did you mean seed?"),
    ([*RUN, "reft.lrr=1"], "reft.lrr: unknown config key; did you mean reft.lr?"),
    ([*RUN, "--config", "{tmp}/typo.yaml"], "sft.batchsize: unknown config key; did you mean sft.batch_size?"),
    ([*RUN, "reft.lr=fast"], "reft.lr: expected float, got 'fast'"),
    ([*RUN, "sft.batch_size=2.5"], "sft.batch_size: expected int, got 2.5"),
    ([*RUN, "sft.batch_size=[8,16]"], "sft.batch_size: expected int, got [8, 16]"),
    ([*RUN, "rm.enabled=1"], "rm.enabled: expected true or false, got 1"),
    ([*RUN, "seed=true"], "seed: expected int, got True"),
    ([*RUN, "reft.kl_coef=nan"], "reft.kl_coef: expected a finite float"),
    ([*RUN, "reft=3"], "reft: expected a mapping"),
    # impossible values
    ([*RUN, "sft.batch_size=-4"], "sft.batch_size: must be > 0, got -4"),
    ([*RUN, "sft.batch_size=0"], "sft.batch_size: must be > 0, got 0"),
    ([*RUN, "reft.samples_per_question=0"], "reft.samples_per_question: must be > 0, got 0"),
    (
        ["sample", "--model", "{tmp}/plain", "--n", "-3", "--out", "{tmp}/s.jsonl", "--preset", "micro"],
        "sample.n: must be >= 0, got -3",
    ),
    ([*RUN, "reft.lam=1.5"], "reft.lam: must be in [0, 1], got 1.5"),
    ([*RUN, "sample.top_p=1.2"], "sample.top_p: must be in [0, 1], got 1.2"),
    ([*RUN, "reft.minibatch_size=4096"], "reft.minibatch_size: larger than the samples of one step"),
    ([*RUN, "task.cot=latex"], "task.cot: 'latex' is not one of nl, python"),
    ([*RUN, "mixed_precision=fp8"], "mixed_precision: 'fp8' is not one of auto, bf16, fp16, no"),
    ([*RUN, "methods=sft,dpo"], "methods: 'sft,dpo': give a comma-separated subset of sft, offline-st"),
    ([*RUN, "rm.enabled=true"], "rm.enabled: reranking needs sampled test chains; set sample.n"),
    ([*RUN, "checkpoint.keep_last=0"], "checkpoint.keep_last: must be > 0, got 0"),
    ([*RUN, "model.tiny.num_heads=5"], "model.tiny.hidden_size: must be a multiple of model.tiny.num_heads"),
    ([*RUN, "report_to=[tensorbord]"], "report_to: 'tensorbord' is not one of tensorboard, wandb"),
    ([*RUN, "model.dtype=half"], "model.dtype: 'half' is not one of float32, bfloat16, float16"),
    ([*RUN, "model.dtype=float16", "mixed_precision=fp16"], "model.dtype: float16 weights cannot train under"),
    # Hub ids that cannot be resolved (offline here, and in no cache)
    (
        [*RUN, "model.path=no-such-org/no-such-model"],
        "model.path: no-such-org/no-such-model is no local folder, and the Hub id no-such-org/no-such-model could "
        "not be resolved (HF_HUB_OFFLINE is set, and it is not in the local Hugging Face cache",
    ),
    (["eval", "--model", "no-such-org/no-such-model", "--preset", "micro"], "--model: no-such-org/no-such-model is no"),
    # overrides, presets, config files
    ([*RUN, "seed"], "override 'seed': write overrides as key=value"),
    (["run", "=3", "--out", "{tmp}/run"], "override '=3': write overrides as key=value"),
    (["run", "--out", "{tmp}/run", "--preset", "nope"], "unknown preset 'nope'; choose one of"),
    ([*RUN, "--config", "{tmp}/missing.yaml"], "--config: no such file"),
    ([*RUN, "--config", "{tmp}/broken.yaml"], "broken.yaml, line 2: not valid YAML (expected ',' or ']'"),
    ([*RUN, "--config", "{tmp}/list.yaml"], "list.yaml: the top level must be a mapping of config keys"),
    # task data
    ([*RUN, "task.name=gsm9k"], "task.name: unknown task 'gsm9k'; did you mean gsm8k?"),
    ([*SFT, "task.name=svamp"], "task.data_dir: task 'svamp' reads files; pass --data-dir DIR"),
    ([*SFT, "task.name=svamp", "--data-dir", "{tmp}/nowhere"], "task.data_dir: {tmp}/nowhere is not a directory"),
    ([*SFT, "task.name=svamp", "--data-dir", "{tmp}/plain"], "task.data_dir: {tmp}/plain has no svamp/ folder"),
    ([*SFT, "task.name=jsonl"], "task.train_file: the jsonl task needs task.train_file and/or task.test_file"),
    ([*SFT, "task.name=jsonl", "task.train_file={tmp}/none.jsonl"], "task.train_file: {tmp}/none.jsonl: no such"),
    (["data", "show", "gsm8k", "--preset", "micro"], "task.data_dir: task 'gsm8k' reads files"),
    (
        [*SFT, "task.name=jsonl", "task.train_file={tmp}/latin1.jsonl"],
        "task.train_file: {tmp}/latin1.jsonl:2: not valid UTF-8 (byte 0xe9 at column 18); save the file as UTF-8",
    ),
    (
        [*SFT, "task.name=jsonl", "task.train_file={tmp}/plain"],
        "task.train_file: {tmp}/plain is a folder but not a dataset saved with datasets' save_to_disk",
    ),
    ([*SFT, "task.name=jsonl", "task.train_file={tmp}/empty.jsonl"], "task.train_file: {tmp}/empty.jsonl holds no"),
    (
        [*SFT, "task.name=jsonl", "task.train_file={tmp}/renamed.jsonl"],
        "{tmp}/renamed.jsonl: 'question' and 'answer' are in no record (the first has: problem, solution); "
        "set task.question_field and task.answer_field to your file's field names",
    ),
    (
        [*SFT, "task.name=jsonl", "task.train_file={tmp}/renamed.jsonl", "task.question_field=problem"],
        "{tmp}/renamed.jsonl: 'answer' is in no record (the first has: problem, solution); set task.answer_field",
    ),
    # model directories
    ([*SFT, "--model", "{tmp}/plain"], "--model: {tmp}/plain is not a Hugging Face model directory"),
    ([*RUN, "model.path={tmp}/plain"], "model.path: {tmp}/plain is not a Hugging Face model directory"),
    (["eval", "--model", "{tmp}", "--preset", "micro"], "--model: {tmp} is not a Hugging Face model directory"),
    ([*SFT, "--model", "{tmp}/no_eos"], "--model: {tmp}/no_eos: the tokenizer has no EOS token (nor a pad token)"),
    (
        ["sample", "--model", "{tmp}/no_tokenizer", "--n", "2", "--out", "{tmp}/s.jsonl", "--preset", "micro"],
        "--model: {tmp}/no_tokenizer: no tokenizer could be loaded",
    ),
    (["eval", "--model", "{tmp}/truncated"], "--model: {tmp}/truncated/model.safetensors: truncated (88 of 112 bytes)"),
    (["reft", "--model", "{tmp}/truncated", "--out", "{tmp}/run"], "--model: {tmp}/truncated/model.safetensors: trunc"),
    ([*SFT, "--model", "{tmp}/truncated"], "--model: {tmp}/truncated/model.safetensors: truncated (88 of 112 bytes)"),
    ([*RUN, "model.path={tmp}/garbled"], "model.path: {tmp}/garbled/model.safetensors: corrupt (its header is not"),
    (["eval", "--model", "{tmp}/bad_config"], "--model: {tmp}/bad_config/config.json: not valid JSON (line 2"),
    (["eval", "--model", "{tmp}/sharded"], "--model: {tmp}/sharded/model.safetensors.index.json: lists the weights"),
    ([*SFT, "--model", "{tmp}/no_weights"], "--model: {tmp}/no_weights holds no model weights"),
    (  # found once the tiny base model is built: the half-made run folder goes again
        [*RUN, "model.lora.enabled=true", "model.lora.target_modules=qkv_proj"],
        "model.lora.target_modules: no module of the model is named qkv_proj; its linear layers are down_proj, ",
    ),
    (["eval", "--samples", "{tmp}/s.jsonl", "--preset", "micro"], "--samples: no such file {tmp}/s.jsonl"),
    (
        ["eval", "--samples", "{tmp}/plain/README.txt", "--rm", "{tmp}/plain", "--preset", "micro"],
        "--rm: {tmp}/plain is not a Hugging Face model directory",
    ),
    (["eval", "--model", "{tmp}/plain", "--plot", "{tmp}/p.png"], "--rm and --plot go with --samples"),
    # output files
    (
        ["sample", "--model", "{tmp}/plain", "--n", "2", "--out", "{tmp}/old.jsonl"],
        "--out: {tmp}/old.jsonl exists; pass --overwrite to replace it, or give another path",
    ),
    (["sample", "--model", "{tmp}/plain", "--n", "2", "--out", "{tmp}/plain"], "--out: {tmp}/plain is a folder"),
    (
        ["eval", "--model", "{tmp}/plain", "--predictions", "{tmp}/old.jsonl"],
        "--predictions: {tmp}/old.jsonl exists; pass --overwrite to replace it",
    ),
    (["eval", "--samples", "{tmp}/old.jsonl", "--plot", "{tmp}/old.png"], "--plot: {tmp}/old.png exists; pass --over"),
    # run folders
    (
        ["run", "--out", "{tmp}/full", "--preset", "micro"],
        "--out: {tmp}/full exists and is not empty; pass --overwrite to replace it or --resume to continue it",
    ),
    (["reft", "--model", "{tmp}/plain", "--out", "{tmp}/full"], "--out: {tmp}/full exists and is not empty"),
    (
        ["rm", "--model", "{tmp}/plain", "--samples", "{tmp}/plain/README.txt", "--out", "{tmp}/full"],
        "--out: {tmp}/full exists and is not empty; pass --overwrite to replace it",
    ),
    (["run", "--out", "{tmp}/plain/README.txt"], "--out: {tmp}/plain/README.txt is a file; give a folder path"),
    (["run", "--out", "{tmp}/full", "--resume"], "--resume: {tmp}/full holds no run to resume (no config.yaml)"),
    (
        ["run", "--out", "{tmp}/saved", "--resume", "--preset", "micro", "reft.lr=1"],
        "--resume: reft.lr is 1.0 here but 3e-05 in {tmp}/saved/config.yaml; resume with no config arguments",
    ),
    (["run", "--out", "{tmp}/saved", "--resume", "--overwrite"], "argument --overwrite: not allowed with argument"),
    # argparse usage errors, one line too
    ([*RUN, "--frobnicate"], "unrecognized arguments: --frobnicate (see reftkit run --help)"),
    (["run", "--preset", "micro"], "the following arguments are required: --out (see reftkit run --help)"),
    ([*RUN, "--limit", "abc"], "argument --limit: invalid int value: 'abc' (see reftkit run --help)"),
    (["eval", "--model", "{tmp}/plain", "--split", "dev"], "argument --split: invalid choice: 'dev'"),
    (["data", "shw", "gsm8k"], "argument data_command: invalid choice: 'shw'"),
    (["trian"], "argument command: invalid choice: 'trian'"),
]


def _inputs(tmp: Path) -> None:
    """What the rows point at: a full run folder, a saved run, files that are not models, broken models."""
    (tmp / "full").mkdir()
    (tmp / "full" / "summary.json").write_text("{}")
    (tmp / "saved").mkdir()
    (tmp / "saved" / "config.yaml").write_text(dump_yaml(load_config("micro")))
    (tmp / "plain").mkdir()
    (tmp / "plain" / "README.txt").write_text("not a model\n")
    (tmp / "typo.yaml").write_text("sft:\n  batchsize: 8\n")
    (tmp / "broken.yaml").write_text("reft: [1, 2\n")
    (tmp / "list.yaml").write_text("- seed\n- 3\n")
    config = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=3)
    config.save_pretrained(tmp / "no_tokenizer")
    config.save_pretrained(tmp / "no_eos")
    vocab = models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]")
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(vocab)).save_pretrained(tmp / "no_eos")  # no pad, no EOS
    # data files: not UTF-8 (Latin-1 'é'), empty, other field names; output files that exist already
    (tmp / "latin1.jsonl").write_bytes(b'{"question": "a", "answer": 1}\n{"question": "caf\xe9", "answer": 2}\n')
    (tmp / "empty.jsonl").write_text("")
    (tmp / "renamed.jsonl").write_text('{"problem": "a", "solution": 1}\n{"problem": "b", "solution": 2}\n')
    (tmp / "old.jsonl").write_text("kept\n")
    (tmp / "old.png").write_text("kept\n")
    # model directories with broken files: weights cut off, a garbled header, bad config.json, a missing shard
    for name in ("truncated", "garbled", "bad_config", "sharded", "no_weights"):
        config.save_pretrained(tmp / name)
        save_file({"w": torch.zeros(12)}, tmp / name / "model.safetensors")  # 112 bytes
    with open(tmp / "truncated" / "model.safetensors", "r+b") as f:
        f.truncate(88)
    with open(tmp / "garbled" / "model.safetensors", "r+b") as f:
        f.seek(8)
        f.write(b"garbage")
    (tmp / "bad_config" / "config.json").write_text('{"model_type": "llama",\n')
    (tmp / "sharded" / "model.safetensors").rename(tmp / "sharded" / "model-00001-of-00002.safetensors")
    shards = {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}
    (tmp / "sharded" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    (tmp / "no_weights" / "model.safetensors").unlink()
    eos = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(vocab), eos_token="b")
    eos.save_pretrained(tmp / "no_weights")


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("argv", "message"), ROWS, ids=[f"{i:02d}-{m[:40]}" for i, (_, m) in enumerate(ROWS)])
def test_bad_input_exits_2_with_one_line_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.delenv("REFTKIT_DATA_DIR", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # Hub ids: the same answer with a network
    _assert_fails_cleanly(argv, message, tmp_path, monkeypatch, capsys)


def test_data_dir_from_the_environment_must_exist(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFTKIT_DATA_DIR", str(tmp_path / "nowhere"))
    message = "task.data_dir: {tmp}/nowhere (from $REFTKIT_DATA_DIR) is not a directory; pass --data-dir DIR"
    _assert_fails_cleanly([*SFT, "task.name=gsm8k"], message, tmp_path, monkeypatch, capsys)


def _assert_fails_cleanly(argv: list[str], message: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # anything written to a relative path lands in the compared folder too
    _inputs(tmp_path)
    before = _snapshot(tmp_path)
    try:
        code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    except SystemExit as exit_:  # argparse's usage errors leave through SystemExit
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("reftkit: error: "), err
    assert message.replace("{tmp}", str(tmp_path)) in lines[0]
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before  # no run folder, no file created, the full folder untouched


LOCKED = [  # a folder the user cannot write to: each output flag says so before anything starts
    ([*RUN[:1], "--out", "{tmp}/locked/run", *RUN[3:]], "--out: {tmp}/locked is not writable (Permission denied)"),
    (["reft", "--model", "{tmp}/plain", "--out", "{tmp}/locked/run"], "--out: {tmp}/locked is not writable"),
    (["sample", "--model", "{tmp}/plain", "--n", "2", "--out", "{tmp}/locked/s.jsonl"], "--out: {tmp}/locked is not"),
    (["eval", "--model", "{tmp}/plain", "--predictions", "{tmp}/locked/p.jsonl"], "--predictions: {tmp}/locked is"),
    (["results", "{tmp}/full", "--docs", "{tmp}/locked/docs"], "--docs: {tmp}/locked is not writable"),
]


@pytest.mark.parametrize(("argv", "message"), LOCKED, ids=[a[0] for a, _ in LOCKED])
def test_a_folder_that_cannot_be_written_is_named_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    """Permission bits do not stop root, so the folder is locked where the probe makes its test folder."""
    import reftkit.config.loading

    real = reftkit.config.loading.tempfile.mkdtemp

    def mkdtemp(prefix: str, dir: Path) -> str:
        if Path(dir) == tmp_path / "locked":
            raise PermissionError(13, "Permission denied", str(dir))
        return real(prefix=prefix, dir=dir)

    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(reftkit.config.loading.tempfile, "mkdtemp", mkdtemp)
    _assert_fails_cleanly(argv, message, tmp_path, monkeypatch, capsys)


def test_a_read_only_system_folder_is_refused(tmp_path, monkeypatch, capsys):
    """The probe itself, on a folder the kernel refuses to anyone (/sys), where there is one."""
    sys_dir = Path("/sys")
    try:
        Path(tempfile.mkdtemp(dir=sys_dir)).rmdir()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    _assert_fails_cleanly(["run", "--out", "/sys/reftkit-run", "--preset", "micro"], "--out: /sys is not writable",
                          tmp_path, monkeypatch, capsys)  # fmt: skip


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match=r"reft\.lrr: unknown config key"):
        main(["run", "--out", str(tmp_path / "run"), "--preset", "micro", "--debug", "reft.lrr=1"])
    assert not (tmp_path / "run").exists()


def test_table_is_large_enough():
    assert len(ROWS) >= 24


def test_whole_model_directories_pass_the_file_checks(tmp_path):
    """The header checks must not reject what save_pretrained writes: one file, shards with an index, a value
    head beside the weights."""
    config = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=3)
    vocab = models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(vocab), eos_token="b")
    model = LlamaForCausalLM(config)
    for name, shard in (("whole", "5GB"), ("sharded", "1KB")):
        model.save_pretrained(tmp_path / name, max_shard_size=shard)
        tokenizer.save_pretrained(tmp_path / name)
        check_model_dir(tmp_path / name, "--model")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    save_file({"weight": torch.zeros(1, 8)}, tmp_path / "whole" / VALUE_HEAD_FILE)
    check_model_dir(tmp_path / "whole", "--model")


def test_overwrite_lets_an_existing_output_file_be_replaced(tmp_path):
    old = tmp_path / "old.jsonl"
    old.write_text("kept\n")
    check_out_file("--out", old, overwrite=True)
    check_out_file("--out", tmp_path / "new.jsonl", overwrite=False)
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        check_out_file("--out", tmp_path / "new.jsonl", overwrite=False, also=old)


def test_data_validate_names_every_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "caf\xe9", "answer": 1}\n{"question": "b", "answer": 2}\n{"question": "\xff"}\n')
    _, problems = validate_file(str(path), load_config("micro").task, require_cot=False)
    assert [p.split(": ")[0] for p in problems] == [f"{path}:1", f"{path}:3"]
    assert all("not valid UTF-8" in p for p in problems)
