"""Classifier-free guidance: end points exact, one batched model call per evaluation."""

import pytest
import torch

from modaflow.core.guidance import cfg_field
from modaflow.core.ode import solve_ode, time_grid

NUM_CLASSES = 3


class ToyConditional(torch.nn.Module):
    """Elementwise in the batch (no batch-size dependent BLAS), so batched and separate
    calls agree bit for bit. Counts calls and the batch sizes it sees."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(NUM_CLASSES + 1, dim, generator=g))  # id 3 = null
        self.calls: list[int] = []

    def forward(self, x, t, cond):
        self.calls.append(x.shape[0])
        return torch.sin(x) * t[:, None] + self.emb[cond]


def _setup():
    model = ToyConditional()
    x, t = torch.randn(6, 4), torch.rand(6)
    cond = torch.tensor([0, 1, 2, 0, 1, 2])
    return model, x, t, cond


def test_scale_zero_is_unconditional_and_one_is_conditional() -> None:
    model, x, t, cond = _setup()
    uncond = model(x, t, torch.full_like(cond, NUM_CLASSES))
    condl = model(x, t, cond)
    assert torch.equal(cfg_field(model, cond, NUM_CLASSES, 0.0)(x, t), uncond)
    assert torch.equal(cfg_field(model, cond, torch.full_like(cond, NUM_CLASSES), 1.0)(x, t), condl)
    guided = cfg_field(model, cond, NUM_CLASSES, 2.5)(x, t)
    torch.testing.assert_close(guided, uncond + 2.5 * (condl - uncond))
    scale = torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0, 2.0])[:, None]  # per-sample scale
    torch.testing.assert_close(cfg_field(model, cond, NUM_CLASSES, scale)(x, t), uncond + scale * (condl - uncond))


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_exactly_one_batched_model_call_per_field_evaluation(method) -> None:
    model, x, _, cond = _setup()
    res = solve_ode(cfg_field(model, cond, NUM_CLASSES, 3.0), x, time_grid(5), method)
    assert len(model.calls) == res.nfe == (5 if method == "euler" else 20)
    assert set(model.calls) == {12}  # [x, x]: batch 2B


def test_guided_field_works_with_an_mlp_and_backprop() -> None:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(NUM_CLASSES + 1, 8)
    lin = torch.nn.Linear(4 + 1 + 8, 4)
    model = lambda x, t, c: lin(torch.cat([x, t[:, None], emb(c)], 1))  # noqa: E731
    x, t, cond = torch.randn(5, 4), torch.rand(5), torch.randint(0, NUM_CLASSES, (5,))
    v = cfg_field(model, cond, NUM_CLASSES, 1.5)(x, t)
    ref = model(x, t, torch.full_like(cond, NUM_CLASSES))
    ref = ref + 1.5 * (model(x, t, cond) - ref)
    torch.testing.assert_close(v, ref, rtol=1e-5, atol=1e-5)
    v.sum().backward()
    assert emb.weight.grad is not None and lin.weight.grad is not None


def test_rejects_mismatched_shapes() -> None:
    model, x, t, cond = _setup()
    with pytest.raises(ValueError, match="null_cond"):
        cfg_field(model, cond, torch.zeros(3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="batch"):
        cfg_field(model, cond, NUM_CLASSES, 1.0)(x[:4], t[:4])
