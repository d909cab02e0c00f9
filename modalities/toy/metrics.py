"""Distances between two sample sets ``x`` ``(N, D)`` and ``y`` ``(M, D)``, vectorised.

* :func:`sliced_wasserstein`: ``SW_p = (E_theta W_p^p(theta^T x, theta^T y))^(1/p)`` over
  random unit directions (Bonneel et al. 2015, "Sliced and Radon Wasserstein barycenters",
  eq. 3); each 1-D ``W_p`` is exact between the empirical laws (quantile functions).
* :func:`energy_distance`: ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Szekely & Rizzo 2013,
  "Energy statistics", eq. 3), the V-statistic, so it is >= 0 and 0 for identical sets;
  it equals ``scipy.stats.energy_distance(x, y) ** 2`` in 1-D.
* :func:`mmd_rbf`: ``MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)`` with a sum of RBF
  kernels ``k(a, b) = exp(-|a - b|^2 / (2 h^2))`` (Gretton et al. 2012, JMLR 13, eq. 5;
  the biased V-statistic, eq. 5 with the diagonal kept).

Computed in float64; pairwise sums go through blocks so memory stays ``O(block * M)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["sliced_wasserstein", "wasserstein_1d", "energy_distance", "mmd_rbf", "random_directions"]

_BLOCK = 1024


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (N, D) and (M, D) with one D; got {tuple(x.shape)}, {tuple(y.shape)}")
    if x.shape[0] < 1 or y.shape[0] < 1:
        raise ValueError("x and y must each hold at least one sample")
    return x.detach().to(torch.float64), y.detach().to(y.device, torch.float64)


def random_directions(n: int, dim: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """``n`` directions uniform on the unit sphere in R^dim, ``(n, dim)`` float64."""
    theta = torch.randn(n, dim, generator=generator, dtype=torch.float64, device=device)
    return theta / theta.norm(dim=1, keepdim=True)


def wasserstein_1d(u: Tensor, v: Tensor, p: float = 2.0) -> Tensor:
    """``W_p^p`` between the empirical laws of the rows' entries: ``u`` ``(K, N)``,
    ``v`` ``(K, M)`` -> ``(K,)``. Exact: ``int_0^1 |F^-1(q) - G^-1(q)|^p dq``, with the
    integral split at the jumps ``i/N`` and ``j/M`` of the two quantile functions."""
    n, m = u.shape[1], v.shape[1]
    us, vs = torch.sort(u, dim=1).values, torch.sort(v, dim=1).values
    kw = dict(dtype=torch.float64, device=u.device)
    jumps = torch.cat([torch.arange(1, n + 1, **kw) / n, torch.arange(1, m + 1, **kw) / m]).sort().values
    width = torch.diff(jumps, prepend=jumps.new_zeros(1))
    mid = jumps - 0.5 * width  # a point inside each piece where both quantiles are constant
    iu = torch.clamp((mid * n).long(), max=n - 1)
    iv = torch.clamp((mid * m).long(), max=m - 1)
    return ((us[:, iu] - vs[:, iv]).abs() ** p * width).sum(1)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 512,
    p: float = 2.0,
    generator: torch.Generator | None = None,
    directions: Tensor | None = None,
) -> float:
    """Monte-Carlo sliced ``p``-Wasserstein distance over ``n_projections`` random unit
    directions (or the given ``directions`` ``(K, D)``, unit rows)."""
    x, y = _pair(x, y)
    if directions is None:
        directions = random_directions(n_projections, x.shape[1], generator, device=x.device)
    theta = directions.to(x.device, torch.float64)
    return float(wasserstein_1d(theta @ x.T, theta @ y.T, p).mean() ** (1.0 / p))


def _mean_kernel(a: Tensor, b: Tensor, kernel: Callable[[Tensor], Tensor]) -> Tensor:
    """Mean of ``kernel(|a_i - b_j|^2)`` over all pairs, in row blocks."""
    total = a.new_zeros(())
    for start in range(0, a.shape[0], _BLOCK):
        blk = a[start : start + _BLOCK]
        total = total + kernel(_sqdist(blk, b)).sum()
    return total / (a.shape[0] * b.shape[0])


def _sqdist(a: Tensor, b: Tensor) -> Tensor:
    """Squared distances ``(n, m)``; exact zeros for equal rows (no |a|^2 + |b|^2 - 2ab)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").pow(2)


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Squared energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistic)."""
    x, y = _pair(x, y)
    dist = torch.sqrt
    e = 2 * _mean_kernel(x, y, dist) - _mean_kernel(x, x, dist) - _mean_kernel(y, y, dist)
    return float(e.clamp(min=0.0))


def mmd_rbf(x: Tensor, y: Tensor, bandwidths: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> float:
    """Squared MMD (biased V-statistic) with the kernel ``sum_h exp(-|a - b|^2 / (2 h^2))``
    over ``bandwidths`` (in data units)."""
    x, y = _pair(x, y)
    if len(bandwidths) == 0 or min(bandwidths) <= 0:
        raise ValueError(f"bandwidths must be a non-empty list of positive numbers; got {list(bandwidths)}")

    def kernel(sq: Tensor) -> Tensor:
        return sum(torch.exp(-sq / (2.0 * h * h)) for h in bandwidths)

    e = _mean_kernel(x, x, kernel) + _mean_kernel(y, y, kernel) - 2 * _mean_kernel(x, y, kernel)
    return float(e.clamp(min=0.0))
