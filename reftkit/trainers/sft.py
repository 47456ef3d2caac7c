"""Supervised fine-tuning on (question, gold CoT): the warm-up and the continued-SFT baseline.

As in the reference (REFERENCE.md A.2) the warm-up is an early snapshot of one SFT run whose linear
schedule spans the whole run; the SFT baseline is the same run continued. The loss is the token-mean
cross-entropy over the CoT and EOS only. Checkpoints are chosen on validation, never on test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from reftkit.config.schema import RewardModelConfig, RunConfig, SFTConfig
from reftkit.data.base import CoT, Problem, TaskData, prompt_text, target_text
from reftkit.models.policy import forward_from
from reftkit.models.trainable import prepare_for_training, save_lm, trainable_parameters
from reftkit.rl.ppo import masked_mean, token_logprobs
from reftkit.rollout.generate import encode_prompts
from reftkit.runtime.distributed import owned, world
from reftkit.runtime.interrupt import stop_after_step
from reftkit.trainers.checkpoints import StageCheckpoints, result_from_json, result_to_json
from reftkit.trainers.common import (
    MetricsLog,
    NonFiniteGuard,
    adamw,
    apply_gradients,
    backward_parts,
    greedy_accuracy,
    split_rows,
    write_atomically,
)

IGNORE = -100


@dataclass
class SFTResult:
    warmup_dir: Path
    best_dir: Path
    last_dir: Path
    best_epoch: int
    val_history: dict[int, float] = field(default_factory=dict)


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase, problems: list[Problem], cot: CoT
) -> list[tuple[list[int], int]]:
    """(prompt + target + EOS ids, prompt length) per problem; the target gets no special tokens."""
    prompts = encode_prompts(tokenizer, [prompt_text(p, cot) for p in problems])
    targets = tokenizer([target_text(p, cot) for p in problems], add_special_tokens=False)["input_ids"]
    return [(p + t + [tokenizer.eos_token_id], len(p)) for p, t in zip(prompts, targets, strict=True)]


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and labels masked (-100) on prompt and padding."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (seq, n_prompt) in enumerate(examples):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
    return ids, mask, labels


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """A fresh random order of ``range(n)`` cut into batches; every index once per epoch.

    Plain random batches, not length-grouped ones: on the default task, batches of similar length (sorted
    within groups of 16 batches) reached 7.5% validation accuracy after 10 epochs where random batches reach
    52.5%, with the same seed, schedule and steps (measured; see docs/results-notes.md).
    """
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, epochs: int, done: int = 0
) -> Iterator[tuple[int, list[int], bool]]:
    """(epoch, batch, whether it ends its epoch) over ``epochs`` shuffled passes, from batch ``done`` on.

    The batches before ``done`` (trained before the checkpoint a run resumes from) are drawn and dropped, so
    the order from there on is exactly the uninterrupted run's: the order generator is replayed, never stored.
    """
    seen = 0
    for epoch in range(1, epochs + 1):
        batches = shuffled_batches(n, batch_size, generator)
        for i, batch in enumerate(batches):
            seen += 1
            if seen > done:
                yield epoch, batch, i == len(batches) - 1


def sft_loss(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of the target tokens: their mean, or (``reduction="sum"``) their sum.

    The LM head runs only from the first position that predicts a target on (prompts are a third to a half of an
    example), and the targets' log-probs come from ``ppo.token_logprobs`` (a chunked log-sum-exp): no float32
    [rows, length, vocabulary] log-softmax and its gradient, which took an eighth of a SmolLM2 SFT step."""
    targets = labels[:, 1:]
    first = int((targets != IGNORE).any(0).int().argmax())  # the earliest position any row predicts a target from
    logits, _ = forward_from(model, ids, mask, first, share_prefix=False, last=False)
    targets = targets[:, first:]
    counted = targets != IGNORE
    logp = token_logprobs(logits, targets.clamp(min=0))  # at ignored positions a stand-in token, left out below
    if reduction == "mean":
        return -masked_mean(logp, counted)
    return -torch.where(counted, logp, 0.0).sum()


