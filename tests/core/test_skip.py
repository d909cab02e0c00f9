"""Gaussian closed-form skip: exact for Gaussian data, saves exactly the skipped steps."""

import pytest
import torch

from modaflow.core.gaussian import GaussianOracle
from modaflow.core.ode import ODE_STAGES, solve_ode, time_grid
from modaflow.core.paths import LinearPath, VPCosinePath
from modaflow.core.skip import GaussianSkip, ledoit_wolf, sample_with_skip

F64 = torch.float64


def _oracle(path, dim: int = 3) -> GaussianOracle:
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))[0]
    cov = Q @ torch.diag(torch.linspace(0.25, 2.0, dim, dtype=F64)) @ Q.T
    return GaussianOracle(torch.linspace(-1.0, 1.0, dim, dtype=F64), cov, path)


def _t(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


class Recording:
    """A field that records the times it is called at."""

    def __init__(self, field):
        self.field, self.times = field, []

    def __call__(self, x, t):
        self.times.append(float(t[0]))
        return self.field(x, t)


@pytest.mark.parametrize("path", [LinearPath(), VPCosinePath()], ids=["linear", "vp_cosine"])
@pytest.mark.parametrize("t0", [0.0, 0.3, 0.75, 1.0])
def test_skip_is_exact_for_gaussian_data(path, t0, gen) -> None:
    # Skip to t0 in closed form, solve the rest with the oracle's velocity: equals X(0, 1, x0)
    # up to the RK4 error of the remaining solve (below 1e-5 with 16 steps; t0 = 1: exact).
    o = _oracle(path)
    skip = GaussianSkip(o, (3,))
    x0 = torch.randn(32, 3, generator=gen, dtype=F64)
    res = sample_with_skip(o.velocity, x0, skip, t0, steps=16, method="rk4")
    torch.testing.assert_close(res.x, o.flow_map(_t(0.0), _t(1.0), x0), rtol=0, atol=1e-12 if t0 == 1.0 else 1e-5)
    assert res.nfe == 16 * 4
    # the jump itself is the flow of the same ODE from 0 to t0
    if t0 > 0:
        ode = solve_ode(o.velocity, x0, time_grid(64, 0.0, t0, dtype=F64), "rk4").x
        torch.testing.assert_close(skip.start(x0, t0), ode, rtol=0, atol=1e-7)


def test_nfe_saved_is_the_skipped_fraction_of_the_grid(gen) -> None:
    # Non-Gaussian (bimodal) data: a nonlinear field. With t0 on an N-step grid the skip
    # evaluates the field at the same remaining times and saves exactly k/N of the NFE.
    def field(x, t):
        return torch.tanh(3 * x) - x * (1 - t[:, None])

    N, k = 10, 3
    data = torch.cat([torch.randn(200, 2, generator=gen, dtype=F64) * 0.3 + 2, torch.randn(200, 2, generator=gen, dtype=F64) * 0.3 - 2])
    skip = GaussianSkip.fit(data, LinearPath())
    x0 = torch.randn(16, 2, generator=gen, dtype=F64)
    for method, shift in (("euler", 1.0), ("heun", 3.0)):
        full_grid = time_grid(N, shift=shift, dtype=F64)
        t0 = float(full_grid[k])
        full, part = Recording(field), Recording(field)
        nfe_full = solve_ode(full, x0, full_grid, method).nfe
        res = sample_with_skip(part, x0, skip, t0, steps=N - k, method=method, shift=shift)
        assert nfe_full == len(full.times) == N * ODE_STAGES[method]
        assert res.nfe == len(part.times) == (N - k) * ODE_STAGES[method]
        assert (nfe_full - res.nfe) / nfe_full == pytest.approx(k / N, abs=1e-15)
        assert part.times == pytest.approx(full.times[k * ODE_STAGES[method]:], abs=1e-12)


def test_fit_event_shapes_flatten(gen) -> None:
    data = torch.randn(500, 2, 3, generator=gen, dtype=F64) * 0.5 + 1.0
    skip = GaussianSkip.fit(data, LinearPath())
    assert skip.event_shape == (2, 3) and skip.oracle.dim == 6 and 0 <= skip.shrinkage <= 1
    x0 = torch.randn(4, 2, 3, generator=gen, dtype=F64)
    xt = skip.start(x0, 0.5)
    assert xt.shape == (4, 2, 3)
    flat = GaussianSkip(skip.oracle, (6,))
    torch.testing.assert_close(xt.reshape(4, 6), flat.start(x0.reshape(4, 6), 0.5))

    def field(x, t):  # the fitted Gaussian's velocity on (B, 2, 3)
        return skip.oracle.velocity(x.reshape(x.shape[0], 6), t).reshape(x.shape)

    res = sample_with_skip(field, x0, skip, 0.4, steps=12, method="rk4")
    torch.testing.assert_close(res.x.reshape(4, 6), skip.oracle.flow_map(_t(0.0), _t(1.0), x0.reshape(4, 6)), rtol=0, atol=1e-6)


def test_fit_without_shrinkage_is_the_sample_moments(gen) -> None:
    data = torch.randn(300, 3, generator=gen, dtype=F64) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 0.3]], dtype=F64)
    skip = GaussianSkip.fit(data, LinearPath(), shrinkage=0.0)
    torch.testing.assert_close(skip.oracle.mean, data.mean(0))
    torch.testing.assert_close(skip.oracle.cov, torch.cov(data.T, correction=0))
    assert skip.shrinkage == 0.0


