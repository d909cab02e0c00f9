"""DDIM for any affine path with a Gaussian source, and ancestral DDPM.

DDIM (Song, Meng & Ermon 2021, arXiv 2010.02502, eq. 12) in our convention: between grid
times ``t < t'`` (t' nearer the data) with coefficients ``(alpha, sigma) -> (alpha', sigma')``,
from the model's ``(x1_hat, x0_hat)`` (data and noise estimates, :func:`to_data_noise`):

    x_{t'} = alpha' x1_hat + sqrt(sigma'^2 - c^2) x0_hat + c * xi,          xi ~ N(0, I).

Whatever ``c`` in ``[0, sigma']``, if ``x_t ~ N(alpha x1, sigma^2 I)`` given ``x1`` then
``x_{t'} ~ N(alpha' x1, sigma'^2 I)``: the marginals are those of the path. ``eta`` scales
``c`` between 0 (deterministic DDIM, a first-order solver of the probability-flow ODE) and
the posterior standard deviation of the Markov chain that noises ``x_{t'}`` into ``x_t``,
``x_t = r x_{t'} + sqrt(sigma^2 - r^2 sigma'^2) n`` with ``r = alpha / alpha'``:

    c = eta * (sigma' / sigma) * sqrt(sigma^2 - (alpha sigma' / alpha')^2).

Gaussian conditioning of ``x_{t'} ~ N(alpha' x1, sigma'^2)`` on ``x_t`` gives the variance
``sigma'^2 (sigma^2 - r^2 sigma'^2) / sigma^2``. On a variance-preserving path
(``alpha^2 + sigma^2 = 1``, ``alpha^2 = abar``) this is the paper's eq. 16,
``sigma_t(eta) = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1})``,
and ``eta = 1`` on consecutive DDPM steps is DDPM's posterior (Ho et al. 2020, arXiv
2006.11239, eqs. 6-7). At ``t' = 1`` (``sigma' = 0``) the step returns ``x1_hat``.

DPM-Solver++(2M) (:func:`solve_dpm2m`; Lu et al. 2022, arXiv 2211.01095, Alg. 2) is the
second-order multistep solver of the same ODE in data space: with ``lambda = log(alpha / sigma)``
and ``h = lambda' - lambda``,

    x_{t'} = (sigma' / sigma) x_t + alpha' (1 - e^{-h}) D,   e^{-h} = (alpha sigma') / (sigma alpha'),
    D = (1 + 1 / (2 r)) x1_hat - (1 / (2 r)) x1_hat_prev,    r = h_prev / h,

which is DDIM with the data estimate extrapolated linearly in ``lambda``. Steps whose
``lambda`` interval is infinite (leaving ``t = 0`` where ``alpha = 0``, and landing on
``t = 1`` where ``sigma' = 0``) take ``D = x1_hat``, the first-order (DDIM) step, so the last
step returns the data estimate.

Ancestral DDPM (:func:`solve_ddpm`) samples ``q(x_{k-1} | x_k, x0 = x1_hat)`` on every
integer step of a :class:`~modaflow.core.paths.DiscreteVPPath`, with Ho's coefficients
computed from the betas (eq. 7), independently of the DDIM code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .ode import SolveResult, grid_times
from .parametrizations import Parametrization, to_data_noise
from .paths import AffinePath, DiscreteVPPath

__all__ = ["ddim_step", "solve_ddim", "solve_dpm2m", "ddpm_grid", "solve_ddpm"]

Model = Callable[[Tensor, Tensor], Tensor]


def ddim_step(
    x1_hat: Tensor,
    x0_hat: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    alpha_next: Tensor,
    sigma_next: Tensor,
    eta: float,
    noise: Tensor | None,
) -> Tensor:
    """One DDIM step (Song et al. 2021, arXiv 2010.02502, eq. 12, in our convention).

    ``x1_hat, x0_hat, noise`` are ``(B, *D)``; the coefficients broadcast against them
    (``(B, 1, ..., 1)`` or scalars). ``noise`` may be ``None`` when ``eta == 0``. With
    ``eta > 0`` the step must go towards the data (``sigma_next < sigma``); backwards the
    stochastic part vanishes (the variance is clamped at 0).
    """
    if eta == 0.0:
        return alpha_next * x1_hat + sigma_next * x0_hat
    if noise is None:
        raise ValueError("ddim_step needs noise when eta > 0")
    r = alpha * sigma_next / alpha_next
    c2 = eta**2 * (sigma_next / sigma) ** 2 * torch.clamp(sigma**2 - r**2, min=0.0)  # eq. 16, generalised
    c2 = torch.minimum(c2, sigma_next**2)  # eta > 1 is capped at the full noise level
    return alpha_next * x1_hat + torch.sqrt(sigma_next**2 - c2) * x0_hat + torch.sqrt(c2) * noise


def _coefficients(path: AffinePath, times: Tensor, x: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """alpha(t), sigma(t) for every grid time ``(K+1, B)``, reshaped to ``(B, 1, ..., 1)``."""
    shape = times.shape + (1,) * (x.ndim - 1)
    return path.alpha(times).reshape(shape).unbind(0), path.sigma(times).reshape(shape).unbind(0)


def _randn(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def solve_ddim(
    model: Model,
    kind: Parametrization,
    path: AffinePath,
    x: Tensor,
    grid: Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> SolveResult:
    """DDIM sampling on ``grid`` for any affine path with a Gaussian source.

    Args:
        model: ``(x (B, *D), t (B,)) -> prediction`` of kind ``kind``.
        kind: ``"velocity"``, ``"data"``, ``"noise"`` or ``"score"``.
        path: the path the model was trained on.
        x: samples at ``grid[..., 0]``, ``(B, *D)``.
        grid: times ``(K+1,)`` or ``(B, K+1)``; increasing for sampling (``eta = 0`` may also
            run backwards, DDIM inversion). For a DDPM model use :func:`ddpm_grid`.
        eta: 0 deterministic, 1 DDPM-like posterior noise (see the module docstring).
        generator: random generator for the noise (``eta > 0``).
        return_trajectory: also return every state, ``(K+1, B, *D)``.

    Returns:
        :class:`SolveResult` with ``nfe = K``.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    if not path.gaussian_source:
        raise ValueError(f"DDIM needs a path with a Gaussian source; got {path!r}")
    times = grid_times(grid, x)  # (K+1, B)
    K = times.shape[0] - 1
    alphas, sigmas = _coefficients(path, times, x)
    ts = times.unbind(0)
    states = [x] if return_trajectory else None
    for k in range(K):
        x1_hat, x0_hat = to_data_noise(model(x, ts[k]), kind, x, ts[k], path)
        noise = _randn(x, generator) if eta > 0 else None
        x = ddim_step(x1_hat, x0_hat, alphas[k], sigmas[k], alphas[k + 1], sigmas[k + 1], eta, noise)
        if states is not None:
            states.append(x)
    trajectory = torch.stack(states) if states is not None else None
    return SolveResult(x=x, trajectory=trajectory, nfe=K)