def sft_loss_parts(
    model: torch.nn.Module,
    examples: list[tuple[list[int], int]],
    pad_id: int,
    accelerator: Accelerator,
    parts: int = 1,
    weight: float = 1.0,
) -> Iterator[torch.Tensor]:
    """``weight`` x the token-mean cross-entropy of a global batch of (ids, prompt length) examples, made in
    ``parts`` shares one after another (gradient accumulation: back-propagate each before the next is made).

    Each share is the sum of its tokens' losses over the batch's token count, so the shares add up to the batch's
    loss. Under several processes each computes its own rows' shares, times the number of processes, so that
    DDP's gradient average is the gradient of the one-process loss; ``accelerator.reduce(..., "mean")`` of the
    summed shares gives the batch's loss. One part in one process is the plain token mean.
    """
    size = world()[1]
    if size == 1 and parts == 1:
        ids, mask, labels = (t.to(accelerator.device) for t in collate(examples, pad_id))
        with accelerator.autocast():
            yield weight * sft_loss(model, ids, mask, labels)
        return
    mine = [examples[i] for i in owned(len(examples))]
    targets = sum(len(seq) - max(n_prompt, 1) for seq, n_prompt in examples)  # labels shift by one
    for chunk in split_rows(mine, parts) if mine else [examples[:1]]:
        ids, mask, labels = (t.to(accelerator.device) for t in collate(chunk, pad_id))
        with accelerator.autocast():
            total = sft_loss(model, ids, mask, labels, reduction="sum")
        yield total * (weight * size / targets if mine else 0.0)


