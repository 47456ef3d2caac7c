"""The SFT loss runs the LM head only where a target is predicted and takes log-probs by a chunked log-sum-exp;
it must equal the plain cross-entropy over a full forward, in value and in every gradient."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from reftkit.models.policy import position_ids_from_mask
from reftkit.trainers.sft import IGNORE, collate, sft_loss

VOCAB = 97
ARCHS = {
    "llama": LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, pad_token_id=0),
    "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, pad_token_id=0),
}  # fmt: skip


def plain_loss(model, ids, mask, labels, reduction):
    """The loss as written before: a full forward and torch's cross-entropy over every position."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction=reduction
    )


def examples(seed: int) -> list[tuple[list[int], int]]:
    """Rows of different lengths and prompt lengths (the shortest prompt is not in the longest row)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(9, 4), (14, 7), (6, 3), (12, 9)]  # (length, prompt length)
    return [(torch.randint(1, VOCAB, (n,), generator=g).tolist(), p) for n, p in shapes]


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sft_loss_equals_the_full_cross_entropy_and_its_gradients(arch, reduction):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(ARCHS[arch]).float().eval()  # no dropout: both see one function
    ids, mask, labels = collate(examples(1), pad_id=0)
    results = []
    for loss_fn in (plain_loss, sft_loss):
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model, ids, mask, labels, reduction=reduction)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sft_loss_counts_only_targets():
    """A row whose targets are all masked adds nothing; a mean over no target at all is not a number."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(ARCHS["llama"]).float()
    ids, mask, labels = collate(examples(2), pad_id=0)
    alone = sft_loss(model, ids[:1], mask[:1], labels[:1], reduction="sum")
    labels[1:] = IGNORE
    torch.testing.assert_close(sft_loss(model, ids, mask, labels, reduction="sum"), alone)
    labels[:] = IGNORE
    assert torch.isnan(sft_loss(model, ids, mask, labels))
