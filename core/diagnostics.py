"""Is a learned field conservative? Jacobian asymmetry and loop circulation, across t.

The exact score ``grad log p_t`` is a gradient field, and so is the exact velocity of an
affine path with a Gaussian source (``v = (alpha'/alpha) x + c(t) grad log p_t``). A field
``f`` is (locally) a gradient iff its Jacobian ``J = df/dx`` is symmetric, iff its
circulation around every closed loop vanishes (Stokes). Trained networks are not
constrained to either: Vuong, McCann, Santos & Lin 2025, "Are we really learning the score
function? Reinterpreting diffusion models through Wasserstein gradient flow matching"
(arXiv 2509.00336) measure both the differential constraint (Jacobian symmetry) and the
integral one (zero loop integrals) on trained diffusion networks and find them violated;
Horvat & Pfister 2024, "On gauge freedom, conservativity and intrinsic dimensionality
estimation in diffusion models" (ICLR 2024, arXiv 2402.03845) show that conservativity is
neither necessary nor sufficient for exact sampling (only the conservative component of the
decomposition must equal the true score), but is wanted to read manifold information off
the Jacobian. The two measurements here:

* **relative Jacobian asymmetry** ``||J - J^T||_F / ||J||_F`` from random probes only:
  for ``E[eps eps^T] = I``, ``||J||_F^2 = E ||J eps||^2`` and
  ``||J - J^T||_F^2 = E ||J eps - J^T eps||^2`` (Hutchinson-type identities), with
  ``J eps`` a forward-mode JVP and ``J^T eps`` a reverse-mode VJP (``torch.func.jvp`` /
  ``torch.func.vjp``); the full Jacobian is never formed. 0 for a gradient field, exactly 2
  for a purely rotational linear field ``f = Omega x``, ``Omega^T = -Omega``;
* **circulation** ``oint f . dl`` around a small circle of radius ``r`` in a random 2-plane
  through each sample, by the periodic trapezoidal rule in the angle (spectrally accurate;
  exact for linear fields with >= 3 points). It is 0 for a gradient field and, by Stokes,
  ``pi r^2 w^T (J - J^T) u`` for a linear field on the plane ``(u, w)`` (``2 omega x area``
  for a planar rotation of rate ``omega``). It is also reported normalised by
  ``perimeter x mean |f|`` on the loop, a number in [-1, 1].

:func:`conservativity_report` returns both across a list of times, mean +- standard error
over the samples. Fields must treat the samples of a batch independently and support
forward-mode AD (``torch.func``). To test a velocity model's implied score, pass
``lambda x, t: convert(field(x, t), "velocity", "score", x, t, path)``
(:mod:`modaflow.core.parametrizations`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .likelihood import Probe, random_probes
from .ode import Field
from .paths import AffinePath
from .tensors import as_time, check_batch, expand_t

__all__ = [
    "AsymmetryResult",
    "CirculationResult",
    "ConservativityReport",
    "jacobian_asymmetry",
    "circulation",
    "path_samples",
    "conservativity_report",
]


@dataclass(frozen=True)
class AsymmetryResult:
    """Probe estimates per sample, each ``(B,)``.

    Attributes:
        ratio: ``sqrt(antisym_sq / frobenius_sq)``, the relative asymmetry
            ``||J - J^T||_F / ||J||_F`` (0 where ``J = 0``).
        antisym_sq: estimate of ``||J - J^T||_F^2``.
        frobenius_sq: estimate of ``||J||_F^2``.
    """

    ratio: Tensor
    antisym_sq: Tensor
    frobenius_sq: Tensor


@dataclass(frozen=True)
class CirculationResult:
    """Loop integrals around one circle per sample.

    Attributes:
        circulation: ``oint f . dl``, ``(B,)``.
        normalized: ``circulation / (2 pi r * mean |f| on the loop)``, in [-1, 1], ``(B,)``.
        plane: the loop's orthonormal plane ``(u, w)`` per sample, ``(B, 2, prod(D))``; the
            loop runs from ``u`` towards ``w``.
        radius: the loop radius ``r``.
    """

    circulation: Tensor
    normalized: Tensor
    plane: Tensor
    radius: float


@dataclass(frozen=True)
class ConservativityReport:
    """Conservativity of a field across times; every tensor is ``(T,)`` on the CPU.

    Attributes:
        times: the times.
        asymmetry: mean over samples of ``||J - J^T||_F / ||J||_F``.
        asymmetry_stderr: its standard error over samples.
        circulation: mean over samples of ``|normalized circulation|`` (0 for a gradient
            field, 1 for a field running along every loop).
        circulation_stderr: its standard error over samples.
        n_samples: samples per time; n_probes: probes per sample; radius, n_points: loops.
    """

    times: Tensor
    asymmetry: Tensor
    asymmetry_stderr: Tensor
    circulation: Tensor
    circulation_stderr: Tensor
    n_samples: int
    n_probes: int
    radius: float
    n_points: int

    def rows(self) -> list[dict[str, float]]:
        """One ``{"t", "asymmetry", "asymmetry_stderr", "circulation", "circulation_stderr"}``
        per time (plain floats, for tables and JSON)."""
        cols = ("times", "asymmetry", "asymmetry_stderr", "circulation", "circulation_stderr")
        return [
            {("t" if c == "times" else c): float(getattr(self, c)[i]) for c in cols}
            for i in range(self.times.numel())
        ]


def jacobian_asymmetry(
    field: Field,
    x: Tensor,
    t: float | Tensor,
    n_probes: int = 8,
    probe: Probe = "rademacher",
    generator: torch.Generator | None = None,
) -> AsymmetryResult:
    """Estimate ``||J - J^T||_F / ||J||_F`` of ``J = d field(x, t) / dx`` at each sample of
    ``x`` ``(B, *D)`` with ``n_probes`` probes (one JVP and one VJP each); ``t`` a float or
    ``(B,)``. Exact for any probe count when ``J^T J`` and ``(J - J^T)^T (J - J^T)`` are
    multiples of the identity (e.g. a 2-D rotation)."""
    check_batch("x", x)
    B = x.shape[0]
    t = as_time(t, B, x)

    def f(y: Tensor) -> Tensor:
        return field(y, t)

    with torch.no_grad():
        _, vjp_fn = torch.func.vjp(f, x)
        anti = x.new_zeros(B)
        frob = x.new_zeros(B)
        for eps in random_probes(n_probes, x, probe, generator):
            _, j_eps = torch.func.jvp(f, (x,), (eps,))
            (jt_eps,) = vjp_fn(eps)
            # ||J||_F^2 = E||J eps||^2 and ||J - J^T||_F^2 = E||(J - J^T) eps||^2 for E[eps eps^T] = I
            frob += j_eps.reshape(B, -1).pow(2).sum(1)
            anti += (j_eps - jt_eps).reshape(B, -1).pow(2).sum(1)
        anti, frob = anti / n_probes, frob / n_probes
    ratio = torch.where(frob > 0, torch.sqrt(anti / frob.clamp(min=torch.finfo(x.dtype).tiny)), torch.zeros_like(frob))
    return AsymmetryResult(ratio=ratio, antisym_sq=anti, frobenius_sq=frob)


def _random_planes(B: int, D: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Orthonormal ``(u, w)`` per sample, uniformly oriented (Gram–Schmidt of Gaussians), ``(B, 2, D)``."""
    a, b = torch.randn(2, B, D, generator=generator, device=like.device, dtype=like.dtype).unbind(0)
    u = a / a.norm(dim=1, keepdim=True)
    w = b - (b * u).sum(1, keepdim=True) * u
    return torch.stack([u, w / w.norm(dim=1, keepdim=True)], dim=1)


