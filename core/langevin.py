"""Underdamped Langevin integrators as pure functions with explicit noise.

Underdamped (kinetic) Langevin dynamics with unit mass, friction ``gamma`` and temperature
``T`` for a position ``q`` and velocity ``p``:

    dq = p dt,        dp = -grad U(q) dt - gamma p dt + sqrt(2 gamma T) dW,

whose invariant law is ``exp(-(U(q) + |p|^2 / 2) / T)`` (Leimkuhler & Matthews 2013,
arXiv 1203.5428). Splitting it into pieces that are each solved exactly:

* ``A``: ``q += h p`` (drift of the position);
* ``B``: ``p -= h grad U(q)`` (kick);
* ``O``: the Ornstein–Uhlenbeck velocity refresh, solved exactly over ``h``:
  ``p <- e^{-gamma h} p + sqrt((1 - e^{-2 gamma h}) T) xi``, ``xi ~ N(0, I)``.

:func:`symplectic_euler_step` is ``A`` then ``B`` with the new position (LangevinFlow,
arXiv 2507.11531, per time bin: ``z += h v; v -= h grad U(z)``), first order and symplectic.
LangevinFlow's refresh ``v ~ N((1 - gamma) v, 2 gamma)`` is the first-order form of
:func:`ou_refresh` (``e^{-gamma h} ~ 1 - gamma h``); the exact one keeps the Gaussian
velocity law ``N(0, T)`` invariant for any step. :func:`baoab_step` is the BAOAB splitting
``B(h/2) A(h/2) O(h) A(h/2) B(h/2)`` (Leimkuhler & Matthews 2013, arXiv 1203.5428, sec. 2),
second order; for ``gamma = 0`` it is velocity Verlet.

Every function takes its noise ``xi`` as an argument (``(B, *D)`` like ``p``), so a VAE can
reparameterise through the dynamics; ``gamma``, ``h`` and ``T`` may be floats or tensors that
broadcast against ``p`` (e.g. learnable). :func:`rollout` iterates a step and returns a
:class:`LangevinTrajectory`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "GradU",
    "LangevinTrajectory",
    "symplectic_euler_step",
    "ou_refresh",
    "baoab_step",
    "LANGEVIN_SCHEMES",
    "rollout",
]

GradU = Callable[[Tensor], Tensor]
"""The potential's gradient ``q (B, *D) -> grad U(q) (B, *D)``."""

Scalar = float | Tensor


@dataclass(frozen=True)
class LangevinTrajectory:
    """States of a rollout.

    Attributes:
        q: positions, ``(K+1, B, *D)``; ``q[0]`` is the initial position.
        p: velocities, ``(K+1, B, *D)``.
    """

    q: Tensor
    p: Tensor


def symplectic_euler_step(q: Tensor, p: Tensor, grad_U: GradU, h: Scalar) -> tuple[Tensor, Tensor]:
    """One symplectic Euler step: ``q' = q + h p``, ``p' = p - h grad U(q')``."""
    q = q + h * p
    return q, p - h * grad_U(q)


def ou_refresh(p: Tensor, gamma: Scalar, h: Scalar, temperature: Scalar, noise: Tensor) -> Tensor:
    """Exact Ornstein–Uhlenbeck solve of ``dp = -gamma p dt + sqrt(2 gamma T) dW`` over ``h``:
    ``e^{-gamma h} p + sqrt((1 - e^{-2 gamma h}) T) noise`` (Leimkuhler & Matthews 2013,
    arXiv 1203.5428, the O step). ``gamma = 0`` leaves ``p`` unchanged."""
    gh = torch.as_tensor(gamma * h, dtype=p.dtype, device=p.device)
    return torch.exp(-gh) * p + torch.sqrt(-torch.expm1(-2.0 * gh) * temperature) * noise


def baoab_step(
    q: Tensor, p: Tensor, grad_U: GradU, h: Scalar, gamma: Scalar, temperature: Scalar, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """One BAOAB step (Leimkuhler & Matthews 2013, arXiv 1203.5428): half kick, half drift,
    exact OU refresh over ``h``, half drift, half kick. Two gradient calls per step."""
    p = p - (0.5 * h) * grad_U(q)  # B
    q = q + (0.5 * h) * p  # A
    p = ou_refresh(p, gamma, h, temperature, noise)  # O
    q = q + (0.5 * h) * p  # A
    return q, p - (0.5 * h) * grad_U(q)  # B


def _symplectic_euler_ou(
    q: Tensor, p: Tensor, grad_U: GradU, h: Scalar, gamma: Scalar, temperature: Scalar, noise: Tensor
) -> tuple[Tensor, Tensor]:
    q, p = symplectic_euler_step(q, p, grad_U, h)
    return q, ou_refresh(p, gamma, h, temperature, noise)


LANGEVIN_SCHEMES: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "baoab": baoab_step,
    "symplectic_euler": _symplectic_euler_ou,
}
"""Rollout schemes: ``"baoab"``, and ``"symplectic_euler"`` (the LangevinFlow step followed
by the exact OU refresh)."""


def rollout(
    q: Tensor,
    p: Tensor,
    grad_U: GradU,
    h: Scalar,
    steps: int,
    gamma: Scalar = 0.0,
    temperature: Scalar = 1.0,
    scheme: str = "baoab",
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LangevinTrajectory:
    """Run ``steps`` steps of ``scheme`` from ``(q, p)``, each ``(B, *D)``.

    Args:
        noise: the refresh noise ``(steps, B, *D)``; drawn from ``generator`` when ``None``.
        Others: see :func:`baoab_step`.

    Returns:
        :class:`LangevinTrajectory` with ``steps + 1`` states.
    """
    step = LANGEVIN_SCHEMES.get(scheme)
    if step is None:
        raise ValueError(f"scheme must be one of {tuple(LANGEVIN_SCHEMES)}; got {scheme!r}")
    if q.shape != p.shape:
        raise ValueError(f"q {tuple(q.shape)} and p {tuple(p.shape)} must have one shape")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1; got {steps!r}")
    if noise is None:
        noise = torch.randn((steps,) + tuple(p.shape), generator=generator, device=p.device, dtype=p.dtype)
    elif noise.shape != (steps,) + tuple(p.shape):
        raise ValueError(f"noise must have shape (steps, *p.shape) = {(steps,) + tuple(p.shape)}; got {tuple(noise.shape)}")
    qs, ps = [q], [p]
    for xi in noise.unbind(0):
        q, p = step(q, p, grad_U, h, gamma, temperature, xi)
        qs.append(q)
        ps.append(p)
    return LangevinTrajectory(q=torch.stack(qs), p=torch.stack(ps))
