"""The models PPO holds beside the data: the policy with its value head (``PolicyWithValue``) and the frozen
KL reference (``reference_model``).

The value head is saved as a file beside the policy's weights (``VALUE_HEAD_FILE``), and a separate value model
in a folder of its own (``VALUE_MODEL_DIR``), so the policy folder stays a standard HF model.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from reftkit.config.schema import ConfigError, ReFTConfig
from reftkit.models.loading import DTYPES, VALUE_HEAD_FILE, VALUE_MODEL_DIR, load_causal_lm
from reftkit.models.trainable import is_lora, save_lm, trainable_parameters


class _OnDevice(nn.Module):
    """A frozen model kept on another device (``reft.ref_device=cpu``): inputs go there, logits come back."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, **inputs: torch.Tensor) -> Any:
        device = inputs["input_ids"].device
        here = next(self.lm.parameters()).device
        out = self.lm(**{k: v.to(here) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
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


def _unwrapped(model: nn.Module) -> nn.Module:
    """The HF causal LM inside reftkit's and PEFT's wrappers, whose forward's signature says what it takes."""
    inner: Any = model
    if isinstance(inner, _OnDevice):
        inner = inner.lm
    if isinstance(inner, _AdaptersOff):
        inner = inner._lm[0]
    if hasattr(inner, "get_base_model"):  # a PEFT model passes the argument on to the model it wraps
        inner = inner.get_base_model()
    return inner


def with_cache(model: nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword argument that hands ``model`` a KV cache: ``cache`` since transformers 5.2x, which deprecates
    ``past_key_values`` (the name before)."""
    takes_cache = "cache" in _forward_parameters(type(_unwrapped(model)).forward)
    return {"cache" if takes_cache else "past_key_values": cache}


def cache_of(output: Any) -> Any:
    """The KV cache a forward returned, under either name (see ``with_cache``)."""
    return output.cache if getattr(output, "cache", None) is not None else output.past_key_values


@functools.cache
def _forward_parameters(forward: Any) -> frozenset[str]:
    """Read once per model class: this runs before every scoring and loss forward."""
    return frozenset(inspect.signature(forward).parameters)


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


def forward_from(
    lm: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_from: int,
    hidden: bool = False,
    share_prefix: bool = True,
    last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [B, n, V] of the positions from ``logits_from`` on (n = T - logits_from; with ``last=False`` the last
    position, which predicts no token of the row, is left out: n - 1), and with ``hidden`` the last hidden states
    of the same positions. The LM head runs on those positions only.

    Rows whose first ``logits_from + 1`` tokens are the same (the k samples of one question share its prompt) have
    that prefix run once: a forward over the distinct prefixes, its KV cache gathered back to every row, then a
    forward over the rest of each row on that cache. The same values as one forward over every row, gradients
    included (they flow through the gathered cache), at U x P + B x R positions instead of B x (P + R): about half
    the compute of scoring and of PPO's updates at k = 4 with prompts as long as responses (checkpointed layers
    too: ``trainable._WrittenOnce``). Where no prefix repeats, or with ``share_prefix=False``, one plain forward."""
    length, split = input_ids.size(1), logits_from + 1
    end = length if last else length - 1
    shared = None  # (distinct prefixes, each row's among them), where some row repeats another's prefix
    if share_prefix and end - split >= 1:
        prefix = torch.cat([input_ids[:, :split], attention_mask[:, :split].to(input_ids.dtype)], dim=1)
        distinct, inverse = torch.unique(prefix, dim=0, return_inverse=True)
        shared = (distinct, inverse) if len(distinct) < len(prefix) else None
    if shared is None:
        kept, sliced = _logits_between(lm, logits_from, end, length, input_ids.device)
        positions = position_ids_from_mask(attention_mask)
        out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                 output_hidden_states=hidden, **kept)  # fmt: skip
        return out.logits[:, sliced], out.hidden_states[-1][:, logits_from:end] if hidden else None
    distinct, inverse = shared
    ids, mask, rest = distinct[:, :split], distinct[:, split:].to(attention_mask.dtype), input_ids[:, split:]
    head_input, rest_input = {"input_ids": ids}, {"input_ids": rest}
    if torch.is_grad_enabled():  # one embedding lookup, so one dense [vocab, hidden] gradient rather than two
        vectors = _unwrapped(lm).get_input_embeddings()(torch.cat([ids.flatten(), rest.flatten()]))
        head_vectors, rest_vectors = vectors.split([ids.numel(), rest.numel()])
        head_input = {"inputs_embeds": head_vectors.view(*ids.shape, -1)}
        rest_input = {"inputs_embeds": rest_vectors.view(*rest.shape, -1)}
    head = lm(**head_input, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True,
              output_hidden_states=hidden, **_logits_between(lm, split - 1, split, split, ids.device)[0])  # fmt: skip
    cache = cache_of(head)
    cache.batch_select_indices(inverse.to(next(_unwrapped(lm).parameters()).device))  # a reference elsewhere: there
    kept, sliced = _logits_between(lm, 0, end - split, length - split, ids.device)
    tail = lm(
        **rest_input,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask)[:, split:],
        use_cache=True,
        output_hidden_states=hidden,
        **with_cache(lm, cache),
        **kept,
    )
    logits = torch.cat([head.logits[:, -1:][inverse], tail.logits[:, sliced]], dim=1)
    if not hidden:
        return logits, None
    states = [head.hidden_states[-1][:, -1:][inverse], tail.hidden_states[-1][:, : end - split]]
    return logits, torch.cat(states, dim=1)


def _logits_between(
    model: nn.Module, start: int, end: int, length: int, device: torch.device
) -> tuple[dict[str, Any], slice]:
    """The keyword arguments that run the LM head on positions ``start``..``end - 1`` of ``length`` only
    (``logits_to_keep``: a count of last positions, or their indices), and the slice of the logits it returns that
    holds them; a model without ``logits_to_keep`` returns every position's logits and the slice picks them."""
    if "logits_to_keep" not in _forward_parameters(type(_unwrapped(model)).forward):
        return {}, slice(start, end)
    keep: int | torch.Tensor = length - start if end == length else torch.arange(start, end, device=device)
    return {"logits_to_keep": keep}, slice(None)


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
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_from: int = 0,
        value_into_trunk: bool = True,
        last: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, T-logits_from, V] and values [B, T-logits_from] (float32) for positions from ``logits_from``
        (``last=False``: but the last); values are None without a critic.

        ``value_into_trunk=False`` stops the value's gradient at the shared trunk (the head still learns)."""
        own_hidden = self.value_head is not None and self.value_lm is None
        logits, hidden = forward_from(self.lm, input_ids, attention_mask, logits_from, own_hidden, last=last)
        if self.value_head is None:
            return logits, None
        if self.value_lm is not None:
            _, hidden = forward_from(self.value_lm, input_ids, attention_mask, logits_from, True, last=last)
        elif not value_into_trunk:
            hidden = hidden.detach()
        assert hidden is not None
        hidden = hidden.float()
        values = nn.functional.linear(hidden, self.value_head.weight.float(), self.value_head.bias.float())
        return logits, values.squeeze(-1)

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