def test_ledoit_wolf_against_the_definition(gen) -> None:
    # Slow obvious reference: Ledoit & Wolf 2004 sec. 3.3 term by term, with a loop over n.
    N, D = 12, 20
    x = torch.randn(N, D, generator=gen, dtype=F64) * torch.linspace(0.3, 2.0, D, dtype=F64)
    mean, cov, rho = ledoit_wolf(x)
    xc = x - x.mean(0)
    S = xc.T @ xc / N
    norm2 = lambda A: torch.trace(A @ A.T) / D  # noqa: E731
    m = torch.trace(S) / D
    d2 = norm2(S - m * torch.eye(D, dtype=F64))
    b2 = min(sum(norm2(torch.outer(xc[n], xc[n]) - S) for n in range(N)) / N**2, d2)
    assert rho == pytest.approx(float(b2 / d2), rel=1e-12) and 0 < rho < 1
    torch.testing.assert_close(cov, (b2 / d2) * m * torch.eye(D, dtype=F64) + (1 - b2 / d2) * S)
    assert torch.linalg.eigvalsh(cov)[0] > 0 and torch.linalg.matrix_rank(S) < D  # N < D: S singular, cov not
    sk = pytest.importorskip("sklearn.covariance")
    ref_cov, ref_rho = sk.ledoit_wolf(x.numpy())
    assert rho == pytest.approx(ref_rho, rel=1e-10)
    torch.testing.assert_close(cov, torch.from_numpy(ref_cov))


def test_fit_more_dimensions_than_samples_needs_shrinkage(gen) -> None:
    data = torch.randn(5, 8, generator=gen, dtype=F64)
    assert GaussianSkip.fit(data, VPCosinePath()).shrinkage > 0
    with pytest.raises(ValueError, match="singular"):
        GaussianSkip.fit(data, VPCosinePath(), shrinkage=0.0)


def test_euler_maruyama_after_the_skip(gen) -> None:
    # g = 0 is the ODE: Euler-Maruyama equals Euler; with noise the result stays finite.
    o = _oracle(LinearPath())
    skip = GaussianSkip(o, (3,))
    x0 = torch.randn(8, 3, generator=gen, dtype=F64)
    em = sample_with_skip(o.velocity, x0, skip, 0.5, steps=8, method="em", diffusion=0.0)
    eu = sample_with_skip(o.velocity, x0, skip, 0.5, steps=8, method="euler")
    torch.testing.assert_close(em.x, eu.x)
    noisy = sample_with_skip(o.velocity, x0, skip, 0.5, steps=8, method="em", diffusion=0.5, generator=gen)
    assert noisy.nfe == 8 and torch.isfinite(noisy.x).all() and not torch.allclose(noisy.x, eu.x)


def test_bad_arguments_are_named(gen) -> None:
    o = _oracle(LinearPath())
    skip = GaussianSkip(o, (3,))
    with pytest.raises(ValueError, match="event_shape"):
        GaussianSkip(o, (2, 2))
    with pytest.raises(ValueError, match="x0 must have shape"):
        skip.start(torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match="t0"):
        skip.start(torch.zeros(2, 3), 1.5)
    with pytest.raises(ValueError, match="method"):
        sample_with_skip(o.velocity, torch.zeros(2, 3), skip, 0.5, 4, method="rk5")
    with pytest.raises(ValueError, match="shrinkage"):
        GaussianSkip.fit(torch.randn(10, 3), LinearPath(), shrinkage=1.5)
    with pytest.raises(ValueError, match="at least 2 samples"):
        GaussianSkip.fit(torch.randn(1, 3), LinearPath())
    with pytest.raises(ValueError, match="data contains"):
        GaussianSkip.fit(torch.full((4, 3), float("nan")), LinearPath())
