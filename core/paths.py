"""Probability paths between a source (t = 0) and the data (t = 1).

Affine paths ``x_t = alpha(t) x1 + sigma(t) x0`` (Lipman et al. 2023, arXiv 2210.02747,
eq. 16 with time flipped to our convention; Albergo & Vanden-Eijnden 2023, arXiv 2209.15571),
stochastic interpolants ``x_t = alpha(t) x1 + sigma(t) x0 + gamma(t) z`` (Albergo, Boffi &
Vanden-Eijnden 2023, arXiv 2303.08797, eq. 2.1) and bridges between two data distributions.

Every path gives ``alpha``, ``sigma`` and their time derivatives for ``t`` of shape ``(B,)``;
:meth:`AffinePath.sample` returns a :class:`PathSample`. Shapes: ``x0, x1, z`` are
``(B, *D)``; coefficients come back with the shape of ``t``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .tensors import expand_t

__all__ = [
    "PathSample",
    "AffinePath",
    "LinearPath",
    "VPCosinePath",
    "DiscreteVPPath",
    "StochasticInterpolant",
    "bridge",
]


@dataclass(frozen=True)
class PathSample:
    """One draw from a path.

    Attributes:
        t: times, ``(B,)``.
        x0: source samples (noise, or the source modality), ``(B, *D)``.
        x1: target (data) samples, ``(B, *D)``.
        x_t: the interpolant at ``t``, ``(B, *D)``.
        dx_t: its time derivative ``d/dt x_t`` given ``(x0, x1, z)``, the conditional
            velocity that flow matching regresses on, ``(B, *D)``.
        eps: the effective noise ``(x_t - alpha x1) / sigma``: ``x0`` for affine paths,
            ``(sigma_0 x0 + gamma z) / sigma`` for stochastic interpolants, ``(B, *D)``.
        z: the latent noise of a stochastic interpolant, or ``None``.
    """

    t: Tensor
    x0: Tensor
    x1: Tensor
    x_t: Tensor
    dx_t: Tensor
    eps: Tensor
    z: Tensor | None = None


class AffinePath(ABC):
    """``x_t = alpha(t) x1 + sigma(t) x0`` with ``alpha(1) = 1, sigma(1) = 0`` (data at t = 1).

    Subclasses implement :meth:`alpha`, :meth:`sigma`, :meth:`d_alpha`, :meth:`d_sigma`
    elementwise on a tensor ``t`` of any shape.
    """

    gaussian_source: bool = True
    """True when x0 ~ N(0, I): then the noise and score parametrizations are defined."""

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Data coefficient alpha(t)."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Source coefficient sigma(t)."""

    @abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor:
        """d alpha / dt."""

    @abstractmethod
    def d_sigma(self, t: Tensor) -> Tensor:
        """d sigma / dt."""

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2) (Kingma et al. 2021, arXiv 2107.00630, eq. 3)."""
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """Interpolate: ``x_t = alpha x1 + sigma x0`` and ``dx_t = alpha' x1 + sigma' x0``."""
        if x0.shape != x1.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must have one shape")
        a, s = expand_t(self.alpha(t), x1), expand_t(self.sigma(t), x1)
        da, ds = expand_t(self.d_alpha(t), x1), expand_t(self.d_sigma(t), x1)
        return PathSample(t=t, x0=x0, x1=x1, x_t=a * x1 + s * x0, dx_t=da * x1 + ds * x0, eps=x0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearPath(AffinePath):
    """Rectified / conditional-OT path: alpha = t, sigma = 1 - t (Liu et al. 2022,
    arXiv 2209.03003, eq. 1; Lipman et al. 2023, arXiv 2210.02747, eq. 20)."""

    def alpha(self, t: Tensor) -> Tensor:
        return t

    def sigma(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)


class VPCosinePath(AffinePath):
    """Variance-preserving cosine path: alpha = sin(pi t / 2), sigma = cos(pi t / 2), so
    alpha^2 + sigma^2 = 1 (the trigonometric interpolant, Albergo & Vanden-Eijnden 2023,
    arXiv 2209.15571, sec. 2)."""

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * (1.0 - t))  # = cos(pi t / 2), exactly 0 at t = 1

    def d_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


class DiscreteVPPath(AffinePath):
    """A DDPM beta schedule as a continuous variance-preserving path.

    DDPM (Ho et al. 2020, arXiv 2006.11239, eq. 4) noises with
    ``x_k = sqrt(abar_k) x_data + sqrt(1 - abar_k) eps``, ``abar_k = prod_{i<=k} (1 - beta_i)``
    for integer steps ``k = 1..T``. With diffusion time ``s = 1 - t`` we interpolate
    ``L(s) = log abar`` piecewise linearly between the knots ``L(k/T) = log abar_k``
    (``L(0) = 0``), and set ``alpha(t) = exp(L/2)``, ``sigma(t) = sqrt(1 - exp(L))``.
    So the path matches DDPM **exactly** at every integer step: step ``k`` is time
    ``t = 1 - k/T`` (see :mod:`modaflow.core.conventions`). Note ``alpha(0) = sqrt(abar_T)``
    is small but not zero: the t = 0 marginal is not exactly N(0, I).

    Args:
        betas: ``beta_1..beta_T``, shape ``(T,)``, each in (0, 1).
    """

    def __init__(self, betas: Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must have shape (T,) with T >= 1; got {tuple(betas.shape)}")
        if not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must lie in the open interval (0, 1)")
        self.betas = betas
        self.num_steps = int(betas.numel())
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        """abar_1..abar_T, float64, shape (T,)."""
        self._knots = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(self.alphas_cumprod)])
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> "DiscreteVPPath":
        """Ho et al. 2020 (arXiv 2006.11239, sec. 4): betas linear from 1e-4 to 0.02, T = 1000."""
        return cls(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))

    @classmethod
    def cosine(cls, num_steps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> "DiscreteVPPath":
        """Nichol & Dhariwal 2021 (arXiv 2102.09672, eq. 17): abar(s) = f(s)/f(0),
        f(s) = cos^2(((s + offset)/(1 + offset)) pi/2), betas clipped at ``max_beta``."""
        s = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = torch.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2
        abar = f / f[0]
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
        return cls(betas)

    def _knots_like(self, t: Tensor) -> Tensor:
        key = (t.device, t.dtype)
        if key not in self._cache:
            self._cache[key] = self._knots.to(device=t.device, dtype=t.dtype)
        return self._cache[key]

    def _log_abar(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """L(s) and dL/ds at s = 1 - t (piecewise linear in s)."""
        knots = self._knots_like(t)
        T = self.num_steps
        u = (1.0 - t) * T
        k = torch.clamp(torch.floor(u.detach()), 0, T - 1).long()
        lo, hi = knots[k], knots[k + 1]
        slope = (hi - lo) * T
        return lo + (u - k.to(t.dtype)) * (hi - lo), slope

    def alpha(self, t: Tensor) -> Tensor:
        L, _ = self._log_abar(t)
        return torch.exp(0.5 * L)

    def sigma(self, t: Tensor) -> Tensor:
        L, _ = self._log_abar(t)
        return torch.sqrt(-torch.expm1(L))

    def d_alpha(self, t: Tensor) -> Tensor:
        L, dL_ds = self._log_abar(t)
        return -0.5 * torch.exp(0.5 * L) * dL_ds  # ds/dt = -1

    def d_sigma(self, t: Tensor) -> Tensor:
        L, dL_ds = self._log_abar(t)
        return torch.exp(L) * dL_ds / (2.0 * torch.sqrt(-torch.expm1(L)))  # d/dt sqrt(1 - e^L)

    def __repr__(self) -> str:
        b = self.betas
        return f"DiscreteVPPath(T={self.num_steps}, beta_1={b[0].item():.3g}, beta_T={b[-1].item():.3g})"


GammaShape = Literal["sqrt", "quadratic"]


class StochasticInterpolant(AffinePath):
    """``x_t = alpha(t) x1 + sigma_0(t) x0 + gamma(t) z``, z ~ N(0, I) independent
    (Albergo, Boffi & Vanden-Eijnden 2023, arXiv 2303.08797, eq. 2.1), on top of a base
    affine path ``(alpha, sigma_0)``.

    ``gamma(t) = scale * sqrt(t (1 - t))`` (``shape="sqrt"``, their eq. 2.6; TimeFlow's
    training noise of variance ``t(1 - t) 0.1^2``) or ``scale * t (1 - t)`` (``"quadratic"``,
    smooth at the endpoints).

    With a Gaussian source, ``sigma_0 x0 + gamma z`` is N(0, sigma^2 I) with
    ``sigma = sqrt(sigma_0^2 + gamma^2)``, and the marginal velocity ``E[dx_t | x_t]``
    equals that of the affine path ``(alpha, sigma)``. So :meth:`sigma` and :meth:`d_sigma`
    return that *effective* coefficient, and every parametrization conversion stays exact,
    while :meth:`sample` draws ``x0`` and ``z`` separately.

    With a data source (``gaussian_source=False``, see :func:`bridge`) only the velocity
    parametrization is exact when ``scale > 0``.
    """

    def __init__(
        self,
        base: AffinePath,
        scale: float,
        shape: GammaShape = "sqrt",
        gaussian_source: bool = True,
    ) -> None:
        if scale < 0:
            raise ValueError(f"scale must be >= 0; got {scale}")
        if shape not in ("sqrt", "quadratic"):
            raise ValueError(f"shape must be 'sqrt' or 'quadratic'; got {shape!r}")
        self.base, self.scale, self.shape = base, float(scale), shape
        self.gaussian_source = gaussian_source

    def gamma(self, t: Tensor) -> Tensor:
        """Latent-noise coefficient gamma(t); zero at t = 0 and t = 1."""
        if self.shape == "sqrt":
            return self.scale * torch.sqrt(torch.clamp(t * (1.0 - t), min=0.0))
        return self.scale * t * (1.0 - t)

    def d_gamma(self, t: Tensor) -> Tensor:
        """d gamma / dt. For ``"sqrt"`` it is infinite at t = 0, 1; ``t`` is clamped to
        [1e-6, 1 - 1e-6] there, which is where samplers and time samplers stay."""
        if self.shape == "sqrt":
            tc = torch.clamp(t, 1e-6, 1 - 1e-6)
            return self.scale * (1.0 - 2.0 * tc) / (2.0 * torch.sqrt(tc * (1.0 - tc)))
        return self.scale * (1.0 - 2.0 * t)

    def alpha(self, t: Tensor) -> Tensor:
        return self.base.alpha(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return self.base.d_alpha(t)

    def sigma(self, t: Tensor) -> Tensor:
        if not self.gaussian_source:
            return self.base.sigma(t)
        return torch.sqrt(self.base.sigma(t) ** 2 + self.gamma(t) ** 2)

    def d_sigma(self, t: Tensor) -> Tensor:
        if not self.gaussian_source:
            return self.base.d_sigma(t)
        s0, g = self.base.sigma(t), self.gamma(t)
        # d/dt sqrt(s0^2 + g^2) = (s0 s0' + g g') / sigma
        return (s0 * self.base.d_sigma(t) + g * self.d_gamma(t)) / torch.sqrt(s0**2 + g**2)

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor, z: Tensor | None = None) -> PathSample:
        """Draw ``z`` (unless given) and interpolate; ``dx_t`` includes ``gamma'(t) z``."""
        if x0.shape != x1.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must have one shape")
        if z is None:
            z = torch.randn_like(x1)
        a, s0, g = (expand_t(f(t), x1) for f in (self.alpha, self.base.sigma, self.gamma))
        da, ds0, dg = (expand_t(f(t), x1) for f in (self.d_alpha, self.base.d_sigma, self.d_gamma))
        x_t = a * x1 + s0 * x0 + g * z
        noise = s0 * x0 + g * z
        eps = noise / expand_t(self.sigma(t), x1) if self.gaussian_source else x0
        return PathSample(t=t, x0=x0, x1=x1, x_t=x_t, dx_t=da * x1 + ds0 * x0 + dg * z, eps=eps, z=z)

    def __repr__(self) -> str:
        return (
            f"StochasticInterpolant(base={self.base!r}, scale={self.scale}, shape={self.shape!r}, "
            f"gaussian_source={self.gaussian_source})"
        )


def bridge(base: AffinePath | None = None, noise: float = 0.0, shape: GammaShape = "sqrt") -> StochasticInterpolant:
    """A bridge between two data distributions (x0 from the source modality, not Gaussian):
    ``x_t = alpha(t) x1 + sigma(t) x0 + noise * g(t) z`` on ``base`` (linear by default;
    with ``noise > 0`` and ``shape="sqrt"``, a Brownian bridge, Albergo et al. 2023,
    arXiv 2303.08797, sec. 3.2). Only the velocity parametrization is exact for it."""
    return StochasticInterpolant(base or LinearPath(), noise, shape, gaussian_source=False)
