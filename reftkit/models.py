"""Models and tokenizers: any Hugging Face causal LM by path, the ``tiny`` preset, and the value head.

Checkpoints are plain HF directories (``AutoModelForCausalLM.from_pretrained`` loads them as they are);
the value head is a file beside the weights, so the policy stays a standard model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from reftkit.config import ConfigError, TinyModelConfig

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
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def check_model_dir(path: str | Path, field: str) -> None:
    """Fail in one line naming ``field`` before any work if ``path`` is no HF model directory or its tokenizer
    cannot be used (:func:`load_tokenizer`); the weights are not read, so this costs well under a second."""
    if not Path(path, "config.json").is_file():
        raise ConfigError(
            f"{field}: {path} is not a Hugging Face model directory (no config.json); give a folder written by "
            "save_pretrained, or bring a GGUF file in with `reftkit model import`"
        )
    try:
        load_tokenizer(path)
    except ConfigError as err:
        raise ConfigError(f"{field}: {err}") from err


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


def load_causal_lm(path: str | Path, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """Load any HF causal LM in float32 (autocast gives bf16 speed) and fit its embeddings to the tokenizer."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a padded row is scored exactly as it was sampled."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyWithValue(nn.Module):
    """A causal LM with a scalar value head on its last hidden state (REFERENCE.md A.3).

    ``value_lm`` is None for the paper's shared trunk; otherwise a separate copy of the warm-up model
    provides the hidden states for the value (the paper's non-shared ablation, about 2x compute).
    The head starts at zero so the first advantages are plain returns rather than noise from a random head.
    """

    def __init__(self, lm: PreTrainedModel, value_lm: PreTrainedModel | None = None) -> None:
        super().__init__()
        self.lm = lm
        self.value_lm = value_lm
        self.value_head = nn.Linear(lm.config.get_text_config().hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_from: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, T-logits_from, V] and values [B, T-logits_from] (float32) for positions from ``logits_from``."""
        position_ids = position_ids_from_mask(attention_mask)
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=self.value_lm is None,
        )
        if self.value_lm is None:
            hidden = out.hidden_states[-1]
        else:
            hidden = self.value_lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=True,
            ).hidden_states[-1]
        hidden = hidden[:, logits_from:].float()
        values = nn.functional.linear(hidden, self.value_head.weight.float(), self.value_head.bias.float())
        return out.logits[:, logits_from:], values.squeeze(-1)

    def save(self, out_dir: str | Path, tokenizer: PreTrainedTokenizerFast) -> None:
        out = Path(out_dir)
        self.lm.save_pretrained(out)
        tokenizer.save_pretrained(out)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
            out / VALUE_HEAD_FILE,
        )
        if self.value_lm is not None:
            self.value_lm.save_pretrained(out / VALUE_MODEL_DIR)

    def load_value_head(self, model_dir: str | Path) -> bool:
        """Load a saved head if ``model_dir`` has one (resuming PPO); a fresh SFT model has none."""
        path = Path(model_dir) / VALUE_HEAD_FILE
        if not path.is_file():
            return False
        self.value_head.load_state_dict(load_file(path))
        return True
