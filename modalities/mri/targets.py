"""MedForj's prediction targets (arXiv 2510.26834) on top of the core parametrizations.

DDPM noising in our notation (data ``x1`` at t = 1, noise ``x0 = eps``), on
:class:`~modaflow.core.paths.DiscreteVPPath` (``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)``,
``alpha^2 + sigma^2 = 1``): ``x_t = alpha x1 + sigma eps``. Targets:

* ``sample``:   ``x1`` (the core ``"data"`` parametrization);
* ``noise``:    ``eps`` (the core ``"noise"`` parametrization; did not converge in MedForj);
* ``velocity``: ``v = alpha eps - sigma x1`` (Salimans & Ho 2022, arXiv 2202.00512, sec. 4;
  MedForj's "velocity"). Inversion: ``x1 = alpha x_t - sigma v``, ``eps = sigma x_t + alpha v``
  (uses ``alpha^2 + sigma^2 = 1``);
* ``flow``:     ``f = eps - x1`` (MedForj's "flow"). Inversion:
  ``x1 = (x_t - sigma f) / (alpha + sigma)``, ``eps = (x_t + alpha f) / (alpha + sigma)``;
* ``rflow``:    rectified flow for comparison: the :class:`~modaflow.core.paths.LinearPath`
  with the core ``"velocity"`` parametrization (``dx_t/dt = x1 - eps``).

Networks trained on ``velocity`` or ``flow`` are wrapped (:class:`DataPredictor`) so that
the core samplers (DDIM, ODE solvers) see a ``"data"`` predictor.
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor, nn

from modaflow.core.parametrizations import Parametrization
from modaflow.core.paths import AffinePath, DiscreteVPPath, LinearPath
from modaflow.core.tensors import expand_t

__all__ = [
    "Target",
    "TARGETS",
    "CORE_KIND",
    "make_path",
    "medforj_target",
    "medforj_to_data_noise",
    "DataPredictor",
    "core_kind",
]

Target = Literal["sample", "velocity", "flow", "noise", "rflow"]
TARGETS: tuple[str, ...] = get_args(Target)

CORE_KIND: dict[str, Parametrization] = {
    "sample": "data", "velocity": "data", "flow": "data", "noise": "noise", "rflow": "velocity",
}
"""The core parametrization the samplers see for each target (after :class:`DataPredictor`)."""


def make_path(target: str, ddpm_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> AffinePath:
    """DDPM with ``ddpm_steps`` linear betas (MedForj: 1000, 1e-4 -> 2e-2) for the DDPM
    targets; the linear path for ``rflow``."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}; got {target!r}")
    if target == "rflow":
        return LinearPath()
    return DiscreteVPPath.linear(ddpm_steps, beta_start, beta_end)


def medforj_target(target: str, x1: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The regression target of ``target`` given data ``x1``, noise ``eps`` and the path
    coefficients (broadcast to ``x1``). ``rflow``: ``x1 - eps`` (linear-path velocity)."""
    if target == "sample":
        return x1
    if target == "noise":
        return eps
    if target == "velocity":
        return alpha * eps - sigma * x1  # arXiv 2202.00512, sec. 4; MedForj's v
    if target == "flow":
        return eps - x1  # MedForj's flow target
    if target == "rflow":
        return x1 - eps  # d/dt (t x1 + (1 - t) eps)
    raise ValueError(f"target must be one of {list(TARGETS)}; got {target!r}")


def medforj_to_data_noise(target: str, pred: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``(x1_hat, eps_hat)`` from a ``target`` prediction at ``x_t`` (MedForj's inversions;
    ``alpha, sigma`` broadcast to ``x_t``). The VP identity ``alpha^2 + sigma^2 = 1`` is
    assumed for ``velocity``."""
    if target == "sample":
        return pred, (x_t - alpha * pred) / sigma
    if target == "noise":
        return (x_t - sigma * pred) / alpha, pred
    if target == "velocity":
        return alpha * x_t - sigma * pred, sigma * x_t + alpha * pred
    if target == "flow":
        denom = alpha + sigma
        return (x_t - sigma * pred) / denom, (x_t + alpha * pred) / denom
    if target == "rflow":  # v = x1 - eps with x_t = alpha x1 + sigma eps, alpha + sigma = 1
        return x_t + sigma * pred, x_t - alpha * pred
    raise ValueError(f"target must be one of {list(TARGETS)}; got {target!r}")


class DataPredictor(nn.Module):
    """Wraps a raw network ``net(x, t)`` trained on ``target`` so that ``forward`` returns
    the core parametrization :data:`CORE_KIND` ``[target]``: the data estimate for
    sample / velocity / flow, the raw output for noise and rflow. ``raw`` gives the
    network's own output (the training loss regresses it)."""

    fsdp_forward_methods = ("raw",)
    """Training calls ``raw``: under FSDP it gathers the parameters as ``forward`` does."""

    def __init__(self, net: nn.Module, target: str, path: AffinePath) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {list(TARGETS)}; got {target!r}")
        self.net, self.target, self.path = net, target, path
        self.cfg = getattr(net, "cfg", None)

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        pred = self.net(x, t)
        if self.target in ("sample", "noise", "rflow"):
            return pred
        a = expand_t(self.path.alpha(t), x).to(pred.dtype)
        s = expand_t(self.path.sigma(t), x).to(pred.dtype)
        return medforj_to_data_noise(self.target, pred, x, a, s)[0]


def core_kind(target: str) -> Parametrization:
    """The core parametrization of ``target`` (see :data:`CORE_KIND`)."""
    return CORE_KIND[target]

