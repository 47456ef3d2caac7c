"""The micro pipeline with each memory option on: LoRA, gradient checkpointing, the reference on the CPU or as
the LoRA policy with its adapters off, and a LoRA run interrupted twice and resumed.

An untrained micro model writes no program that runs, so every reward would be 0 and PPO would never move
the weights; here ReFT's grader is replaced by one that pays for responses of even length, so the PPO steps
have real advantages, KL and gradients. Validation and test grading are the real ones.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.utils.checkpoint
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaModel

import reftkit.trainers.stepwise as stepwise
from reftkit.config.loading import load_config
from reftkit.pipeline import run_pipeline
from reftkit.reward.answers import Graded, Outcome
from reftkit.trainers.checkpoints import StageCheckpoints

pytestmark = pytest.mark.integration

COMMON = ["checkpoint.every_steps=1"]  # every step checkpointed, so the LoRA run is also the resume reference
LORA = ["model.lora.enabled=true", "model.lora.r=4"]
RUNS = {
    "plain": [],
    "checkpointing": ["model.gradient_checkpointing=true"],
    "ref_cpu": ["reft.ref_device=cpu"],
    "lora": LORA,
    "lora_off": [*LORA, "reft.ref_model=lora_off"],
}
TIMING = {"wall_seconds", "stage_seconds", "command", "val_curves"}
CHECKPOINTS = ("base", "warmup", "sft", "sft_last", "reft", "reft_last")


def even_length_reward(problems, completions, *args, **kwargs):
    return [
        Graded(Outcome.CORRECT, None, 1.0) if len(text) % 2 == 0 else Graded(Outcome.WRONG, None, 0.1)
        for text in completions
    ]


class Interrupted(Exception):
    pass


def run(out: Path, overrides: list[str], resume: bool = False, stop_after: tuple[str, int] | None = None):
    """``reftkit run --preset micro`` in this process; returns how many decoder-layer checkpoints ran in train
    mode (SFT) and in eval mode (ReFT's PPO update). ``stop_after`` (stage, step) raises once that checkpoint
    is written, as a crash right after it."""
    calls = {True: 0, False: 0}
    real_checkpoint, real_save = torch.utils.checkpoint.checkpoint, StageCheckpoints.save
    real_forward = LlamaModel.forward
    forwards = {"eval": 0}  # model forwards with gradients in eval mode (PPO's loss: 1 or 2 a minibatch, see below)

    def counting_checkpoint(function, layer, *args, **kwargs):
        calls[layer.training] += 1
        return real_checkpoint(function, layer, *args, **kwargs)

    def counting_forward(self, *args, **kwargs):
        forwards["eval"] += torch.is_grad_enabled() and not self.training
        return real_forward(self, *args, **kwargs)

    def save(self, step, *args, **kwargs):
        real_save(self, step, *args, **kwargs)
        if (self.dir.name, step) == stop_after:
            raise Interrupted

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stepwise, "grade_batch", even_length_reward)
        patch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
        patch.setattr(LlamaModel, "forward", counting_forward)
        patch.setattr(StageCheckpoints, "save", save)
        config = load_config("micro", None, [*COMMON, *overrides])
        run_pipeline(config, out, overwrite=not resume, resume=resume, command="pytest memory options")
    return {"train": calls[True], "eval": calls[False], "eval_forwards": forwards["eval"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    done: dict[str, tuple[Path, dict[str, int]]] = {}

    def get(name: str) -> tuple[Path, dict[str, int]]:
        if name not in done:
            out = tmp_path_factory.mktemp(name) / "run"
            done[name] = (out, run(out, RUNS[name]))
        return done[name]

    return get


def records(out: Path, stage: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k not in ("wall", "step_seconds")} for r in rows]
    return [r for r in rows if stage is None or r["stage"] == stage]


def digests(out: Path) -> dict[str, str]:
    files = sorted(p for p in (out / "checkpoints").rglob("*") if p.is_file())
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_same_run(a: Path, b: Path) -> None:
    """Every metric record, every checkpoint file and the summary (clock readings aside) bit for bit."""
    assert records(a) == records(b)
    assert digests(a) == digests(b)
    sa, sb = (json.loads((out / "summary.json").read_text()) for out in (a, b))
    assert {k: v for k, v in sa.items() if k not in TIMING} == {k: v for k, v in sb.items() if k not in TIMING}


def weights(out: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoints" / name / "model.safetensors")


def test_plain_run_has_a_ppo_signal_and_no_checkpointing(runs):
    out, calls = runs("plain")
    reft = records(out, "reft")
    assert len(reft) == 3 and all(r["grad_norm"] > 0 for r in reft)  # the test's reward gives PPO work to do
    assert any(r["kl"] != 0 for r in reft[1:])
    assert (calls["train"], calls["eval"]) == (0, 0)


def test_lora_run_writes_plain_models_trained_through_the_adapters_only(runs):
    out, _ = runs("lora")
    for name in CHECKPOINTS:
        folder = out / "checkpoints" / name
        assert not (folder / "adapter_config.json").exists()
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.config.model_type == "llama" and not any("lora" in k for k in model.state_dict())
    # LoRA targets every linear layer but the output layer: embeddings and norms never move (SFT nor PPO),
    # the projections do (merged adapters), in SFT from the base and in PPO from the warm-up
    for before, after in (("base", "sft_last"), ("warmup", "reft_last")):
        w0, w1 = weights(out, before), weights(out, after)
        assert w0.keys() == w1.keys()
        frozen = [k for k in w0 if "proj" not in k]
        adapted = [k for k in w0 if "proj" in k]
        assert any("embed_tokens" in k for k in frozen) and any("norm" in k for k in frozen)
        assert all(torch.equal(w0[k], w1[k]) for k in frozen), (before, after)
        assert all(not torch.equal(w0[k], w1[k]) for k in adapted), (before, after)
    head = load_file(out / "checkpoints" / "reft_last" / "value_head.safetensors")
    assert head["weight"].abs().sum() > 0  # the value head (in full) trained from its zero start
    reft = records(out, "reft")
    assert len(reft) == 3 and all(r["grad_norm"] > 0 for r in reft) and any(r["kl"] != 0 for r in reft[1:])
    summary = json.loads((out / "summary.json").read_text())
    assert {"warmup", "sft", "reft"} <= set(summary)


def test_gradient_checkpointing_runs_in_sft_and_the_eval_mode_ppo_update_and_changes_nothing(runs):
    out, calls = runs("checkpointing")
    config = load_config("micro")
    layers, reft = config.model.tiny.num_layers, config.reft
    sft_steps = math.ceil(config.task.n_train / config.sft.batch_size) * (config.sft.warmup_epochs + config.sft.epochs)
    ppo_steps = math.ceil(config.task.n_train / reft.questions_per_step) * reft.epochs
    minibatches = math.ceil(reft.questions_per_step * reft.samples_per_question / reft.minibatch_size)
    # every decoder layer of every forward pass with gradients, and none under no_grad (sampling, scoring); a PPO
    # minibatch whose rows share a prompt is two forwards (the distinct prompts, then the responses on their cache)
    updates = ppo_steps * reft.ppo_epochs * minibatches
    assert updates <= calls["eval_forwards"] <= 2 * updates
    assert (calls["train"], calls["eval"]) == (layers * sft_steps, layers * calls["eval_forwards"])
    assert_same_run(out, runs("plain")[0])  # recomputation is exact: the same run, bit for bit


def test_reference_on_cpu(runs):
    out, _ = runs("ref_cpu")
    reft = records(out, "reft")
    assert len(reft) == 3 and any(r["kl"] != 0 for r in reft[1:])
    if not torch.cuda.is_available():  # on a CPU-only machine the reference was there already
        assert_same_run(out, runs("plain")[0])


def test_lora_off_reference_is_exactly_the_warmup_copy(runs):
    out, _ = runs("lora_off")
    assert any(r["kl"] != 0 for r in records(out, "reft")[1:])  # the reference is not the adapted policy
    assert_same_run(out, runs("lora")[0])  # ... but exactly the warm-up a copy would have been


def test_lora_run_interrupted_in_sft_and_in_ppo_resumes_exactly(runs, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        run(out, LORA, stop_after=("sft", 4))  # after the warm-up snapshot, inside continued SFT
    with pytest.raises(Interrupted):
        run(out, LORA, resume=True, stop_after=("reft", 2))
    assert not (out / "summary.json").exists()
    run(out, LORA, resume=True)
    assert_same_run(out, runs("lora")[0])
