"""The one place where other libraries' time conventions meet modaflow's.

modaflow: ``t`` in [0, 1], ``t = 0`` source/noise, ``t = 1`` data,
``x_t = alpha(t) x_data + sigma(t) eps`` and the velocity ``d x_t / dt``.
Every converter below states the foreign convention's formula; the tests check that both
sides build the same ``x_t`` from the same ``(x_data, eps)``.

=====================  =======================================================  ==============
convention             foreign formula                                          modaflow
=====================  =======================================================  ==============
DDPM step k in 0..T    ``x_k = sqrt(abar_k) x + sqrt(1 - abar_k) eps``          ``t = 1 - k/T``
                       (Ho et al. 2020, arXiv 2006.11239, eq. 4)                (DiscreteVPPath)
DDPM index i, 0..T-1   MONAI / diffusers ``alphas_cumprod[i] = abar_{i+1}``     ``t = 1 - (i+1)/T``
MONAI RFlow tau        ``x = (1 - tau/T) x + (tau/T) eps``, target ``x - eps``  ``t = 1 - tau/T``,
                       (``RFlowScheduler.add_noise``), tau in [0, T]            same velocity
EDM sigma              ``x_edm = x + sigma_edm n`` (Karras et al. 2022, arXiv    ``sigma_edm =
                       2206.00364, sec. 2; eq. 4 scales ``x = s(t) x_edm``)     sigma/alpha``,
                                                                                ``x_t = alpha x_edm``
diffusers flow-match   ``x = (1 - s) x + s eps``, ``timestep = s N``, model     ``t = 1 - s``,
sigma s in [0, 1]      output ``eps - x`` (FlowMatchEulerDiscreteScheduler)     ``v = -output``
=====================  =======================================================  ==============

The time shift of diffusers/MONAI/SD3 (``s' = shift s / (1 + (shift - 1) s)``) is
:func:`modaflow.core.time_samplers.shift_time`; apply it once, in modaflow time.
All converters take floats or tensors and return tensors (float64 for Python numbers).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .paths import AffinePath, LinearPath, VPCosinePath
from .tensors import expand_t

__all__ = [
    "ddpm_step_to_time",
    "time_to_ddpm_step",
    "ddpm_index_to_time",
    "time_to_ddpm_index",
    "rflow_timestep_to_time",
    "time_to_rflow_timestep",
    "rflow_velocity_to_velocity",
    "velocity_to_rflow_velocity",
    "time_to_edm_sigma",
    "edm_sigma_to_time",
    "edm_x_to_path_x",
    "path_x_to_edm_x",
    "diffusers_sigma_to_time",
    "time_to_diffusers_sigma",
    "diffusers_timestep_to_time",
    "time_to_diffusers_timestep",
    "diffusers_flow_output_to_velocity",
    "velocity_to_diffusers_flow_output",
]

Number = float | int | Tensor


def _f(x: Number) -> Tensor:
    """A floating tensor: tensors keep their dtype (integers become float64), numbers float64."""
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.float64)


def _noise_fraction_to_time(level: Number, scale: float) -> Tensor:
    """``t = 1 - level / scale``: every convention here counts noise upwards from the data."""
    return 1.0 - _f(level) / scale


def _time_to_noise_fraction(t: Number, scale: float) -> Tensor:
    return (1.0 - _f(t)) * scale


def _check_T(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1; got {num_steps!r}")


# --- DDPM integer steps (Ho et al. 2020, arXiv 2006.11239) ----------------------------------


def ddpm_step_to_time(k: Number, num_steps: int) -> Tensor:
    """DDPM step ``k`` in 0..T (``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps``, eq. 4;
    ``k = 0`` data, ``k = T`` noise) -> ``t = 1 - k/T``. On a ``DiscreteVPPath`` of the same
    betas, ``alpha(t)^2 = abar_k`` exactly."""
    _check_T(num_steps)
    return _noise_fraction_to_time(k, num_steps)


def time_to_ddpm_step(t: Number, num_steps: int) -> Tensor:
    """``t -> k = (1 - t) T`` (a float; round it for an integer step)."""
    _check_T(num_steps)
    return _time_to_noise_fraction(t, num_steps)


def ddpm_index_to_time(i: Number, num_steps: int) -> Tensor:
    """MONAI / diffusers DDPM timestep index ``i`` in 0..T-1, which noises with
    ``alphas_cumprod[i] = prod_{j <= i} (1 - betas[j]) = abar_{i+1}`` (0-based betas), so it
    is DDPM step ``k = i + 1``: ``t = 1 - (i + 1)/T``."""
    _check_T(num_steps)
    return _noise_fraction_to_time(_f(i) + 1, num_steps)


def time_to_ddpm_index(t: Number, num_steps: int) -> Tensor:
    """``t -> i = (1 - t) T - 1`` (a float; round it for an index)."""
    _check_T(num_steps)
    return _time_to_noise_fraction(t, num_steps) - 1


# --- MONAI RFlowScheduler (rectified flow), LinearPath --------------------------------------


def rflow_timestep_to_time(tau: Number, num_train_timesteps: int = 1000) -> Tensor:
    """MONAI ``RFlowScheduler`` timestep ``tau`` in [0, T]: ``add_noise`` builds
    ``x = (1 - tau/T) x_data + (tau/T) eps`` -> ``t = 1 - tau/T`` on :class:`LinearPath`."""
    _check_T(num_train_timesteps)
    return _noise_fraction_to_time(tau, num_train_timesteps)


def time_to_rflow_timestep(t: Number, num_train_timesteps: int = 1000) -> Tensor:
    """``t -> tau = (1 - t) T``."""
    _check_T(num_train_timesteps)
    return _time_to_noise_fraction(t, num_train_timesteps)


def rflow_velocity_to_velocity(v: Tensor) -> Tensor:
    """MONAI RFlow regresses ``x_data - eps`` and steps ``x + v (tau - tau_next)/T`` towards
    the data: that is ``d x_t / dt`` on the linear path, our velocity, with no sign change."""
    return v


def velocity_to_rflow_velocity(v: Tensor) -> Tensor:
    """Inverse of :func:`rflow_velocity_to_velocity` (the identity)."""
    return v


# --- EDM sigma (Karras et al. 2022, arXiv 2206.00364), any affine path -----------------------


def time_to_edm_sigma(t: Tensor, path: AffinePath) -> Tensor:
    """``x_t / alpha = x_data + (sigma / alpha) eps``, so ``sigma_edm = sigma(t) / alpha(t)``
    (EDM's scaled form, eq. 4, with ``s(t) = alpha``: ``x_t = alpha x_edm``). Infinite at t = 0 for
    paths with ``alpha(0) = 0``."""
    t = _f(t)
    return path.sigma(t) / path.alpha(t)


def edm_sigma_to_time(sigma_edm: Number, path: AffinePath, iterations: int = 60) -> Tensor:
    """Inverse of :func:`time_to_edm_sigma`. Closed forms: linear ``t = 1 / (1 + sigma)``,
    VP-cosine ``t = (2/pi) atan2(1, sigma)`` (``sigma_edm = cot(pi t / 2)``). Other paths:
    bisection on [0, 1] (``sigma/alpha`` decreases in t), ``iterations`` halvings
    (60 reach float64 resolution), elementwise and without host syncs."""
    s = _f(sigma_edm)
    if type(path) is LinearPath:
        return 1.0 / (1.0 + s)
    if type(path) is VPCosinePath:
        return torch.atan2(torch.ones_like(s), s) * (2.0 / math.pi)
    lo, hi = torch.zeros_like(s), torch.ones_like(s)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        too_noisy = path.sigma(mid) > s * path.alpha(mid)  # sigma_edm(mid) > target: t is larger
        lo, hi = torch.where(too_noisy, mid, lo), torch.where(too_noisy, hi, mid)
    return 0.5 * (lo + hi)


def edm_x_to_path_x(x_edm: Tensor, t: Tensor, path: AffinePath) -> Tensor:
    """``x_t = alpha(t) x_edm`` (``t`` of shape ``(B,)`` or scalar)."""
    return _alpha_like(t, path, x_edm) * x_edm


def path_x_to_edm_x(x_t: Tensor, t: Tensor, path: AffinePath) -> Tensor:
    """``x_edm = x_t / alpha(t)``. EDM's denoiser ``D(x_edm; sigma)`` predicts the data: it
    is our ``"data"`` parametrization unchanged."""
    return x_t / _alpha_like(t, path, x_t)


def _alpha_like(t: Tensor, path: AffinePath, x: Tensor) -> Tensor:
    return expand_t(path.alpha(torch.as_tensor(t, dtype=x.dtype, device=x.device)), x)


# --- diffusers flow matching (FlowMatchEulerDiscreteScheduler), LinearPath -------------------


def diffusers_sigma_to_time(sigma: Number) -> Tensor:
    """diffusers flow-match ``sigma`` in [0, 1]: ``x = (1 - sigma) x_data + sigma eps`` ->
    ``t = 1 - sigma`` on :class:`LinearPath`."""
    return _noise_fraction_to_time(sigma, 1.0)


def time_to_diffusers_sigma(t: Number) -> Tensor:
    """``t -> sigma = 1 - t``."""
    return _time_to_noise_fraction(t, 1.0)


def diffusers_timestep_to_time(timestep: Number, num_train_timesteps: int = 1000) -> Tensor:
    """diffusers flow-match ``timestep = sigma * num_train_timesteps`` -> ``t = 1 - timestep/N``."""
    _check_T(num_train_timesteps)
    return diffusers_sigma_to_time(_f(timestep) / num_train_timesteps)


def time_to_diffusers_timestep(t: Number, num_train_timesteps: int = 1000) -> Tensor:
    """``t -> timestep = (1 - t) N`` (a float, as diffusers keeps it)."""
    _check_T(num_train_timesteps)
    return time_to_diffusers_sigma(t) * num_train_timesteps


def diffusers_flow_output_to_velocity(output: Tensor) -> Tensor:
    """diffusers flow-match models output ``eps - x_data = d x / d sigma``; with
    ``t = 1 - sigma`` our velocity is ``d x_t / dt = x_data - eps = -output``."""
    return -output


def velocity_to_diffusers_flow_output(v: Tensor) -> Tensor:
    """``output = -v`` (inverse of :func:`diffusers_flow_output_to_velocity`)."""
    return -v
