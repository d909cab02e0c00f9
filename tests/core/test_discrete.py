"""DDIM and ancestral DDPM against Ho et al.'s closed forms and the Gaussian oracle."""

import pytest
import torch

from modaflow.core.discrete import ddim_step, ddpm_grid, solve_ddim, solve_ddpm, solve_dpm2m
from modaflow.core.gaussian import GaussianOracle
from modaflow.core.ode import time_grid
from modaflow.core.parametrizations import convert
from modaflow.core.paths import DiscreteVPPath, LinearPath, StochasticInterpolant, VPCosinePath, bridge

F64 = torch.float64
PATHS = [LinearPath(), VPCosinePath(), DiscreteVPPath.cosine(100)]


def _data_model(o: GaussianOracle):
    return lambda x, t: o.posterior_means(x, t)[0]


@pytest.mark.parametrize("path", [DiscreteVPPath.linear(1000), DiscreteVPPath.cosine(50)], ids=repr)
def test_ddim_eta1_on_consecutive_steps_is_hos_posterior(path, gen) -> None:
    T = path.num_steps
    beta = path.betas
    abar = torch.cat([torch.ones(1, dtype=F64), path.alphas_cumprod])
    x1_hat = torch.randn(5, 3, generator=gen, dtype=F64)
    x_k = torch.randn(5, 3, generator=gen, dtype=F64)
    for k in [T, T // 2, 2, 1]:
        # Ho et al. 2020 (arXiv 2006.11239) eq. 7, directly from the betas:
        mean = (abar[k - 1].sqrt() * beta[k - 1] / (1 - abar[k])) * x1_hat + (
            (1 - beta[k - 1]).sqrt() * (1 - abar[k - 1]) / (1 - abar[k])
        ) * x_k
        std = ((1 - abar[k - 1]) / (1 - abar[k]) * beta[k - 1]).sqrt()
        t = torch.tensor([1 - k / T, 1 - (k - 1) / T], dtype=F64)
        a, s = path.alpha(t), path.sigma(t)
        x0_hat = (x_k - a[0] * x1_hat) / s[0]
        step = lambda noise: ddim_step(x1_hat, x0_hat, a[0], s[0], a[1], s[1], 1.0, noise)  # noqa: E731
        zero, one = step(torch.zeros_like(x_k)), step(torch.ones_like(x_k))
        torch.testing.assert_close(zero, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(one - zero, std.expand_as(x_k), rtol=1e-9, atol=1e-12)


def test_solve_ddpm_equals_ddim_eta1_on_every_step(gen) -> None:
    path = DiscreteVPPath.linear(40, 1e-3, 0.2)
    o = GaussianOracle(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=F64), path)
    x = o.sample(0.0, 16, gen)
    ddpm = solve_ddpm(o.velocity, "velocity", path, x, torch.Generator().manual_seed(3), return_trajectory=True)
    ddim = solve_ddim(o.velocity, "velocity", path, x, ddpm_grid(path, 40, dtype=F64), 1.0,
                      torch.Generator().manual_seed(3), return_trajectory=True)
    assert ddpm.nfe == ddim.nfe == 40 and ddpm.trajectory.shape == (41, 16, 2)
    torch.testing.assert_close(ddpm.trajectory, ddim.trajectory, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_ddim_eta0_with_exact_data_prediction_converges_to_the_flow_map(path, gen) -> None:
    o = GaussianOracle(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64), path)
    x0 = o.sample(0.0, 64, gen)
    ref = o.flow_map(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64), x0)
    errs = []
    for K in [10, 40, 160]:
        res = solve_ddim(_data_model(o), "data", path, x0, time_grid(K, dtype=F64))
        errs.append((res.x - ref).abs().max().item())
    # DDIM is a first-order solver of the probability-flow ODE: x4 steps, ~/4 error.
    assert 3.5 < errs[0] / errs[1] < 4.5 and 3.5 < errs[1] / errs[2] < 4.5 and errs[2] < 0.03, errs


