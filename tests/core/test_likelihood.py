"""Log-likelihood by the instantaneous change of variables, against the Gaussian oracle's
exact log-density and closed forms for linear fields."""

import math
from typing import get_args

import pytest
import torch
from torch import nn

from modaflow.core.gaussian import GaussianOracle
from modaflow.core.config import ConfigError
from modaflow.core.likelihood import (
    LikelihoodConfig,
    LikelihoodMethod,
    LikelihoodResult,
    divergence,
    log_likelihood,
    random_probes,
    sample_with_log_prob,
    standard_normal_log_prob,
)
from modaflow.core.ode import ODE_METHODS
from modaflow.core.paths import LinearPath, VPCosinePath

F64 = torch.float64


def _oracle(path, eigvals=(0.25, 1.0, 2.0), rotate=True) -> GaussianOracle:
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))[0] if rotate else torch.eye(3, dtype=F64)
    cov = Q @ torch.diag(torch.tensor(eigvals, dtype=F64)) @ Q.T
    return GaussianOracle(torch.tensor([1.0, -0.5, 0.3], dtype=F64), cov, path)


class MLPField(nn.Module):
    """A small nonlinear, time-dependent field ``W2 tanh(W1 x + b + t u)`` in float64."""

    def __init__(self, dim: int = 2, hidden: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.W1 = nn.Parameter(0.7 * torch.randn(hidden, dim, generator=g, dtype=F64))
        self.b = nn.Parameter(0.3 * torch.randn(hidden, generator=g, dtype=F64))
        self.u = nn.Parameter(torch.randn(hidden, generator=g, dtype=F64))
        self.W2 = nn.Parameter(0.7 * torch.randn(dim, hidden, generator=g, dtype=F64))

    def forward(self, x, t):
        return torch.tanh(x @ self.W1.T + self.b + t[:, None] * self.u) @ self.W2.T


@pytest.mark.parametrize("path", [LinearPath(), VPCosinePath()], ids=["linear", "vp_cosine"])
def test_exact_divergence_matches_oracle_log_density(path, gen) -> None:
    # Stated tolerance: 1e-4 nats with RK4 and 32 steps (measured ~1e-6).
    o = _oracle(path)
    x1 = o.sample(1.0, 64, gen)
    with torch.no_grad():
        res = log_likelihood(o.velocity, x1, LikelihoodConfig(steps=32, method="rk4"))
    assert isinstance(res, LikelihoodResult) and res.log_prob.shape == (64,) and res.nfe == 32 * 4
    assert (res.log_prob - o.log_prob(x1, 1.0)).abs().max() < 1e-4
    # the other end is the oracle's inverse flow map
    torch.testing.assert_close(res.x, o.flow_map(torch.tensor(1.0, dtype=F64), torch.tensor(0.0, dtype=F64), x1), rtol=0, atol=1e-5)


def test_adaptive_matches_oracle(gen) -> None:
    pytest.importorskip("torchdiffeq")
    o = _oracle(LinearPath())
    x1 = o.sample(1.0, 16, gen)
    with torch.no_grad():
        res = log_likelihood(o.velocity, x1, LikelihoodConfig(method="dopri5", rtol=1e-7, atol=1e-7))
    assert (res.log_prob - o.log_prob(x1, 1.0)).abs().max() < 1e-4
    assert res.nfe > 0


def test_sampling_and_log_density_in_one_pass(gen) -> None:
    o = _oracle(VPCosinePath())
    x0 = torch.randn(64, 3, generator=gen, dtype=F64)
    with torch.no_grad():
        res = sample_with_log_prob(o.velocity, x0, LikelihoodConfig(steps=32, method="rk4"))
    exact_x1 = o.flow_map(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64), x0)
    torch.testing.assert_close(res.x, exact_x1, rtol=0, atol=1e-5)
    assert (res.log_prob - o.log_prob(res.x, 1.0)).abs().max() < 1e-4


def test_linear_field_closed_form_and_event_shapes(gen) -> None:
    # v = A x on (B, 2, 2) data: div v = tr A, so log p1(x1) = log N(x0) - tr A exactly for
    # any Runge-Kutta method (it integrates a constant exactly), and x0 = expm(-A) x1.
    A = 0.4 * torch.randn(4, 4, generator=gen, dtype=F64)

    def field(x, t):
        return (x.reshape(x.shape[0], 4) @ A.T).reshape(x.shape)

    x1 = torch.randn(5, 2, 2, generator=gen, dtype=F64)
    with torch.no_grad():
        res = log_likelihood(field, x1, LikelihoodConfig(steps=16, method="rk4"))
    assert res.x.shape == (5, 2, 2)
    torch.testing.assert_close(res.log_prob, standard_normal_log_prob(res.x) - torch.trace(A), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.x.reshape(5, 4), x1.reshape(5, 4) @ torch.linalg.matrix_exp(-A).T, rtol=0, atol=1e-7)


