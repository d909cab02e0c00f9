"""FLM's time reparameterization for a vocabulary of ``K`` tokens.

On the path ``x_gamma = (1 - gamma) eps + gamma onehot(k)``, ``eps ~ N(0, I_K)``, the
probability that ``argmax x_gamma`` is the right token is (FLM, "One-step Language Modeling
via Continuous Denoising", 2026, its time reparameterization; REFERENCE §3)::

    q(gamma) = E_{z ~ N(0,1)} [ Phi(z + gamma / (1 - gamma))^(K - 1) ]

(token ``j != k`` loses iff ``eps_j < eps_k + gamma/(1-gamma)``), and the network's time is its
normalisation ``t = K/(K-1) (q - 1/K)`` in [0, 1]. ``gamma(t)`` inverts a lookup table built
once per ``K`` in float64 (Gauss-Hermite quadrature in ``z``, ``Phi^(K-1)`` in log space).
For K = 2 the closed form is ``q = Phi(a / sqrt 2)``, ``a = gamma / (1 - gamma)`` (tests).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["argmax_probability", "TimeReparam"]


def argmax_probability(gamma: np.ndarray, K: int, nodes: int = 160) -> np.ndarray:
    """``q(gamma)`` for an array of ``gamma`` in [0, 1) (float64), by ``nodes``-point
    probabilists' Gauss-Hermite quadrature of ``E_z[Phi(z + a)^(K-1)]``."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / math.sqrt(2 * math.pi)
    a = np.asarray(gamma, dtype=np.float64) / (1.0 - np.asarray(gamma, dtype=np.float64))
    logphi = torch.special.log_ndtr(torch.from_numpy(z[None, :] + a[..., None])).numpy()  # (..., nodes)
    return (np.exp((K - 1) * logphi) * w).sum(-1)


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of ``(xp, fp)`` (``xp`` increasing) at ``x``, clamped."""
    x = x.clamp(xp[0], xp[-1])
    i = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    w = (x - x0) / (x1 - x0).clamp_min(1e-300)
    return f0 + w * (f1 - f0)


class TimeReparam(nn.Module):
    """The tables ``t(gamma)`` and ``gamma(t)`` for vocabulary size ``K`` (float64 buffers,
    not saved: they are a function of ``K``). Shapes: any tensor in, same shape out."""

    def __init__(self, K: int, points: int = 4097) -> None:
        super().__init__()
        if K < 2:
            raise ValueError(f"K (vocabulary size) must be >= 2; got {K}")
        self.K = K
        u = np.linspace(-14.0, 14.0, points)
        gamma = np.concatenate([[0.0], 1.0 / (1.0 + np.exp(-u))])
        q = argmax_probability(gamma, K)
        t = np.clip(K / (K - 1) * (q - 1.0 / K), 0.0, 1.0)
        t = np.maximum.accumulate(t)  # exact q is increasing; remove quadrature wiggles
        gamma, t = np.append(gamma, 1.0), np.append(t, 1.0)
        # strictly increasing t for the inverse: keep the first gamma of each flat run
        keep = np.concatenate([[True], np.diff(t) > 0])
        self.register_buffer("gamma_grid", torch.from_numpy(gamma), persistent=False)
        self.register_buffer("t_grid", torch.from_numpy(t), persistent=False)
        self.register_buffer("t_inv", torch.from_numpy(t[keep]), persistent=False)
        self.register_buffer("gamma_inv", torch.from_numpy(gamma[keep]), persistent=False)

    def t_of_gamma(self, gamma: Tensor) -> Tensor:
        """``t(gamma) = K/(K-1) (q(gamma) - 1/K)``, in ``gamma``'s dtype."""
        return _interp(gamma.double(), self.gamma_grid, self.t_grid).to(gamma.dtype)

    def gamma_of_t(self, t: Tensor) -> Tensor:
        """The inverse ``gamma(t)``, in ``t``'s dtype."""
        return _interp(t.double(), self.t_inv, self.gamma_inv).to(t.dtype)

    def extra_repr(self) -> str:
        return f"K={self.K}"
