"""SFT batches: a seeded random order, every example once per epoch."""

import torch

from reftkit.config.schema import ReFTConfig
from reftkit.trainers.common import question_batches
from reftkit.trainers.sft import epoch_batches, shuffled_batches


def test_shuffled_batches_cover_every_index_once() -> None:
    batches = shuffled_batches(70, 32, torch.Generator().manual_seed(1))
    assert [len(b) for b in batches] == [32, 32, 6]
    assert sorted(i for b in batches for i in b) == list(range(70))


def test_shuffled_batches_are_seeded_and_differ_between_epochs() -> None:
    gen = torch.Generator().manual_seed(3)
    first, second = shuffled_batches(40, 8, gen), shuffled_batches(40, 8, gen)
    assert first != second
    assert first == shuffled_batches(40, 8, torch.Generator().manual_seed(3))


def test_epoch_batches_resumed_after_done_continue_the_uninterrupted_order():
    whole = list(epoch_batches(20, 8, torch.Generator().manual_seed(4), epochs=3))
    assert [(e, last) for e, _, last in whole] == [(e, i == 2) for e in (1, 2, 3) for i in range(3)]
    assert list(epoch_batches(20, 8, torch.Generator().manual_seed(4), epochs=3, done=4)) == whole[4:]


def test_question_batches_resumed_after_done_continue_the_uninterrupted_order():
    cfg = ReFTConfig(epochs=3, questions_per_step=4)
    whole = list(question_batches(10, cfg, torch.Generator().manual_seed(2), total_steps=8))
    assert [step for step, _ in whole] == list(range(1, 9))  # capped by total_steps within epoch 3
    assert list(question_batches(10, cfg, torch.Generator().manual_seed(2), total_steps=8, done=5)) == whole[5:]
