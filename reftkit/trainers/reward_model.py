"""Outcome reward model (ORM) for best-of-N reranking of sampled chains of thought (REFERENCE.md B).

Voting needs several samples to agree; a reranker can pick a lone correct chain. As in the paper the
ORM is trained on the warm-up model's own samples of *training* questions (deduplicated per question,
labelled by correctness), initialised from the causal-LM checkpoint with a fresh 2-class head on the
last real token, and at test time picks, among candidates with a valid answer, the highest P(correct).
Inputs are the prompt plus the completion without EOS, cut from the left so the completion survives.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from reftkit.config.schema import ConfigError, RewardModelConfig
from reftkit.data.base import CoT, Problem, prompt_text
from reftkit.evaluation.accuracy import inference_curves
from reftkit.evaluation.sampling import Sample, by_question
from reftkit.models.loading import load_tokenizer
from reftkit.models.policy import position_ids_from_mask
from reftkit.rollout.generate import encode_prompts, left_pad
from reftkit.runtime.interrupt import stop_after_step
from reftkit.trainers.checkpoints import StageCheckpoints
from reftkit.trainers.common import MetricsLog, NonFiniteGuard, split_rows
from reftkit.trainers.sft import adamw_with_schedule, epoch_batches, save_model, step_on_parts


def _text(problems: dict[str, Problem], sample: Sample, cot: CoT) -> str:
    problem = problems.get(sample.id)
    if problem is None:
        raise ConfigError(f"sample of question {sample.id!r}: no such question among the {len(problems)} given")
    return prompt_text(problem, cot) + sample.completion


def rm_examples(problems: dict[str, Problem], samples: Sequence[Sample], cot: CoT) -> list[tuple[str, int]]:
    """(prompt + completion, 1 if correct else 0) per distinct completion of each question (first one kept)."""
    seen: set[tuple[str, str]] = set()
    examples = []
    for sample in samples:
        text = _text(problems, sample, cot)
        if (sample.id, sample.completion) in seen:
            continue
        seen.add((sample.id, sample.completion))
        examples.append((text, int(sample.correct)))
    return examples


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids with the tokenizer's leading special tokens (e.g. BOS), cut from the left to ``max_length``."""
    prefix = encode_prompts(tokenizer, [""])[0]
    out = []
    for ids in encode_prompts(tokenizer, texts):
        if len(ids) > max_length:
            keep = prefix if ids[: len(prefix)] == prefix and len(prefix) < max_length else []
            ids = keep + ids[len(ids) - (max_length - len(keep)) :]
        out.append(ids)
    return out


