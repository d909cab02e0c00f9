"""The Gaussian oracle against independent computations: scipy/torch densities, the
flow map solving its ODE, Monte-Carlo marginals, and W2."""

import math

import pytest
import torch

from modaflow.core.gaussian import GaussianOracle
from modaflow.core.paths import DiscreteVPPath, LinearPath, VPCosinePath, bridge

PATHS = [LinearPath(), VPCosinePath(), DiscreteVPPath.cosine(1000)]


def _oracle(path, dim=3, seed=0) -> GaussianOracle:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return GaussianOracle(torch.randn(dim, generator=g, dtype=torch.float64), A @ A.T + 0.2 * torch.eye(dim, dtype=torch.float64), path)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_log_prob_matches_multivariate_normal(path) -> None:
    o = _oracle(path)
    t = torch.tensor([0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    mean, cov = o.marginal(t, x)
    ref = torch.stack([torch.distributions.MultivariateNormal(mean[i], cov[i]).log_prob(x[i]) for i in range(4)])
    torch.testing.assert_close(o.log_prob(x, t), ref)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_score_is_gradient_of_log_prob(path) -> None:
    o = _oracle(path)
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(o.log_prob(x, t).sum(), x)
    torch.testing.assert_close(o.score(x.detach(), t), grad)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_flow_map_solves_the_velocity_ode(path) -> None:
    o = _oracle(path)
    x = o.sample(0.3, 5, torch.Generator().manual_seed(3))
    s = torch.full((5,), 0.3, dtype=torch.float64)
    t = torch.full((5,), 0.8, dtype=torch.float64)
    # RK4 with many steps on the oracle velocity (a slow, obvious reference).
    y, n = x.clone(), 2000
    h = (0.8 - 0.3) / n
    for k in range(n):
        tk = torch.full((5,), 0.3 + k * h, dtype=torch.float64)
        k1 = o.velocity(y, tk)
        k2 = o.velocity(y + 0.5 * h * k1, tk + 0.5 * h)
        k3 = o.velocity(y + 0.5 * h * k2, tk + 0.5 * h)
        k4 = o.velocity(y + h * k3, tk + h)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    # A DDPM path's velocity jumps at its 1000 knots (piecewise-linear log abar), where RK4
    # loses its order: a looser tolerance there; smooth paths agree to 1e-8.
    tol = 1e-3 if isinstance(path, DiscreteVPPath) else 1e-8
    torch.testing.assert_close(o.flow_map(s, t, x), y, rtol=tol, atol=tol)
    # Group property and identity.
    torch.testing.assert_close(o.flow_map(s, s, x), x)
    mid = torch.full((5,), 0.55, dtype=torch.float64)
    torch.testing.assert_close(o.flow_map(mid, t, o.flow_map(s, mid, x)), o.flow_map(s, t, x))


def test_flow_map_pushes_marginals(gen: torch.Generator) -> None:
    o = _oracle(LinearPath())
    x0 = o.sample(0.0, 200_000, gen)
    x1 = o.flow_map(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), x0)
    # Sample mean within 5 standard errors per coordinate.
    se = torch.sqrt(torch.diagonal(o.cov) / x1.shape[0])
    assert ((x1.mean(0) - o.mean).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(x1.T), o.cov, rtol=0.02, atol=0.02)


def test_w2_zero_for_exact_moments_and_known_shift() -> None:
    o = _oracle(LinearPath(), dim=2)
    # Samples with exactly the target mean and covariance: whiten then colour.
    z = torch.randn(1000, 2, dtype=torch.float64)
    z = z - z.mean(0)
    L = torch.linalg.cholesky(torch.cov(z.T))
    z = z @ torch.linalg.inv(L).T
    x = o.mean + z @ torch.linalg.cholesky(o.cov).T
    assert o.w2_to(x) == pytest.approx(0.0, abs=1e-6)
    # A pure shift by d gives W2 = |d|.
    assert o.w2_to(x + torch.tensor([3.0, 4.0], dtype=torch.float64)) == pytest.approx(5.0, rel=1e-6)


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="Gaussian source"):
        GaussianOracle(torch.zeros(2), torch.eye(2), bridge())
    with pytest.raises(ValueError, match="positive definite"):
        GaussianOracle(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, -1.0]]), LinearPath())
    with pytest.raises(ValueError, match="symmetric"):
        GaussianOracle(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]), LinearPath())
    with pytest.raises(ValueError, match=r"mean must be \(D,\)"):
        GaussianOracle(torch.zeros(3), torch.eye(2), LinearPath())


def test_log_prob_at_t0_is_standard_normal_for_linear_path() -> None:
    o = _oracle(LinearPath())
    x = torch.randn(7, 3, dtype=torch.float64)
    ref = -0.5 * (x**2).sum(1) - 1.5 * math.log(2 * math.pi)
    torch.testing.assert_close(o.log_prob(x, 0.0), ref)