def test_log_density_at_an_earlier_time(gen) -> None:
    # t1 < 1 returns log p_t1 of the marginal at t1 (for fields singular at t = 1).
    o = _oracle(LinearPath())
    x = o.sample(0.8, 16, gen)
    with torch.no_grad():
        res = log_likelihood(o.velocity, x, LikelihoodConfig(steps=32, t1=0.8))
        fwd = sample_with_log_prob(o.velocity, res.x, LikelihoodConfig(steps=32, t1=0.8))
    assert (res.log_prob - o.log_prob(x, 0.8)).abs().max() < 1e-4
    torch.testing.assert_close(fwd.x, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(fwd.log_prob, res.log_prob, rtol=0, atol=1e-5)


def test_custom_source_log_prob(gen) -> None:
    # A zero field leaves x unchanged: log p1 = log p0 for any source density.
    x = torch.randn(4, 3, generator=gen, dtype=F64)

    def source(z):
        return -(z.abs()).sum(1)

    cfg = LikelihoodConfig(steps=2, method="euler")
    res = log_likelihood(lambda z, t: torch.zeros_like(z), x, cfg)
    torch.testing.assert_close(res.log_prob, standard_normal_log_prob(x))
    res = log_likelihood(lambda z, t: torch.zeros_like(z), x, cfg, source_log_prob=source)
    torch.testing.assert_close(res.log_prob, source(x))


def test_rademacher_is_exact_for_a_diagonal_jacobian(gen) -> None:
    # eps^T J eps = sum_i J_ii eps_i^2 = tr J when J is diagonal and eps_i = +-1.
    o = _oracle(LinearPath(), rotate=False)
    x1 = o.sample(1.0, 8, gen)
    with torch.no_grad():
        exact = log_likelihood(o.velocity, x1, LikelihoodConfig(steps=8))
        hutch = log_likelihood(o.velocity, x1, LikelihoodConfig(steps=8, estimator="hutchinson", n_probes=1), gen)
    torch.testing.assert_close(hutch.log_prob, exact.log_prob, rtol=0, atol=1e-12)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe) -> None:
    # One point repeated N times gets N independent probe draws; their mean must match the
    # exact-divergence solve on the same grid within 4 standard errors.
    o = _oracle(LinearPath())
    x1 = o.sample(1.0, 1, torch.Generator().manual_seed(5)).expand(4000, 3)
    with torch.no_grad():
        exact = log_likelihood(o.velocity, x1[:1], LikelihoodConfig(steps=8))
        cfg = LikelihoodConfig(steps=8, estimator="hutchinson", n_probes=2, probe=probe)
        hutch = log_likelihood(o.velocity, x1, cfg, torch.Generator().manual_seed(6))
    mean, stderr = hutch.log_prob.mean(), hutch.log_prob.std() / math.sqrt(4000)
    assert stderr > 0  # a rotated covariance: the estimate is really random
    assert abs(mean - exact.log_prob[0]) < 4 * stderr, (mean.item(), exact.log_prob.item(), stderr.item())


def test_probes_are_reproducible_and_normalised() -> None:
    like = torch.zeros(3, 4, dtype=F64)
    a = random_probes(2, like, "rademacher", torch.Generator().manual_seed(0))
    b = random_probes(2, like, "rademacher", torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 4) and torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}
    g = random_probes(20000, torch.zeros(1, 3, dtype=F64), "gaussian", torch.Generator().manual_seed(0))[:, 0]
    torch.testing.assert_close(g.T @ g / 20000, torch.eye(3, dtype=F64), rtol=0, atol=0.05)


def test_divergence_exact_against_full_jacobian(gen) -> None:
    field = MLPField(dim=3)
    x, t = torch.randn(6, 3, generator=gen, dtype=F64), torch.rand(6, generator=gen, dtype=F64)
    v, div = divergence(field, x, t)
    ref = torch.stack([torch.trace(torch.autograd.functional.jacobian(lambda y: field(y[None], t[i : i + 1])[0], x[i])) for i in range(6)])
    torch.testing.assert_close(div, ref)
    torch.testing.assert_close(v, field(x, t).detach())
    assert not div.requires_grad


@pytest.mark.parametrize("wrt", ["params", "x"])
def test_gradients_match_finite_differences(wrt, gen) -> None:
    # The fixed-step solve is a smooth function of the parameters and of x1: its autograd
    # gradient must equal central differences of the same discrete solve (float64).
    field = MLPField(dim=2)
    x1 = torch.randn(3, 2, generator=gen, dtype=F64)

    def loss(x):
        return log_likelihood(field, x, LikelihoodConfig(steps=4, method="rk4")).log_prob.sum()

    if wrt == "params":
        target = field.W1
        (grad,) = torch.autograd.grad(loss(x1), target)
    else:
        target = x1.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(target), target)
    fd = torch.zeros_like(grad)
    h = 1e-6
    with torch.no_grad():
        for idx in range(target.numel()):
            base = target.view(-1)[idx].item()
            target.view(-1)[idx] = base + h
            up = loss(x1 if wrt == "params" else target)
            target.view(-1)[idx] = base - h
            down = loss(x1 if wrt == "params" else target)
            target.view(-1)[idx] = base
            fd.view(-1)[idx] = (up - down) / (2 * h)
    assert grad.abs().max() > 1e-3
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-7)


def test_config_fields_are_validated() -> None:
    assert set(ODE_METHODS) < set(get_args(LikelihoodMethod))
    for bad, field in (({"estimator": "exactly"}, "estimator"), ({"method": "rk5"}, "method"),
                       ({"n_probes": 0}, "n_probes"), ({"probe": "uniform"}, "probe"),
                       ({"steps": 0}, "steps"), ({"rtol": 0.0}, "rtol"), ({"t1": 0.0}, "t1")):
        with pytest.raises(ConfigError, match=field):
            LikelihoodConfig(**bad)


def test_bad_inputs_are_named() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="x must be batch-first"):
        log_likelihood(lambda z, t: z, torch.zeros(3))
    with pytest.raises(ValueError, match="field returned shape"):
        log_likelihood(lambda z, t: z[:, :2], x)
    with pytest.raises(ValueError, match="probes must have shape"):
        divergence(lambda z, t: z, x, torch.zeros(2), probes=torch.ones(1, 2, 2))
