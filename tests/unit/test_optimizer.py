"""Every trainer's AdamW: fused where torch has a kernel for the parameters, the plain one otherwise, same update."""

import pytest
import torch

from reftkit.trainers import common
from reftkit.trainers.common import adamw


def _step(optimizer_params, fused_ok: bool, monkeypatch) -> torch.Tensor:
    real = torch.optim.AdamW

    def only_plain(*args, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(*args, **kwargs)

    if not fused_ok:
        monkeypatch.setattr(common.torch.optim, "AdamW", only_plain)
    weight = torch.nn.Parameter(optimizer_params.clone())
    optimizer = adamw(p for p in [weight])  # a generator, as model.parameters() is: the fallback must still see it
    assert bool(optimizer.defaults.get("fused")) == fused_ok
    for _ in range(3):
        weight.grad = torch.ones_like(weight) * torch.arange(weight.numel()).view_as(weight)
        optimizer.step()
    monkeypatch.undo()
    return weight.detach()


def test_fused_and_plain_adamw_make_the_same_update(monkeypatch):
    start = torch.linspace(-1, 1, 12).view(3, 4)
    fused = _step(start, True, monkeypatch)
    plain = _step(start, False, monkeypatch)
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-6)
    assert not torch.equal(fused, start)


def test_weight_decay_and_lr_reach_the_optimizer():
    optimizer = adamw([torch.nn.Parameter(torch.zeros(2))], lr=0.5, weight_decay=0.1)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["eps"]) == (0.5, 0.1, 1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_weights_get_the_fused_kernel(dtype):
    assert adamw([torch.nn.Parameter(torch.zeros(2, dtype=dtype))]).defaults["fused"]
