"""Network building blocks: time embeddings, the adaLN-Zero block, the residual MLP."""

from __future__ import annotations

import math

import pytest
import torch

from modaflow.core.config import ConfigError
from modaflow.core.nn import AdaLNBlock, FourierTimeEmbedding, ResidualMLP, ResidualMLPConfig, SinusoidalTimeEmbedding


@pytest.mark.parametrize("dim", [8, 9])
def test_sinusoidal_embedding_matches_formula(dim):
    emb = SinusoidalTimeEmbedding(dim, max_period=100.0)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    out = emb(t)
    assert out.shape == (3, dim) and out.dtype == torch.float64
    half = dim // 2
    k, s = 1, 1000.0 * 0.25  # second frequency, t = 0.25 scaled by 1000
    w = 100.0 ** (-k / half)
    assert out[1, k].item() == pytest.approx(math.cos(w * s), abs=1e-4)
    assert out[1, half + k].item() == pytest.approx(math.sin(w * s), abs=1e-4)
    if dim % 2:
        assert torch.all(out[:, -1] == 0)


@pytest.mark.parametrize("make", [lambda: SinusoidalTimeEmbedding(16), lambda: FourierTimeEmbedding(16, scale=4.0)])
def test_embeddings_separate_distinct_times(make):
    emb = make()
    t = torch.linspace(0, 1, 101)
    out = emb(t)
    assert out.shape == (101, 16) and torch.isfinite(out).all()
    gaps = torch.cdist(out, out) + torch.eye(101) * 1e9
    assert gaps.min() > 1e-3  # no two of 101 times in [0, 1] collide


def test_embeddings_reject_bad_input():
    with pytest.raises(ValueError, match="shape \\(B,\\)"):
        SinusoidalTimeEmbedding(8)(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="scale"):
        FourierTimeEmbedding(8, scale=0.0)


def test_fourier_embedding_frequencies_are_saved():
    a = FourierTimeEmbedding(9, scale=3.0, generator=torch.Generator().manual_seed(0))
    b = FourierTimeEmbedding(9, scale=3.0, generator=torch.Generator().manual_seed(1))
    t = torch.rand(5)
    assert not torch.equal(a(t), b(t))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(t), b(t))
    assert a(t)[:, -1].eq(0).all()  # odd dim: zero pad column


def test_adaln_block_is_identity_at_init_and_learns_conditioning():
    torch.manual_seed(0)
    block = AdaLNBlock(dim=16, heads=4, cond_dim=8)
    x, c = torch.randn(3, 5, 16), torch.randn(3, 8)
    assert torch.equal(block(x, c), x)
    torch.nn.init.normal_(block.modulation[1].weight, std=0.1)  # as after some training
    y1, y2 = block(x, c), block(x, torch.randn(3, 8))
    assert y1.shape == x.shape
    assert not torch.allclose(y1, x) and not torch.allclose(y1, y2)


def test_adaln_block_key_mask_hides_padding():
    torch.manual_seed(0)
    block = AdaLNBlock(dim=8, heads=2, cond_dim=4)
    torch.nn.init.normal_(block.modulation[1].weight, std=0.5)
    x, c = torch.randn(2, 6, 8), torch.randn(2, 4)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, 4:] = False
    y = block(x, c, mask)
    x_changed = x.clone()
    x_changed[:, 4:] = 100.0  # only padding changes
    assert torch.allclose(block(x_changed, c, mask)[:, :4], y[:, :4], atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        AdaLNBlock(dim=10, heads=3, cond_dim=4)


def _perturb(model: torch.nn.Module) -> None:
    """Move every parameter off its (partly zero) initialisation, as training would."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))


def test_residual_mlp_starts_at_zero_and_uses_time():
    model = ResidualMLP(ResidualMLPConfig(dim=3, hidden=16, depth=2, time_embed_dim=8))
    x = torch.randn(4, 3)
    assert torch.equal(model(x, torch.rand(4)), torch.zeros(4, 3))
    _perturb(model)
    out = model(x, torch.full((4,), 0.2))
    assert out.shape == (4, 3)
    assert not torch.allclose(out, model(x, torch.full((4,), 0.8)))
    assert torch.allclose(model(x, torch.tensor(0.2)), out)  # a scalar t broadcasts


def test_residual_mlp_class_conditioning_and_null_token():
    model = ResidualMLP(ResidualMLPConfig(dim=2, hidden=16, depth=1, time_embed_dim=8, num_classes=3))
    _perturb(model)
    x, t = torch.randn(4, 2), torch.rand(4)
    a, b = model(x, t, torch.zeros(4, dtype=torch.long)), model(x, t, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(a, b)
    null = torch.full((4,), 3, dtype=torch.long)
    assert torch.equal(model(x, t), model(x, t, null))  # cond=None is the null token
    with pytest.raises(ValueError, match="class ids of shape"):
        model(x, t, torch.zeros(4, 1, dtype=torch.long))
    unconditional = ResidualMLP(ResidualMLPConfig(dim=2, hidden=8, depth=1, time_embed_dim=8))
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(x, t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape \\(B, 2\\)"):
        unconditional(torch.randn(4, 3), t)


def test_residual_mlp_config_names_bad_field():
    with pytest.raises(ConfigError, match="ResidualMLPConfig.depth"):
        ResidualMLPConfig(dim=2, depth=0)
    with pytest.raises(ConfigError, match="ResidualMLPConfig.num_classes"):
        ResidualMLPConfig.from_dict({"dim": 2, "num_classes": -1})
    with pytest.raises(ConfigError, match="hidden"):
        ResidualMLPConfig.from_dict({"dim": 2, "hidden": "wide"})