@pytest.mark.parametrize("path", PATHS, ids=repr)
@pytest.mark.parametrize("kind", ["data", "velocity", "noise"])
def test_ddim_eta0_is_exact_for_point_mass_data(path, kind, gen) -> None:
    # Data = the point m: x1_hat = m exactly and each sample's path x_t = alpha m + sigma eps
    # is the ODE flow, so any DDIM step is exact; a step to t = 1 returns m.
    m = torch.tensor([[2.0, -1.0, 0.5]], dtype=F64)
    x1_pred = lambda x, t: m.expand_as(x)  # noqa: E731
    eps = torch.randn(8, 3, generator=gen, dtype=F64)
    grid = torch.tensor([0.2, 0.7], dtype=F64)
    a, s = path.alpha(grid), path.sigma(grid)
    x = a[0] * m + s[0] * eps
    model = lambda x, t: convert(x1_pred(x, t), "data", kind, x, t, path)  # noqa: E731
    torch.testing.assert_close(solve_ddim(model, kind, path, x, grid).x, a[1] * m + s[1] * eps, rtol=0, atol=1e-12)
    one_step = solve_ddim(model, kind, path, x, torch.tensor([0.2, 1.0], dtype=F64))
    torch.testing.assert_close(one_step.x, m.expand(8, 3), rtol=0, atol=1e-12)


def test_ddpm_on_1d_gaussian_reproduces_data_moments(gen) -> None:
    # Ancestral DDPM with the exact posterior mean but variance beta_tilde is not exactly
    # unbiased: its output variance is 0.3552 instead of 0.36 (closed-form linear-Gaussian
    # recursion of the chain), 0.95 standard errors at N = 10000. Tolerance: 5 SE, with
    # SE(mean) = sqrt(S / N) and SE(var) = S sqrt(2 / N).
    path = DiscreteVPPath.linear(1000)
    mu, S, N = 0.7, 0.36, 10000
    o = GaussianOracle(torch.tensor([mu], dtype=F64), torch.tensor([[S]], dtype=F64), path)
    x = solve_ddpm(_data_model(o), "data", path, o.sample(0.0, N, gen), gen).x
    assert abs(x.mean().item() - mu) < 5 * (S / N) ** 0.5
    assert abs(x.var().item() - S) < 5 * S * (2 / N) ** 0.5


def test_ddpm_grid() -> None:
    path = DiscreteVPPath.linear(1000)
    g = ddpm_grid(path, 10, dtype=F64)
    assert g.shape == (11,) and g[0].item() == 0.0 and g[-1].item() == 1.0
    torch.testing.assert_close(g, torch.linspace(0, 1, 11, dtype=F64), rtol=0, atol=1e-15)
    k = (1 - ddpm_grid(path, 7, dtype=F64)) * 1000  # uneven split: still integer steps
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-9)
    assert bool((k.diff() < 0).all()) and k[0].item() == 1000 and k[-1].item() == 0
    torch.testing.assert_close(ddpm_grid(DiscreteVPPath.cosine(20), 20, dtype=F64),
                               1 - torch.arange(20, -1, -1, dtype=F64) / 20, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="steps"):
        ddpm_grid(path, 1001)
    with pytest.raises(TypeError, match="DiscreteVPPath"):
        ddpm_grid(LinearPath(), 10)


def test_ddim_trajectory_and_argument_checks(gen) -> None:
    path = VPCosinePath()
    x = torch.randn(4, 2, 3, generator=gen)
    res = solve_ddim(lambda x, t: torch.zeros_like(x), "data", path, x, time_grid(5), 0.5, gen, return_trajectory=True)
    assert res.trajectory.shape == (6, 4, 2, 3) and res.nfe == 5
    # x1_hat = 0 and sigma(1) = cos(pi/2) = -4e-8 in float32
    torch.testing.assert_close(res.x, torch.zeros_like(x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="eta"):
        solve_ddim(lambda x, t: x, "data", path, x, time_grid(2), -0.1)
    with pytest.raises(ValueError, match="Gaussian source"):
        solve_ddim(lambda x, t: x, "velocity", bridge(), x, time_grid(2))
    with pytest.raises(ValueError, match="noise"):
        ddim_step(x, x, torch.tensor(0.5), torch.tensor(0.5), torch.tensor(0.6), torch.tensor(0.4), 1.0, None)
    with pytest.raises(TypeError, match="DiscreteVPPath"):
        solve_ddpm(lambda x, t: x, "data", path, x)


def test_ddim_loop_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    path, grid = DiscreteVPPath.cosine(100), time_grid(4)
    net = torch.nn.Linear(3, 2)
    model = lambda x, t: net(torch.cat([x, t[:, None]], 1))  # noqa: E731
    x = torch.randn(5, 2)
    compiled = torch.compile(lambda x: solve_ddim(model, "noise", path, x, grid).x, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), solve_ddim(model, "noise", path, x, grid).x)
    torch._dynamo.reset()


