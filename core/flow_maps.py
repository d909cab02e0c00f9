"""Flow maps: two-time maps ``X(s, t, x)`` that jump along the probability-flow ODE, for
one- and few-step generation; an any-step sampler; an exact Gaussian flow map for tests.

The flow map of ``dx/dt = v(x, t)`` sends the state at time ``s`` to the state at time ``t``
(Boffi, Albergo & Vanden-Eijnden 2025, "How to build a consistency model: learning flow maps
via self-distillation", arXiv 2505.18825). It is parametrised through an average
velocity ``u`` (ibid., "X_{s,t}(x) = x + (t - s) v_{s,t}(x)"; the "average velocity" of
MeanFlow, Geng et al. 2025, arXiv 2505.13447)::

    X(s, t, x) = x + (t - s) u(x, s, t)          so X(s, s, x) = x exactly,

and then ``d/dt X(s, t, x)`` at ``t = s`` is ``u(x, s, s)``: by the tangent condition of
arXiv 2505.18825 the diagonal ``u(x, t, t)`` *is* the velocity ``v(x, t)``, learnt by flow
matching. The exact map also satisfies the Lagrangian, Eulerian and semigroup
characterisations of arXiv 2505.18825, on which the losses of
:mod:`modaflow.core.flow_map_losses` are built::

    Lagrangian   d/dt X(s, t, x) = v(X(s, t, x), t)
    Eulerian     d/ds X(s, t, x) + grad_x X(s, t, x) v(x, s) = 0
    semigroup    X(u, t, X(s, u, x)) = X(s, t, x)

Call convention: networks and maps take the state first, like every field in modaflow:
``flow_map(x, s, t, cond=None)`` is ``X(s, t, x)``; ``x`` ``(B, *D)``, ``s, t`` ``(B,)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .gaussian import GaussianOracle
from .ode import Field, SolveResult, grid_times
from .tensors import as_time, expand_t

__all__ = ["TwoTimeNet", "FlowMap", "OracleAverageVelocity", "sample_flow_map"]

TwoTimeNet = Callable[..., Tensor]
"""A network ``net(x, s, t, cond=None) -> u`` with ``x, u`` ``(B, *D)`` and ``s, t`` ``(B,)``
(e.g. :class:`modaflow.core.nn.two_time.TwoTimeMLP`)."""


class FlowMap(nn.Module):
    """``X(s, t, x) = x + (t - s) net(x, s, t)`` around a two-time network.

    Args:
        net: the average-velocity network ``net(x, s, t, cond=None)`` (an ``nn.Module``).

    ``cfg`` is the network's config (if it has one), so training writes it with checkpoints.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.cfg = getattr(net, "cfg", None)

    def average_velocity(self, x: Tensor, s: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``u(x, s, t)``, ``(B, *D)``: the constant velocity that jumps from ``(s, x)`` to
        ``(t, X(s, t, x))``."""
        s, t = as_time(s, x.shape[0], x), as_time(t, x.shape[0], x)
        return self.net(x, s, t) if cond is None else self.net(x, s, t, cond)

    def forward(self, x: Tensor, s: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``X(s, t, x)``, ``(B, *D)``; ``s, t`` ``(B,)`` or scalars (arXiv 2505.18825)."""
        s, t = as_time(s, x.shape[0], x), as_time(t, x.shape[0], x)
        return x + expand_t(t - s, x) * self.average_velocity(x, s, t, cond)

    def velocity(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The diagonal ``u(x, t, t) = d/dt X(t, t', x)|_{t'=t}``: the learnt velocity ``v(x, t)``
        (tangent condition, arXiv 2505.18825)."""
        return self.average_velocity(x, t, t, cond)

    def velocity_field(self, cond: Tensor | None = None) -> Field:
        """The diagonal as a field ``(x, t) -> v`` for :func:`modaflow.core.ode.solve_ode`."""

        def field(x: Tensor, t: Tensor) -> Tensor:
            return self.velocity(x, t, cond)

        return field


class OracleAverageVelocity(nn.Module):
    """The exact average velocity of Gaussian data on an affine path, as a two-time network:
    ``u(x, s, t) = (X*(s, t, x) - x) / (t - s)`` with ``X*`` the oracle's exact flow map, and
    ``u(x, t, t) = v*(x, t)`` (the exact velocity) on the diagonal. ``FlowMap(OracleAverageVelocity(o))``
    is the exact flow map; it has no parameters and is differentiable in ``x, s, t`` (forward and
    reverse mode) away from ``s = t``. ``scale`` multiplies the output (``!= 1``: a wrong map,
    for tests)."""

    def __init__(self, oracle: GaussianOracle, scale: float = 1.0) -> None:
        super().__init__()
        self.oracle, self.scale = oracle, float(scale)

    def forward(self, x: Tensor, s: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        s, t = as_time(s, x.shape[0], x), as_time(t, x.shape[0], x)
        same = expand_t(s == t, x)
        gap = expand_t(torch.where(s == t, torch.ones_like(t), t - s), x)  # safe divisor
        jump = (self.oracle.flow_map(s, t, x) - x) / gap
        return self.scale * torch.where(same, self.oracle.velocity(x, t), jump)


def sample_flow_map(
    flow_map: Callable[..., Tensor],
    x: Tensor,
    grid: Tensor,
    cond: Tensor | None = None,
    return_trajectory: bool = False,
) -> SolveResult:
    """Apply the map along a time grid: ``x_{k+1} = X(t_k, t_{k+1}, x_k)``, one network call a step.

    ``grid = [0, 1]`` is one-step generation; ``time_grid(K)`` from :mod:`modaflow.core.ode`
    gives ``K`` steps. A perfect map gives the same result on every grid (semigroup property,
    arXiv 2505.18825), so more steps only correct a learnt map's errors.

    Args:
        flow_map: ``flow_map(x, s, t, cond=None) -> X(s, t, x)`` (e.g. :class:`FlowMap`).
        x: the state at ``grid[..., 0]``, ``(B, *D)``.
        grid: ``(K+1,)`` shared or ``(B, K+1)`` per-sample times; either direction.
        cond: optional conditioning passed to every call.
        return_trajectory: also return every state, ``(K+1, B, *D)``.

    Returns:
        :class:`~modaflow.core.ode.SolveResult` with ``nfe = K``. No host syncs in the loop.
    """
    times = grid_times(grid, x)  # (K+1, B)
    states = [x] if return_trajectory else None
    for s, t in zip(times[:-1].unbind(0), times[1:].unbind(0)):
        x = flow_map(x, s, t) if cond is None else flow_map(x, s, t, cond)
        if states is not None:
            states.append(x)
    trajectory = torch.stack(states) if states is not None else None
    return SolveResult(x=x, trajectory=trajectory, nfe=times.shape[0] - 1)
