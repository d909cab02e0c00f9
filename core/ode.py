"""Fixed-step and adaptive ODE solvers for a velocity field ``dx/dt = v(x, t)``.

Sampling a flow-matching model integrates the probability-flow ODE from the source
(t = 0) to the data (t = 1) (Lipman et al. 2023, arXiv 2210.02747, eq. 1); running the
grid backwards (t from 1 to 0) inverts it. The fixed-step methods are explicit
Runge–Kutta schemes (Hairer, Nørsett & Wanner, *Solving ODEs I*, sec. II.1):

==========  =====  ===========================================================
method      order  one step from t to t + h
==========  =====  ===========================================================
euler       1      ``x + h v(x, t)``
midpoint    2      ``x + h v(x + h/2 v(x, t), t + h/2)``
heun        2      ``x + h/2 (k1 + k2)``, ``k2 = v(x + h k1, t + h)`` (trapezoid)
rk4         4      classical Runge–Kutta, ``x + h/6 (k1 + 2 k2 + 2 k3 + k4)``
==========  =====  ===========================================================

The time grid is ``(K+1,)`` (shared by the batch) or ``(B, K+1)`` (one grid per sample);
``h`` may be negative. The loop holds no host syncs and no Python branching on tensor
values (all times are precomputed once), so ``torch.compile(fullgraph=True)`` and CUDA
graphs capture it (see :mod:`modaflow.core.graph`). ``nfe`` is known statically.

:func:`solve_ode_adaptive` wraps torchdiffeq's adaptive solvers (Dormand & Prince 1980 for
``dopri5``) for reference solutions; it counts the field calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .time_samplers import shift_time

__all__ = ["Field", "SolveResult", "ODE_METHODS", "ODE_STAGES", "grid_times", "time_grid", "solve_ode", "solve_ode_adaptive"]

Field = Callable[[Tensor, Tensor], Tensor]
"""A velocity field ``field(x, t) -> v`` with ``x, v`` ``(B, *D)`` and ``t`` ``(B,)``."""


@dataclass(frozen=True)
class SolveResult:
    """The end of a solve.

    Attributes:
        x: the state at the last grid time, ``(B, *D)``.
        trajectory: the states at every grid time, ``(K+1, B, *D)`` (``trajectory[0]`` is the
            input), or ``None`` unless asked for.
        nfe: number of field (model) evaluations.
    """

    x: Tensor
    trajectory: Tensor | None
    nfe: int


def time_grid(
    steps: int,
    t0: float = 0.0,
    t1: float = 1.0,
    shift: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``steps + 1`` times from ``t0`` to ``t1`` (either direction), shape ``(steps+1,)``.

    The times are evenly spaced in the unshifted time ``u`` with ``t = shift_time(u, shift)``
    (Esser et al. 2024, arXiv 2403.03206, eq. 23): ``shift > 1`` puts more steps near the
    source t = 0. The ends are exactly ``t0`` and ``t1`` for every shift (the inverse of
    ``shift_time(., s)`` is ``shift_time(., 1/s)``). Computed in float64, then cast.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1; got {steps!r}")
    for name, v in (("t0", t0), ("t1", t1)):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1]; got {v}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0; got {shift}")
    ends = torch.tensor([t0, t1], dtype=torch.float64)
    u0, u1 = shift_time(ends, 1.0 / shift).tolist()
    grid = shift_time(torch.linspace(u0, u1, steps + 1, dtype=torch.float64), shift)
    grid[0], grid[-1] = t0, t1
    return grid.to(device=device, dtype=dtype)


# --- one step of each method: (field, x, t, t_mid, t_next, h, h_half) -> x_next ------------
# t, t_mid, t_next: (B,); h, h_half: (B, 1, ..., 1), broadcast against x.


def _euler(field: Field, x: Tensor, t: Tensor, t_mid: Tensor, t_next: Tensor, h: Tensor, h_half: Tensor) -> Tensor:
    return torch.addcmul(x, h, field(x, t))


def _midpoint(field: Field, x: Tensor, t: Tensor, t_mid: Tensor, t_next: Tensor, h: Tensor, h_half: Tensor) -> Tensor:
    x_mid = torch.addcmul(x, h_half, field(x, t))
    return torch.addcmul(x, h, field(x_mid, t_mid))


def _heun(field: Field, x: Tensor, t: Tensor, t_mid: Tensor, t_next: Tensor, h: Tensor, h_half: Tensor) -> Tensor:
    k1 = field(x, t)
    k2 = field(torch.addcmul(x, h, k1), t_next)
    return torch.addcmul(x, h_half, k1 + k2)


def _rk4(field: Field, x: Tensor, t: Tensor, t_mid: Tensor, t_next: Tensor, h: Tensor, h_half: Tensor) -> Tensor:
    k1 = field(x, t)
    k2 = field(torch.addcmul(x, h_half, k1), t_mid)
    k3 = field(torch.addcmul(x, h_half, k2), t_mid)
    k4 = field(torch.addcmul(x, h, k3), t_next)
    return torch.addcmul(x, h / 6.0, k1 + 2.0 * (k2 + k3) + k4)


_STEPS: dict[str, Callable[..., Tensor]] = {"euler": _euler, "midpoint": _midpoint, "heun": _heun, "rk4": _rk4}
ODE_METHODS: tuple[str, ...] = tuple(_STEPS)
ODE_STAGES: dict[str, int] = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
"""Field evaluations per step of each fixed-step method."""


def grid_times(grid: Tensor, x: Tensor) -> Tensor:
    """Validate a shared ``(K+1,)`` or per-sample ``(B, K+1)`` grid and return it as
    ``(K+1, B)`` in ``x``'s dtype and device (shape checks only: no host sync)."""
    B = x.shape[0]
    if grid.ndim == 1:
        times = grid.to(device=x.device, dtype=x.dtype)[:, None].expand(-1, B)
    elif grid.ndim == 2 and grid.shape[0] == B:
        times = grid.to(device=x.device, dtype=x.dtype).T
    else:
        raise ValueError(
            f"grid must have shape (K+1,) or (B, K+1) with B = {B} (x is {tuple(x.shape)}); "
            f"got {tuple(grid.shape)}"
        )
    if times.shape[0] < 2:
        raise ValueError(f"grid needs at least 2 times (K >= 1 steps); got {tuple(grid.shape)}")
    return times


