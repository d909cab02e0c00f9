"""What a network predicts, and exact conversions between the four choices.

For an affine path ``x_t = alpha x1 + sigma x0`` (``x0`` ~ N(0, I) for noise/score) a network
can predict (Kingma & Gao 2023, arXiv 2303.00848, app. D; Lipman et al. 2024, arXiv
2412.06264, sec. 4.8):

* ``"velocity"``: ``v = E[dx_t | x_t] = alpha' x1_hat + sigma' x0_hat``
* ``"data"``:     ``x1_hat = E[x1 | x_t]``
* ``"noise"``:    ``x0_hat = E[x0 | x_t]`` (the effective noise for stochastic interpolants)
* ``"score"``:    ``grad log p_t(x_t) = -x0_hat / sigma`` (Tweedie; Gaussian source only)

All conversions pass through the pair ``(x1_hat, x0_hat)``, which ``x_t = alpha x1_hat +
sigma x0_hat`` ties together. Divisions: by ``sigma`` (singular at t = 1), by ``alpha``
(singular at t = 0), by ``alpha' sigma - sigma' alpha`` (nonzero for every path here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from torch import Tensor

from .paths import AffinePath, StochasticInterpolant
from .tensors import expand_t

__all__ = [
    "Parametrization",
    "PARAMETRIZATIONS",
    "convert",
    "to_data_noise",
    "regression_target",
    "as_velocity_field",
]

Parametrization = Literal["velocity", "data", "noise", "score"]
PARAMETRIZATIONS: tuple[str, ...] = get_args(Parametrization)


def _check(name: str, path: AffinePath) -> None:
    if name not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}; got {name!r}")
    if not path.gaussian_source:
        if name == "score":
            raise ValueError(f"the score parametrization needs a Gaussian source; {path!r} has a data source")
        if isinstance(path, StochasticInterpolant) and path.scale > 0 and name != "velocity":
            raise ValueError(
                f"{path!r} has a data source and latent noise: only the 'velocity' "
                f"parametrization is exact; got {name!r}"
            )


def to_data_noise(pred: Tensor, kind: Parametrization, x_t: Tensor, t: Tensor, path: AffinePath) -> tuple[Tensor, Tensor]:
    """Return ``(x1_hat, x0_hat)`` from a prediction of kind ``kind`` at ``(x_t, t)``.

    Shapes: ``pred, x_t`` ``(B, *D)``, ``t`` ``(B,)``.
    """
    _check(kind, path)
    a, s = expand_t(path.alpha(t), x_t), expand_t(path.sigma(t), x_t)
    if kind == "data":
        x1 = pred
        return x1, (x_t - a * x1) / s
    if kind == "noise":
        x0 = pred
        return (x_t - s * x0) / a, x0
    if kind == "score":
        x0 = -s * pred  # Tweedie: score = -E[x0 | x_t] / sigma
        return (x_t - s * x0) / a, x0
    da, ds = expand_t(path.d_alpha(t), x_t), expand_t(path.d_sigma(t), x_t)
    # v = a' x1 + s' x0 and x_t = a x1 + s x0  =>  x1 = (s v - s' x_t) / (a' s - s' a)
    x1 = (s * pred - ds * x_t) / (da * s - ds * a)
    return x1, (x_t - a * x1) / s


def convert(pred: Tensor, frm: Parametrization, to: Parametrization, x_t: Tensor, t: Tensor, path: AffinePath) -> Tensor:
    """Convert a prediction of kind ``frm`` into kind ``to`` at ``(x_t, t)`` on ``path``.

    Exact (round trips hold to float64 precision away from the singular endpoints).
    """
    _check(to, path)
    if frm == to:
        _check(frm, path)
        return pred
    x1, x0 = to_data_noise(pred, frm, x_t, t, path)
    if to == "data":
        return x1
    if to == "noise":
        return x0
    s = expand_t(path.sigma(t), x_t)
    if to == "score":
        return -x0 / s
    da, ds = expand_t(path.d_alpha(t), x_t), expand_t(path.d_sigma(t), x_t)
    return da * x1 + ds * x0


def regression_target(kind: Parametrization, x1: Tensor, eps: Tensor, dx_t: Tensor, sigma: Tensor) -> Tensor:
    """The conditional target whose regression gives a predictor of kind ``kind``:
    ``dx_t`` (velocity), ``x1`` (data), ``eps`` (noise), ``-eps / sigma`` (score; Vincent
    2011 denoising score matching). ``sigma`` is the path's sigma(t) broadcast to ``x1``."""
    if kind == "velocity":
        return dx_t
    if kind == "data":
        return x1
    if kind == "noise":
        return eps
    if kind == "score":
        return -eps / sigma
    raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}; got {kind!r}")


def as_velocity_field(
    model: Callable[[Tensor, Tensor], Tensor], kind: Parametrization, path: AffinePath
) -> Callable[[Tensor, Tensor], Tensor]:
    """Wrap ``model(x, t)`` that predicts ``kind`` into a velocity field ``(x, t) -> v`` for
    the solvers. ``t`` has shape ``(B,)``."""
    _check(kind, path)
    if kind == "velocity":
        return model

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        return convert(model(x, t), kind, "velocity", x, t, path)

    return velocity
