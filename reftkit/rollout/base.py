"""What every rollout engine takes and gives: prompts (``Batch``), settings (``GenerationConfig``), samples
(``Responses``), and the ``RolloutEngine`` interface itself.

Prompts are left-padded and responses right-padded, so one row is ``[pad.. prompt | response .. pad]``. An
engine is anything with ``generate``; the ones reftkit has are listed in ``reftkit.rollout.engines``, which picks
one from ``reft.rollout_backend``. A new engine is one new module with a class of that shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reftkit.config.schema import EvalConfig, ReFTConfig, SampleConfig


@dataclass
class Batch:
    """Left-padded prompts: ``ids`` and ``mask`` are [B, P]."""

    ids: torch.Tensor
    mask: torch.Tensor

    def unpadded(self) -> list[list[int]]:
        """Each prompt's token ids without its padding (for engines that take prompts as lists)."""
        return [ids[mask.bool()].tolist() for ids, mask in zip(self.ids, self.mask, strict=True)]


@dataclass
class Responses:
    """Right-padded samples: ``ids`` [B, R] (pad after the end) and ``mask`` [B, R], 1.0 for every
    generated token up to and including EOS (all of them when the sample was cut at the length limit).
    ``truncated`` [B] is True where no EOS was produced."""

    ids: torch.Tensor
    mask: torch.Tensor
    truncated: torch.Tensor
    logprobs: torch.Tensor | None = None
    """[B, R] log-probability of each generated token under the distribution it was drawn from (``warp_logits``:
    temperature, top-k, top-p; the model's own at the defaults), 0 on padding; only with ``return_logprobs``."""


@dataclass(frozen=True)
class GenerationConfig:
    """How to sample, whichever engine samples: at most ``max_new_tokens`` per prompt, stopping at ``eos_id``
    (``pad_id`` fills the rest), drawn from the distribution ``temperature``, ``top_k`` and ``top_p`` make of the
    model's (``temperature=0``: greedy). ``return_logprobs``: each token's log-probability under that distribution
    comes back too (``Responses.logprobs``)."""

    max_new_tokens: int
    eos_id: int
    pad_id: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    return_logprobs: bool = False


class RolloutEngine(Protocol):
    """Samples ``k`` responses of each prompt of a batch with ``model``'s current weights."""

    def generate(
        self,
        model: PreTrainedModel,
        prompts: Batch,
        gen: GenerationConfig,
        k: int = 1,
        generator: torch.Generator | None = None,
    ) -> Responses:
        """Rows grouped by prompt (prompt 0's ``k`` samples, then prompt 1's, ...); every random draw comes from
        ``generator``, so a seeded generator gives the same samples again."""
        ...


def generation_config(
    section: ReFTConfig | SampleConfig | EvalConfig, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int = 0
) -> GenerationConfig:
    """The sampling a config section declares (``reft``, ``sample``, or ``eval``: greedy), with the tokenizer's
    EOS and pad. ``max_new_tokens`` stands in where the section leaves its own unset (``sample.max_new_tokens``
    None: ``eval.max_new_tokens``)."""
    limits = (section.max_new_tokens or max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
    if isinstance(section, EvalConfig):
        return GenerationConfig(*limits, temperature=0.0)
    return GenerationConfig(*limits, temperature=section.temperature, top_k=section.top_k, top_p=section.top_p)
