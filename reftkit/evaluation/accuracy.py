"""Evaluation: greedy accuracy (what checkpoints are selected by and reported with), and the inference-time
metrics of sampled chains (REFERENCE.md B): majority vote@k, unbiased pass@k and reward-model rerank@k."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reftkit.config.schema import EvalConfig
from reftkit.data.base import AnswerType, CoT, Problem
from reftkit.evaluation.sampling import Sample
from reftkit.reward.answers import Graded, frac_correct_chain_disagrees, grade_batch, outcome_counts
from reftkit.rollout.base import GenerationConfig, RolloutEngine, generation_config
from reftkit.rollout.engines import generate_by_length
from reftkit.rollout.generate import decode_responses


@dataclass
class EvalResult:
    accuracy: float
    counts: dict[str, int]
    mean_length: float
    completions: list[str]
    graded: list[Graded]
    frac_correct_chain_disagrees: float | None = None  # MCQ only: right letter after a chain that disagrees


def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    cot: CoT,
    gen: GenerationConfig,
    batch_size: int,
    desc: str | None = None,
    engine: RolloutEngine | None = None,
) -> tuple[list[str], list[int]]:
    """Completions of greedy ``gen`` (no random draws) and their token lengths, in input order; batches are sorted
    by prompt length."""
    texts: list[str] = [""] * len(problems)
    lengths: list[int] = [0] * len(problems)
    batches = generate_by_length(model, tokenizer, problems, cot, batch_size, gen, desc=desc, engine=engine)
    for rows, responses in batches:
        for row, text, length in zip(
            rows, decode_responses(tokenizer, responses), responses.mask.sum(1).tolist(), strict=True
        ):
            texts[row] = text
            lengths[row] = int(length)
    return texts, lengths


def evaluate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    cot: CoT,
    settings: EvalConfig,
    desc: str | None = None,
    answer_type: AnswerType = "numeric",
    engine: RolloutEngine | None = None,
) -> EvalResult:
    """Greedy accuracy (and outcome counts, mean length, completions) of ``model`` on ``problems``; ``engine``
    decodes (None: ``make_engine("auto")``)."""
    gen = generation_config(settings, tokenizer)
    texts, lengths = sample_completions(model, tokenizer, problems, cot, gen, settings.batch_size, desc, engine)
    graded = grade_batch(problems, texts, cot, answer_type, timeout=settings.program_timeout)
    counts = outcome_counts(graded)
    hacking = frac_correct_chain_disagrees(graded, texts, [p.question for p in problems], answer_type)
    return EvalResult(
        accuracy=counts["correct"] / max(len(problems), 1),
        counts=counts,
        mean_length=sum(lengths) / max(len(lengths), 1),
        completions=texts,
        graded=graded,
        frac_correct_chain_disagrees=hacking,
    )


# ---- sampled chains: voting, pass@k, reranking ----


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): P(at least one of k samples drawn without replacement from n,
    of which c are correct, is correct) = 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(answers: Sequence[float | str | None]) -> float | str | None:
    """The most frequent answer; None (no answer) never votes, and None is returned when nobody voted.

    Tie rule: among the answers with the most votes, the one that occurs first in ``answers`` wins
    (as the reference's ``Counter.most_common``), so the result depends only on sample order.
    """
    counts: dict[float | str, int] = {}
    for answer in answers:
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1  # dicts keep first-seen order
    if not counts:
        return None
    top = max(counts.values())
    return next(answer for answer, count in counts.items() if count == top)


def vote_is_correct(samples: Sequence[Sample]) -> bool:
    """Whether the majority answer of these samples is right; no valid answer at all counts as wrong."""
    winner = majority_vote([s.answer for s in samples])
    return winner is not None and next(s for s in samples if s.answer == winner).correct


def rerank_pick(samples: Sequence[Sample]) -> Sample | None:
    """Best-of-N: the sample with a valid answer and the highest reward-model score (first one on ties)."""
    best = None
    for s in samples:
        if s.answer is None:
            continue
        if s.score is None:
            raise ValueError(f"sample {s.sample} of question {s.id} has no reward-model score")
        if best is None or s.score > best.score:  # type: ignore[operator]
            best = s
    return best


def ks_up_to(n: int) -> list[int]:
    """1, 2, 4, ... and n itself: the k of the accuracy-against-k curves."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i < n]
    return [*ks, n]


def inference_curves(
    groups: dict[str, list[Sample]], draws: int = 20, seed: int = 0, rerank: bool = False
) -> dict[str, list[float] | list[int]]:
    """vote@k, pass@k (and rerank@k) for k in ``ks_up_to(n)``, as fractions of the questions.

    pass@k is the exact unbiased estimate. vote@k and rerank@k for k < n are averaged over ``draws``
    random k-subsets of each question's samples (seeded; the same subsets for both); at k = n they use
    every sample. Every question must have the same number of samples n.
    """
    sizes = {len(group) for group in groups.values()}
    if len(sizes) != 1:
        raise ValueError(f"every question needs the same number of samples, got sizes {sorted(sizes)}")
    n = sizes.pop()
    ks = ks_up_to(n)
    rng = random.Random(seed)
    curves: dict[str, list] = {"k": ks, "vote": [], "pass": [], **({"rerank": []} if rerank else {})}
    for k in ks:
        passed = voted = reranked = 0.0
        rounds = 1 if k == n else draws
        for group in groups.values():
            passed += pass_at_k(n, sum(s.correct for s in group), k)
            for _ in range(rounds):
                subset = group if k == n else [group[i] for i in sorted(rng.sample(range(n), k))]
                voted += vote_is_correct(subset) / rounds
                if rerank:
                    pick = rerank_pick(subset)
                    reranked += (pick is not None and pick.correct) / rounds
        curves["pass"].append(passed / len(groups))
        curves["vote"].append(voted / len(groups))
        if rerank:
            curves["rerank"].append(reranked / len(groups))
    return curves
