"""The attention every model reftkit loads runs: torch's fused ``sdpa`` kernel, except where a CPU computes gradients.

Why: on a CPU, the backward of ``scaled_dot_product_attention`` (its flash kernel, with the padding mask a batch of
prompts needs) is slower than the plain matmul-softmax-matmul and its autograd backward: 1.5x at the default preset's
shapes (32 rows of 191 tokens, 4 heads of 48) and 2.5x at SmolLM2's (16 x 164, 9 heads of 64), forward and backward
together, bf16 autocast, one thread. Without gradients (decoding, scoring, evaluation) ``sdpa`` is the faster one,
and on a GPU it is always used. The two compute the same attention to rounding (``tests/unit/test_attention.py``).

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
except ImportError:  # transformers < 4.53: no attention registry
    AttentionInterface = None


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
    """``sdpa``, or, on a CPU with gradients, the explicit attention: q, k, v are [batch, heads, length, dim]; the
    mask is ``sdpa_mask``'s (True where a query may attend; None for plain causal attention)."""
    if query.device.type != "cpu" or not (torch.is_grad_enabled() and query.requires_grad):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    if attention_mask is None:  # causal, queries at the end of the keys
        q, k = scores.shape[-2:]
        attention_mask = torch.ones(q, k, dtype=torch.bool, device=scores.device).tril(k - q)
    if attention_mask.dtype == torch.bool:  # a finite minimum, as transformers' eager mask: a row that may
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)  # attend nowhere is not NaN
    else:
        scores = scores + attention_mask
    probs = F.dropout(F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype), dropout, module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


CPU_AWARE: str | None = None
if AttentionInterface is not None:
    CPU_AWARE = "reftkit_cpu_aware"
    AttentionInterface.register(CPU_AWARE, cpu_aware_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_AWARE, sdpa_mask)
