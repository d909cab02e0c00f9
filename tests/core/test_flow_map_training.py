"""FlowMapModule: config checks, every loss through one training step, training through fit()
with checkpoints that round-trip and resume, and distillation from a teacher module."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modaflow.core.config import ConfigError
from modaflow.core.flow_maps import FlowMap, OracleAverageVelocity
from modaflow.core.gaussian import GaussianOracle
from modaflow.core.nn import TwoTimeMLP, TwoTimeMLPConfig
from modaflow.core.paths import LinearPath
from modaflow.core.training import FlowMapConfig, FlowMapModule, TrainerArgs, fit, load_checkpoint, read_checkpoint

MEAN = torch.tensor([1.0, -0.5])
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]])
CPU = TrainerArgs(accelerator="cpu", devices=1)


def _flow_map(seed: int = 0, num_classes: int = 0) -> FlowMap:
    torch.manual_seed(seed)
    cfg = TwoTimeMLPConfig(dim=2, hidden=32, depth=2, time_embed_dim=16, time_scale=10.0, num_classes=num_classes)
    return FlowMap(TwoTimeMLP(cfg))


def _loader(n: int = 1024, batch: int = 128) -> DataLoader:
    data = GaussianOracle(MEAN, COV, LinearPath()).sample(1.0, n, torch.Generator().manual_seed(1)).float()
    return DataLoader(TensorDataset(data), batch_size=batch, shuffle=False)


class _ExactTeacher(nn.Module):
    """The exact Gaussian velocity as a frozen teacher module, ``teacher(x, t)``."""

    def __init__(self) -> None:
        super().__init__()
        self.oracle = GaussianOracle(MEAN, COV, LinearPath())
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter, to check it is frozen

    def forward(self, x, t):
        return self.oracle.velocity(x, t) + 0 * self.anchor


def test_config_requires_the_velocity_parametrization_and_round_trips():
    with pytest.raises(ConfigError, match="FlowMapConfig.parametrization"):
        FlowMapConfig(parametrization="data")
    with pytest.raises(ConfigError, match="FlowMapConfig.loss"):
        FlowMapConfig(loss="consistency")
    with pytest.raises(ConfigError, match="FlowMapConfig.stop_gradient"):
        FlowMapConfig(stop_gradient=True)
    with pytest.raises(ConfigError, match="FlowMapConfig.teacher_steps"):
        FlowMapConfig(teacher_steps=0)
    cfg = FlowMapConfig(loss="progressive", intermediate="midpoint", diagonal_weight=0.5)
    assert FlowMapConfig.from_dict(cfg.to_dict()) == cfg


def test_module_refuses_inconsistent_teachers():
    with pytest.raises(ValueError, match="needs a teacher"):
        FlowMapModule(_flow_map(), None, FlowMapConfig(loss="teacher"))
    with pytest.raises(ValueError, match="teacher=None"):
        FlowMapModule(_flow_map(), None, FlowMapConfig(loss="progressive"), teacher=_ExactTeacher())
    with pytest.raises(TypeError, match="FlowMapConfig"):
        from modaflow.core.training import FlowMatchingConfig

        FlowMapModule(_flow_map(), None, FlowMatchingConfig())


@pytest.mark.parametrize("loss, teacher", [
    ("lagrangian", False), ("eulerian", False), ("progressive", False), ("teacher", True), ("lagrangian", True),
])
def test_every_loss_gives_a_finite_loss_with_gradients(loss, teacher):
    module = FlowMapModule(_flow_map(), None, FlowMapConfig(loss=loss), teacher=_ExactTeacher() if teacher else None)
    for p in module.model.parameters():  # leave the identity map of the zero-initialised output
        nn.init.normal_(p, std=0.2)
    x1 = next(iter(_loader()))[0]
    value = module.compute_loss(x1, step=3)
    assert value.ndim == 0 and torch.isfinite(value)
    assert torch.equal(value, module.compute_loss(x1, step=3))  # the noise of step 3 is reproducible
    value.backward()
    assert all(p.grad is not None for p in module.model.parameters())
    if teacher:
        assert module.teacher.anchor.grad is None and not module.teacher.anchor.requires_grad
        assert module.train().training and not module.teacher.training  # the teacher stays in eval mode


def test_exact_map_has_zero_loss_under_exact_teacher_distillation():
    """With the exact map as the student and the exact velocity as teacher, both terms vanish."""
    exact = FlowMap(OracleAverageVelocity(GaussianOracle(MEAN, COV, LinearPath())))
    cfg = FlowMapConfig(loss="lagrangian")
    module = FlowMapModule(exact, None, cfg, teacher=_ExactTeacher())
    x1 = next(iter(_loader()))[0].double()
    assert module.compute_loss(x1, step=0) < 1e-20


def test_noise_is_paired_by_the_configured_coupling(monkeypatch):
    module = FlowMapModule(_flow_map(), None, FlowMapConfig(coupling="sinkhorn", sinkhorn_iterations=20))
    draw, seen = module.draw_source, []

    def spy(x1, generator):
        seen.append(x1.shape)
        return draw(x1, generator)

    monkeypatch.setattr(module, "draw_source", spy)
    assert torch.isfinite(module.compute_loss(torch.randn(16, 2), step=0)) and seen == [(16, 2)]


def test_conditional_batches_reach_the_map_and_the_teacher():
    seen = []

    def teacher(x, t, cond):
        seen.append(cond)
        return torch.zeros_like(x)

    fm = _flow_map(num_classes=2)
    module = FlowMapModule(fm, None, FlowMapConfig(loss="teacher", teacher_steps=2), teacher=teacher)
    x1, cond = torch.randn(8, 2), torch.randint(0, 2, (8,))
    assert torch.isfinite(module.compute_loss({"x1": x1, "cond": cond}, step=0))
    assert len(seen) == 3 and all(torch.equal(c, cond) for c in seen)  # diagonal + 2 teacher steps


def test_trains_through_fit_and_checkpoints_round_trip(tmp_path):
    cfg = FlowMapConfig(loss="lagrangian", lr=3e-3, max_steps=12, ckpt_every=6, log_every=2, ema_decay=0.9)
    module = FlowMapModule(_flow_map(), None, cfg)
    first = fit(module, _loader(), tmp_path, CPU, max_steps=6, progress=False)
    assert first.step == 6 and first.checkpoint.exists()
    saved = read_checkpoint(first.checkpoint, FlowMapConfig)
    assert saved.config == cfg and saved.extra["model_config"]["time_scale"] == 10.0
    assert not any(k.startswith("teacher") for k in saved.model)

    restored = _flow_map(seed=5)
    load_checkpoint(first.checkpoint, restored)
    x, s, t = torch.randn(16, 2), torch.rand(16), torch.rand(16)
    assert torch.equal(restored(x, s, t), module.model(x, s, t))
    assert not torch.equal(restored(x, 0.0, 1.0), x)  # training moved the map off the identity

    resumed = FlowMapModule(_flow_map(seed=5), None, cfg)
    again = fit(resumed, _loader(), tmp_path, CPU, progress=False)
    assert again.start_step == 6 and again.step == 12
    assert [s for s, _ in again.history] == [2, 4, 6, 8, 10, 12]
    ema_map = resumed.flow_map(use_ema=True)
    assert not any(p.requires_grad for p in ema_map.parameters())
    v = resumed.velocity_field()(x, t)
    assert torch.equal(v, ema_map.velocity(x, t))