def solve_dpm2m(model: Model, kind: Parametrization, path: AffinePath, x: Tensor, grid: Tensor,
                return_trajectory: bool = False) -> SolveResult:
    """DPM-Solver++(2M) sampling on ``grid`` (module docstring; Lu et al. 2022, arXiv
    2211.01095, Alg. 2) for any affine path with a Gaussian source; one network evaluation per
    step, second order where the previous step's ``lambda`` is finite.

    Args:
        model: ``(x (B, *D), t (B,)) -> prediction`` of kind ``kind``.
        kind: ``"velocity"``, ``"data"``, ``"noise"`` or ``"score"``.
        path: the path the model was trained on.
        x: samples at ``grid[..., 0]``, ``(B, *D)``.
        grid: increasing times ``(K+1,)`` or ``(B, K+1)`` (for a DDPM model, :func:`ddpm_grid`).
        return_trajectory: also return every state, ``(K+1, B, *D)``.

    Returns:
        :class:`SolveResult` with ``nfe = K``.
    """
    if not path.gaussian_source:
        raise ValueError(f"DPM-Solver++ needs a path with a Gaussian source; got {path!r}")
    times = grid_times(grid, x)  # (K+1, B)
    K = times.shape[0] - 1
    t64 = times.double()
    a, s = path.alpha(t64), path.sigma(t64)  # (K+1, B), float64
    lam = torch.log(a) - torch.log(s)  # -inf where alpha = 0, +inf where sigma = 0
    if bool((lam[1:] <= lam[:-1]).any()):
        raise ValueError("DPM-Solver++ needs grid times that increase strictly (noise at t = 0 towards data at t = 1)")
    finite = torch.isfinite(lam).all(dim=1)
    # second order where lambda is finite at t_{k-1}, t_k and t_{k+1} (one host sync for the whole grid)
    second = [False] + (finite[:-2] & finite[1:-1] & finite[2:]).tolist()
    shape = (-1,) + (1,) * (x.ndim - 1)
    ts = times.unbind(0)
    states = [x] if return_trajectory else None
    prev: Tensor | None = None  # the previous step's data estimate
    for k in range(K):
        x1_hat, _ = to_data_noise(model(x, ts[k]), kind, x, ts[k], path)
        if prev is None or not second[k]:
            d = x1_hat  # first order: leaving alpha = 0, landing on sigma = 0, or the first step
        else:
            r = ((lam[k] - lam[k - 1]) / (lam[k + 1] - lam[k])).to(x.dtype).reshape(shape)  # r_i = h_{i-1} / h_i
            d = (1 + 1 / (2 * r)) * x1_hat - (1 / (2 * r)) * prev  # Alg. 2, D_i
        ratio = (s[k + 1] / s[k]).to(x.dtype).reshape(shape)
        gain = (a[k + 1] * (1 - a[k] * s[k + 1] / (s[k] * a[k + 1]))).to(x.dtype).reshape(shape)  # alpha' (1 - e^-h)
        x = ratio * x + gain * d  # Alg. 2: (sigma'/sigma) x - alpha' (e^-h - 1) D
        prev = x1_hat
        if states is not None:
            states.append(x)
    trajectory = torch.stack(states) if states is not None else None
    return SolveResult(x=x, trajectory=trajectory, nfe=K)


