"""Exact log-likelihood of a flow model by the instantaneous change of variables.

Along a trajectory of ``dx/dt = v(x, t)`` the log-density obeys (Chen et al. 2018, arXiv
1806.07366, Theorem 1)

    d/dt log p_t(x_t) = -div v(x_t, t) = -tr(dv/dx).

In our convention t = 0 is the source and t = 1 the data, so

* :func:`log_likelihood` integrates the augmented state ``[x, Delta]`` with
  ``dDelta/dt = -div v`` BACKWARDS from the data point ``x1`` at t = 1 (``Delta = 0``) to
  t = 0 and returns ``log p_1(x1) = log p_0(x0) - Delta(0)``;
* :func:`sample_with_log_prob` integrates the same system FORWARDS from noise ``x0``
  (sampling and log-density in one pass, Grathwohl et al. 2019, arXiv 1810.01367, sec. 3)
  and returns ``x1`` and ``log p_1(x1) = log p_0(x0) + Delta(1)``.

The divergence is exact (``D`` reverse-mode passes per field call, for small ``D``) or
Hutchinson's estimate ``E[eps^T J eps] = tr J`` for probes with ``E[eps eps^T] = I``
(Hutchinson 1989; FFJORD, Grathwohl et al. 2019, arXiv 1810.01367, sec. 3.1): ``K``
Rademacher or Gaussian probes drawn once per solve from a given generator and held fixed
along the trajectory, so the estimate of ``log p`` is unbiased.

:class:`LikelihoodConfig` picks the solver and the estimator. Fixed-step solves reuse
:func:`modaflow.core.ode.solve_ode` on the augmented field ``z = [x, Delta]`` ``(B, D+1)`` (so
every Runge–Kutta method of that module is available); adaptive solves reuse
:func:`modaflow.core.ode.solve_ode_adaptive`. ``nfe`` counts calls of the augmented field
(each is one field evaluation plus the divergence's ``D`` or ``K`` vector-Jacobian products).

Differentiable: called with gradients enabled, the divergence is built with
``create_graph=True`` and ``log_prob`` can be back-propagated to the model's parameters and
to ``x`` (this is how a continuous normalizing flow is trained by maximum likelihood).
Under ``torch.no_grad()`` the graph of each field call is freed at once. The batch trick
(one backward pass of ``sum_b v_b`` gives every sample's row) needs a field that treats the
samples of a batch independently (no batch statistics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from .config import Config
from .ode import Field, solve_ode, solve_ode_adaptive, time_grid
from .tensors import check_batch

__all__ = [
    "Estimator",
    "Probe",
    "LikelihoodConfig",
    "LikelihoodResult",
    "standard_normal_log_prob",
    "random_probes",
    "divergence",
    "log_likelihood",
    "sample_with_log_prob",
]

Estimator = Literal["exact", "hutchinson"]
Probe = Literal["rademacher", "gaussian"]
LikelihoodMethod = Literal["euler", "midpoint", "heun", "rk4", "dopri5"]
SourceLogProb = Callable[[Tensor], Tensor]
"""``log p_0``: ``x0 (B, *D) -> (B,)``."""


@dataclass(frozen=True)
class LikelihoodResult:
    """Both ends of a log-density solve.

    Attributes:
        x: the other end of the trajectory, ``(B, *D)``: the source point ``x0`` for
            :func:`log_likelihood`, the sample ``x1`` for :func:`sample_with_log_prob`.
        log_prob: ``log p_1(x1)`` in nats, ``(B,)``.
        nfe: calls of the augmented field (field evaluations, each with its divergence).
    """

    x: Tensor
    log_prob: Tensor
    nfe: int


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """``log N(x; 0, I)`` summed over the event dims of ``x`` ``(B, *D)``, shape ``(B,)``."""
    flat = x.reshape(x.shape[0], -1)
    return -0.5 * (flat**2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


def random_probes(
    n: int, like: Tensor, kind: Probe = "rademacher", generator: torch.Generator | None = None
) -> Tensor:
    """``n`` probe vectors with ``E[eps eps^T] = I`` shaped like ``like``: ``(n, *like.shape)``.

    ``"rademacher"``: entries +-1 with probability 1/2 (the lower-variance choice for trace
    estimation, Hutchinson 1989); ``"gaussian"``: standard normal entries.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n_probes must be an int >= 1; got {n!r}")
    shape = (n,) + tuple(like.shape)
    kw = dict(generator=generator, device=like.device, dtype=like.dtype)
    if kind == "rademacher":
        return torch.randint(0, 2, shape, **kw) * 2 - 1
    if kind == "gaussian":
        return torch.randn(shape, **kw)
    raise ValueError(f"probe must be one of {get_args(Probe)}; got {kind!r}")


