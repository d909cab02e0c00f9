"""Sampling the three methods through the core solvers, in network space ``(B, L, C)``.

* TimeFlow (velocity on the stochastic-interpolant path): Euler–Maruyama
  (:func:`modaflow.core.sde.solve_sde`), diffusion ``g`` constant (``em_diffusion``, 0.1 in
  the paper) on a time grid shifted by ``alpha`` (3 in the paper; Esser et al. 2024, arXiv
  2403.03206, eq. 23), or any ODE method.
* linear flow matching (velocity, linear path): fixed-step ODE solvers (Euler by default).
* either flow: DDIM on the (shifted) continuous grid, ``x <- alpha(t') x1_hat + sigma(t') eps_hat``
  (Song et al. 2021, arXiv 2010.02502, eq. 12 with sigma_t = 0, for any affine path with a Gaussian source),
  or its second-order multistep form in data space, DPM-Solver++(2M) (:func:`modaflow.core.discrete.solve_dpm2m`;
  Lu et al. 2022, arXiv 2211.01095, Alg. 2), whose last step lands on the data estimate. It is the default
  sampler of a TimeFlow network that predicts the data (``prediction = "data"``).
* DDPM (data prediction on a DDPM cosine schedule): ancestral sampling over every step
  (:func:`modaflow.core.discrete.solve_ddpm`) or DDIM on a sub-grid.

Conditioning (TimeFlow): the network reads ``cond = [m * y, m]`` and sees the observed
entries of its input on the path (:func:`observed_on_path`); the observed entries of the
result are then set to ``y``. An unconditional velocity model imputes through the
core's gradient-free steering instead (:func:`steered_impute`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from modaflow.core.discrete import ddpm_grid, solve_ddim, solve_ddpm, solve_dpm2m
from modaflow.core.ode import ODE_METHODS, ODE_STAGES, solve_ode, time_grid
from modaflow.core.parametrizations import as_velocity_field
from modaflow.core.paths import AffinePath
from modaflow.core.sde import solve_sde
from modaflow.core.tensors import expand_t
from modaflow.core.steering import Mask, SteeringConfig, steer

__all__ = ["SOLVERS", "DEFAULT_SOLVER", "resolve_solver", "steps_for_nfe", "condition", "run_solver", "observed_on_path",
           "steered_impute"]

SOLVERS: tuple[str, ...] = ("auto", "em") + ODE_METHODS + ("ddpm", "ddim", "dpm2m")
"""Sampler names; ``auto`` = em (TimeFlow), dpm2m (TimeFlow predicting the data), euler (linear FM), ddpm (DDPM)."""
DEFAULT_SOLVER = {"timeflow": "em", "linear_fm": "euler", "ddpm": "ddpm"}
"""What ``auto`` means for each method whose network predicts a velocity (and for the DDPM)."""


def resolve_solver(method: str, solver: str, kind: str = "velocity") -> str:
    """The sampler ``solver`` names for ``method`` whose network predicts ``kind`` (``auto`` ->
    :data:`DEFAULT_SOLVER`, or dpm2m for a TimeFlow network predicting the data)."""
    if solver == "auto":
        solver = "dpm2m" if (method, kind) == ("timeflow", "data") else DEFAULT_SOLVER[method]
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVERS)}; got {solver!r}")
    return solver


def steps_for_nfe(method: str, solver: str, nfe: int, kind: str = "velocity") -> int:
    """Steps of ``solver`` that spend exactly ``nfe`` network evaluations (two per midpoint or
    Heun step, four per RK4 step, one per Euler, Euler–Maruyama, DDPM, DDIM or DPM-Solver++ step)."""
    stages = ODE_STAGES.get(resolve_solver(method, solver, kind), 1)
    if nfe < stages or nfe % stages:
        raise ValueError(f"{nfe} NFE is not a whole number of {solver!r} steps ({stages} evaluations each)")
    return nfe // stages


def condition(y: Tensor, m: Tensor) -> Tensor:
    """The network's conditioning input ``[m * y, m]`` ``(B, L, 2C)`` from observations
    ``y`` and mask ``m`` ``(B, L, C)`` (1 = observed)."""
    return torch.cat([m * y, m], dim=-1)


def run_solver(
    model: nn.Module,
    method: str,
    kind: str,
    path: AffinePath,
    x0: Tensor,
    steps: int,
    solver: str,
    shift: float,
    em_diffusion: float,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
) -> Tensor:
    """Integrate from ``x0`` ``(B, L, C)`` at t = 0 to t = 1. ``kind`` is what the network
    predicts (velocity or data); ``cond`` ``[m * y, m]`` (TimeFlow) is passed to every call, and
    the network sees the observed entries of its input on the path, ``alpha(t) y + sigma(t) x0``
    (:func:`observed_on_path`), as in training, instead of the state's own."""
    solver = resolve_solver(method, solver, kind)

    def net(x: Tensor, t: Tensor) -> Tensor:
        if cond is None:
            return model(x, t)
        return model(observed_on_path(x, t, cond, x0, path), t, cond)

    if solver == "ddpm":
        if method != "ddpm":
            raise ValueError(f"solver {solver!r} needs the ddpm method's discrete schedule; {method!r} has none")
        return solve_ddpm(net, kind, path, x0, generator=generator).x
    if solver in ("ddim", "dpm2m"):  # the DDPM's integer steps, or the flows' (shifted) continuous grid
        grid = ddpm_grid(path, steps, device=x0.device) if method == "ddpm" else time_grid(steps, shift=shift, device=x0.device)
        return (solve_ddim if solver == "ddim" else solve_dpm2m)(net, kind, path, x0, grid).x
    if kind == "data" and solver in ("heun", "rk4"):
        raise ValueError(f"solver {solver!r} evaluates the {method} data model at t = 1 where its velocity is undefined")
    grid = time_grid(steps, shift=shift, device=x0.device)
    field: Callable[[Tensor, Tensor], Tensor] = as_velocity_field(net, kind, path)
    if solver == "em":
        return solve_sde(field, x0, grid, path, em_diffusion, generator=generator).x
    return solve_ode(field, x0, grid, method=solver).x


