"""FLM's time reparameterization for a vocabulary of ``K`` tokens.

On the path ``x_gamma = (1 - gamma) eps + gamma onehot(k)``, ``eps ~ N(0, I_K)``, the
probability that ``argmax x_gamma`` is the right token is (FLM, "One-step Language Modeling
via Continuous Denoising", 2026, its time reparameterization; REFERENCE §3)::

    q(gamma) = E_{z ~ N(0,1)} [ Phi(z + gamma / (1 - gamma))^(K - 1) ]

(token ``j != k`` loses iff ``eps_j < eps_k + gamma/(1-gamma)``), and the network's time is its
normalisation ``t = K/(K-1) (q - 1/K)`` in [0, 1]. ``gamma(t)`` inverts a lookup table built
once per ``K`` in float64 (Gauss-Hermite quadrature in ``z``, ``Phi^(K-1)`` in log space).
For K = 2 the closed form is ``q = Phi(a / sqrt 2)``, ``a = gamma / (1 - gamma)`` (tests).

Effective signal-to-noise ratio of an embedded input. The network does not see ``x_gamma``
but its projection ``x_gamma W`` by a ``K x d`` embedding, ``d < K``. Whitened by the noise
covariance ``(1 - gamma)^2 W^T W``, the token ``k``'s code is ``a W_k (W^T W)^{-1/2}``, and
the squared code lengths sum to ``a^2 tr(W (W^T W)^{-1} W^T) = a^2 d`` whatever ``W`` is (a
rescaled or learned ``W`` cannot change it): on average ``d / K`` of the one-hot's ``a^2``.
With ``snr_scale = d / K`` the table uses ``a_eff = sqrt(snr_scale) a`` in ``q`` -- the
argmax probability of a one-hot at that ratio, which matches the maximum-likelihood decoding
accuracy from ``x_gamma W`` for a random ``W`` (tests: K = 512, d = 64). ``snr_scale = 1`` is
the one-hot table of the FLM paper.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["argmax_probability", "TimeReparam"]


def argmax_probability(gamma: np.ndarray, K: int, nodes: int = 160, snr_scale: float = 1.0) -> np.ndarray:
    """``q(gamma)`` for an array of ``gamma`` in [0, 1) (float64), by ``nodes``-point
    probabilists' Gauss-Hermite quadrature of ``E_z[Phi(z + a)^(K-1)]``, with
    ``a = sqrt(snr_scale) gamma / (1 - gamma)`` (module docstring: the embedded input's ratio)."""
    if snr_scale <= 0:
        raise ValueError(f"snr_scale must be > 0; got {snr_scale}")
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / math.sqrt(2 * math.pi)
    g = np.asarray(gamma, dtype=np.float64)
    a = math.sqrt(snr_scale) * g / (1.0 - g)  # a_eff = sqrt(d/K) gamma/(1-gamma) for an embedded input
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
    """The tables ``t(gamma)`` and ``gamma(t)`` for vocabulary size ``K`` and the input's
    ``snr_scale`` (1: the one-hot itself; ``d / K``: its ``d``-dimensional embedding, module
    docstring) (float64 buffers, not saved: they are a function of ``K`` and ``snr_scale``).
    Shapes: any tensor in, same shape out."""

    def __init__(self, K: int, points: int = 4097, snr_scale: float = 1.0) -> None:
        super().__init__()
        if K < 2:
            raise ValueError(f"K (vocabulary size) must be >= 2; got {K}")
        if not snr_scale > 0:
            raise ValueError(f"snr_scale must be > 0; got {snr_scale}")
        self.K, self.snr_scale = K, float(snr_scale)
        u = np.linspace(-14.0, 14.0 + max(0.0, -math.log(snr_scale)), points)  # reach t = 1 when a is scaled down
        gamma = np.concatenate([[0.0], 1.0 / (1.0 + np.exp(-u))])
        q = argmax_probability(gamma, K, snr_scale=snr_scale)
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
        return f"K={self.K}, snr_scale={self.snr_scale:.4g}"