def train_sft(
    config: RunConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: TaskData,
    out_dir: Path,
    log: MetricsLog,
    accelerator: Accelerator,
    name: str = "sft",
    epochs: int | None = None,
) -> SFTResult:
    """SFT on ``data.train``; keeps the best-on-validation epoch as ``checkpoints/<name>`` and the last.

    ``name="sft"`` is the warm-up run: ``warmup_epochs`` + continued epochs, a ``warmup`` snapshot, and
    selection among the epochs from the warm-up on. Any other name (offline self-training) trains
    ``epochs`` epochs and selects among all of them.
    """
    cfg = config.sft
    cot: CoT = config.task.cot
    stage = name.replace("-", "_")
    checkpoints = StageCheckpoints(out_dir, stage, config.checkpoint, log, accelerator)
    if (done := checkpoints.finished()) is not None:
        return result_from_json(SFTResult, done)
    warmup_epochs, total_epochs = _epoch_plan(config, name, epochs)
    examples = tokenize_examples(tokenizer, data.train, cot)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    model = prepare_for_training(model, config.model, config.seed)
    total_steps = total_epochs * steps_per_epoch
    optimizer, scheduler = adamw_with_schedule(trainable_parameters(model), cfg, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    order_rng = torch.Generator().manual_seed(config.seed)  # replayed from the seed on resume, never stored
    guard = NonFiniteGuard(config.checkpoint.max_nonfinite_in_row, log, stage)
    dirs = {key: out_dir / "checkpoints" / key for key in ("warmup", stage, f"{stage}_last")}
    epochs_so_far = _Epochs(SFTResult(dirs["warmup"], dirs[stage], dirs[f"{stage}_last"], best_epoch=-1))
    step = 0
    if (resumed := checkpoints.load(model, optimizer, scheduler, {})) is not None:
        step, counters = resumed
        epochs_so_far.restore(counters, guard)

    def end_epoch(epoch: int) -> None:
        """Validate, log, save the warm-up snapshot and any new best; back to train mode."""
        unwrapped = accelerator.unwrap_model(model)
        val = greedy_accuracy(unwrapped, tokenizer, data.val, config, data.answer_type, accelerator)
        train_loss = epochs_so_far.loss / steps_per_epoch
        log.write(f"{stage}_eval", step, epoch=epoch, val_acc=val.accuracy, val_length=val.mean_length,
                  train_loss=train_loss, **{f"val_{k}": v for k, v in val.counts.items()})  # fmt: skip
        bar.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", val_acc=f"{val.accuracy:.3f}")
        epochs_so_far.loss = 0.0
        if epoch == warmup_epochs:
            save_model(accelerator, unwrapped, tokenizer, dirs["warmup"])
        if epochs_so_far.record(epoch, val.accuracy, first=warmup_epochs or 1):
            save_model(accelerator, unwrapped, tokenizer, dirs[stage])
        model.train()  # validation put it in eval mode

    bar = tqdm(total=total_steps, initial=step, desc=name, unit="step", dynamic_ncols=True)
    model.train()
    with stop_after_step():  # Ctrl-C / SIGTERM: stop after this step, its checkpoint written
        for epoch, batch, ends_epoch in epoch_batches(len(examples), cfg.batch_size, order_rng, total_epochs, step):
            parts = sft_loss_parts(model, [examples[j] for j in batch], tokenizer.pad_token_id, accelerator,
                                   cfg.grad_accum_steps)  # fmt: skip
            step = guard.step = step + 1
            loss, grad_norm = step_on_parts(accelerator, parts, model, optimizer, scheduler, cfg.grad_clip, guard)
            batch_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
            epochs_so_far.loss += batch_loss
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{batch_loss:.3f}")
            log.write(stage, step, epoch=step / steps_per_epoch, loss=batch_loss, grad_norm=grad_norm,
                      lr=scheduler.get_last_lr()[0])  # fmt: skip
            if ends_epoch:
                end_epoch(epoch)
                if epochs_so_far.converged(epoch, cfg.patience, warmup_epochs or 1):
                    log.write(f"{stage}_stopped", step, epoch=epoch, reason=f"{cfg.patience} epochs, no better val")
                    break
            if checkpoints.due(step):
                checkpoints.save(step, model, optimizer, scheduler, {}, epochs_so_far.counters(guard))
    bar.close()
    save_model(accelerator, accelerator.unwrap_model(model), tokenizer, dirs[f"{stage}_last"])
    checkpoints.finish(result_to_json(epochs_so_far.result))
    return epochs_so_far.result


def _epoch_plan(config: RunConfig, name: str, epochs: int | None) -> tuple[int | None, int]:
    """(the warm-up's epoch or None, epochs in all): the warm-up run (``name="sft"``) trains ``sft.warmup_epochs``
    and then ``sft.epochs`` (default: ``reft.epochs``, the same budget as ReFT); any other run ``epochs``."""
    if name != "sft":
        if epochs is None:
            raise ValueError(f"train_sft({name!r}) needs epochs")
        return None, epochs
    cfg = config.sft
    return cfg.warmup_epochs, cfg.warmup_epochs + (cfg.epochs if cfg.epochs is not None else config.reft.epochs)


@dataclass
class _Epochs:
    """What the SFT loop carries from epoch to epoch (and a checkpoint keeps): the result being built (every
    epoch's validation accuracy, the best epoch), the best accuracy and the running loss of the epoch."""

    result: SFTResult
    best: float = -1.0
    loss: float = 0.0

    def record(self, epoch: int, accuracy: float, first: int) -> bool:
        """Note the epoch's accuracy; True when it is the new best (selectable from epoch ``first`` on)."""
        self.result.val_history[epoch] = accuracy
        if epoch >= first and accuracy > self.best:
            self.best, self.result.best_epoch = accuracy, epoch
            return True
        return False

    def converged(self, epoch: int, patience: int | None, first: int) -> bool:
        """``patience`` epochs from the warm-up on without a better validation accuracy than the best."""
        return patience is not None and epoch - max(self.result.best_epoch, first) >= patience

    def counters(self, guard: NonFiniteGuard) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.result.best_epoch, "epoch_loss": self.loss,
                "val_history": self.result.val_history, "guard": guard.state()}  # fmt: skip

    def restore(self, counters: dict[str, Any], guard: NonFiniteGuard) -> None:
        self.best, self.result.best_epoch, self.loss = counters["best"], counters["best_epoch"], counters["epoch_loss"]
        self.result.val_history = {int(k): v for k, v in counters["val_history"].items()}
        guard.restore(counters["guard"])


def adamw_with_schedule(
    params: Iterable[torch.nn.Parameter], cfg: SFTConfig | RewardModelConfig, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its linear schedule (warm-up over ``lr_warmup_ratio`` of ``total_steps``, then down to zero), as
    SFT and the reward model train."""
    optimizer = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.lr_warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def step_on_parts(
    accelerator: Accelerator,
    parts: Iterable[torch.Tensor],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float,
    guard: NonFiniteGuard,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch's loss made in ``parts`` (see :func:`backward_parts`): (the loss, detached;
    the gradient norm before clipping). The caller has set ``guard.step``."""
    loss = backward_parts(accelerator, parts)
    return loss, apply_gradients(accelerator, loss, model, optimizer, grad_clip, scheduler, guard, backward=False)


def save_model(
    accelerator: Accelerator, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path
) -> None:
    """An HF directory (weights + tokenizer), written atomically by the main process."""
    if accelerator.is_main_process:
        write_atomically(target, lambda tmp: (save_lm(model, tmp), tokenizer.save_pretrained(tmp)))
    accelerator.wait_for_everyone()
