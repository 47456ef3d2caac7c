"""Models and tokenizers: any Hugging Face causal LM by path, the ``tiny`` preset, and the value head.

Checkpoints are plain HF directories (``AutoModelForCausalLM.from_pretrained`` loads them as they are);
the value head is a file beside the weights, so the policy stays a standard model.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import types
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from safetensors import SafetensorError, safe_open
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

from reftkit.config.schema import ConfigError, LoraConfig, ModelConfig, ReFTConfig, TinyModelConfig

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
    still gives bf16 matmul speed) and fit its embeddings to the tokenizer."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def prepare_for_training(model: PreTrainedModel, cfg: ModelConfig, seed: int) -> PreTrainedModel:
    """The model a trainer optimises: LoRA-wrapped and/or gradient-checkpointed as ``model.*`` asks.
    With both options off (the default) it is ``model`` itself, untouched."""
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, seed)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def load_trainable_lm(
    path: str | Path, tokenizer: PreTrainedTokenizerFast, cfg: ModelConfig, seed: int
) -> PreTrainedModel:
    """:func:`load_causal_lm` (weights in ``model.dtype``) then :func:`prepare_for_training`: a model to train, as
    ``model.*`` asks."""
    return prepare_for_training(load_causal_lm(path, tokenizer, cfg.dtype), cfg, seed)


def apply_lora(model: PreTrainedModel, cfg: LoraConfig, seed: int) -> PreTrainedModel:
    """Wrap ``model`` in ``peft`` LoRA adapters; the base weights are frozen (no gradients, no optimizer state).

    The adapters are initialised from their own seeded generator, under a forked RNG, so the run's global
    random stream (minibatch order, dropout) is the same as without LoRA and a resumed run rebuilds them alike.
    """
    try:
        import peft
    except ImportError as err:
        raise ConfigError("model.lora.enabled: needs the peft package; pip install 'peft>=0.10'") from err
    targets = cfg.target_modules.strip()
    peft_config = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets if targets == "all-linear" else [m.strip() for m in targets.split(",") if m.strip()],
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(seed)
        try:
            return peft.get_peft_model(model, peft_config)
        except ValueError as err:  # e.g. no module matches target_modules
            raise ConfigError(f"model.lora.target_modules: {err}") from err


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a ``peft`` model (peft is imported only when LoRA is on, so it is never needed here)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that get gradients and optimizer state: all of them, or under LoRA the adapters only."""
    return [p for p in model.parameters() if p.requires_grad]


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformer (HF ``GradientCheckpointingLayer``s, or the classes the model lists
    in ``_no_split_modules`` on transformers versions without them), outermost only."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # transformers < 4.52
        GradientCheckpointingLayer = ()
    names = set(getattr(model, "_no_split_modules", None) or ())
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        is_layer = isinstance(module, GradientCheckpointingLayer) or type(module).__name__ in names
        if is_layer and not any(name.startswith(outer + ".") for outer, _ in found):
            found.append((name, module))
    return [module for _, module in found]


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Checkpoint every decoder layer whenever autograd records, whatever the module's train/eval mode.

    HF's own switch checkpoints only while ``module.training`` is True, but ReFT and online self-training
    train the policy in eval mode (no dropout), so it would silently do nothing there; flipping ``training``
    on instead would turn on dropout written inside some layers (OPT). Here each layer's ``forward`` is
    wrapped: with grad enabled it runs under ``torch.utils.checkpoint`` (non-reentrant, RNG state preserved,
    so the recompute matches the forward exactly); under ``no_grad`` (sampling with a KV cache, scoring
    rollouts) it runs as before.
    """
    layers = decoder_layers(model)
    if not layers:
        raise ConfigError(
            f"model.gradient_checkpointing: found no decoder layers to checkpoint in {type(model).__name__}; "
            "turn it off for this model"
        )
    for layer in layers:
        if "forward" not in vars(layer):
            layer.forward = types.MethodType(_checkpointed_forward, layer)


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = type(self).forward
    if not torch.is_grad_enabled():
        return forward(self, *args, **kwargs)
    for key in ("cache", "past_key_values", "past_key_value", "layer_past"):  # a recompute would write it twice
        if kwargs.get(key) is not None:
            kwargs[key] = None
    return torch.utils.checkpoint.checkpoint(forward, self, *args, use_reentrant=False, **kwargs)


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of a LoRA model's base with every adapter folded into its weight (W + scale * B @ A) and
    the original key names, computed without touching the trained model (an in-place merge and unmerge would
    not restore its weights bit for bit). Merged tensors are moved to the CPU one by one."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    merged = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                weight = module.get_base_layer().weight
                delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
                merged[f"{name}.weight"] = (weight + delta).to(weight.dtype).cpu()
    state = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        state[key] = merged.get(key, value)
    return state


def save_lm(model: PreTrainedModel, out_dir: str | Path) -> None:
    """``save_pretrained`` that always writes a plain HF model: a LoRA model's weights are saved merged, so
    ``AutoModelForCausalLM.from_pretrained`` (and reftkit's next stage) loads it without peft."""
    if is_lora(model):
        model.get_base_model().save_pretrained(out_dir, state_dict=merged_state_dict(model))
    else:
        model.save_pretrained(out_dir)


class _OnDevice(nn.Module):
    """A frozen model kept on another device (``reft.ref_device=cpu``): inputs go there, logits come back."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, **inputs: torch.Tensor) -> Any:
        device = inputs["input_ids"].device
        here = next(self.lm.parameters()).device
        out = self.lm(**{k: v.to(here) for k, v in inputs.items()})
        out.logits = out.logits.to(device)
        return out


class _AdaptersOff(nn.Module):
    """The policy with its LoRA adapters switched off (``reft.ref_model=lora_off``): the frozen warm-up the
    adapters were added to, with no second copy of its weights. Not registered as a submodule on purpose."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self._lm = [lm]  # a list, so that the policy's weights are not this module's (no .to(), no state_dict)

    def forward(self, **inputs: torch.Tensor) -> Any:
        lm = self._lm[0]
        with torch.no_grad(), lm.disable_adapter():
            return lm(**inputs)


def reference_model(
    warmup_dir: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    cfg: ReFTConfig,
    policy_lm: PreTrainedModel,
    device: torch.device,
) -> nn.Module:
    """The frozen KL reference of ReFT: a copy of the warm-up on the training device (the default, the model
    itself, its weights in the policy's dtype), a copy on the CPU in float32 (frees device memory), or the LoRA
    policy with its adapters off."""
    if cfg.ref_model == "lora_off":
        if not is_lora(policy_lm):
            raise ConfigError("reft.ref_model: lora_off needs model.lora.enabled=true")
        return _AdaptersOff(policy_lm).eval()
    if cfg.ref_device == "cpu":
        return _OnDevice(load_causal_lm(warmup_dir, tokenizer).requires_grad_(False)).eval()
    dtype = {v: k for k, v in DTYPES.items()}.get(policy_lm.get_input_embeddings().weight.dtype, "float32")
    ref = load_causal_lm(warmup_dir, tokenizer, dtype)
    return ref.to(device).eval().requires_grad_(False)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a padded row is scored exactly as it was sampled."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyWithValue(nn.Module):
    """A causal LM with a scalar value head on its last hidden state (REFERENCE.md A.3).

    ``value_lm`` is None for the paper's shared trunk; otherwise a separate copy of the warm-up model
    provides the hidden states for the value (the paper's non-shared ablation, about 2x compute).
    The head starts at zero so the first advantages are plain returns rather than noise from a random head.
    """

    def __init__(self, lm: PreTrainedModel, value_lm: PreTrainedModel | None = None, critic: bool = True) -> None:
        super().__init__()
        self.lm = lm
        self.value_lm = value_lm
        self.value_head: nn.Linear | None = None
        if critic:  # critic-free estimators (GRPO, RLOO, ...) train the LM alone
            self.value_head = nn.Linear(lm.config.get_text_config().hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_from: int = 0, value_into_trunk: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, T-logits_from, V] and values [B, T-logits_from] (float32) for positions from ``logits_from``;
        values are None without a critic.

        ``value_into_trunk=False`` stops the value's gradient at the shared trunk (the head still learns)."""
        position_ids = position_ids_from_mask(attention_mask)
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=self.value_head is not None and self.value_lm is None,
        )
        if self.value_head is None:
            return out.logits[:, logits_from:], None
        if self.value_lm is None:
            hidden = out.hidden_states[-1] if value_into_trunk else out.hidden_states[-1].detach()
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

    def param_groups(self, lr: float, value_lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: the policy's trainable weights at ``lr``, the value head (in full) and the value
        model's trainable weights at ``value_lr``; frozen (LoRA base) weights get no optimizer state."""
        value_params = [p for name, p in self.named_parameters() if not name.startswith("lm.") and p.requires_grad]
        groups = [{"params": trainable_parameters(self.lm), "lr": lr}]
        return groups + ([{"params": value_params, "lr": value_lr}] if value_params else [])

    def save(self, out_dir: str | Path, tokenizer: PreTrainedTokenizerFast) -> None:
        out = Path(out_dir)
        save_lm(self.lm, out)
        tokenizer.save_pretrained(out)
        if self.value_head is not None:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                out / VALUE_HEAD_FILE,
            )
        if self.value_lm is not None:
            save_lm(self.value_lm, out / VALUE_MODEL_DIR)

    def load_value_head(self, model_dir: str | Path) -> bool:
        """Load a saved head if ``model_dir`` has one (resuming PPO); a fresh SFT model has none."""
        path = Path(model_dir) / VALUE_HEAD_FILE
        if self.value_head is None or not path.is_file():
            return False
        self.value_head.load_state_dict(load_file(path))
        return True
