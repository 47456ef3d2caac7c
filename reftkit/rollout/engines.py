"""Which engine samples (``make_engine``, from ``reft.rollout_backend``), and sampling a list of problems with one.

The engines (each a ``reftkit.rollout.base.RolloutEngine``):

* ``auto``, ``hf``, ``lean``: ``DecoderEngine`` (``reftkit.rollout.generate``), the sampling loop in this process
  over a KV-cached decoder: the model's HF forward or the lean Llama-family one (``reftkit.rollout.lean``);
  ``auto`` takes the lean one where the model allows it.
* ``vllm``: ``VLLMEngine`` (``reftkit.rollout.vllm_engine``), vLLM in this process on a CUDA GPU, started from a
  model directory and handed the policy's weights before every rollout.

Evaluation and sample files always decode with ``auto`` unless handed another engine; training rollouts use
``reft.rollout_backend``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reftkit.data.base import CoT, Problem, prompt_text
from reftkit.rollout.base import GenerationConfig, Responses, RolloutEngine
from reftkit.rollout.generate import DecoderEngine, encode_prompts, left_pad
from reftkit.rollout.vllm_engine import VLLMEngine

RolloutBackend = Literal["auto", "hf", "lean", "vllm"]


def make_engine(backend: RolloutBackend = "auto", model_dir: Path | None = None) -> RolloutEngine:
    """The engine of ``backend``; vLLM starts from ``model_dir`` (the model it samples at first)."""
    if backend == "vllm":
        if model_dir is None:
            raise ValueError("the vLLM engine starts from a model directory")
        return VLLMEngine(model_dir)
    return DecoderEngine(backend)


def generate_by_length(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    cot: CoT,
    batch_size: int,
    gen: GenerationConfig,
    k: int = 1,
    generator: torch.Generator | None = None,
    desc: str | None = None,
    engine: RolloutEngine | None = None,
) -> Iterator[tuple[list[int], Responses]]:
    """``k`` samples of each problem's prompt in batches of ``batch_size`` prompts of similar length (so little
    padding is computed): yields (problem indices, responses). The model is in eval mode meanwhile; ``engine``
    samples (None: ``make_engine("auto")``)."""
    engine = engine or make_engine("auto")
    prompts = encode_prompts(tokenizer, [prompt_text(p, cot) for p in problems])
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None):
            rows = order[start : start + batch_size]
            batch = left_pad([prompts[i] for i in rows], gen.pad_id)
            yield rows, engine.generate(model, batch, gen, k, generator)
    finally:
        model.train(was_training)