def observed_on_path(x: Tensor, t: Tensor, cond: Tensor, x0: Tensor, path: AffinePath) -> Tensor:
    """``x`` ``(B, L, C)`` with its observed entries (``m`` of ``cond = [m * y, m]``) replaced by the
    path's point ``x_t = alpha(t) y + sigma(t) x0`` (``t`` ``(B,)``). TimeFlow's loss scores the
    unobserved entries only (training.TimeFlowModule), so the network never learns a velocity for the
    observed ones and the state's observed entries drift during sampling; in training the network
    always saw them on the path (marginally ``alpha y + sigma eps``: ``sigma`` is the stochastic
    interpolant's total), which this keeps true at sampling (imputation and forecasts; RESULTS.md)."""
    C = x.shape[-1]
    my, m = cond[..., :C], cond[..., C:]
    on_path = expand_t(path.alpha(t), x) * my + expand_t(path.sigma(t), x) * x0
    return m * on_path + (1 - m) * x


def steered_impute(model: nn.Module, kind: str, path: AffinePath, x0: Tensor, y: Tensor, m: Tensor, steps: int,
                   shift: float, method: str = "flowchef", x1_range: tuple[float, float] | None = None) -> Tensor:
    """Impute with an unconditional model by steering its flow towards ``m * x = m * y``
    (FlowChef, Patel et al. 2024, arXiv 2412.00100, Alg. 1, via :func:`modaflow.core.steering.steer`);
    the observed entries of the result are set to ``y``. ``x1_range``: the hard projection's clip of
    the clean prediction (:class:`modaflow.core.steering.SteeringConfig`)."""
    field = as_velocity_field(lambda x, t: model(x, t), kind, path)
    grid = time_grid(steps, shift=shift, device=x0.device)
    res = steer(field, x0, grid, path, Mask(m), m * y, SteeringConfig(method=method, x1_range=x1_range))
    return m * y + (1 - m) * res.x