def circulation(
    field: Field,
    x: Tensor,
    t: float | Tensor,
    radius: float = 0.1,
    n_points: int = 16,
    generator: torch.Generator | None = None,
) -> CirculationResult:
    """``oint field . dl`` around a circle of ``radius`` centred at each sample of ``x``
    ``(B, *D)`` in a random 2-plane, by the ``n_points``-point periodic trapezoidal rule;
    ``t`` a float or ``(B,)``. One batched field call on ``B * n_points`` points."""
    check_batch("x", x)
    B, D = x.shape[0], x[0].numel()
    if D < 2:
        raise ValueError(f"circulation needs data of dimension >= 2 (a loop spans a plane); x is {tuple(x.shape)}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0; got {radius}")
    if not isinstance(n_points, int) or n_points < 3:
        raise ValueError(f"n_points must be an int >= 3; got {n_points!r}")
    t = as_time(t, B, x)
    plane = _random_planes(B, D, x, generator)
    theta = torch.arange(n_points, device=x.device, dtype=x.dtype) * (2 * math.pi / n_points)
    c, s = torch.cos(theta)[None, :, None], torch.sin(theta)[None, :, None]  # (1, M, 1)
    u, w = plane[:, None, 0], plane[:, None, 1]  # (B, 1, D)
    points = x.reshape(B, 1, D) + radius * (c * u + s * w)  # gamma(theta), (B, M, D)
    tangent = radius * (-s * u + c * w)  # dgamma/dtheta, (B, M, D)
    with torch.no_grad():
        f = field(points.reshape((B * n_points,) + tuple(x.shape[1:])), t.repeat_interleave(n_points))
        f = f.reshape(B, n_points, D)
        # oint f . dl = int_0^{2 pi} f(gamma) . gamma' dtheta, periodic trapezoid (Trefethen & Weideman 2014)
        circ = (f * tangent).sum(2).sum(1) * (2 * math.pi / n_points)
        speed = f.norm(dim=2).mean(1) * (2 * math.pi * radius)  # perimeter x mean |f| >= |circ|
    normalized = torch.where(speed > 0, circ / speed.clamp(min=torch.finfo(x.dtype).tiny), torch.zeros_like(circ))
    return CirculationResult(circulation=circ, normalized=normalized, plane=plane, radius=float(radius))


