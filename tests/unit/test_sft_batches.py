"""SFT batches: a seeded random order, every example once per epoch."""

import torch

from reftkit.trainers.sft import shuffled_batches


def test_shuffled_batches_cover_every_index_once() -> None:
    batches = shuffled_batches(70, 32, torch.Generator().manual_seed(1))
    assert [len(b) for b in batches] == [32, 32, 6]
    assert sorted(i for b in batches for i in b) == list(range(70))


def test_shuffled_batches_are_seeded_and_differ_between_epochs() -> None:
    gen = torch.Generator().manual_seed(3)
    first, second = shuffled_batches(40, 8, gen), shuffled_batches(40, 8, gen)
    assert first != second
    assert first == shuffled_batches(40, 8, torch.Generator().manual_seed(3))
