"""Training losses of flow maps ``X(s, t, x) = x + (t - s) u(x, s, t)`` (:mod:`modaflow.core.flow_maps`).

Two terms (Boffi, Albergo & Vanden-Eijnden 2025, arXiv 2505.18825, "self-distillation":
loss = diagonal term + off-diagonal distillation term):

* :func:`diagonal_loss`: flow matching on the diagonal ``s = t``, ``|u(x_t, t, t) - target|^2``
  with the conditional velocity ``dx_t`` as target (Lipman et al. 2023, arXiv 2210.02747, eq. 9),
  or a teacher's velocity. By the tangent condition this learns ``v = u(., t, t)``.
* :func:`flow_map_loss` with one of :data:`FLOW_MAP_LOSSES`, on states ``x`` at times ``s``
  and targets at times ``t``; ``velocity`` is the field the map must integrate: the map's own
  diagonal (self-distillation, default) or a trained teacher's (distillation):

  ==============  ==========================================================================
  ``lagrangian``  ``d/dt X(s,t,x) - v(X(s,t,x), t)`` (LSD, arXiv 2505.18825, from the Lagrangian
                  equation; with a teacher ``v`` it is Lagrangian map distillation, Sabour et
                  al. 2025, arXiv 2506.14603). ``d/dt X`` by a forward-mode JVP in ``t``.
  ``eulerian``    ``d/ds X(s,t,x) + grad_x X(s,t,x) v(x, s)`` (ESD, arXiv 2505.18825, from the
                  Eulerian equation): one JVP in ``(s, x)`` along ``(1, v(x, s))``.
  ``progressive`` ``u(x,s,t) - [h u(x,s,r) + (1-h) u(X(s,r,x), r, t)]``, ``h = (r-s)/(t-s)``:
                  the map over ``[s, t]`` against the two-hop map ``X(r, t, X(s, r, x))``
                  (PSD, arXiv 2505.18825, from the semigroup property), written for ``u``.
  ``teacher``     ``u(x,s,t)`` against the teacher's ``K``-step ODE solution from ``s`` to ``t``
                  (its average velocity), solved by :func:`modaflow.core.ode.solve_ode`.
  ==============  ==========================================================================

Every residual is in velocity units (divided by ``t - s`` where it jumps) and is exactly zero
for the exact map (tests: Gaussian oracle). ``stop_gradient`` (:data:`StopGradient`) says what
the gradient flows through; the loss value is the same in every mode:

* ``"none"``: everything (the self-teacher too; small problems only).
* ``"teacher"`` (default): the self-teacher is detached, i.e. ``v(sg(X), t)`` in LSD (the "stopgrad"
  self-teacher of arXiv 2505.18825), ``v(x, s)`` in ESD and the two-hop map in PSD; the student's own
  derivatives (``d/dt X`` in LSD, ``D u`` in ESD) keep their gradient.
* ``"target"``: only the student's ``u(x, s, t)`` gets a gradient; the residual is written as
  ``u - sg(target)`` with ``target = v(X, t) - (t - s) du/dt`` (LSD) or ``v + (t - s) D u``
  (ESD: the MeanFlow form, Geng et al. 2025, arXiv 2505.13447, whose identity
  ``u = v - (t - r) du/dt`` is the Eulerian equation for ``u``). No second-order gradients.
  Measured: on an 8-mode 2-D mixture, Lagrangian distillation from a teacher trained without
  the loss spikes that ``"teacher"`` showed; on a 2-D Gaussian, Lagrangian self-distillation
  had twice the one-step error after 300 steps (0.13 against 0.06).

For ``"progressive"`` and ``"teacher"`` the two detaching modes coincide. A trained teacher is
never differentiated.

Shapes: ``x`` ``(B, *D)``, ``s, t, r`` ``(B,)``. Losses are means over the batch of the
per-sample mean squared residual (``reduce=False``: per-sample ``(B,)``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.func import jvp

from .flow_maps import FlowMap
from .losses import weighted_mse
from .ode import ODE_METHODS, Field, solve_ode, time_grid
from .tensors import as_time, expand_t

__all__ = ["FlowMapLoss", "FLOW_MAP_LOSSES", "StopGradient", "STOP_GRADIENTS", "diagonal_loss", "flow_map_residual", "flow_map_loss"]

FlowMapLoss = Literal["lagrangian", "eulerian", "progressive", "teacher"]
StopGradient = Literal["none", "teacher", "target"]
"""What the off-diagonal losses detach (module docstring)."""
STOP_GRADIENTS: tuple[str, ...] = ("none", "teacher", "target")


@dataclass(frozen=True)
class _Problem:
    """One batch of an off-diagonal loss (see :func:`flow_map_residual` for the fields)."""

    flow_map: FlowMap
    x: Tensor
    s: Tensor
    t: Tensor
    r: Tensor
    velocity: Field
    teacher: bool
    stop_gradient: str
    teacher_steps: int
    teacher_method: str
    cond: Tensor | None

    def u(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        return self.flow_map.average_velocity(x, s, t, self.cond)

    def target_context(self):
        """No autograd graph for targets that are detached anyway."""
        return torch.no_grad() if self.stop_gradient != "none" or self.teacher else nullcontext()


def _lagrangian(p: _Problem) -> tuple[Tensor, Tensor]:
    gap = expand_t(p.t - p.s, p.x)
    u, du_dt = jvp(lambda t: p.u(p.x, p.s, t), (p.t,), (torch.ones_like(p.t),))
    X = p.x + gap * u
    with p.target_context():
        v = p.velocity(X if p.stop_gradient == "none" else X.detach(), p.t)
    # Lagrangian equation, arXiv 2505.18825: d/dt X = v(X, t), with d/dt X = u + (t - s) du/dt
    if p.stop_gradient == "target":
        return u, (v - gap * du_dt).detach()
    return u + gap * du_dt, v


def _eulerian(p: _Problem) -> tuple[Tensor, Tensor]:
    with p.target_context():
        v = p.velocity(p.x, p.s)
    # D u = d/ds u + grad_x u . v (one JVP along (1, v)); then
    # d/ds X + grad_x X . v = v - u + (t - s) D u  (Eulerian equation, arXiv 2505.18825)
    u, Du = jvp(lambda s, x: p.u(x, s, p.t), (p.s, p.x), (torch.ones_like(p.s), v))
    target = v + expand_t(p.t - p.s, p.x) * Du
    return u, target.detach() if p.stop_gradient == "target" else target


def _progressive(p: _Problem) -> tuple[Tensor, Tensor]:
    gap = p.t - p.s
    h = expand_t((p.r - p.s) / torch.where(gap == 0, torch.ones_like(gap), gap), p.x)
    with p.target_context():
        u_sr = p.u(p.x, p.s, p.r)
        X_sr = p.x + expand_t(p.r - p.s, p.x) * u_sr
        # X(r, t, X(s, r, x)) - x = (r - s) u_sr + (t - r) u_rt  (semigroup property, arXiv 2505.18825)
        target = h * u_sr + (1.0 - h) * p.u(X_sr, p.r, p.t)
    return p.u(p.x, p.s, p.t), target


def _teacher(p: _Problem) -> tuple[Tensor, Tensor]:
    gap = expand_t(p.t - p.s, p.x)

    def average(w: Tensor, tau: Tensor) -> Tensor:
        # w(tau) = (x_{s + tau (t - s)} - x) / (t - s) obeys dw/dtau = v(x + (t - s) w, s + tau (t - s)),
        # an affine change of variables that every Runge-Kutta method commutes with.
        return p.velocity(p.x + gap * w, p.s + tau * (p.t - p.s))

    with p.target_context():
        grid = time_grid(p.teacher_steps, device=p.x.device, dtype=p.x.dtype)
        target = solve_ode(average, torch.zeros_like(p.x), grid, p.teacher_method).x
    return p.u(p.x, p.s, p.t), target


FLOW_MAP_LOSSES: dict[str, Callable[[_Problem], tuple[Tensor, Tensor]]] = {
    "lagrangian": _lagrangian,
    "eulerian": _eulerian,
    "progressive": _progressive,
    "teacher": _teacher,
}
"""Loss name -> ``(prediction, target)`` of its residual (explicit registry)."""


def diagonal_loss(flow_map: FlowMap, x_t: Tensor, t: Tensor, target: Tensor, cond: Tensor | None = None,
                  reduce: bool = True) -> Tensor:
    """Flow matching on the diagonal: ``mean |u(x_t, t, t) - target|^2`` (arXiv 2505.18825,
    the diagonal term; target ``dx_t`` from :meth:`AffinePath.sample`, or a teacher's
    ``v(x_t, t)``). ``x_t, target`` ``(B, *D)``, ``t`` ``(B,)``."""
    return weighted_mse(flow_map.velocity(x_t, t, cond), target, t, reduce=reduce)


def flow_map_residual(
    kind: FlowMapLoss,
    flow_map: FlowMap,
    x: Tensor,
    s: Tensor,
    t: Tensor,
    *,
    velocity: Field | None = None,
    r: Tensor | None = None,
    stop_gradient: StopGradient = "teacher",
    teacher_steps: int = 4,
    teacher_method: str = "euler",
    cond: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(prediction, target)`` of an off-diagonal loss, each ``(B, *D)``; the residual is their
    difference (zero for the exact map).

    Args:
        kind: one of :data:`FLOW_MAP_LOSSES` (table in the module docstring).
        flow_map: the student map.
        x: states at times ``s``, ``(B, *D)`` (e.g. path samples ``x_s``).
        s, t: start and end times, ``(B,)`` or scalars.
        velocity: the field ``v(x, t)`` the map must integrate, with any conditioning bound in:
            None uses the map's own diagonal (self-distillation, with ``cond``); a trained
            teacher's field distils it (required for ``"teacher"``; refused by
            ``"progressive"``, which distils the map into itself). A teacher is never
            differentiated.
        r: intermediate times of ``"progressive"``, between ``s`` and ``t``; default midpoint.
        stop_gradient: what is detached: ``"none"``, ``"teacher"`` or ``"target"`` (module docstring).
        teacher_steps, teacher_method: the ODE solve of ``"teacher"`` (:data:`ODE_METHODS`).
        cond: conditioning passed to the map.
    """
    if kind not in FLOW_MAP_LOSSES:
        raise ValueError(f"kind must be one of {tuple(FLOW_MAP_LOSSES)}; got {kind!r}")
    if kind == "teacher" and velocity is None:
        raise ValueError("kind='teacher' needs velocity=<the teacher's field (x, t) -> v>")
    if kind == "progressive" and velocity is not None:
        raise ValueError("kind='progressive' distils the map into itself: pass velocity=None")
    if stop_gradient not in STOP_GRADIENTS:
        raise ValueError(f"stop_gradient must be one of {STOP_GRADIENTS}; got {stop_gradient!r}")
    if teacher_method not in ODE_METHODS:
        raise ValueError(f"teacher_method must be one of {ODE_METHODS}; got {teacher_method!r}")
    if not isinstance(teacher_steps, int) or teacher_steps < 1:
        raise ValueError(f"teacher_steps must be an int >= 1; got {teacher_steps!r}")
    s, t = as_time(s, x.shape[0], x), as_time(t, x.shape[0], x)
    r = 0.5 * (s + t) if r is None else as_time(r, x.shape[0], x)
    problem = _Problem(
        flow_map=flow_map, x=x, s=s, t=t, r=r,
        velocity=flow_map.velocity_field(cond) if velocity is None else velocity,
        teacher=velocity is not None, stop_gradient=stop_gradient,
        teacher_steps=teacher_steps, teacher_method=teacher_method, cond=cond,
    )
    return FLOW_MAP_LOSSES[kind](problem)


def flow_map_loss(
    kind: FlowMapLoss,
    flow_map: FlowMap,
    x: Tensor,
    s: Tensor,
    t: Tensor,
    *,
    velocity: Field | None = None,
    r: Tensor | None = None,
    stop_gradient: StopGradient = "teacher",
    teacher_steps: int = 4,
    teacher_method: str = "euler",
    cond: Tensor | None = None,
    reduce: bool = True,
) -> Tensor:
    """Mean squared residual of the off-diagonal loss ``kind`` (arguments as in
    :func:`flow_map_residual`): a scalar, or per-sample ``(B,)`` if ``reduce`` is False."""
    pred, target = flow_map_residual(
        kind, flow_map, x, s, t, velocity=velocity, r=r, stop_gradient=stop_gradient,
        teacher_steps=teacher_steps, teacher_method=teacher_method, cond=cond,
    )
    return weighted_mse(pred, target, as_time(t, x.shape[0], x), reduce=reduce)