def _check_discrete(path: AffinePath) -> DiscreteVPPath:
    if not isinstance(path, DiscreteVPPath):
        raise TypeError(f"path must be a DiscreteVPPath (a DDPM beta schedule); got {path!r}")
    return path


def ddpm_grid(
    path: DiscreteVPPath,
    steps: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The DDIM sub-sequence of DDPM integer steps as times, shape ``(steps+1,)``.

    Integer steps ``k_j = round(T - j T / steps)``, ``j = 0..steps``, run from ``k = T``
    (pure noise, t = 0) to ``k = 0`` (data, t = 1), evenly spaced ("linear" skipping of
    Song et al. 2021, arXiv 2010.02502, sec. 4.2); time ``t = 1 - k / T`` (the DDPM step
    convention of :mod:`modaflow.core.conventions`). ``steps = T`` gives every step.
    """
    T = _check_discrete(path).num_steps
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int in [1, T = {T}]; got {steps!r}")
    k = torch.round(torch.linspace(T, 0, steps + 1, dtype=torch.float64))
    return (1.0 - k / T).to(device=device, dtype=dtype)


def solve_ddpm(
    model: Model,
    kind: Parametrization,
    path: DiscreteVPPath,
    x: Tensor,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> SolveResult:
    """Ancestral DDPM sampling over all ``T`` integer steps, ``k = T -> 0``.

    Each step draws ``x_{k-1} ~ q(x_{k-1} | x_k, x0 = x1_hat) = N(mu_k, beta_tilde_k I)``
    (Ho et al. 2020, arXiv 2006.11239, eqs. 6-7), where ``x1_hat`` is the model's data
    estimate at ``t = 1 - k/T``. ``beta_tilde_1 = 0``, so the last step is noise-free.

    Args:
        model: ``(x (B, *D), t (B,)) -> prediction`` of kind ``kind``.
        kind: the model's parametrization.
        path: the DDPM schedule.
        x: samples at step ``T`` (t = 0), ``(B, *D)``.
        generator: random generator for the noise.
        return_trajectory: also return every state, ``(T+1, B, *D)``.

    Returns:
        :class:`SolveResult` with ``nfe = T``.
    """
    T = _check_discrete(path).num_steps
    kw = dict(device=x.device, dtype=x.dtype)
    beta = path.betas
    abar = torch.cat([torch.ones(1, dtype=torch.float64), path.alphas_cumprod])  # abar_0..abar_T
    # Ho et al. 2020, eq. 7, for k = 1..T (index k-1):
    coef_x0 = (abar[:-1].sqrt() * beta / (1 - abar[1:])).to(**kw).unbind(0)
    coef_xt = ((1 - beta).sqrt() * (1 - abar[:-1]) / (1 - abar[1:])).to(**kw).unbind(0)
    std = ((1 - abar[:-1]) / (1 - abar[1:]) * beta).sqrt().to(**kw).unbind(0)
    t_of_k = (1.0 - torch.arange(T + 1, dtype=torch.float64) / T).to(**kw)
    ts = t_of_k[:, None].expand(-1, x.shape[0]).unbind(0)
    states = [x] if return_trajectory else None
    for k in range(T, 0, -1):
        x1_hat, _ = to_data_noise(model(x, ts[k]), kind, x, ts[k], path)
        mean = coef_x0[k - 1] * x1_hat + coef_xt[k - 1] * x  # eq. 7, mu_tilde
        x = mean + std[k - 1] * _randn(x, generator)  # eq. 6, variance beta_tilde
        if states is not None:
            states.append(x)
    trajectory = torch.stack(states) if states is not None else None
    return SolveResult(x=x, trajectory=trajectory, nfe=T)
