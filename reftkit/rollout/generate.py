"""The sampling loop of the engines that decode in this process (``rollout_backend`` auto, hf, lean): batched
sampling with a KV cache and explicit position ids, over the decoder ``reftkit.rollout.lean.make_decoder`` picks.

Positions come from the attention mask in sampling and in scoring alike (the reference scored padded
rows at other positions than it sampled them, REFERENCE.md F.5).
"""

from __future__ import annotations

import functools

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reftkit.rollout.base import Batch, GenerationConfig, Responses
from reftkit.rollout.lean import DecoderChoice, make_decoder
from reftkit.runtime.distributed import gather_rows, owned, reduce_max, world


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """Token ids of prompts with the tokenizer's own special-token convention (e.g. Llama's BOS)."""
    return tokenizer(prompts, add_special_tokens=True)["input_ids"]


def left_pad(sequences: list[list[int]], pad_id: int) -> Batch:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, -len(seq) :] = torch.tensor(seq)
            mask[row, -len(seq) :] = 1
    return Batch(ids, mask)


def warp_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """The logits of the distribution sampling draws from, in float32: divided by ``temperature``, then every
    token outside the ``top_k`` most likely and outside the smallest set reaching probability ``top_p`` set to
    -inf. The sampler and the PPO scorer both use it, so the log-probs a ratio compares are those of the
    distribution the tokens were drawn from (any leading shape; the vocabulary is the last dimension).

    ``keep`` (token ids, the logits' shape without the vocabulary) is never filtered out: a scorer passes the
    drawn tokens, since a full forward in bf16 can rank a boundary token just outside the set the decoder drew
    it from, and its log-prob must stay finite."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    scaled = logits
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    if keep is not None and (top_k > 0 or top_p < 1.0):
        index = keep.long().unsqueeze(-1)
        logits = logits.scatter(-1, index, scaled.gather(-1, index))
    return logits


def _pick(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
    rows: torch.Tensor,
    total: int,
) -> torch.Tensor:
    """The next token of each of ``rows`` (their places in a global batch of ``total`` rows). Sampling is
    ``argmax(p / q)`` with ``q ~ Exp(1)``, which is exactly what ``torch.multinomial(p, 1)`` computes; the noise
    is drawn for the whole global batch and these rows taken from it, so a process sampling its share of a
    batch, or the rows of a batch that have not ended yet, draws the same tokens as one process sampling all."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = warp_logits(logits, temperature, top_k, top_p).softmax(-1)
    noise = _exponential_noise(total, probs.size(-1), probs.device, generator)
    if rows.numel() < total:  # else ``rows`` is every row in order (ascending, distinct): no copy needed
        noise = noise[rows]
    return (probs / noise).argmax(-1)


def _exponential_noise(rows: int, vocab: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Exp(1) noise: the very values ``Tensor.exponential_`` draws, and the generator left where it leaves it.

    On a CPU ``exponential_`` turns one 53-bit uniform ``u`` per value into ``-log1p(-u)`` in a serial loop, about
    20 ns a value: 17 ms a decode step for 16 rows of a 49,153-token vocabulary, a sixth of a SmolLM2 step. Drawing
    the same uniforms with ``uniform_`` in float64 and taking ``log1p`` vectorised costs a third of that. Where
    that does not reproduce ``exponential_`` (checked once per process), ``exponential_`` itself draws."""
    if device.type == "cpu" and _uniform_log1p_is_exponential():
        return _uniform_log1p((rows, vocab), generator)
    return torch.empty((rows, vocab), device=device).exponential_(1, generator=generator)


def _uniform_log1p(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.float64).uniform_(generator=generator).neg_().log1p_().neg_().float()


@functools.cache
def _uniform_log1p_is_exponential() -> bool:
    """Whether this torch's CPU ``exponential_`` is ``-log1p(-u)`` of float64 ``uniform_`` draws, value for value."""
    expected, drawn = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    values = torch.empty(1 << 14).exponential_(1, generator=expected)
    same = torch.equal(values, _uniform_log1p((1 << 14,), drawn))
    return same and torch.equal(expected.get_state(), drawn.get_state())


class DecoderEngine:
    """The engine of ``rollout_backend`` auto, hf and lean: ``generate`` below, in this process, over the decoder
    ``decoder`` names (``make_decoder``: auto is the lean one for Llama-family models, else the HF forward)."""

    def __init__(self, decoder: DecoderChoice = "auto") -> None:
        self.decoder = decoder

    def generate(
        self,
        model: PreTrainedModel,
        prompts: Batch,
        gen: GenerationConfig,
        k: int = 1,
        generator: torch.Generator | None = None,
    ) -> Responses:
        return generate(model, prompts, gen, k, generator, self.decoder)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prompts: Batch,
    gen: GenerationConfig,
    k: int = 1,
    generator: torch.Generator | None = None,
    decoder: DecoderChoice = "auto",
) -> Responses:
    """Sample (or, with ``temperature=0``, greedily decode) up to ``gen.max_new_tokens`` per prompt.

    With ``k`` > 1 each prompt is encoded once and its KV cache repeated for its samples; the rows of the result
    are prompt 0's samples, then prompt 1's, and so on. Under several processes each generates the samples of
    its share of the prompts and every process gets all of them back (``reftkit.runtime.distributed``); the
    samples are the ones one process would draw, up to rounding.
    """
    if world()[1] == 1:
        return _generate_rows(model, prompts, gen, k, generator, decoder)
    n = prompts.ids.size(0)
    mine = owned(n)
    rows = [j * k + s for j in mine for s in range(k)]
    local = None
    if mine:
        batch = Batch(prompts.ids[mine], prompts.mask[mine])
        local = _generate_rows(model, batch, gen, k, generator, decoder, noise_rows=(rows, n * k))
    steps = local.ids.size(1) if local is not None else 0
    width = reduce_max(steps)
    if gen.temperature > 0:  # draw what the longer shares drew, so every generator stays in step
        device = next(model.parameters()).device
        for _ in range(width - steps):
            _exponential_noise(n * k, model.get_output_embeddings().out_features, device, generator)
    return _gather_responses(local, n, k, width, gen.pad_id)


