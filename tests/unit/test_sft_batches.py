import math

import torch

from reftkit.trainers.sft import length_grouped_batches


def test_length_grouped_batches_cover_every_index_once_and_pad_less() -> None:
    lengths = torch.randint(10, 300, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = length_grouped_batches(lengths, 32, torch.Generator().manual_seed(1), group=8)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert len(batches) == math.ceil(1000 / 32) and all(len(b) <= 32 for b in batches)

    def padded(bs: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).tolist()
    plain = [shuffled[i : i + 32] for i in range(0, 1000, 32)]
    assert padded(batches) < 0.75 * padded(plain)  # grouped: far less padding than plain shuffled batches


def test_length_grouped_batches_are_seeded_and_differ_between_epochs() -> None:
    lengths = list(range(100))
    gen = torch.Generator().manual_seed(3)
    first, second = length_grouped_batches(lengths, 8, gen), length_grouped_batches(lengths, 8, gen)
    assert first != second
    assert first == length_grouped_batches(lengths, 8, torch.Generator().manual_seed(3))
