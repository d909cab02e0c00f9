"""Closed-form oracle for Gaussian data N(mu, Sigma) under any affine path with a Gaussian
source: exact marginals, log-density, posterior means, score, velocity and flow map.

With ``x_t = alpha x1 + sigma x0``, ``x1 ~ N(mu, Sigma)``, ``x0 ~ N(0, I)``:

* marginal ``p_t = N(alpha mu, K_t)``, ``K_t = alpha^2 Sigma + sigma^2 I``;
* ``E[x1 | x_t] = mu + alpha Sigma K_t^{-1} (x_t - alpha mu)``,
  ``E[x0 | x_t] = sigma K_t^{-1} (x_t - alpha mu)`` (Gaussian conditioning);
* score ``-K_t^{-1} (x_t - alpha mu)``; velocity ``alpha' E[x1|x_t] + sigma' E[x0|x_t]``
  (Lipman et al. 2024, arXiv 2412.06264, eq. 4.30 with the Gaussian posterior);
* flow map (the ODE is linear and diagonal in Sigma's eigenbasis ``Sigma = U diag(l) U^T``):
  ``X(s, t, x) = alpha_t mu + U diag(c_t / c_s) U^T (x - alpha_s mu)``,
  ``c_t = sqrt(alpha_t^2 l + sigma_t^2)`` (differentiate: ``c'/c`` reproduces the velocity).

For stochastic interpolants with a Gaussian source the path's effective sigma makes all of
this exact for the marginals. Shapes: ``x`` ``(B, D)``, ``t`` ``(B,)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .paths import AffinePath

__all__ = ["GaussianOracle"]


class GaussianOracle:
    """Exact quantities for data ``N(mean, cov)`` on ``path``.

    Args:
        mean: ``(D,)``.
        cov: ``(D, D)`` symmetric positive definite.
        path: an affine path with a Gaussian source.
    """

    def __init__(self, mean: Tensor, cov: Tensor, path: AffinePath) -> None:
        if not path.gaussian_source:
            raise ValueError(f"GaussianOracle needs a Gaussian source; {path!r} has a data source")
        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if mean.ndim != 1 or cov.shape != (mean.numel(), mean.numel()):
            raise ValueError(f"mean must be (D,) and cov (D, D); got {tuple(mean.shape)}, {tuple(cov.shape)}")
        if not torch.allclose(cov, cov.T, atol=1e-10):
            raise ValueError("cov must be symmetric")
        lam, U = torch.linalg.eigh(cov)
        if (lam <= 0).any():
            raise ValueError(f"cov must be positive definite; smallest eigenvalue {lam.min().item():.3g}")
        self.mean, self.cov, self.path = mean, cov, path
        self.eigvals, self.eigvecs = lam, U
        self.dim = mean.numel()

    def _buffers(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        kw = dict(dtype=x.dtype, device=x.device)
        return self.mean.to(**kw), self.eigvals.to(**kw), self.eigvecs.to(**kw)

    def _coeffs(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.path.alpha(t)[:, None], self.path.sigma(t)[:, None]

    def _centered_eig(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(y, k, alpha, sigma): eigen-coordinates of x - alpha mu, eigenvalues of K_t."""
        mu, lam, U = self._buffers(x)
        a, s = self._coeffs(t, x)
        y = (x - a * mu) @ U
        return y, a**2 * lam + s**2, a, s

    def marginal(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(B, D)`` and covariance ``(B, D, D)`` of ``p_t`` (``x`` gives dtype/batch)."""
        mu, lam, U = self._buffers(x)
        a, s = self._coeffs(t, x)
        k = a**2 * lam + s**2
        return a * mu, (U * k[:, None, :]) @ U.T

    def sample(self, t: float | Tensor, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """``n`` exact draws from ``p_t``, shape ``(n, D)``."""
        probe = torch.zeros(n, self.dim, dtype=dtype)
        mu, lam, U = self._buffers(probe)
        a, s = self._coeffs(torch.as_tensor(t, dtype=dtype), probe)
        z = torch.randn(n, self.dim, generator=generator, dtype=dtype)
        return a * mu + (z * torch.sqrt(a**2 * lam + s**2)) @ U.T

    def log_prob(self, x: Tensor, t: float | Tensor = 1.0) -> Tensor:
        """``log p_t(x)``, shape ``(B,)``."""
        y, k, _, _ = self._centered_eig(x, torch.as_tensor(t))
        return -0.5 * ((y**2 / k).sum(-1) + torch.log(k).sum(-1) + self.dim * math.log(2 * math.pi))

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """``grad_x log p_t(x) = -K_t^{-1} (x - alpha mu)``, ``(B, D)``."""
        _, _, U = self._buffers(x)
        y, k, _, _ = self._centered_eig(x, t)
        return -(y / k) @ U.T

    def posterior_means(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(E[x1 | x_t = x], E[x0 | x_t = x])``, each ``(B, D)``."""
        mu, lam, U = self._buffers(x)
        y, k, a, s = self._centered_eig(x, t)
        return mu + (a * lam * y / k) @ U.T, (s * y / k) @ U.T

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """The exact marginal velocity ``u_t(x)``, ``(B, D)``."""
        x1, x0 = self.posterior_means(x, t)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.path.d_alpha(t)[:, None] * x1 + self.path.d_sigma(t)[:, None] * x0

    def flow_map(self, s: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """Exact ODE flow map ``X(s, t, x)``: transports ``x`` at time ``s`` to time ``t``."""
        mu, lam, U = self._buffers(x)
        a_s, s_s = self._coeffs(s, x)
        a_t, s_t = self._coeffs(t, x)
        ratio = torch.sqrt((a_t**2 * lam + s_t**2) / (a_s**2 * lam + s_s**2))
        return a_t * mu + (((x - a_s * mu) @ U) * ratio) @ U.T

    def w2_to(self, samples: Tensor, t: float = 1.0) -> float:
        """2-Wasserstein distance between the Gaussian fitted to ``samples`` ``(N, D)`` and
        ``p_t`` (Dowson & Landau 1982): ``|m1 - m2|^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2)``.
        Has a Monte-Carlo floor of order ``D / sqrt(N)``."""
        x = samples.detach().to(torch.float64)
        m1 = x.mean(0)
        S1 = torch.cov(x.T).reshape(self.dim, self.dim)
        mean_t, cov_t = self.marginal(torch.as_tensor(t, dtype=torch.float64), x[:1])
        m2, S2 = mean_t[0], cov_t[0]
        e2, V2 = torch.linalg.eigh(S2)
        root2 = (V2 * e2.clamp(min=0).sqrt()) @ V2.T
        mid = torch.linalg.eigvalsh(root2 @ S1 @ root2).clamp(min=0).sqrt().sum()
        w2sq = ((m1 - m2) ** 2).sum() + torch.trace(S1) + torch.trace(S2) - 2 * mid
        return float(w2sq.clamp(min=0).sqrt())