DPM_PATHS = PATHS + [StochasticInterpolant(LinearPath(), 0.1, shape="sqrt")]


@pytest.mark.parametrize("path", DPM_PATHS, ids=repr)
def test_dpm2m_is_second_order_where_ddim_is_first(path, gen) -> None:
    # Between t = 0.05 and 0.95 every lambda = log(alpha / sigma) is finite, so every step after the first is
    # the multistep one: x2 steps, ~/4 error (DDIM on the same grid: ~/2).
    o = GaussianOracle(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64), path)
    a, b = torch.tensor(0.05, dtype=F64), torch.tensor(0.95, dtype=F64)
    x0 = o.sample(0.0, 64, gen)
    xa, xb = o.flow_map(torch.tensor(0.0, dtype=F64), a, x0), o.flow_map(torch.tensor(0.0, dtype=F64), b, x0)
    err, err_ddim = [], []
    for K in [40, 80, 160]:
        grid = torch.linspace(0.05, 0.95, K + 1, dtype=F64)
        res = solve_dpm2m(_data_model(o), "data", path, xa, grid)
        assert res.nfe == K
        err.append((res.x - xb).abs().max().item())
        err_ddim.append((solve_ddim(_data_model(o), "data", path, xa, grid).x - xb).abs().max().item())
    assert all(3.6 < err[i] / err[i + 1] < 4.6 for i in range(2)), err
    assert all(1.8 < err_ddim[i] / err_ddim[i + 1] < 2.2 for i in range(2)), err_ddim
    assert err[-1] < err_ddim[-1] / 20


@pytest.mark.parametrize("path", DPM_PATHS, ids=repr)
def test_dpm2m_from_noise_to_data_converges_to_the_flow_map(path, gen) -> None:
    # The full interval: the first step leaves alpha = 0 and the last lands on sigma = 0 (first-order steps that
    # return the data estimate); the error still falls faster than DDIM's and beats it at every size.
    o = GaussianOracle(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64), path)
    x0 = o.sample(0.0, 64, gen)
    ref = o.flow_map(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64), x0)
    err, err_ddim = [], []
    for K in [80, 160, 320]:
        grid = time_grid(K, dtype=F64)
        err.append((solve_dpm2m(_data_model(o), "data", path, x0, grid).x - ref).abs().max().item())
        err_ddim.append((solve_ddim(_data_model(o), "data", path, x0, grid).x - ref).abs().max().item())
    assert all(e < d / 4 for e, d in zip(err, err_ddim)), (err, err_ddim)
    assert err[2] < 2e-3, err
    if not isinstance(path, DiscreteVPPath):  # the DDPM table's interpolation between integer steps is not smooth
        assert err[0] / err[2] > 8, err


@pytest.mark.parametrize("path", DPM_PATHS, ids=repr)
@pytest.mark.parametrize("kind", ["data", "velocity"])
def test_dpm2m_is_exact_for_point_mass_data_and_checks_its_grid(path, kind, gen) -> None:
    m = torch.tensor([[2.0, -1.0, 0.5]], dtype=F64)
    model = lambda x, t: convert(m.expand_as(x), "data", kind, x, t, path)  # noqa: E731
    eps = torch.randn(8, 3, generator=gen, dtype=F64)
    grid = torch.tensor([0.2, 0.5, 0.7, 0.9], dtype=F64)
    a, s = path.alpha(grid), path.sigma(grid)
    res = solve_dpm2m(model, kind, path, a[0] * m + s[0] * eps, grid, return_trajectory=True)
    torch.testing.assert_close(res.trajectory, a[:, None, None] * m + s[:, None, None] * eps, rtol=0, atol=1e-12)
    to_data = solve_dpm2m(model, kind, path, a[0] * m + s[0] * eps, torch.tensor([0.2, 0.6, 1.0], dtype=F64))
    torch.testing.assert_close(to_data.x, m.expand(8, 3), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="increase strictly"):
        solve_dpm2m(model, kind, path, eps, torch.tensor([0.2, 0.6, 0.6, 0.9], dtype=F64))
