"""Two KV-cached decoders behind one interface: the model's own HF forward, and a lean one for Llama-family
models (Llama, Mistral, Qwen2; SmolLM2 and the ``tiny`` preset are Llamas).

Why a second decoder: on a CPU, one decode step of a small model costs far more in the HF forward's per-call
work than in arithmetic: a mask built per step, a cache grown by concatenation, rotary tables recomputed,
three q/k/v and two gate/up matmuls, and CPU flash attention, which is slow for a single query in bf16. The
lean decoder reads the model's own modules once per rollout: q/k/v and gate/up fused into one matmul each (cast
to the compute dtype once; in bf16 also prepacked for oneDNN), one preallocated cache, rotary tables computed
once by the model's own rotary module, and attention for one query as two batched matmuls with a softmax in
float32. Its numerics follow the HF forward under the same autocast (float32 residual stream, matmuls in the
autocast dtype); the two agree to rounding (``tests/unit/test_fast_decode.py``). Every other architecture,
LoRA-wrapped models included, decodes through the HF forward.

Both decoders can drop finished rows (``keep``), so the rows that stopped early cost nothing more.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from reftkit.models.policy import cache_of, position_ids_from_mask, with_cache

LEAN_MODEL_TYPES = ("llama", "mistral", "qwen2")
DecoderChoice = Literal["auto", "hf", "lean"]


class Decoder(Protocol):
    """KV-cached decoding of a left-padded batch; rows can be repeated once at the start and, where
    ``can_drop``, dropped later."""

    can_drop: bool

    def start(self, ids: torch.Tensor, mask: torch.Tensor, repeat: int, max_new_tokens: int) -> torch.Tensor:
        """Encode the prompts ([B, P], left-padded), repeat each row ``repeat`` times; last-position logits."""
        ...

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per live row ([b]); the next logits [b, V]."""
        ...

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these live rows (indices into the current live rows), in this order."""
        ...


def make_decoder(model: PreTrainedModel, backend: DecoderChoice = "auto") -> Decoder:
    """``lean`` where the architecture allows it (``auto``), else the HF forward; ``hf`` forces the latter."""
    if backend not in ("auto", "hf", "lean"):
        raise ValueError(f"decoder backend must be auto, hf or lean, not {backend!r}")
    reason = lean_unsupported(model)
    if backend == "lean" and reason:
        raise ValueError(f"the lean decoder cannot run this model: {reason}")
    if backend == "hf" or reason:
        return HFDecoder(model)
    return LeanDecoder(model)


def lean_unsupported(model: torch.nn.Module) -> str | None:
    """Why the lean decoder cannot run ``model`` (None: it can)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in LEAN_MODEL_TYPES:
        return f"model type {model_type!r} (lean: {', '.join(LEAN_MODEL_TYPES)})"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        return "not a plain HF causal LM (e.g. wrapped by peft)"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(inner.rotary_emb, "rope_type", "default") in ("dynamic", "longrope"):
        return f"rope type {inner.rotary_emb.rope_type!r} depends on the sequence length"
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < config.max_position_embeddings:
        return f"sliding-window attention ({window} of {config.max_position_embeddings} positions)"
    first = inner.layers[0].self_attn
    if any(hasattr(first, name) for name in ("q_norm", "k_norm")):
        return "q/k norms"
    return None


