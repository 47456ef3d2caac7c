"""Loading models and tokenizers: any Hugging Face causal LM by path or Hub id, the ``tiny`` preset, and the
checks that a model folder will load before any work starts.

Checkpoints are plain HF directories (``AutoModelForCausalLM.from_pretrained`` loads them as they are); the
value head (``reftkit.models.policy``) is a file beside the weights, so the policy stays a standard model.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from reftkit.config.schema import ConfigError, TinyModelConfig
from reftkit.models.attention import CPU_AWARE

log = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_MODEL_DIR = "value_model"
PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE over the task's own text: compact, lossless for any input, real pad token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS)


def build_tiny(texts: Iterable[str], cfg: TinyModelConfig, out_dir: str | Path, seed: int) -> Path:
    """Train a tokenizer on ``texts``, initialise a small Llama, and save both as an HF directory."""
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    config = tiny_config(cfg, len(tokenizer), tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_config(cfg: TinyModelConfig, vocab_size: int, tokenizer: PreTrainedTokenizerFast | None = None) -> LlamaConfig:
    """The ``tiny`` preset's architecture (``tokenizer`` gives its special token ids)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        pad_token_id=None if tokenizer is None else tokenizer.pad_token_id,
        bos_token_id=None if tokenizer is None else tokenizer.bos_token_id,
        eos_token_id=None if tokenizer is None else tokenizer.eos_token_id,
    )


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# what a model needs from a Hub repository (not its other formats: ONNX, GGUF, Flax, ...)
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "tokenizer*"]


def is_hub_id(path: str | Path) -> bool:
    """Whether ``path`` names a Hugging Face Hub repository (``org/name``) rather than a local folder."""
    return not Path(path).exists() and _HUB_ID.fullmatch(str(path)) is not None


def resolve_model_dir(path: str | Path, field: str = "model.path") -> Path:
    """The local folder of a model: ``path`` itself, or for a Hub id (``org/name``, no such local folder) its
    snapshot in the Hugging Face cache, downloaded first where there is network (only the files a model needs:
    configs, tokenizer files, safetensors weights, else .bin weights). ConfigError in one line when the id cannot
    be resolved (no network and not in the cache, no such repository, no access)."""
    if not is_hub_id(path):
        return Path(path)
    import huggingface_hub
    from huggingface_hub import constants

    repo = str(path)
    try:
        folder = Path(huggingface_hub.snapshot_download(repo, allow_patterns=_HUB_FILES))
        if not any(_is_weights(f) for f in folder.iterdir()):  # an older repository: PyTorch .bin weights only
            folder = Path(huggingface_hub.snapshot_download(repo, allow_patterns=[*_HUB_FILES, "*.bin"]))
    except (huggingface_hub.errors.RepositoryNotFoundError, huggingface_hub.errors.GatedRepoError) as err:
        gated = isinstance(err, huggingface_hub.errors.GatedRepoError)
        why = "is gated" if gated else "does not exist on the Hub, or is private"
        why += " (log in with `hf auth login`)"
        raise ConfigError(f"{field}: {repo} is no local folder, and the Hub repository {repo} {why}") from err
    except (OSError, ValueError, huggingface_hub.errors.HfHubHTTPError) as err:
        offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "no network"
        raise ConfigError(
            f"{field}: {repo} is no local folder, and the Hub id {repo} could not be resolved ({offline}, and it is "
            f"not in the local Hugging Face cache {constants.HF_HUB_CACHE}); download it where there is network "
            f"(hf download {repo} --local-dir DIR) and pass the folder, or set HF_HOME to a cache that holds it"
        ) from err
    return folder


def check_model_dir(path: str | Path, field: str) -> None:
    """Fail in one line naming ``field`` before any work if ``path`` is no HF model directory, one of its JSON
    files does not parse, a weights file is truncated or corrupt (headers and sizes only), its tokenizer cannot
    be used (:func:`load_tokenizer`) or it has no weights; the weights are not read, so this costs well under a
    second. A Hub id (``org/name``) is checked in its snapshot (:func:`resolve_model_dir`)."""
    folder = resolve_model_dir(path, field)
    path = folder
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{field}: {path} is not a Hugging Face model directory (no config.json); give a folder written by "
            "save_pretrained, or bring a GGUF file in with `reftkit model import`"
        )
    problem = _model_file_problem(folder)
    if problem:
        raise ConfigError(f"{field}: {problem}")
    try:
        load_tokenizer(path)
    except ConfigError as err:
        raise ConfigError(f"{field}: {err}") from err
    if not any(_is_weights(f) for f in folder.iterdir()):
        raise ConfigError(
            f"{field}: {path} holds no model weights (no model.safetensors or pytorch_model.bin); save the model "
            "there with save_pretrained"
        )


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json", ".h5", ".msgpack")


