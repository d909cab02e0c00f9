"""Paths: coefficients, time derivatives against autograd (float64), endpoints,
DDPM steps matched exactly, stochastic interpolants and bridges."""

import math

import pytest
import torch

from modaflow.core.paths import (
    DiscreteVPPath,
    LinearPath,
    StochasticInterpolant,
    VPCosinePath,
    bridge,
)

PATHS = {
    "linear": LinearPath(),
    "vp_cosine": VPCosinePath(),
    "ddpm_linear": DiscreteVPPath.linear(1000),
    "ddpm_cosine": DiscreteVPPath.cosine(1000),
    "si_sqrt": StochasticInterpolant(LinearPath(), 0.5, "sqrt"),
    "si_quadratic": StochasticInterpolant(VPCosinePath(), 0.7, "quadratic"),
    "bridge": bridge(VPCosinePath(), noise=0.2),
}


def _interior_times(n: int = 64) -> torch.Tensor:
    # Stay off the DDPM knots (k/1000), where the piecewise-linear log abar has kinks.
    return torch.linspace(0.0213, 0.9787, n, dtype=torch.float64) + 0.00037


@pytest.mark.parametrize("name", sorted(PATHS))
def test_derivatives_match_autograd(name: str) -> None:
    path = PATHS[name]
    t = _interior_times().requires_grad_(True)
    for f, df in [(path.alpha, path.d_alpha), (path.sigma, path.d_sigma)]:
        (grad,) = torch.autograd.grad(f(t).sum(), t)
        torch.testing.assert_close(df(t.detach()), grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["linear", "vp_cosine", "ddpm_linear", "ddpm_cosine", "si_sqrt"])
def test_data_endpoint(name: str) -> None:
    path = PATHS[name]
    one = torch.ones(1, dtype=torch.float64)
    assert path.alpha(one).item() == pytest.approx(1.0, abs=1e-12)
    assert path.sigma(one).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["linear", "vp_cosine"])
def test_source_endpoint(name: str) -> None:
    zero = torch.zeros(1, dtype=torch.float64)
    assert PATHS[name].alpha(zero).item() == pytest.approx(0.0, abs=1e-12)
    assert PATHS[name].sigma(zero).item() == pytest.approx(1.0, abs=1e-12)


def test_vp_paths_preserve_variance() -> None:
    t = _interior_times()
    for name in ["vp_cosine", "ddpm_linear", "ddpm_cosine"]:
        p = PATHS[name]
        torch.testing.assert_close(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddpm_integer_steps_are_exact(kind: str) -> None:
    T = 1000
    path = DiscreteVPPath.linear(T) if kind == "linear" else DiscreteVPPath.cosine(T)
    # Ho et al. 2020 eq. 4: abar_k = prod_{i <= k} (1 - beta_i), computed here the slow way.
    betas = path.betas.tolist()
    abar, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        abar.append(prod)
    k = torch.tensor([1, 2, 10, 250, 999, 1000])
    t = 1.0 - k.double() / T
    torch.testing.assert_close(path.alpha(t) ** 2, torch.tensor([abar[i - 1] for i in k.tolist()], dtype=torch.float64), rtol=1e-12, atol=0)


def test_ddpm_linear_betas_match_ho_et_al() -> None:
    path = DiscreteVPPath.linear(1000)
    assert path.betas[0].item() == pytest.approx(1e-4)
    assert path.betas[-1].item() == pytest.approx(2e-2)
    # The t = 0 marginal is close to, but not exactly, N(0, I): alpha(0) = sqrt(abar_T).
    a0 = path.alpha(torch.zeros(1, dtype=torch.float64)).item()
    assert a0 == pytest.approx(math.sqrt(path.alphas_cumprod[-1].item()), rel=1e-12)
    assert 0 < a0 < 0.01


def test_cosine_betas_follow_nichol_dhariwal() -> None:
    T, s = 1000, 0.008
    path = DiscreteVPPath.cosine(T)
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for k in [1, 100, 500]:
        assert path.alphas_cumprod[k - 1].item() == pytest.approx(f(k / T) / f(0), rel=1e-10)


def test_bad_betas_rejected() -> None:
    with pytest.raises(ValueError, match="open interval"):
        DiscreteVPPath(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(T,\)"):
        DiscreteVPPath(torch.ones(2, 2) * 0.1)


def test_sample_interpolates_and_differentiates() -> None:
    path = VPCosinePath()
    x0, x1 = torch.randn(5, 3, 4, dtype=torch.float64), torch.randn(5, 3, 4, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    s = path.sample(x0, x1, t)
    a, sg = path.alpha(t)[:, None, None], path.sigma(t)[:, None, None]
    torch.testing.assert_close(s.x_t, a * x1 + sg * x0)
    # dx_t is the time derivative of x_t along the pair (finite difference, central).
    h = 1e-6
    fd = (path.sample(x0, x1, t + h).x_t - path.sample(x0, x1, t - h).x_t) / (2 * h)
    torch.testing.assert_close(s.dx_t, fd, rtol=1e-6, atol=1e-8)
    assert s.eps is x0 and s.z is None


def test_shape_mismatch_is_named() -> None:
    with pytest.raises(ValueError, match="x0 .* and x1 .* must have one shape"):
        LinearPath().sample(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        LinearPath().sample(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


def test_stochastic_interpolant_effective_sigma(gen: torch.Generator) -> None:
    """sigma_0 x0 + gamma z has the law N(0, sigma_eff^2): check sigma_eff and that eps,
    the effective noise, is standard normal and reproduces x_t."""
    base = LinearPath()
    path = StochasticInterpolant(base, 0.8)
    n = 200_000
    t = torch.full((n,), 0.3, dtype=torch.float64)
    x0 = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    x1 = torch.zeros(n, 1, dtype=torch.float64)
    z = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    s = path.sample(x0, x1, t, z=z)
    expected = math.sqrt(0.7**2 + 0.8**2 * 0.3 * 0.7)
    assert path.sigma(t[:1]).item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(s.x_t, path.sigma(t)[:, None] * s.eps)
    # Standard deviation of eps within 5 standard errors (se of a std is ~ 1/sqrt(2n)).
    assert abs(s.eps.std().item() - 1.0) < 5 / math.sqrt(2 * n)
    # dx_t includes gamma'(t) z.
    dg = 0.8 * (1 - 2 * 0.3) / (2 * math.sqrt(0.3 * 0.7))
    torch.testing.assert_close(s.dx_t, x1 - x0 + dg * z)


def test_bridge_keeps_base_sigma() -> None:
    path = bridge(LinearPath(), noise=0.5)
    t = _interior_times()
    torch.testing.assert_close(path.sigma(t), 1 - t)
    assert not path.gaussian_source
    zero_noise = bridge()
    x0, x1 = torch.randn(4, 2), torch.randn(4, 2)
    t4 = torch.rand(4)
    s = zero_noise.sample(x0, x1, t4)
    torch.testing.assert_close(s.x_t, (1 - t4[:, None]) * x0 + t4[:, None] * x1)
    torch.testing.assert_close(s.dx_t, x1 - x0)


def test_log_snr_is_monotone() -> None:
    t = _interior_times()
    for name in ["linear", "vp_cosine", "ddpm_linear", "ddpm_cosine"]:
        lam = PATHS[name].log_snr(t)
        assert (lam[1:] > lam[:-1]).all(), name