def divergence(field: Field, x: Tensor, t: Tensor, probes: Tensor | None = None, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """``(v, div v)`` at ``(x, t)``: ``v`` ``(B, *D)``, ``div v = tr(dv/dx)`` ``(B,)``.

    Args:
        field: ``(x (B, *D), t (B,)) -> v (B, *D)``, samples treated independently.
        x: points ``(B, *D)``; ``t``: times ``(B,)``.
        probes: ``None`` for the exact trace (one vector-Jacobian product per coordinate,
            ``sum_i d v_i / d x_i``), or ``(K, B, *D)`` probes for Hutchinson's estimate
            ``(1/K) sum_k eps_k^T (dv/dx) eps_k`` (FFJORD, arXiv 1810.01367, sec. 3.1).
        create_graph: keep the graph of ``v`` and ``div`` (for gradients through them).
    """
    B = x.shape[0]
    with torch.enable_grad():
        x_in = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
        v = field(x_in, t)
        if v.shape != x.shape:
            raise ValueError(f"field returned shape {tuple(v.shape)}; expected the shape of x {tuple(x.shape)}")

        def vjp(cotangent: Tensor) -> Tensor:  # cotangent^T (dv/dx), per sample, (B, *D)
            if not v.requires_grad:  # v does not depend on x
                return torch.zeros_like(x)
            (g,) = torch.autograd.grad(v, x_in, cotangent, retain_graph=True, create_graph=create_graph, allow_unused=True)
            return torch.zeros_like(x) if g is None else g

        if probes is None:
            D = x[0].numel()
            eye = torch.eye(D, dtype=x.dtype, device=x.device)
            # Chen et al. 2018 Theorem 1: tr(dv/dx) = sum_i e_i^T (dv/dx) e_i, exactly.
            div = sum((vjp(eye[i].expand(B, D).reshape(x.shape)).reshape(B, D)[:, i] for i in range(D)), x.new_zeros(B))
        else:
            if probes.shape[1:] != x.shape:
                raise ValueError(f"probes must have shape (K, *x.shape) = (K, {', '.join(map(str, x.shape))}); got {tuple(probes.shape)}")
            # Hutchinson: tr(J) = E[eps^T J eps]; the mean over the K fixed probes.
            div = sum(((vjp(eps) * eps).reshape(B, -1).sum(1) for eps in probes), x.new_zeros(B)) / probes.shape[0]
    if not create_graph:
        v, div = v.detach(), div.detach()
    return v, div


@dataclass
class LikelihoodConfig(Config):
    """How to integrate the log-density: solver, steps and divergence estimator."""

    steps: int = 32
    """Fixed steps of the uniform time grid (ignored by dopri5)."""
    method: LikelihoodMethod = "rk4"
    """euler, midpoint, heun, rk4 (fixed-step, core.ode) or dopri5 (adaptive; needs modaflow[adaptive])."""
    estimator: Estimator = "exact"
    """exact divergence (D vector-Jacobian products per field call) or hutchinson (n_probes of them)."""
    n_probes: int = 1
    """Hutchinson probes per sample, drawn once per solve and held fixed along it."""
    probe: Probe = "rademacher"
    """Hutchinson probe distribution: rademacher (+-1 entries) or gaussian."""
    rtol: float = 1e-5
    """Relative tolerance of dopri5."""
    atol: float = 1e-5
    """Absolute tolerance of dopri5."""
    t1: float = 1.0
    """Data time: integrate between t1 and 0 and return log p_t1; set t1 < 1 for a field that is singular at t = 1 (data or score parametrization)."""

    def validate(self) -> None:
        self._require(0.0 < self.t1 <= 1.0, "t1", "a number in (0, 1]")
        for name in ("steps", "n_probes"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        for name in ("rtol", "atol"):
            self._require(getattr(self, name) > 0, name, "a number > 0")


def _solve(field: Field, x: Tensor, t_start: float, t_end: float, cfg: LikelihoodConfig,
           generator: torch.Generator | None) -> tuple[Tensor, Tensor, int]:
    """Integrate ``[x, Delta]`` from ``t_start`` to ``t_end`` with ``dDelta/dt = -div v``;
    returns ``(x_end, Delta_end = log p(x_end) - log p(x_start) along the path, nfe)``."""
    check_batch("x", x)
    B, event = x.shape[0], tuple(x.shape[1:])
    D = math.prod(event)
    probes = random_probes(cfg.n_probes, x, cfg.probe, generator) if cfg.estimator == "hutchinson" else None
    create_graph = torch.is_grad_enabled()

    def augmented(z: Tensor, t: Tensor) -> Tensor:  # z = [x (flattened), Delta], (B, D + 1)
        v, div = divergence(field, z[:, :D].reshape((B,) + event), t, probes, create_graph)
        return torch.cat([v.reshape(B, D), -div[:, None]], dim=1)  # Chen et al. 2018, Thm 1

    z = torch.cat([x.reshape(B, D), x.new_zeros(B, 1)], dim=1)
    if cfg.method == "dopri5":
        res = solve_ode_adaptive(augmented, z, t_start, t_end, method="dopri5", rtol=cfg.rtol, atol=cfg.atol)
    else:
        res = solve_ode(augmented, z, time_grid(cfg.steps, t_start, t_end, device=x.device, dtype=x.dtype), cfg.method)
    return res.x[:, :D].reshape(x.shape), res.x[:, D], res.nfe


def log_likelihood(
    field: Field,
    x1: Tensor,
    cfg: LikelihoodConfig | None = None,
    generator: torch.Generator | None = None,
    source_log_prob: SourceLogProb = standard_normal_log_prob,
) -> LikelihoodResult:
    """``log p_1(x1)`` of the flow ``dx/dt = field(x, t)`` pushing ``p_0`` (``source_log_prob``,
    default N(0, I)) to t = 1, by integrating from t = 1 back to t = 0.

    Args:
        field: the velocity field ``(x (B, *D), t (B,)) -> (B, *D)``; the backward solve
            evaluates it at ``cfg.t1`` first (set ``t1 < 1`` where it is singular at t = 1:
            then the result is ``log p_t1``).
        x1: data points ``(B, *D)``.
        cfg: solver and divergence estimator (default :class:`LikelihoodConfig`: exact
            divergence, RK4, 32 steps, t1 = 1).
        generator: draws the Hutchinson probes.
        source_log_prob: ``log p_0``, ``(B, *D) -> (B,)``.

    Returns:
        :class:`LikelihoodResult` with ``x`` the source point ``x0`` and ``log_prob``
        ``= log p_0(x0) - int_0^1 div v dt`` ``(B,)``.
    """
    cfg = LikelihoodConfig() if cfg is None else cfg
    x0, delta, nfe = _solve(field, x1, cfg.t1, 0.0, cfg, generator)
    return LikelihoodResult(x=x0, log_prob=source_log_prob(x0) - delta, nfe=nfe)


def sample_with_log_prob(
    field: Field,
    x0: Tensor,
    cfg: LikelihoodConfig | None = None,
    generator: torch.Generator | None = None,
    source_log_prob: SourceLogProb = standard_normal_log_prob,
) -> LikelihoodResult:
    """Sample and log-density in one pass: integrate ``x0`` ``(B, *D)`` (drawn from ``p_0``)
    from t = 0 to ``cfg.t1`` (default 1) with its log-density (arguments as in
    :func:`log_likelihood`; euler and midpoint never evaluate the field at ``t1``).

    Returns:
        :class:`LikelihoodResult` with ``x`` the sample ``x1`` and ``log_prob``
        ``= log p_0(x0) - int_0^1 div v dt`` ``(B,)``, its log-density under the model.
    """
    cfg = LikelihoodConfig() if cfg is None else cfg
    x1, delta, nfe = _solve(field, x0, 0.0, cfg.t1, cfg, generator)
    return LikelihoodResult(x=x1, log_prob=source_log_prob(x0) + delta, nfe=nfe)