def _is_weights(file: Path) -> bool:
    return file.is_file() and file.name != VALUE_HEAD_FILE and file.name.endswith(_WEIGHT_SUFFIXES)


def _model_file_problem(folder: Path) -> str | None:
    """The first thing that would make loading a model directory fail part-way: a JSON file that does not parse,
    a safetensors file whose size does not match its header, a shard an index lists but the folder lacks, a cut-off
    zip archive; None when there is none."""
    for file in sorted(folder.glob("*.json")):
        try:
            parsed = json.loads(file.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            where = f"line {err.lineno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else "not UTF-8"
            return f"{file}: not valid JSON ({where}); the file is corrupt or cut off, save the model again"
        if file.name == "config.json" and not isinstance(parsed, dict):
            return f"{file}: expected a JSON object of model settings, got {type(parsed).__name__}"
        if file.name.endswith(".index.json"):
            shards = parsed.get("weight_map", {}) if isinstance(parsed, dict) else {}
            for shard in sorted(set(shards.values()) if isinstance(shards, dict) else ()):
                if not (folder / str(shard)).is_file():
                    return f"{file}: lists the weights file {shard}, which is missing; copy the whole model folder"
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob(f"{VALUE_MODEL_DIR}/*.safetensors"))
    for file in weights:
        problem = safetensors_problem(file)
        if problem:
            return f"{file}: {problem}; copy or save the model again"
    for file in sorted(folder.glob("*.bin")):
        with file.open("rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch.save's zip format; older pickles are not checked
        if zipped and not zipfile.is_zipfile(file):
            return f"{file}: truncated or corrupt (not a complete zip archive); copy or save the model again"
    return None


def safetensors_problem(file: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be loaded (truncated, corrupt header), from its header and size alone;
    None when it is whole."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes, shorter than a safetensors header)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"truncated or corrupt (its header says {n:,} header bytes but the file has {size:,} bytes)"
        try:
            header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "corrupt (its header is not a valid safetensors header)"
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"truncated ({size:,} of {expected:,} bytes)"
    if size > expected:
        return f"corrupt ({size - expected:,} bytes more than its header describes)"
    try:
        with safe_open(file, framework="pt"):  # offsets, dtypes and shapes agree
            pass
    except SafetensorError as err:
        return f"corrupt ({' '.join(str(err).split())})"
    return None


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer and make sure it has a pad token of its own (never BOS or EOS reused).

    A missing pad token is added; a missing EOS cannot be: generation would never stop, so that is a ConfigError.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{path}: no tokenizer could be loaded from it; save the model's tokenizer there "
            "(tokenizer.save_pretrained)"
        ) from err
    if tokenizer.eos_token_id is None:
        pad = "" if tokenizer.pad_token_id is not None else " (nor a pad token)"
        raise ConfigError(
            f"{path}: the tokenizer has no EOS token{pad}, so generation could never stop; set eos_token in "
            "its tokenizer_config.json"
        )
    specials = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in specials:
        tokenizer.add_special_tokens({"pad_token": "<|reftkit_pad|>"})
        log.info("%s: added a dedicated pad token", path)
    tokenizer.padding_side = "left"
    return tokenizer


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_causal_lm(path: str | Path, tokenizer: PreTrainedTokenizerFast, dtype: str = "float32") -> PreTrainedModel:
    """Load any HF causal LM with its weights in ``dtype`` (``model.dtype``; float32 by default, where autocast
    still gives bf16 matmul speed) and fit its embeddings to the tokenizer. Its attention is
    ``reftkit.models.attention``'s: ``sdpa``, but the explicit one where a CPU takes gradients (faster there)."""
    attention = {"attn_implementation": CPU_AWARE} if CPU_AWARE else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], **attention)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
