"""The pieces that let several processes compute what one process computes (reftkit.runtime.distributed): sampling
that does not depend on how a batch is split, minibatch and loss shares that add up to the whole."""

from __future__ import annotations

import pytest
import torch

from reftkit.cli import launch
from reftkit.rl import ppo
from reftkit.rollout import generate as generate_module
from reftkit.rollout.generate import _pick
from reftkit.runtime import distributed
from reftkit.trainers import reft, sft
from reftkit.trainers.common import make_accelerator


def test_sampling_is_torch_multinomial_bit_for_bit():
    probs_logits = torch.randn(6, 50)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    expected = torch.multinomial(probs_logits.softmax(-1), 1, generator=g1).squeeze(-1)
    assert torch.equal(_pick(probs_logits, 1.0, 0, 1.0, g2, torch.arange(6), 6), expected)
    assert torch.equal(g1.get_state(), g2.get_state())  # the generators stay in step too


@pytest.mark.parametrize("seed", [0, 7])
def test_the_sampling_noise_is_exponential_bit_for_bit(seed):
    """The CPU fast path (float64 uniforms, vectorised log1p) draws exactly what ``exponential_`` draws, at a
    real vocabulary's size, and leaves the generator where ``exponential_`` leaves it."""
    assert generate_module._uniform_log1p_is_exponential()  # else the test below compares exponential_ with itself
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    for rows, vocab in [(16, 49153), (3, 50), (1, 2048)]:
        expected = torch.empty(rows, vocab).exponential_(1, generator=g1)
        drawn = generate_module._exponential_noise(rows, vocab, torch.device("cpu"), g2)
        assert drawn.dtype == torch.float32 and torch.equal(drawn, expected)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_sampling_at_a_real_vocabulary_is_torch_multinomial():
    logits = torch.randn(16, 49153) * 3
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        expected = torch.multinomial(logits.softmax(-1), 1, generator=g1).squeeze(-1)
        assert torch.equal(_pick(logits, 1.0, 0, 1.0, g2, torch.arange(16), 16), expected)


def test_a_share_of_the_rows_samples_what_the_whole_batch_samples():
    logits = torch.randn(8, 40)
    whole = _pick(logits, 0.7, 5, 0.9, torch.Generator().manual_seed(11), torch.arange(8), 8)
    for rank in range(2):
        rows = list(range(rank, 8, 2))
        share = _pick(logits[rows], 0.7, 5, 0.9, torch.Generator().manual_seed(11), torch.tensor(rows), 8)
        assert torch.equal(share, whole[rows])


def _as_process(monkeypatch: pytest.MonkeyPatch, rank: int, size: int) -> None:
    for module in (distributed, reft, sft):
        monkeypatch.setattr(module, "world", lambda: (rank, size))


def test_local_minibatches_cover_the_global_one(monkeypatch):
    rows_of = {0: [0, 2, 4, 6], 1: [1, 3, 5, 7]}
    global_mb = torch.tensor([5, 2, 7])
    _as_process(monkeypatch, 0, 2)
    mb, scale, n = reft._local_minibatch(global_mb, rows_of[0])
    assert mb.tolist() == [1] and scale == 2.0 and n == 3  # global row 2 is process 0's local row 1
    _as_process(monkeypatch, 1, 2)
    mb, scale, n = reft._local_minibatch(global_mb, rows_of[1])
    assert mb.tolist() == [2, 3] and scale == 2.0 and n == 3  # global rows 5, 7
    mb, scale, _ = reft._local_minibatch(torch.tensor([0, 2]), rows_of[1])  # none of process 1's rows
    assert scale == 0.0 and len(mb) == 1
    _as_process(monkeypatch, 0, 1)
    mb, scale, n = reft._local_minibatch(global_mb, list(range(8)))
    assert mb is global_mb and scale == 1.0 and n is None


def test_ppo_loss_shares_add_up_to_the_minibatch_loss():
    torch.manual_seed(0)
    logp, old, adv, values, returns = (torch.randn(6, 5) for _ in range(5))
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1.0
    whole_pg, _ = ppo.policy_loss(logp, old, adv, mask)
    whole_vf, _ = ppo.value_loss(values, old, returns, mask)
    pg = vf = 0.0
    for rows in ([0, 2, 4], [1, 3, 5]):  # each share divided by the minibatch's 6 sequences
        pg += ppo.policy_loss(logp[rows], old[rows], adv[rows], mask[rows], n_sequences=6)[0]
        vf += ppo.value_loss(values[rows], old[rows], returns[rows], mask[rows], n_sequences=6)[0]
    torch.testing.assert_close(pg, whole_pg)
    torch.testing.assert_close(vf, whole_vf)


def test_sft_loss_shares_average_to_the_one_process_loss(monkeypatch):
    torch.manual_seed(0)
    vocab = 11
    embed = torch.nn.Embedding(vocab, vocab)

    class Tiny(torch.nn.Module):
        def forward(self, input_ids, attention_mask, position_ids, output_hidden_states=False):
            return type("Out", (), {"logits": embed(input_ids)})()

    model = Tiny()
    examples = [([1, 2, 3, 4, 5], 2), ([1, 6, 7], 1), ([1, 2, 8, 9, 10, 3], 3)]
    accelerator = make_accelerator("auto")  # accelerator state is process-global: the one every test uses
    _as_process(monkeypatch, 0, 1)
    whole = next(sft.sft_loss_parts(model, examples, 0, accelerator))
    shares = []
    for rank in range(2):  # DDP averages the processes' gradients, so their losses average to the whole
        _as_process(monkeypatch, rank, 2)
        shares.append(next(sft.sft_loss_parts(model, examples, 0, accelerator)))
    torch.testing.assert_close((shares[0] + shares[1]) / 2, whole)


def test_gather_rows_is_the_inverse_of_owned(monkeypatch):
    parts = {0: ["a", "c", "e"], 1: ["b", "d"]}
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    monkeypatch.setattr(distributed, "gather_object", lambda local: [parts[0], parts[1]])
    assert distributed.owned(5) == [0, 2, 4]
    assert distributed.gather_rows(parts[0], 5) == ["a", "b", "c", "d", "e"]


def test_the_process_count_is_read_from_the_launcher_command_line(tmp_path):
    base = ["python", "-m", "accelerate.commands.launch", "--cpu"]
    assert launch.processes_from_args([*base, "--num_processes", "2", "-m", "reftkit.cli"]) == 2
    assert launch.processes_from_args([*base, "--num-processes=3", "x.py"]) == 3
    config = tmp_path / "cpu.yaml"
    config.write_text("distributed_type: MULTI_CPU\nnum_processes: 4\n")
    assert launch.processes_from_args([*base, "--config_file", str(config), "x.py"]) == 4
    assert launch.processes_from_args([*base, "x.py"]) is None


def test_one_process_outside_a_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.world() == (0, 1)
    assert launch.cpu_relaunch(["run"]) is None
