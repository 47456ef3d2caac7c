"""N sampled chains of thought per question, graded once and written to a samples file.

One expensive sampling pass serves majority voting, pass@k, reward-model reranking and offline
self-training alike, so its output is a plain JSONL file (one row per sample) with a ``.meta.json``
beside it recording the model, split and sampling settings.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reftkit.config.schema import ConfigError, EvalConfig, SampleConfig
from reftkit.data.base import AnswerType, CoT, Problem
from reftkit.reward.answers import Outcome, grade_batch
from reftkit.rollout.base import RolloutEngine, generation_config
from reftkit.rollout.engines import generate_by_length
from reftkit.rollout.generate import decode_responses


@dataclass
class Sample:
    """One sampled completion of one question, graded.

    ``answer`` is the normalised extracted answer (what voting groups on; None: no valid answer).
    ``logprob`` is the sum of the completion's token log-probs under the model (temperature 1).
    ``score`` is a reward model's P(correct), filled in by reranking.
    """

    id: str
    sample: int
    completion: str
    answer: float | str | None
    outcome: str
    logprob: float
    length: int
    gold: str
    score: float | None = None

    @property
    def correct(self) -> bool:
        return self.outcome == Outcome.CORRECT


_FIELDS = {
    "id": str,
    "sample": int,
    "completion": str,
    "answer": (float, int, str, type(None)),
    "outcome": str,
    "logprob": (float, int),
    "length": int,
    "gold": str,
}


def sample_problems(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    cot: CoT,
    settings: SampleConfig,
    eval_settings: EvalConfig,
    n: int,
    seed: int,
    answer_type: AnswerType = "numeric",
    desc: str | None = None,
    engine: RolloutEngine | None = None,
) -> tuple[list[Sample], dict[str, float]]:
    """``n`` graded samples per problem (rows grouped by problem, in input order) and throughput figures.

    Batches hold ``settings.questions_per_batch`` prompts of similar length; each prompt is encoded once
    and its KV cache shared by its ``n`` samples. ``engine`` samples (None: ``make_engine("auto")``).
    """
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    gen = replace(generation_config(settings, tokenizer, eval_settings.max_new_tokens), return_logprobs=True)
    per_problem: list[list[tuple[str, float, int]]] = [[] for _ in problems]
    started = time.time()
    batches = generate_by_length(
        model, tokenizer, problems, cot, settings.questions_per_batch, gen, n, generator, desc, engine
    )
    for rows, responses in batches:
        texts = decode_responses(tokenizer, responses)
        logprobs = responses.logprobs.sum(1).tolist()  # type: ignore[union-attr]
        lengths = responses.mask.sum(1).tolist()
        for j, text in enumerate(texts):
            per_problem[rows[j // n]].append((text, logprobs[j], int(lengths[j])))
    generation_seconds = time.time() - started
    flat = [(p, t) for p, outs in zip(problems, per_problem, strict=True) for t in outs]
    graded = grade_batch(
        [p for p, _ in flat], [t[0] for _, t in flat], cot, answer_type, timeout=eval_settings.program_timeout
    )
    samples = [
        Sample(p.id, i % n, text, g.answer, g.outcome.value, round(logp, 4), length, p.answer)
        for i, ((p, (text, logp, length)), g) in enumerate(zip(flat, graded, strict=True))
    ]
    seconds = time.time() - started
    stats = {
        "samples": len(samples),
        "seconds": round(seconds, 1),
        "samples_per_second": round(len(samples) / max(seconds, 1e-9), 2),
        "generation_samples_per_second": round(len(samples) / max(generation_seconds, 1e-9), 2),
    }
    return samples, stats


def meta_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".jsonl") + ".meta.json")


def write_samples(path: Path, samples: Sequence[Sample], meta: dict[str, Any]) -> None:
    """The samples as JSONL plus ``<name>.meta.json``; each written to a temporary name and renamed."""
    write_text_atomically(path, "".join(json.dumps(_row(s)) + "\n" for s in samples))
    write_text_atomically(meta_path(path), json.dumps(meta, indent=2) + "\n")  # last: its presence means complete


def write_text_atomically(path: Path, text: str) -> None:
    """Write to a hidden temporary name beside ``path`` and rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _row(sample: Sample) -> dict[str, Any]:
    row = asdict(sample)
    if row["score"] is None:
        del row["score"]
    else:
        row["score"] = round(row["score"], 6)
    return row


def read_samples(path: Path) -> tuple[list[Sample], dict[str, Any]]:
    """Samples and metadata of a samples file; ConfigError naming the file, line and field of bad input."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such samples file")
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{number}: expected a JSON object")
        for name, kind in _FIELDS.items():
            if name not in row:
                raise ConfigError(f"{path}:{number}: field {name!r} is missing")
            if not isinstance(row[name], kind) or isinstance(row[name], bool):
                raise ConfigError(f"{path}:{number}: field {name!r} has the wrong type ({row[name]!r})")
        if row["outcome"] not in {o.value for o in Outcome}:
            raise ConfigError(f"{path}:{number}: field 'outcome': {row['outcome']!r} is not an outcome class")
        score = row.get("score")
        if score is not None and not (isinstance(score, int | float) and math.isfinite(score)):
            raise ConfigError(f"{path}:{number}: field 'score' is not a finite number ({score!r})")
        samples.append(Sample(**{k: row[k] for k in (*_FIELDS, "score") if k in row}))
    if not samples:
        raise ConfigError(f"{path}: holds no samples")
    meta = json.loads(meta_path(path).read_text()) if meta_path(path).is_file() else {}
    return samples, meta


def by_question(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """Samples grouped by question id, each group in sample order."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.id, []).append(s)
    return {qid: sorted(group, key=lambda s: s.sample) for qid, group in groups.items()}
