"""The attention of every model reftkit loads: torch's fused ``sdpa``, except where a CPU takes gradients in bf16.

Why: on a CPU in bf16, the backward of ``scaled_dot_product_attention`` (its flash kernel, with the padding mask a
batch of prompts needs) is slower than the plain matmul-softmax-matmul and its autograd backward: ~1.9-2.0x at the
default preset's shapes (32 rows of 191 tokens, 4 heads of 48), 2.3-2.8x at SmolLM2's (16 x 164, 9 heads of 64),
forward and backward together, one thread (``bench/attention.py``). In float32 it is the other way round (0.6-0.7x),
and without gradients (decoding, scoring, evaluation) ``sdpa`` is the faster one too, so those, and every GPU, keep
``sdpa``. The two compute the same attention to rounding (``tests/unit/test_attention.py``).

Registered with transformers' attention and mask interfaces under ``CPU_AWARE``; where this transformers is too
old to have them (< 4.53), ``CPU_AWARE`` is None and models keep their default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.utils.import_utils import is_torch_greater_or_equal
except ImportError:  # transformers < 4.53: no attention registry
    AttentionInterface = None


def takes_explicit_path(query: torch.Tensor) -> bool:
    """Where the explicit attention is the faster one: a CPU, gradients, and bf16 or fp16, whether the query is
    in it or autocast will cast it there (under autocast a Llama's query arrives in float32: RoPE multiplies the
    bf16 projection by float32 tables)."""
    if not (torch.is_grad_enabled() and query.requires_grad and query.device.type == "cpu"):
        return False
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
    return dtype != torch.float32


def cpu_aware_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """``explicit_attention`` where ``takes_explicit_path``, else ``sdpa``; transformers' attention signature."""
    if takes_explicit_path(query):
        return explicit_attention(module, query, key, value, attention_mask, dropout, scaling)
    if _grouped_on_cpu(module, query, attention_mask, kwargs):
        return grouped_sdpa(query, key, value, attention_mask, dropout, scaling), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def _grouped_on_cpu(module: torch.nn.Module, query: torch.Tensor, mask: torch.Tensor | None, kwargs: dict) -> bool:
    """A CPU forward of several queries over grouped key/value heads with a padding mask: where transformers copies
    every key and value head ``num_key_value_groups`` times (``repeat_kv``) before ``sdpa``."""
    plain = not any(kwargs.get(name) is not None for name in ("position_bias", "softcap")) and _SDPA_HAS_GQA
    groups = getattr(module, "num_key_value_groups", 1)
    return plain and groups > 1 and query.device.type == "cpu" and query.size(2) > 1 and mask is not None


def grouped_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    dropout: float = 0.0,
    scaling: float | None = None,
) -> torch.Tensor:
    """``sdpa`` with ``enable_gqa``: each query head reads its group's key/value head in place. On a CPU the same
    output as ``sdpa`` over repeated heads, bit for bit, and the same gradients to rounding (the groups' key and
    value gradients add up in another order), at about 0.5x the forward's time and 0.6x with its backward at
    SmolLM2's scoring shapes (16 rows, 9 query heads over 3, 64 queries over 175 keys, float32, 2 threads), and
    no repeated copy is kept for the backward. [batch, length, heads, dim] out."""
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous()


def explicit_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
) -> tuple[torch.Tensor, None]:
    """softmax(q k^T * scale + mask) v: q, k, v are [batch, heads, length, dim] (k, v may have fewer heads); the
    mask is ``sdpa_mask``'s (True where a query may attend; None for plain causal attention)."""
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scale, key.transpose(2, 3))
    if attention_mask is None:  # causal, queries at the end of the keys
        q, k = scores.shape[-2:]
        attention_mask = torch.ones(q, k, dtype=torch.bool, device=scores.device).tril(k - q)
    if attention_mask.dtype == torch.bool:  # a finite minimum, as transformers' eager mask: a row that may
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)  # attend nowhere is not NaN
    else:
        scores = scores + attention_mask
    # softmax in the scores' dtype: torch's CPU kernel accumulates bf16 in float32 either way, and skipping the
    # two casts of a [batch, heads, length, length] tensor (and their backward) halves this function's time
    probs = F.dropout(F.softmax(scores, dim=-1), dropout, module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


CPU_AWARE: str | None = None
_SDPA_HAS_GQA = False  # sdpa's enable_gqa: torch >= 2.5
if AttentionInterface is not None:
    _SDPA_HAS_GQA = is_torch_greater_or_equal("2.5")
    CPU_AWARE = "reftkit_cpu_aware"
    AttentionInterface.register(CPU_AWARE, cpu_aware_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_AWARE, sdpa_mask)