def solve_ode(
    field: Field,
    x: Tensor,
    grid: Tensor,
    method: str = "euler",
    return_trajectory: bool = False,
) -> SolveResult:
    """Integrate ``dx/dt = field(x, t)`` over ``grid`` with a fixed-step method.

    Args:
        field: velocity field ``(x (B, *D), t (B,)) -> (B, *D)``.
        x: the state at ``grid[..., 0]``, ``(B, *D)``.
        grid: times ``(K+1,)`` or per-sample ``(B, K+1)``; increasing (towards the data) or
            decreasing (inversion). Cast to ``x``'s dtype and device.
        method: one of :data:`ODE_METHODS`.
        return_trajectory: also return every state, ``(K+1, B, *D)``.

    Differentiable: gradients flow to ``x``, to ``grid`` and to the field's parameters.
    """
    step = _STEPS.get(method)
    if step is None:
        raise ValueError(f"method must be one of {ODE_METHODS}; got {method!r}")
    times = grid_times(grid, x)  # (K+1, B)
    K = times.shape[0] - 1
    dt = times[1:] - times[:-1]  # (K, B)
    shape = (K, x.shape[0]) + (1,) * (x.ndim - 1)
    h = dt.reshape(shape)
    # All per-step tensors are made once here, so the loop only calls the field.
    schedule = list(zip(times[:-1].unbind(0), (times[:-1] + 0.5 * dt).unbind(0), times[1:].unbind(0),
                        h.unbind(0), (0.5 * h).unbind(0)))
    states = [x] if return_trajectory else None
    for t, t_mid, t_next, h_k, h_half in schedule:
        x = step(field, x, t, t_mid, t_next, h_k, h_half)
        if states is not None:
            states.append(x)
    trajectory = torch.stack(states) if states is not None else None
    return SolveResult(x=x, trajectory=trajectory, nfe=K * ODE_STAGES[method])


def solve_ode_adaptive(
    field: Field,
    x: Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> SolveResult:
    """Integrate from ``t0`` to ``t1`` with torchdiffeq's adaptive solver ``method``
    (``dopri5``: Dormand & Prince 1980, 5(4) embedded pair) under tolerances ``rtol, atol``.

    A reference solver: its step control syncs with the host. ``nfe`` counts the field
    calls; ``trajectory`` is ``None``. Needs ``pip install modaflow[adaptive]``.
    """
    try:
        from torchdiffeq import odeint
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "solve_ode_adaptive needs torchdiffeq: pip install modaflow[adaptive]"
        ) from err
    if not (0.0 <= t0 <= 1.0 and 0.0 <= t1 <= 1.0):
        raise ValueError(f"t0 and t1 must lie in [0, 1]; got t0={t0}, t1={t1}")
    B = x.shape[0]
    calls = [0]

    def rhs(t: Tensor, y: Tensor) -> Tensor:
        calls[0] += 1
        return field(y, t.expand(B))

    ts = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
    x1 = odeint(rhs, x, ts, rtol=rtol, atol=atol, method=method)[-1]
    return SolveResult(x=x1, trajectory=None, nfe=calls[0])
