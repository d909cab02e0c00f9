"""Training-time distributions over t in [0, 1] and the time shift.

Each sampler is a small frozen dataclass with ``__call__(n, device, dtype, generator)``
returning ``t`` of shape ``(n,)``. Because t = 1 is data in modaflow (DESIGN.md), the
formulas from papers that put noise at t = 1 are flipped on the lines that implement them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["UniformTime", "LogitNormalTime", "ModeTime", "shift_time", "TimeSampler"]


def shift_time(t: Tensor, shift: float) -> Tensor:
    """Resolution / time shift (Esser et al. 2024, arXiv 2403.03206, eq. 23):
    with noise level ``n = 1 - t``, ``n' = shift n / (1 + (shift - 1) n)``; returns
    ``t' = 1 - n'``. ``shift > 1`` spends more time near the source (t = 0); ``shift = 1``
    is the identity. Maps [0, 1] onto itself monotonically, keeping both ends fixed."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0; got {shift}")
    n = 1.0 - t
    return 1.0 - shift * n / (1.0 + (shift - 1.0) * n)


def _uniform(n: int, device, dtype, generator) -> Tensor:
    return torch.rand(n, device=device, dtype=dtype, generator=generator)


@dataclass(frozen=True)
class UniformTime:
    """t ~ U[0, 1), then the time shift (``shift = 1``: none)."""

    shift: float = 1.0
    """Time shift applied after drawing (see :func:`shift_time`)."""

    def __call__(self, n: int, device=None, dtype=torch.float32, generator: torch.Generator | None = None) -> Tensor:
        return shift_time(_uniform(n, device, dtype, generator), self.shift)


@dataclass(frozen=True)
class LogitNormalTime:
    """Logit-normal: ``t = sigmoid(u)``, u ~ N(m, s^2) (Esser et al. 2024, arXiv 2403.03206,
    eq. 19). Their density is over the noise level; with ``m`` its location, ours is
    ``sigmoid(-u)``, so ``m > 0`` puts mass near the source as in the paper."""

    m: float = 0.0
    """Location of the underlying normal (paper convention: m > 0 favours noisier times)."""
    s: float = 1.0
    """Scale of the underlying normal; must be > 0."""
    shift: float = 1.0
    """Time shift applied after drawing."""

    def __post_init__(self) -> None:
        if self.s <= 0:
            raise ValueError(f"LogitNormalTime.s must be > 0; got {self.s}")

    def __call__(self, n: int, device=None, dtype=torch.float32, generator: torch.Generator | None = None) -> Tensor:
        u = self.m + self.s * torch.randn(n, device=device, dtype=dtype, generator=generator)
        return shift_time(torch.sigmoid(-u), self.shift)  # noise level sigmoid(u) -> t = 1 - it


@dataclass(frozen=True)
class ModeTime:
    """Mode sampling with heavy tails (Esser et al. 2024, arXiv 2403.03206, eq. 20):
    noise level ``f(u) = 1 - u - scale (cos^2(pi u / 2) - 1 + u)``, u ~ U[0, 1); ``t = 1 - f``.
    ``scale`` in [-1, 2/(pi - 2)] keeps f monotone; 0 gives uniform."""

    scale: float = 1.29
    """Mode scale s of the paper; must lie in [-1, 2 / (pi - 2)]."""
    shift: float = 1.0
    """Time shift applied after drawing."""

    def __post_init__(self) -> None:
        hi = 2.0 / (math.pi - 2.0)
        if not -1.0 <= self.scale <= hi:
            raise ValueError(f"ModeTime.scale must lie in [-1, {hi:.4f}]; got {self.scale}")

    def __call__(self, n: int, device=None, dtype=torch.float32, generator: torch.Generator | None = None) -> Tensor:
        u = _uniform(n, device, dtype, generator)
        noise = 1.0 - u - self.scale * (torch.cos(0.5 * math.pi * u) ** 2 - 1.0 + u)
        return shift_time(1.0 - noise, self.shift)


TimeSampler = UniformTime | LogitNormalTime | ModeTime
