"""Training a flow map ``X(s, t, x) = x + (t - s) u(x, s, t)`` with any loss of
:mod:`modaflow.core.flow_map_losses`, by self-distillation or from a trained teacher.

:class:`FlowMapModule` is a :class:`~modaflow.core.training.module.FlowMatchingModule` with
another loss, so it reuses the EMA, the NaN guard, the per-step seeded noise, the optimiser and
:func:`~modaflow.core.training.fit.fit` (checkpoints, resume) unchanged. Per step, on one batch
(Boffi, Albergo & Vanden-Eijnden 2025, arXiv 2505.18825, self-distillation: diagonal + off-diagonal term):

0. noise ``x0 ~ N(0, I)`` paired with the batch by ``cfg.coupling`` (independent or minibatch OT,
   :meth:`~modaflow.core.training.module.FlowMatchingModule.draw_source`);
1. diagonal: ``t`` from the time sampler, ``x_t`` from the path; regress ``u(x_t, t, t)`` on
   ``dx_t`` (or on the teacher's ``v(x_t, t)`` when a teacher is given);
2. off-diagonal: ``(s, t)`` uniform on ``{t_min <= s <= t <= t_max}``, ``x_s`` from the path (same
   ``x0, x1``), ``r = s + lambda (t - s)`` for the progressive loss; the loss ``cfg.loss``
   with the map's own diagonal as velocity (self-distillation) or the teacher's.

Total: ``diagonal_weight * diagonal + off-diagonal``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..flow_map_losses import FlowMapLoss, StopGradient, diagonal_loss, flow_map_loss
from ..flow_maps import FlowMap
from ..ode import Field
from ..paths import AffinePath, PathSample, StochasticInterpolant
from .config import FlowMatchingConfig
from .module import Batch, FlowMatchingModule

__all__ = ["FlowMapConfig", "FlowMapModule"]

OdeMethod = Literal["euler", "midpoint", "heun", "rk4"]
Teacher = Callable[..., Tensor]
"""A trained velocity field ``teacher(x, t)`` (``teacher(x, t, cond)`` for conditional batches)."""


@dataclass
class FlowMapConfig(FlowMatchingConfig):
    """A flow-matching run config plus the flow-map loss. ``parametrization`` must stay
    ``velocity``: the network predicts the average velocity ``u``; the time-sampler fields
    shape the diagonal times."""

    loss: FlowMapLoss = "lagrangian"
    """Off-diagonal loss: lagrangian, eulerian, progressive (self-distillation, arXiv
    2505.18825) or teacher (regress on a teacher's ODE solution; needs a teacher)."""
    stop_gradient: StopGradient = "teacher"
    """What the off-diagonal loss detaches: none, teacher (the self-teacher side, arXiv
    2505.18825) or target (all but the student's u: no second-order gradients; steadier when
    distilling from a teacher)."""
    diagonal_weight: float = 1.0
    """Weight of the diagonal flow-matching term against the off-diagonal loss."""
    intermediate: Literal["uniform", "midpoint"] = "uniform"
    """Progressive loss: the intermediate time r is uniform between s and t, or the midpoint."""
    teacher_steps: int = 4
    """Teacher loss: ODE steps of the teacher from s to t."""
    teacher_method: OdeMethod = "euler"
    """Teacher loss: fixed-step ODE method of the teacher solve."""

    def validate(self) -> None:
        super().validate()
        self._require(self.parametrization == "velocity", "parametrization",
                      "'velocity' (a flow map's network predicts the average velocity)")
        self._require(self.diagonal_weight >= 0, "diagonal_weight", "a number >= 0")
        self._require(self.teacher_steps >= 1, "teacher_steps", "an integer >= 1")


class FlowMapModule(FlowMatchingModule):
    """Trains ``flow_map`` (its network's parameters) with ``cfg.loss``.

    Args:
        flow_map: the map to train (:class:`~modaflow.core.flow_maps.FlowMap`).
        path: the probability path, or None to build ``cfg.path``.
        cfg: the run config.
        teacher: optional trained velocity field (see :data:`Teacher`); required by
            ``loss="teacher"``, refused by ``"progressive"``. An ``nn.Module`` teacher is frozen
            and moves with this module (it is not saved in checkpoints); a plain function must
            already live on the training device.
    """

    def __init__(self, flow_map: FlowMap, path: AffinePath | None, cfg: FlowMapConfig, teacher: Teacher | None = None) -> None:
        if not isinstance(cfg, FlowMapConfig):
            raise TypeError(f"cfg must be a FlowMapConfig; got {type(cfg).__name__}")
        if not isinstance(flow_map, FlowMap):
            raise TypeError(f"flow_map must be a modaflow.core.flow_maps.FlowMap; got {type(flow_map).__name__}")
        if cfg.loss == "teacher" and teacher is None:
            raise ValueError("FlowMapConfig.loss = 'teacher' needs a teacher velocity field")
        if cfg.loss == "progressive" and teacher is not None:
            raise ValueError("FlowMapConfig.loss = 'progressive' distils the map into itself: pass teacher=None")
        super().__init__(flow_map, path, cfg)
        if isinstance(teacher, nn.Module):
            teacher.eval().requires_grad_(False)
        self.teacher = teacher

    def train(self, mode: bool = True) -> "FlowMapModule":
        """Set training mode; an ``nn.Module`` teacher stays in eval mode (no dropout)."""
        super().train(mode)
        if isinstance(self.teacher, nn.Module):
            self.teacher.eval()
        return self

    def _teacher_field(self, cond: Tensor | None) -> Field | None:
        teacher = self.teacher
        if teacher is None or cond is None:
            return teacher
        return lambda x, t: teacher(x, t, cond)

    def _sample(self, x0: Tensor, x1: Tensor, t: Tensor, gen: torch.Generator) -> PathSample:
        if isinstance(self.path, StochasticInterpolant):
            z = torch.randn(x1.shape, generator=gen, device=x1.device, dtype=x1.dtype)
            return self.path.sample(x0, x1, t, z=z)
        return self.path.sample(x0, x1, t)

    def compute_loss(self, batch: Batch, step: int) -> Tensor:
        """Diagonal flow matching plus the off-diagonal flow-map loss, with the noise of step ``step``."""
        cfg = self.cfg
        x1, x0, cond = self.unpack(batch)
        gen = self._generator(x1.device, step)
        B, kw = x1.shape[0], dict(device=x1.device, dtype=x1.dtype, generator=gen)
        if x0 is None:
            if not self.path.gaussian_source:
                raise ValueError(f"{self.path!r} has a data source: the batch must be a dict with 'x0'")
            x0 = self.draw_source(x1, gen)  # N(0, I), paired with x1 by cfg.coupling
        cond = self.drop_cond(cond, gen)
        teacher = self._teacher_field(cond)
        lo, width = cfg.t_min, cfg.t_max - cfg.t_min

        t_diag = lo + width * self.time_sampler(B, **kw)
        diag = self._sample(x0, x1, t_diag, gen)
        if teacher is None:
            target = diag.dx_t
        else:
            with torch.no_grad():
                target = teacher(diag.x_t, t_diag)
        loss = cfg.diagonal_weight * diagonal_loss(self.model, diag.x_t, t_diag, target, cond)

        s, t = (lo + width * torch.rand(2, B, **kw)).sort(dim=0).values  # uniform on s <= t
        lam = torch.rand(B, **kw) if cfg.intermediate == "uniform" else torch.full((B,), 0.5, device=x1.device, dtype=x1.dtype)
        x_s = self._sample(x0, x1, s, gen).x_t
        return loss + flow_map_loss(
            cfg.loss, self.model, x_s, s, t, velocity=teacher, r=s + lam * (t - s),
            stop_gradient=cfg.stop_gradient, teacher_steps=cfg.teacher_steps,
            teacher_method=cfg.teacher_method, cond=cond,
        )

    def flow_map(self, use_ema: bool = True) -> FlowMap:
        """A frozen copy of the flow map in eval mode, with the EMA weights if ``use_ema``."""
        return self.network(use_ema)

    def velocity_field(self, use_ema: bool = True, cond: Tensor | None = None) -> Field:
        """The learnt velocity ``v(x, t) = u(x, t, t)`` (the map's diagonal) of a frozen copy."""
        return self.flow_map(use_ema).velocity_field(cond)
