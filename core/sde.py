"""Euler–Maruyama sampling with a tunable diffusion coefficient.

For a path with a Gaussian source, every SDE of the family

    dX = [v(X, t) + g(t)^2 / 2 * s(X, t)] dt + g(t) dW,        t from 0 to 1,

with ``v`` the marginal velocity, ``s = grad log p_t`` the score and ANY ``g(t) >= 0``, has
the same marginals ``p_t`` as the probability-flow ODE ``dX = v dt``: the Fokker–Planck
equation gains ``-div(p g^2/2 grad log p) + g^2/2 Laplacian p = 0``. This is Song et al.
2021 (arXiv 2011.13456, eq. 6, the reverse-time SDE, against eq. 13, the probability-flow
ODE) written in our forward time (t increases towards the data), and the forward SDE of
stochastic interpolants with ``eps = g^2 / 2`` (Albergo, Boffi & Vanden-Eijnden 2023, arXiv
2303.08797, sec. 2: drift ``b + eps s``, noise ``sqrt(2 eps) dW``). ``g = 0`` is the ODE.

The score comes from the velocity through the path
(:func:`modaflow.core.parametrizations.convert`, Tweedie: ``s = -E[x0 | x_t] / sigma``).

The end point t = 1. ``sigma(t) -> 0`` there (linear path: ``sigma = 1 - t``). For data
with a smooth density the score stays bounded (Gaussian data:
``s = -(alpha^2 Sigma + sigma^2 I)^{-1} (x - alpha mu)``), but for data on a low-dimensional
set (a point mass, images, one-hot tokens) it grows like ``1 / sigma^2``, and the explicit
score step is stiff: stable only while ``h g^2 / (2 sigma^2)`` stays below about 1. So:

* the LAST step is a plain Euler step of the ODE (no score term, no noise), so the result
  is clean and the score is never needed at t = 1; on the linear path that step lands
  exactly on the denoised estimate ``E[x1 | x_{t_{K-1}}]``;
* ``diffusion`` may be a callable ``g(t)``; one that vanishes at t = 1 (e.g.
  ``g(t) = c * sigma(t)``, which keeps ``g^2/2 s`` bounded for any data) is stable for any
  ``K``, while a constant ``g`` on manifold data wants ``K`` large compared with ``g^2``.

Use a grid that ends at t = 1 (``time_grid(K)``). The grid may be shared ``(K+1,)`` or
per-sample ``(B, K+1)`` and must increase.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .ode import Field, SolveResult, grid_times
from .parametrizations import convert
from .paths import AffinePath
from .tensors import expand_t

__all__ = ["solve_sde", "euler_maruyama_step", "Diffusion"]

Diffusion = float | Callable[[Tensor], Tensor]
"""A diffusion coefficient: a constant ``g >= 0`` or a callable ``t (B,) -> g(t) (B,)``."""


def solve_sde(
    field: Field,
    x: Tensor,
    grid: Tensor,
    path: AffinePath,
    diffusion: Diffusion,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> SolveResult:
    """Euler–Maruyama for ``dX = [v + g^2/2 s] dt + g dW`` (Kloeden & Platen 1992, the Euler
    scheme of ch. 10), the last step noise- and score-free (see the module docstring).

    Args:
        field: the velocity field ``(x (B, *D), t (B,)) -> v``.
        x: source samples at ``grid[..., 0]``, ``(B, *D)``.
        grid: increasing times ``(K+1,)`` or ``(B, K+1)``, normally ending at 1.
        path: the affine path the field was trained on; it must have a Gaussian source.
        diffusion: ``g`` as a float ``>= 0`` or a callable ``t (B,) -> (B,)``.
        generator: random generator for the Brownian increments.
        return_trajectory: also return every state, ``(K+1, B, *D)``.

    Returns:
        :class:`SolveResult` with ``nfe = K`` (one field call per step).
    """
    if not path.gaussian_source:
        raise ValueError(f"solve_sde needs a path with a Gaussian source (for the score); got {path!r}")
    if not callable(diffusion):
        if float(diffusion) < 0:
            raise ValueError(f"diffusion must be >= 0; got {diffusion}")
        g_const = float(diffusion)
    times = grid_times(grid, x)  # (K+1, B)
    K = times.shape[0] - 1
    h = (times[1:] - times[:-1]).reshape((K, x.shape[0]) + (1,) * (x.ndim - 1))
    sqrt_h = torch.sqrt(h)  # NaN for a decreasing grid; only the K-1 noisy steps use it
    ts, hs, sqrt_hs = times.unbind(0), h.unbind(0), sqrt_h.unbind(0)
    states = [x] if return_trajectory else None
    for k in range(K - 1):
        t = ts[k]
        v = field(x, t)
        g = expand_t(diffusion(t), x) if callable(diffusion) else g_const
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = euler_maruyama_step(x, v, t, hs[k], sqrt_hs[k], g, noise, path)
        if states is not None:
            states.append(x)
    x = torch.addcmul(x, hs[K - 1], field(x, ts[K - 1]))  # last step: deterministic ODE Euler
    if states is not None:
        states.append(x)
    trajectory = torch.stack(states) if states is not None else None
    return SolveResult(x=x, trajectory=trajectory, nfe=K)


def euler_maruyama_step(
    x: Tensor, v: Tensor, t: Tensor, h: Tensor, sqrt_h: Tensor, g: Tensor | float, noise: Tensor, path: AffinePath
) -> Tensor:
    """One Euler–Maruyama step (Kloeden & Platen 1992, ch. 10) of ``dX = [v + g^2/2 s] dt +
    g dW`` from ``(x, t)``, given the velocity ``v = field(x, t)`` already evaluated (so a
    caller that also needs ``v``, e.g. for ``E[x1 | x_t]``, pays one field call). ``x, v,
    noise`` ``(B, *D)``; ``t`` ``(B,)``; ``h, sqrt_h`` (the step and its square root) and ``g``
    broadcast against ``x``."""
    score = convert(v, "velocity", "score", x, t, path)
    drift = v + (0.5 * g * g) * score
    return x + h * drift + (g * sqrt_h) * noise
