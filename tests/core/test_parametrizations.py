"""Parametrizations: every conversion exact in float64, against the Gaussian oracle's
closed-form velocity, posterior means and score; regression targets have the right
conditional expectation."""

import itertools

import pytest
import torch

from modaflow.core.gaussian import GaussianOracle
from modaflow.core.parametrizations import (
    PARAMETRIZATIONS,
    as_velocity_field,
    convert,
    regression_target,
    to_data_noise,
)
from modaflow.core.paths import DiscreteVPPath, LinearPath, StochasticInterpolant, VPCosinePath, bridge

PATHS = [
    LinearPath(),
    VPCosinePath(),
    DiscreteVPPath.linear(1000),
    DiscreteVPPath.cosine(1000),
    StochasticInterpolant(LinearPath(), 0.4),
]


def _oracle(path, dim: int = 4) -> GaussianOracle:
    g = torch.Generator().manual_seed(7)
    A = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return GaussianOracle(torch.randn(dim, generator=g, dtype=torch.float64), A @ A.T + 0.3 * torch.eye(dim, dtype=torch.float64), path)


def _exact(oracle: GaussianOracle, x, t) -> dict[str, torch.Tensor]:
    x1, x0 = oracle.posterior_means(x, t)
    return {"velocity": oracle.velocity(x, t), "data": x1, "noise": x0, "score": oracle.score(x, t)}


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_all_conversions_match_oracle(path) -> None:
    oracle = _oracle(path)
    t = torch.linspace(0.05, 0.95, 16, dtype=torch.float64)
    x = torch.stack([oracle.sample(ti, 1, torch.Generator().manual_seed(i))[0] for i, ti in enumerate(t)])
    exact = _exact(oracle, x, t)
    for frm, to in itertools.product(PARAMETRIZATIONS, PARAMETRIZATIONS):
        got = convert(exact[frm], frm, to, x, t, path)
        torch.testing.assert_close(got, exact[to], rtol=1e-9, atol=1e-9, msg=f"{frm} -> {to}")


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_round_trips_float64(path) -> None:
    B = 32
    x = torch.randn(B, 3, 2, dtype=torch.float64)
    t = torch.rand(B, dtype=torch.float64) * 0.9 + 0.05
    pred = torch.randn(B, 3, 2, dtype=torch.float64)
    for frm, to in itertools.product(PARAMETRIZATIONS, PARAMETRIZATIONS):
        back = convert(convert(pred, frm, to, x, t, path), to, frm, x, t, path)
        torch.testing.assert_close(back, pred, rtol=1e-10, atol=1e-10, msg=f"{frm} -> {to} -> {frm}")


def test_data_noise_pair_reconstructs_x_t() -> None:
    path = VPCosinePath()
    x, t = torch.randn(8, 5, dtype=torch.float64), torch.rand(8, dtype=torch.float64) * 0.8 + 0.1
    for kind in PARAMETRIZATIONS:
        x1, x0 = to_data_noise(torch.randn_like(x), kind, x, t, path)
        torch.testing.assert_close(path.alpha(t)[:, None] * x1 + path.sigma(t)[:, None] * x0, x)


@pytest.mark.parametrize("kind", PARAMETRIZATIONS)
def test_regression_target_conditional_mean(kind: str, gen: torch.Generator) -> None:
    """E[target | x_t] is the exact predictor: average the target over many (x0, x1) pairs
    that pass through (nearly) one x_t in 1-D and compare with the oracle."""
    path = LinearPath()
    oracle = GaussianOracle(torch.tensor([0.5], dtype=torch.float64), torch.tensor([[0.25]], dtype=torch.float64), path)
    n, t = 2_000_000, 0.6
    x1 = oracle.sample(1.0, n, gen)
    x0 = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.float64)
    s = path.sample(x0, x1, tt)
    x_star = torch.tensor([[0.4]], dtype=torch.float64)
    near = (s.x_t - x_star).abs()[:, 0] < 0.01
    target = regression_target(kind, s.x1, s.eps, s.dx_t, path.sigma(tt)[:, None])[near].mean(0)
    exact = _exact(oracle, x_star, torch.tensor([t], dtype=torch.float64))[kind][0]
    # Tolerance: Monte-Carlo (~1e4 samples in the window) plus the window's width.
    torch.testing.assert_close(target, exact, rtol=0, atol=0.03)


def test_as_velocity_field_wraps_data_predictor() -> None:
    path = LinearPath()
    oracle = _oracle(path, 3)
    data_model = lambda x, t: oracle.posterior_means(x, t)[0]  # noqa: E731
    field = as_velocity_field(data_model, "data", path)
    x, t = torch.randn(6, 3, dtype=torch.float64), torch.rand(6, dtype=torch.float64) * 0.9
    torch.testing.assert_close(field(x, t), oracle.velocity(x, t))
    vel = lambda x, t: x  # noqa: E731
    assert as_velocity_field(vel, "velocity", path) is vel


def test_unknown_and_undefined_parametrizations() -> None:
    x, t = torch.randn(2, 2), torch.rand(2)
    with pytest.raises(ValueError, match="parametrization must be one of"):
        convert(x, "velocity", "epsilon", x, t, LinearPath())
    with pytest.raises(ValueError, match="needs a Gaussian source"):
        convert(x, "velocity", "score", x, t, bridge())
    with pytest.raises(ValueError, match="only the 'velocity'"):
        convert(x, "velocity", "data", x, t, bridge(noise=0.1))
    # A noiseless bridge is still an affine path: velocity <-> data is exact.
    path = bridge()
    v = torch.randn(2, 2, dtype=torch.float64)
    xt, tt = torch.randn(2, 2, dtype=torch.float64), torch.tensor([0.2, 0.7], dtype=torch.float64)
    torch.testing.assert_close(convert(convert(v, "velocity", "data", xt, tt, path), "data", "velocity", xt, tt, path), v)