def path_samples(path: AffinePath, x1: Tensor, times: Sequence[float] | Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
    """Draws of the marginal ``p_t`` at each time: ``x_t = alpha(t) x1 + sigma(t) x0`` with
    fresh ``x0 ~ N(0, I)`` per time; ``T`` tensors ``(B, *D)`` (the points where a field at
    time ``t`` is evaluated in practice)."""
    check_batch("x1", x1)
    out = []
    for t in torch.as_tensor(times, dtype=torch.float64).reshape(-1).tolist():
        tt = as_time(t, x1.shape[0], x1)
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        out.append(expand_t(path.alpha(tt), x1) * x1 + expand_t(path.sigma(tt), x1) * x0)
    return out


def conservativity_report(
    field: Field,
    x_samples: Tensor | Sequence[Tensor],
    times: Sequence[float] | Tensor,
    n_probes: int = 8,
    generator: torch.Generator | None = None,
    probe: Probe = "rademacher",
    radius: float = 0.1,
    n_points: int = 16,
) -> ConservativityReport:
    """Jacobian asymmetry and loop circulation of ``field`` at each time of ``times``.

    Args:
        field: ``(x (B, *D), t (B,)) -> (B, *D)``.
        x_samples: evaluation points: one tensor ``(B, *D)`` used at every time, or a list
            of ``T`` tensors ``(B, *D)``, one per time (e.g. from :func:`path_samples`).
        times: ``T`` times in [0, 1].
        n_probes: probes per sample for the asymmetry; ``probe`` their kind.
        generator: draws the probes and the loop planes.
        radius, n_points: loop radius (in data units) and quadrature points.
    """
    times = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    T = times.numel()
    if T < 1:
        raise ValueError("times must hold at least one time")
    if ((times < 0) | (times > 1)).any():
        raise ValueError(f"times must lie in [0, 1]; got {times.tolist()}")
    samples = [x_samples] * T if isinstance(x_samples, Tensor) else list(x_samples)
    if len(samples) != T:
        raise ValueError(f"x_samples must be one tensor (B, *D) or a list of T = {T} tensors; got a list of {len(samples)}")
    stats: list[list[Tensor]] = []
    for x, t in zip(samples, times.tolist()):
        asym = jacobian_asymmetry(field, x, t, n_probes, probe, generator).ratio
        circ = circulation(field, x, t, radius, n_points, generator).normalized.abs()
        stats.append([torch.stack([v.mean(), v.std() / math.sqrt(v.numel())]).detach().double().cpu() for v in (asym, circ)])
    asym_ms, circ_ms = (torch.stack([s[j] for s in stats]) for j in (0, 1))  # (T, 2)
    return ConservativityReport(
        times=times,
        asymmetry=asym_ms[:, 0],
        asymmetry_stderr=asym_ms[:, 1],
        circulation=circ_ms[:, 0],
        circulation_stderr=circ_ms[:, 1],
        n_samples=int(samples[0].shape[0]),
        n_probes=n_probes,
        radius=float(radius),
        n_points=n_points,
    )
