"""Gaussian closed-form skip: start sampling at ``t0 > 0`` from the exact flow of the
Gaussian fitted to the data.

For Gaussian data the probability-flow ODE is linear and solvable in closed form (Wang &
Vastola 2023, "Diffusion models generate images like painters: an analytical theory of
outline first, details later", arXiv 2303.02490); trained networks at high noise are close
to that Gaussian (linear) score, so the first part of a sampling trajectory can be replaced
by the closed form ("analytical teleportation", Wang & Vastola 2023, "The hidden linear
structure in score-based models and its application", arXiv 2311.10892, which saves 15-30%
of the steps on image models). Here:

1. :meth:`GaussianSkip.fit` estimates the data mean and covariance (flattening ``(N, *D)``
   to ``(N, prod D)``), with Ledoit–Wolf shrinkage towards a scaled identity when ``D`` is
   large compared with ``N`` (Ledoit & Wolf 2004, J. Multivariate Anal. 88(2):365–411,
   "A well-conditioned estimator for large-dimensional covariance matrices");
2. :meth:`GaussianSkip.start` maps source noise ``x0`` (t = 0) to ``x_{t0}`` with the exact
   flow map of that Gaussian on the model's path,
   :meth:`modaflow.core.gaussian.GaussianOracle.flow_map` ``(0, t0, x0)``;
3. the sampler continues from ``t0`` on a grid that starts there
   (``time_grid(steps, t0=t0)``), with :func:`modaflow.core.ode.solve_ode` or
   :func:`modaflow.core.sde.solve_sde`: :func:`sample_with_skip` does both.

For Gaussian data with the exact velocity the skip is exact: skipping to any ``t0`` and
solving to 1 gives the same point as the flow map from 0 to 1. For other data it saves the
steps of ``[0, t0]`` at the cost of the Gaussian approximation there. On a grid of ``N``
steps, taking ``t0`` on the grid (``t0 = time_grid(N)[k]``) with ``steps = N - k`` keeps
the remaining times identical and saves exactly ``k / N`` of the field evaluations.

The covariance is a dense ``(D, D)`` float64 matrix with an eigendecomposition: fine up
to a few thousand dimensions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .gaussian import GaussianOracle
from .ode import ODE_METHODS, Field, SolveResult, solve_ode, time_grid
from .paths import AffinePath
from .sde import Diffusion, solve_sde
from .tensors import check_batch, check_finite

__all__ = ["ledoit_wolf", "GaussianSkip", "sample_with_skip"]


def ledoit_wolf(x: Tensor, shrinkage: float | None = None) -> tuple[Tensor, Tensor, float]:
    """Mean ``(D,)``, shrunk covariance ``(1 - rho) S + rho m I`` ``(D, D)`` and ``rho`` in
    [0, 1] of ``x`` ``(N, D)``, in float64; ``S`` is the 1/N sample covariance and
    ``m = tr(S) / D``. ``shrinkage=None`` estimates ``rho`` as Ledoit & Wolf 2004 (sec. 3.3,
    the sample estimates ``m, d^2, b_bar^2, b^2`` with the scaled Frobenius norm
    ``||A||^2 = tr(A A^T) / D``); a float fixes it."""
    x = x.to(torch.float64)
    N, D = x.shape
    mean = x.mean(0)
    xc = x - mean
    S = xc.T @ xc / N
    m = torch.trace(S) / D  # <S, I>
    eye = torch.eye(D, dtype=x.dtype, device=x.device)
    if shrinkage is None:
        d2 = ((S - m * eye) ** 2).sum() / D  # ||S - m I||^2
        # b_bar^2 = (1/N^2) sum_n ||x_n x_n^T - S||^2 = (1/N^2) (sum_n |x_n|^4 - N ||S||^2)
        b2_bar = ((xc**2).sum(1).pow(2).sum() - N * (S**2).sum()) / (N**2 * D)
        b2 = torch.minimum(b2_bar, d2)
        rho = float(b2 / d2) if float(d2) > 0 else 1.0  # S already a multiple of I: nothing to shrink
    elif 0.0 <= shrinkage <= 1.0:
        rho = float(shrinkage)
    else:
        raise ValueError(f"shrinkage must be None (Ledoit-Wolf) or in [0, 1]; got {shrinkage}")
    return mean, (1 - rho) * S + rho * m * eye, rho


class GaussianSkip:
    """The closed-form start of a sampler for data shaped ``event_shape``.

    Args:
        oracle: the Gaussian model of the data (mean and covariance of the flattened data)
            on the path the sampler's field was trained on.
        event_shape: the shape ``D`` of one sample (``prod D`` = the oracle's dimension).

    Attributes:
        shrinkage: the covariance shrinkage used by :meth:`fit` (``None`` when built directly).
    """

    def __init__(self, oracle: GaussianOracle, event_shape: tuple[int, ...]) -> None:
        n = math.prod(int(d) for d in event_shape)
        if n != oracle.dim:
            raise ValueError(f"event_shape {tuple(event_shape)} has {n} entries but the oracle has dimension {oracle.dim}")
        self.oracle, self.event_shape = oracle, tuple(int(d) for d in event_shape)
        self.shrinkage: float | None = None

    @classmethod
    def fit(cls, data: Tensor, path: AffinePath, shrinkage: float | None = None) -> "GaussianSkip":
        """Fit the Gaussian to ``data`` ``(N, *D)``.

        Args:
            data: training samples, flattened to ``(N, prod D)``.
            path: the model's affine path (Gaussian source).
            shrinkage: ``None`` for the Ledoit–Wolf intensity estimated from the data, or a
                fixed ``rho`` in [0, 1] (``0``: the plain 1/N sample covariance).
        """
        check_batch("data", data)
        check_finite("data", data)
        N = data.shape[0]
        if N < 2:
            raise ValueError(f"data needs at least 2 samples to fit a covariance; got {N}")
        mean, cov, rho = ledoit_wolf(data.reshape(N, -1), shrinkage)
        cov = (cov + cov.T) / 2
        if float(torch.linalg.eigvalsh(cov)[0]) <= 0:
            raise ValueError(f"the fitted covariance of data {tuple(data.shape)} is singular (shrinkage {rho:.3g}); "
                             f"use shrinkage > 0 or more samples")
        skip = cls(GaussianOracle(mean, cov, path), tuple(data.shape[1:]))
        skip.shrinkage = rho
        return skip

    def start(self, x0: Tensor, t0: float) -> Tensor:
        """``x_{t0}`` ``(B, *D)`` from source noise ``x0`` ``(B, *D)`` at t = 0 by the exact
        Gaussian flow map ``X(0, t0, x0)`` (Wang & Vastola 2023, arXiv 2303.02490)."""
        check_batch("x0", x0)
        if tuple(x0.shape[1:]) != self.event_shape:
            raise ValueError(f"x0 must have shape (B, {', '.join(map(str, self.event_shape))}); got {tuple(x0.shape)}")
        if not 0.0 <= t0 <= 1.0:
            raise ValueError(f"t0 must lie in [0, 1]; got {t0}")
        B = x0.shape[0]
        s = torch.zeros((), dtype=x0.dtype, device=x0.device)
        return self.oracle.flow_map(s, s + t0, x0.reshape(B, -1)).reshape(x0.shape)


def sample_with_skip(
    field: Field,
    x0: Tensor,
    skip: GaussianSkip,
    t0: float,
    steps: int,
    method: str = "euler",
    shift: float = 1.0,
    diffusion: Diffusion = 0.0,
    generator: torch.Generator | None = None,
) -> SolveResult:
    """Sample from noise ``x0`` ``(B, *D)``: jump to ``t0`` in closed form, then integrate
    ``field`` over ``time_grid(steps, t0=t0, shift=shift)`` to t = 1.

    Args:
        method: a fixed-step ODE method (:data:`modaflow.core.ode.ODE_METHODS`) or ``"em"``
            (Euler–Maruyama, :func:`modaflow.core.sde.solve_sde` on ``skip``'s path with
            ``diffusion`` and ``generator``).
        steps: steps on ``[t0, 1]``.

    Returns:
        The solver's :class:`~modaflow.core.ode.SolveResult`; ``nfe`` counts the field calls
        after ``t0`` (the closed-form jump costs none).
    """
    if method != "em" and method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS} or 'em'; got {method!r}")
    x_t0 = skip.start(x0, t0)
    grid = time_grid(steps, t0=t0, shift=shift, device=x0.device, dtype=x0.dtype)
    if method == "em":
        return solve_sde(field, x_t0, grid, skip.oracle.path, diffusion, generator=generator)
    return solve_ode(field, x_t0, grid, method)
