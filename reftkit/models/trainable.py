"""What turns a loaded model into the one a trainer optimises, and back into a plain HF folder when saved:
LoRA adapters (``model.lora``), gradient checkpointing that also works in eval mode, and merged saving.

With both options off (the default) a trainer's model is the loaded model itself, untouched.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from reftkit.config.schema import ConfigError, LoraConfig, ModelConfig
from reftkit.models.loading import load_causal_lm, resolve_model_dir, tiny_config


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


def check_lora(model: nn.Module, cfg: LoraConfig) -> None:
    """The errors :func:`apply_lora` would raise, checked before a run writes anything: peft installed, and some
    module of ``model`` named by ``target_modules`` (peft's own rule: a module whose name is a target or ends in
    ``.<target>``)."""
    if not cfg.enabled:
        return
    if importlib.util.find_spec("peft") is None:
        raise ConfigError("model.lora.enabled: needs the peft package; pip install 'peft>=0.10'")
    targets = cfg.target_modules.strip()
    keys = [] if targets == "all-linear" else [m.strip() for m in targets.split(",") if m.strip()]
    names = [name for name, _ in model.named_modules()]
    if keys and not any(n == k or n.endswith("." + k) for n in names for k in keys):
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"model.lora.target_modules: no module of the model is named {', '.join(keys)}; its linear layers "
            f"are {', '.join(linear)} (or give all-linear)"
        )


def check_lora_before_loading(cfg: ModelConfig, path: str | None) -> None:
    """:func:`check_lora` on the architecture of the model at ``path`` (None: the ``tiny`` preset), built from its
    config on the meta device: no weights are read, nothing is written."""
    if not cfg.lora.enabled:
        return
    config = AutoConfig.from_pretrained(resolve_model_dir(path)) if path else tiny_config(cfg.tiny, cfg.tiny.vocab_size)
    with torch.device("meta"):
        check_lora(AutoModelForCausalLM.from_config(config), cfg.lora)


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
    for key in ("cache", "past_key_values", "past_key_value", "layer_past"):
        if kwargs.get(key) is not None:  # a recomputation would write it twice
            kwargs[key] = _WrittenOnce(kwargs[key]) if hasattr(kwargs[key], "update") else None
    return torch.utils.checkpoint.checkpoint(forward, self, *args, use_reentrant=False, **kwargs)


class _WrittenOnce:
    """The KV cache a checkpointed layer sees: the forward's ``update`` writes to the cache as usual; the
    recomputation's returns the same keys and values (what the cache held before, then the recomputed ones) without
    writing them again. So a prompt's cache can be written and then attended to (``policy.forward_from``) by
    checkpointed layers, bit for bit as without checkpointing."""

    def __init__(self, cache: Any) -> None:
        self._cache = cache
        self._before: tuple[torch.Tensor, torch.Tensor] | None = None
        self._written = False

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._written:
            self._before, self._written = _stored(self._cache, layer_idx), True
            return self._cache.update(key_states, value_states, layer_idx, *args, **kwargs)
        if self._before is None:
            return key_states, value_states
        keys, values = self._before
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)


def _stored(cache: Any, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The keys and values ``cache`` holds for a layer (None: nothing yet), in transformers 5 (``layers``) and 4."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        layer = layers[layer_idx] if layer_idx < len(layers) else None
        keys = getattr(layer, "keys", None)
        return None if keys is None or keys.numel() == 0 else (keys, layer.values)
    key_cache = getattr(cache, "key_cache", [])
    if layer_idx >= len(key_cache) or key_cache[layer_idx].numel() == 0:
        return None
    return key_cache[layer_idx], cache.value_cache[layer_idx]


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
