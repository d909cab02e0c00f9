"""MedForj's DDPM objective as a core :class:`~modaflow.core.training.FlowMatchingModule`.

Per step (Ho et al. 2020, arXiv 2006.11239, Algorithm 1, with MedForj's targets,
arXiv 2510.26834): draw a DDPM step ``k ~ U{1..T}`` (time ``t = 1 - k/T``, exact on the
:class:`~modaflow.core.paths.DiscreteVPPath`; uniform ``t`` on the linear path for
``rflow``), ``eps ~ N(0, I)``, form ``x_t = alpha x1 + sigma eps`` and regress the raw
network output on :func:`~.targets.medforj_target` with a plain MSE. The module's ``model``
is a :class:`~.targets.DataPredictor`, so EMA, checkpoints, ``velocity_field`` and the core
samplers work unchanged with the core parametrization :data:`~.targets.CORE_KIND`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modaflow.core.paths import AffinePath, DiscreteVPPath
from modaflow.core.tensors import expand_t
from modaflow.core.training import FlowMatchingConfig, FlowMatchingModule

from .targets import DataPredictor, medforj_target

__all__ = ["MedForjModule"]


class MedForjModule(FlowMatchingModule):
    """Trains ``model.net`` on ``model.target`` (see the module docstring).

    Args:
        model: the wrapped network.
        path: its path (DDPM linear betas, or the linear path for ``rflow``).
        cfg: the run config; ``cfg.parametrization`` must be the target's core kind.
        channels_last: feed ``x_t`` in ``channels_last_3d`` memory format.
    """

    def __init__(self, model: DataPredictor, path: AffinePath, cfg: FlowMatchingConfig, channels_last: bool = False) -> None:
        super().__init__(model, path, cfg)
        self.target = model.target
        self.channels_last = channels_last

    def draw_time(self, batch: int, device: torch.device, dtype: torch.dtype, gen: torch.Generator) -> Tensor:
        """``t`` ``(B,)``: DDPM steps ``t = 1 - k/T`` with ``k ~ U{1..T}``, or the time sampler."""
        if isinstance(self.path, DiscreteVPPath):
            T = self.path.num_steps
            k = torch.randint(1, T + 1, (batch,), generator=gen, device=device)
            return (1.0 - k.to(torch.float64) / T).to(dtype)
        return self.time_sampler(batch, device=device, dtype=dtype, generator=gen)

    def compute_loss(self, batch, step: int) -> Tensor:
        x1, _, _ = self.unpack(batch)
        gen = self._generator(x1.device, step)
        t = self.draw_time(x1.shape[0], x1.device, x1.dtype, gen)
        eps = torch.randn(x1.shape, generator=gen, device=x1.device, dtype=x1.dtype)
        a, s = expand_t(self.path.alpha(t), x1), expand_t(self.path.sigma(t), x1)
        x_t = a * x1 + s * eps  # Ho et al. 2020, eq. 4
        target = medforj_target(self.target, x1, eps, a, s)
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last_3d)
        pred = self.model.raw(x_t, t)
        return torch.mean((pred.float() - target.float()) ** 2)