def _gather_responses(local: Responses | None, n: int, k: int, width: int, pad_id: int) -> Responses:
    """Every process's responses in global row order, right-padded to ``width`` tokens."""
    per_prompt = []
    if local is not None:
        pad = width - local.ids.size(1)
        fields = [
            torch.nn.functional.pad(local.ids, (0, pad), value=pad_id),
            torch.nn.functional.pad(local.mask, (0, pad)),
            local.truncated,
            None if local.logprobs is None else torch.nn.functional.pad(local.logprobs, (0, pad)),
        ]
        fields = [None if f is None else f.cpu() for f in fields]
        per_prompt = [tuple(None if f is None else f[j : j + k] for f in fields) for j in range(0, len(local.ids), k)]
    rows = gather_rows(per_prompt, n)
    device = local.ids.device if local is not None else torch.device("cpu")
    ids, mask, truncated, logprobs = (
        None if rows[0][i] is None else torch.cat([r[i] for r in rows]).to(device) for i in range(4)
    )
    return Responses(ids=ids, mask=mask, truncated=truncated, logprobs=logprobs)


@torch.no_grad()
def _generate_rows(
    model: PreTrainedModel,
    prompts: Batch,
    gen: GenerationConfig,
    k: int,
    generator: torch.Generator | None,
    decoder: DecoderChoice,
    noise_rows: tuple[list[int], int] | None = None,
) -> Responses:
    """``generate`` in this process; ``noise_rows`` places its rows in the global batch (see ``_pick``).

    Finished rows stay in the decoder's batch until they are an eighth of it, then they are dropped, so rows
    that ended early stop costing compute; every step still draws the noise of the whole global batch.
    """
    device = next(model.parameters()).device
    steps = make_decoder(model, decoder)
    logits = steps.start(prompts.ids.to(device), prompts.mask.to(device), k, gen.max_new_tokens)
    batch = logits.size(0)
    global_rows, total = noise_rows if noise_rows is not None else (list(range(batch)), batch)
    global_rows = torch.tensor(global_rows, device=device)
    ids = torch.full((batch, gen.max_new_tokens), gen.pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((batch, gen.max_new_tokens), device=device)
    logprobs = torch.zeros((batch, gen.max_new_tokens), device=device) if gen.return_logprobs else None
    ended = torch.zeros(batch, dtype=torch.bool, device=device)
    held = torch.arange(batch, device=device)  # the rows in the decoder's batch, by their index in the result
    ended_held = 0  # how many of them have ended: while none has, no [rows, vocab] logits are copied
    for t in range(gen.max_new_tokens):
        live = ~ended[held]
        rows, live_logits = (held, logits) if ended_held == 0 else (held[live], logits[live])
        token = _pick(live_logits, gen.temperature, gen.top_k, gen.top_p, generator, global_rows[rows], total)
        ids[rows, t] = token
        mask[rows, t] = 1.0
        if logprobs is not None:
            warped = warp_logits(live_logits, gen.temperature or 1.0, gen.top_k, gen.top_p)
            logprobs[rows, t] = warped.log_softmax(-1).gather(-1, token[:, None]).squeeze(-1)
        ended[rows] = token == gen.eos_id
        width = t + 1
        ended_held = int(ended[held].sum())
        if ended_held == held.numel():  # rows leave the decoder's batch only once ended: every row has ended
            break
        if t + 1 < gen.max_new_tokens:
            step_tokens = torch.full_like(held, gen.pad_id)
            step_tokens[live] = token
            if steps.can_drop and 8 * ended_held >= held.numel():
                keep = (~ended[held]).nonzero().squeeze(1)
                steps.keep(keep)
                held, step_tokens, ended_held = held[keep], step_tokens[keep], 0
            logits = steps.step(step_tokens)
    return Responses(
        ids=ids[:, :width],
        mask=mask[:, :width],
        truncated=~ended,
        logprobs=None if logprobs is None else logprobs[:, :width],
    )


def decode_responses(tokenizer: PreTrainedTokenizerBase, responses: Responses) -> list[str]:
    """Text of each response without EOS and padding."""
    texts = []
    for ids, mask in zip(responses.ids.tolist(), responses.mask.tolist(), strict=True):
        kept = [t for t, m in zip(ids, mask, strict=True) if m and t != tokenizer.eos_token_id]
        texts.append(tokenizer.decode(kept, skip_special_tokens=False))
    return texts