class HFDecoder:
    """Decoding through the model's own forward and a DynamicCache: any HF causal LM."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model

    def start(self, ids: torch.Tensor, mask: torch.Tensor, repeat: int, max_new_tokens: int) -> torch.Tensor:
        positions = position_ids_from_mask(mask)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        self.cache, logits = cache_of(out), out.logits[:, -1]
        self.can_drop = hasattr(self.cache, "batch_select_indices")
        if repeat > 1:
            self.cache.batch_repeat_interleave(repeat)
            mask, positions, logits = (t.repeat_interleave(repeat, dim=0) for t in (mask, positions, logits))
        self.mask, self.next_pos = mask, positions[:, -1:] + 1
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.next_pos,
            use_cache=True,
            **with_cache(self.model, self.cache),
        )
        self.cache = cache_of(out)
        self.next_pos = self.next_pos + 1
        return out.logits[:, -1]

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask, self.next_pos = self.mask[rows], self.next_pos[rows]


class _Linear:
    """``F.linear`` with the weights (and biases) of ``linears`` stacked into one matmul and cast once.

    On a CPU in bfloat16 the weight is also reordered once into oneDNN's blocked layout: its matmul then skips
    the per-call reorder, ~1.5-2x faster at decode shapes (8-64 rows) on SmolLM2's matrices, and bit-identical to
    ``F.linear`` (``tests/unit/test_fast_decode.py``). In float32, or where that private op is missing, it is
    ``F.linear``."""

    def __init__(self, linears: tuple[torch.nn.Linear, ...], dtype: torch.dtype) -> None:
        def stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
            return (tensors[0] if len(tensors) == 1 else torch.cat(tensors)).to(dtype)

        weight = stacked([linear.weight for linear in linears])
        self.bias = None if linears[0].bias is None else stacked([linear.bias for linear in linears])
        self.packed = _onednn_packed(weight)
        self.weight = weight if self.packed is None else None  # one copy per rollout, not both

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _onednn_packed(weight: torch.Tensor) -> torch.Tensor | None:
    """``weight`` in oneDNN's layout for bfloat16 matmuls on a CPU, or None where that does not apply."""
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return None
    reorder = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    if reorder is None or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return None
    return reorder(weight, 16)  # the batch size oneDNN picks its blocking for: decode's 8-64 rows


class _Layer:
    """One decoder layer's weights, fused and cast once."""

    def __init__(self, layer: torch.nn.Module, dtype: torch.dtype) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = _Linear((attn.q_proj, attn.k_proj, attn.v_proj), dtype)
        self.o = _Linear((attn.o_proj,), dtype)
        self.gate_up = _Linear((mlp.gate_proj, mlp.up_proj), dtype)
        self.down = _Linear((mlp.down_proj,), dtype)
        self.norm1, self.eps1 = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.norm2, self.eps2 = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon


class LeanDecoder:
    """The Llama-family forward for decoding, without the HF forward's per-step overhead (see module doc)."""

    can_drop = True

    def __init__(self, model: PreTrainedModel) -> None:
        self.inner = inner = model.model
        attn = inner.layers[0].self_attn
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.residual_dtype = inner.embed_tokens.weight.dtype
        device = inner.embed_tokens.weight.device
        self.device_type = device.type
        autocast = torch.is_autocast_enabled(device.type)
        self.dtype = torch.get_autocast_dtype(device.type) if autocast else self.residual_dtype
        # Keys and values hold the compute dtype's values; on a CPU they are stored and attended in float32,
        # where batched matmuls run several times faster than in bf16 at decode shapes (same values, exact sums).
        self.cache_dtype = torch.float32 if device.type == "cpu" else self.dtype
        self.layers = [_Layer(layer, self.dtype) for layer in inner.layers]
        self.lm_head = _Linear((model.lm_head,), self.dtype)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return weight * F.rms_norm(x.float(), (x.size(-1),), eps=eps).to(x.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.size(-1) // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return (x * cos + rotated * sin).to(self.dtype)

    def _layers(self, h: torch.Tensor, positions: torch.Tensor, slot: int, bias: torch.Tensor) -> torch.Tensor:
        """Run ``h`` [b, T, E] (cache slots ``slot``..``slot+T``) through every layer; ``bias`` [b, 1, T, S]
        is 0 where a query may attend and -inf elsewhere."""
        b, T, _ = h.shape
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        heads, kv, d = self.heads, self.kv_heads, self.head_dim
        end = slot + T
        for i, layer in enumerate(self.layers):
            x = self._rms(h, layer.norm1, layer.eps1).to(self.dtype)
            q, k, v = layer.qkv(x).split([heads * d, kv * d, kv * d], dim=-1)
            q = self._rope(q.view(b, T, heads, d).transpose(1, 2), cos, sin).to(self.cache_dtype)
            self.keys[i][:, :, slot:end] = self._rope(k.view(b, T, kv, d).transpose(1, 2), cos, sin)
            self.values[i][:, :, slot:end] = v.view(b, T, kv, d).transpose(1, 2)
            keys, values = self.keys[i][:, :, :end], self.values[i][:, :, :end]
            q = q.reshape(b, kv, (heads // kv) * T, d)  # query heads grouped by the key head they share
            scores = torch.matmul(q, keys.transpose(-1, -2)).float() * self.scaling
            scores = scores.view(b, kv, heads // kv, T, end) + bias[:, :, None, :, :end]
            out = torch.matmul(scores.softmax(-1).to(self.cache_dtype).view(b, kv, -1, end), values)
            out = out.view(b, heads, T, d).transpose(1, 2).reshape(b, T, heads * d).to(self.dtype)
            h = h + layer.o(out)
            x = self._rms(h, layer.norm2, layer.eps2).to(self.dtype)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            h = h + layer.down(F.silu(gate) * up)
        return h

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        x = self._rms(h, self.inner.norm.weight, self.inner.norm.variance_epsilon).to(self.dtype)
        return self.lm_head(x)

    def start(self, ids: torch.Tensor, mask: torch.Tensor, repeat: int, max_new_tokens: int) -> torch.Tensor:
        with self._explicit_dtypes():
            return self._start(ids, mask, repeat, max_new_tokens)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        with self._explicit_dtypes():
            return self._step(tokens)

    def keep(self, rows: torch.Tensor) -> None:
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.key_bias, self.next_pos = self.key_bias[rows], self.next_pos[rows]

    def _explicit_dtypes(self) -> torch.autocast:
        """Every dtype here is chosen explicitly (from the autocast active at construction), so autocast's
        per-op dispatch is switched off."""
        return torch.autocast(self.device_type, enabled=False)

    def _start(self, ids: torch.Tensor, mask: torch.Tensor, repeat: int, max_new_tokens: int) -> torch.Tensor:
        B, P = ids.shape
        device = ids.device
        width = P + max_new_tokens
        positions = position_ids_from_mask(mask)
        table = torch.arange(width + 1, device=device)[None]
        probe = torch.zeros((), dtype=self.residual_dtype, device=device)
        cos, sin = self.inner.rotary_emb(probe, table)
        self.cos, self.sin = cos[0], sin[0]
        shape = (B, self.kv_heads, width, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=self.cache_dtype, device=device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=self.cache_dtype, device=device) for _ in self.layers]
        valid = mask.bool()
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        allowed = causal & valid[:, None, :] | torch.eye(P, dtype=torch.bool, device=device)  # pads see themselves
        bias = torch.zeros((B, 1, P, P), device=device).masked_fill(~allowed[:, None], float("-inf"))
        h = F.embedding(ids, self.inner.embed_tokens.weight)
        logits = self._logits(self._layers(h, positions, 0, bias)[:, -1])
        self.key_bias = torch.full((B, 1, 1, width), float("-inf"), device=device)
        self.key_bias[:, 0, 0, :P] = torch.zeros_like(mask, dtype=torch.float).masked_fill(~valid, float("-inf"))
        self.next_pos, self.slot = positions[:, -1:] + 1, P
        if repeat > 1:
            self.keep(torch.arange(B, device=device).repeat_interleave(repeat))
            logits = logits.repeat_interleave(repeat, dim=0)
        return logits

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.key_bias[..., self.slot] = 0.0
        h = F.embedding(tokens[:, None], self.inner.embed_tokens.weight)
        h = self._layers(h, self.next_pos, self.slot, self.key_bias)
        self.slot += 1
        self.next_pos = self.next_pos + 1
        return self._logits(h[:, -1])