def _logits(model: PreTrainedModel, batch: list[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Class logits [B, 2] (float32) of left-padded rows; HF pools the last non-pad token, here the last one."""
    padded = left_pad(batch, pad_id)
    ids, mask = padded.ids.to(device), padded.mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    return out.logits.float()


def score_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: dict[str, Problem],
    samples: Sequence[Sample],
    cot: CoT,
    batch_size: int = 64,
    max_length: int = 512,
) -> list[float]:
    """P(correct) of each sample, in input order; batches are sorted by length to pad less."""
    encoded = encode_texts(tokenizer, [_text(problems, s, cot) for s in samples], max_length)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    scores = [0.0] * len(encoded)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            logits = _logits(model, [encoded[i] for i in rows], tokenizer.pad_token_id, device)
            for row, p in zip(rows, logits.softmax(-1)[:, 1].tolist(), strict=True):
                scores[row] = p
    model.train(was_training)
    return scores


def with_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: dict[str, Problem],
    samples: Sequence[Sample],
    cot: CoT,
    batch_size: int = 64,
    max_length: int = 512,
) -> list[Sample]:
    """Copies of ``samples`` with ``score`` = the reward model's P(correct): what reranking reads."""
    scores = score_samples(model, tokenizer, problems, samples, cot, batch_size, max_length)
    return [replace(s, score=p) for s, p in zip(samples, scores, strict=True)]


def load_reward_model(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved reward model and its tokenizer; ConfigError if ``path`` holds no model."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: no reward model there (no config.json); train one with rm.enabled")
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _loss_parts(
    model: torch.nn.Module,
    rows: list[list[int]],
    y: torch.Tensor,
    pad_id: int,
    accelerator: Accelerator,
    parts: int,
    predicted: list[torch.Tensor],
) -> Iterator[torch.Tensor]:
    """The batch's mean cross-entropy in ``parts`` shares (each its rows' sum over the batch size), for gradient
    accumulation; each share's predicted labels are appended to ``predicted``."""
    for chunk in split_rows(list(range(len(rows))), parts):
        with accelerator.autocast():
            logits = _logits(model, [rows[j] for j in chunk], pad_id, accelerator.device)
            if len(chunk) == len(rows):
                yield torch.nn.functional.cross_entropy(logits, y)
            else:
                yield torch.nn.functional.cross_entropy(logits, y[chunk], reduction="sum") / len(rows)
        predicted.append(logits.detach().argmax(-1))


def train_reward_model(
    init_dir: Path,
    examples: list[tuple[str, int]],
    cfg: RewardModelConfig,
    out_dir: Path,
    log: MetricsLog,
    accelerator: Accelerator,
    seed: int,
    val: tuple[dict[str, Problem], list[Sample]] | None = None,
    cot: CoT = "python",
    checkpoints: StageCheckpoints | None = None,
    max_nonfinite_in_row: int = 10,
) -> dict[str, Any]:
    """Fine-tune a 2-class classifier from ``init_dir`` on (text, label); save the best-on-val (else last) epoch.

    Validation is rerank accuracy at full N on ``val``'s samples (every question needs the same N). With
    ``checkpoints`` (inside ``reftkit run``) the training state is saved as it goes and a resumed run continues.
    """
    if checkpoints is not None and (done := checkpoints.finished()) is not None:
        return done
    labels = sorted({label for _, label in examples})
    if labels != [0, 1]:
        raise ConfigError(
            f"reward model: the {len(examples)} training samples have labels {labels}; a reranker needs both "
            "correct and wrong samples (sample more per question, or use a stronger warm-up)"
        )
    model, tokenizer = _fresh_classifier(init_dir, seed)
    encoded = encode_texts(tokenizer, [text for text, _ in examples], cfg.max_length)
    targets = [label for _, label in examples]

    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    optimizer, scheduler = adamw_with_schedule(model.parameters(), cfg, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    order_rng = torch.Generator().manual_seed(seed)

    guard = NonFiniteGuard(max_nonfinite_in_row, log, "rm")
    best, best_epoch, step = -1.0, -1, 0
    if checkpoints is not None and (resumed := checkpoints.load(model, optimizer, scheduler, {})) is not None:
        step, counters = resumed
        best, best_epoch = counters["best"], counters["best_epoch"]
        guard.restore(counters["guard"])
    bar = tqdm(total=total_steps, initial=step, desc="rm", unit="step", dynamic_ncols=True)
    model.train()
    with stop_after_step() if checkpoints is not None else nullcontext():  # Ctrl-C: see stop_after_step
        for epoch, batch, ends_epoch in epoch_batches(len(encoded), cfg.batch_size, order_rng, cfg.epochs, step):
            y = torch.tensor([targets[j] for j in batch], device=accelerator.device)
            predicted: list[torch.Tensor] = []
            rows = [encoded[j] for j in batch]
            parts = _loss_parts(model, rows, y, tokenizer.pad_token_id, accelerator, cfg.grad_accum_steps, predicted)
            step = guard.step = step + 1
            loss, grad_norm = step_on_parts(accelerator, parts, model, optimizer, scheduler, cfg.grad_clip, guard)
            acc = (torch.cat(predicted) == y).float().mean().item()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
            log.write("rm", step, epoch=step / steps_per_epoch, loss=loss.item(), acc=acc, grad_norm=grad_norm,
                      lr=scheduler.get_last_lr()[0])  # fmt: skip
            if ends_epoch:
                best, best_epoch = _end_epoch(
                    epoch, step, (best, best_epoch), accelerator.unwrap_model(model), tokenizer, cfg, out_dir, log,
                    accelerator, val, cot,
                )  # fmt: skip
                model.train()
            if checkpoints is not None and checkpoints.due(step):
                counters = {"best": best, "best_epoch": best_epoch, "guard": guard.state()}
                checkpoints.save(step, model, optimizer, scheduler, {}, counters)
    bar.close()
    result = {
        "dir": str(out_dir),
        "best_epoch": best_epoch,
        "val_rerank_acc": best if val is not None else None,
        "examples": len(examples),
        "positives": sum(targets),
    }
    if checkpoints is not None:
        checkpoints.finish(result)
    return result


def _fresh_classifier(init_dir: Path, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The causal LM of ``init_dir`` with a fresh 2-class head (drawn from ``seed``), and its tokenizer."""
    tokenizer = load_tokenizer(init_dir)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the fresh classification head
        model = AutoModelForSequenceClassification.from_pretrained(init_dir, num_labels=2, dtype=torch.float32)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _end_epoch(
    epoch: int,
    step: int,
    best: tuple[float, int],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: RewardModelConfig,
    out_dir: Path,
    log: MetricsLog,
    accelerator: Accelerator,
    val: tuple[dict[str, Problem], list[Sample]] | None,
    cot: CoT,
) -> tuple[float, int]:
    """Validate (rerank accuracy) and keep the model if it is the best so far; without ``val``, keep the last
    epoch. Returns the new (best accuracy, best epoch)."""
    if val is None:
        if epoch == cfg.epochs:
            save_model(accelerator, model, tokenizer, out_dir)
            return best[0], epoch
        return best
    problems, samples = val
    with accelerator.autocast():
        scored = with_scores(model, tokenizer, problems, samples, cot, cfg.batch_size, cfg.max_length)
    curves = inference_curves(by_question(scored), rerank=True)
    rerank_acc, vote_acc = curves["rerank"][-1], curves["vote"][-1]
    log.write("rm_eval", step, epoch=epoch, val_rerank_acc=rerank_acc, val_vote_acc=vote_acc)
    if rerank_acc > best[0]:
        save_model(accelerator, model, tokenizer, out_dir)
        return rerank_acc, epoch
    return best
