"""Rollouts with vLLM on a CUDA GPU (``reft.rollout_backend=vllm``), for models whose sampling dominates a step.

The engine lives in the training process beside the policy (vLLM's ``external_launcher`` executor, as TRL's
colocate mode), starts from the warm-up directory, and before every rollout receives the policy's current
weights (LoRA adapters merged) through the model's own ``load_weights``; its prefix cache is reset then, so
no stale KV is reused. Each rollout's vLLM seed is drawn from reftkit's sampling generator, so a resumed run
draws what the uninterrupted one drew. Needs ``pip install vllm`` (imported here only when an engine starts)
and one process per GPU; untested on the CPU-only machines reftkit is developed on (its tests skip there, and
the conversion of vLLM's outputs into ``Responses`` is tested without vLLM).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from reftkit.config.schema import ConfigError
from reftkit.models.trainable import is_lora, merged_state_dict
from reftkit.rollout.base import Batch, GenerationConfig, Responses
from reftkit.runtime.distributed import world


def vllm_unavailable() -> str | None:
    """Why ``rollout_backend=vllm`` cannot run here (None: it can)."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install vllm)"
    if not torch.cuda.is_available():
        return "vLLM rollouts need a CUDA GPU"
    if world()[1] > 1:
        return "vLLM rollouts run in one process (one GPU) for now"
    return None


class VLLMEngine:
    """A vLLM engine that samples the policy's rollouts; ``generate`` syncs the weights first."""

    def __init__(self, model_dir: str | Path, gpu_memory_utilization: float = 0.3) -> None:
        if (reason := vllm_unavailable()) is not None:
            raise ConfigError(f"reft.rollout_backend=vllm: {reason}; use auto, lean or hf")
        from vllm import LLM

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29513")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        self.llm = LLM(
            model=str(model_dir),
            dtype="bfloat16",
            gpu_memory_utilization=gpu_memory_utilization,
            distributed_executor_backend="external_launcher",
            enable_prefix_caching=True,
            seed=0,
        )

    def sync(self, lm: PreTrainedModel) -> None:
        """Push the policy's weights into the engine (merged, if LoRA) and drop cached prefixes."""
        state = merged_state_dict(lm) if is_lora(lm) else lm.state_dict()
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        engine_model.load_weights(state.items())
        self.llm.reset_prefix_cache()

    @torch.no_grad()
    def generate(
        self,
        model: PreTrainedModel,
        prompts: Batch,
        gen: GenerationConfig,
        k: int = 1,
        generator: torch.Generator | None = None,
    ) -> Responses:
        """``k`` samples of each prompt (rows grouped by prompt) with ``model``'s weights, as
        ``reftkit.rollout.generate.generate`` gives; vLLM keeps its own precision (no caller's autocast)."""
        from vllm import SamplingParams, TokensPrompt

        if gen.return_logprobs or generator is None:
            raise ValueError("the vLLM engine needs a generator (its seed) and returns no log-probs")
        with torch.autocast("cuda", enabled=False):
            self.sync(model)
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
            params = SamplingParams(
                n=k,
                temperature=gen.temperature,
                top_k=gen.top_k if gen.top_k > 0 else -1,
                top_p=gen.top_p,
                max_tokens=gen.max_new_tokens,
                stop_token_ids=[gen.eos_id],
                seed=seed,
            )
            requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompts.unpadded()]
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        device = next(model.parameters()).device
        return responses_from_outputs(outputs, gen.eos_id, gen.pad_id, device)


def responses_from_outputs(outputs: Sequence[Any], eos_id: int, pad_id: int, device: torch.device) -> Responses:
    """vLLM ``RequestOutput``s (each with ``outputs``: completions with ``token_ids`` and ``finish_reason``) as
    right-padded ``Responses``: every kept token up to and including EOS, an EOS added where vLLM stopped on
    it without returning it, and ``truncated`` where the sample hit the length limit."""
    rows: list[list[int]] = []
    truncated: list[bool] = []
    for request in outputs:
        for completion in request.outputs:
            tokens = list(completion.token_ids)
            stopped = completion.finish_reason == "stop"
            if eos_id in tokens:
                tokens = tokens[: tokens.index(eos_id) + 1]
            elif stopped:
                tokens.append(eos_id)
            rows.append(tokens)
            truncated.append(tokens[-1:] != [eos_id])
    width = max([1, *map(len, rows)])
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width))
    for i, tokens in enumerate(rows):
        ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[i, : len(tokens)] = 1.0
    return Responses(ids=ids.to(device), mask=mask.to(device), truncated=torch.tensor(truncated, device=device))
