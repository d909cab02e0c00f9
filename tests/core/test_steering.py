"""Gradient-free steering (FlowChef, hard data consistency) on Gaussian data, where the exact
posterior of a linear measurement is known: E[x | A x = y] = mu + S A^T (A S A^T)^-1 (y - A mu)."""

import pytest
import torch
from torch import nn

from modaflow.core.config import ConfigError, field_docs
from modaflow.core.gaussian import GaussianOracle
from modaflow.core.ode import time_grid
from modaflow.core.paths import LinearPath, VPCosinePath
from modaflow.core.steering import AvgPool, Mask, SteeringConfig, steer

F64 = torch.float64
MEAN = torch.tensor([1.0, -0.5, 0.3], dtype=F64)
COV = torch.tensor([[1.0, 0.6, 0.2], [0.6, 1.5, -0.4], [0.2, -0.4, 0.8]], dtype=F64)
MASK = torch.tensor([1.0, 0.0, 0.0], dtype=F64)  # observe coordinate 0
Y0 = 2.0  # one prior standard deviation above the mean of coordinate 0


def _posterior(A: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple:
    """Exact Gaussian conditioning on ``A x = y`` (``A`` a matrix)."""
    gain = cov @ A.T @ torch.linalg.inv(A @ cov @ A.T)
    return mean + gain @ (y - A @ mean), cov - gain @ A @ cov


# E[x_u | x_0 = 2] = (0.1, 0.5), Cov = [[1.14, -0.52], [-0.52, 0.76]]; the prior mean of x_u is
# (-0.5, 0.3), 0.63 away, so an unsteered sampler fails the mean check below by far.
COND_MEAN, COND_COV = _posterior(torch.tensor([[1.0, 0.0, 0.0]], dtype=F64), torch.tensor([Y0], dtype=F64), MEAN, COV)


def _steer_mask(path, method: str, steps: int, n: int, seed: int = 0):
    oracle = GaussianOracle(MEAN, COV, path)
    x0 = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
    y = (torch.tensor([Y0, 0.0, 0.0], dtype=F64) * MASK).expand(n, 3)
    return steer(oracle.velocity, x0, time_grid(steps, dtype=F64), path, Mask(MASK), y, SteeringConfig(method=method))


# --- operators ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "shape"),
    [
        (Mask(torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=F64)), (5, 4)),
        (Mask(torch.rand(5, 2, 4, generator=torch.Generator().manual_seed(0)) > 0.5), (5, 2, 4)),  # per-sample, bool
        (AvgPool(2, 1), (3, 2, 8)),
        (AvgPool(2, 2), (3, 1, 4, 6)),
        (AvgPool(3, 3), (2, 1, 3, 6, 9)),
    ],
    ids=["mask", "mask-per-sample", "pool1d", "pool2d", "pool3d"],
)
def test_adjoint_and_pseudo_inverse(op, shape, gen) -> None:
    x = torch.randn(shape, generator=gen, dtype=F64)
    y = torch.randn(op.forward(x).shape, generator=gen, dtype=F64)
    lhs, rhs = (op.forward(x) * y).sum(), (x * op.adjoint(y)).sum()  # <A x, y> = <x, A^T y>
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)
    y_in_range = op.forward(torch.randn(shape, generator=gen, dtype=F64))
    torch.testing.assert_close(op.forward(op.pinv(y_in_range)), y_in_range, rtol=0, atol=1e-12)


def test_avgpool_values_and_bad_sizes() -> None:
    x = torch.arange(8, dtype=F64).reshape(1, 1, 8)
    torch.testing.assert_close(AvgPool(2, 1).forward(x), torch.tensor([[[0.5, 2.5, 4.5, 6.5]]], dtype=F64))
    up = AvgPool(4, 1).pinv(torch.tensor([[[1.0, 2.0]]], dtype=F64))
    torch.testing.assert_close(up, torch.tensor([[[1.0] * 4 + [2.0] * 4]], dtype=F64))
    with pytest.raises(ValueError, match="divisible by factor=3"):
        AvgPool(3, 1).forward(x)
    with pytest.raises(ValueError, match="factor"):
        AvgPool(0, 1)


# --- steering on Gaussian data ----------------------------------------------------------------------


def test_flowchef_mask_meets_the_measurement_and_the_conditional_mean() -> None:
    # 20000 samples, 50 steps, eta = 1, linear path. The last corrected Euler step lands on
    # x1_hat - A^T (A x1_hat - y): the observed coordinate IS y. The unobserved mean, measured
    # over seeds 0-2, is within 0.013 of the exact conditional mean (SE 0.008); tolerance 0.04.
    res = _steer_mask(LinearPath(), "flowchef", 50, 20000)
    assert res.nfe == 50 and res.residual.max().item() < 1e-12
    torch.testing.assert_close(res.x[:, 0], torch.full((20000,), Y0, dtype=F64), rtol=0, atol=1e-12)
    assert (res.x[:, 1:].mean(0) - COND_MEAN[1:]).abs().max().item() < 0.04
    # What it does not get right: the spread. Measured Cov(x_u) - exact: -0.04 to -0.07 on the
    # variances at 50 steps (about -0.02 at 200, -0.01 at 1000: under-dispersed, shrinking
    # with the steps). Only a gross failure (e.g. collapse to a point) is caught here.
    assert (torch.cov(res.x[:, 1:].T) - COND_COV[1:, 1:]).abs().max().item() < 0.15


def test_flowchef_on_the_vp_path_is_approximate_at_the_end() -> None:
    # On a non-linear path gradient skipping (d x1_hat / d x_t ~ I) is cruder and the last
    # Euler step is not x1_hat: measured residual 2.5e-4 and mean error <= 0.015 (10000
    # samples, 100 steps, seeds 0-2).
    res = _steer_mask(VPCosinePath(), "flowchef", 100, 10000)
    assert res.residual.max().item() < 1e-3
    assert (res.x[:, 1:].mean(0) - COND_MEAN[1:]).abs().max().item() < 0.05


@pytest.mark.parametrize("path", [LinearPath(), VPCosinePath()], ids=repr)
def test_hard_consistency_meets_the_measurement_exactly(path) -> None:
    # Projection of x1_hat: the observed coordinate is y to rounding at t = 1 on any path. Its
    # unobserved mean is biased: measured error -0.13 to -0.17 on the first unobserved
    # coordinate at 50 steps (seeds 0-2; -0.08 at 200 steps), against 0.6 for no steering.
    res = _steer_mask(path, "hard", 50, 10000)
    assert res.residual.max().item() < 1e-12
    err = (res.x[:, 1:].mean(0) - COND_MEAN[1:]).norm()
    assert err < 0.35 * (MEAN[1:] - COND_MEAN[1:]).norm(), err


@pytest.mark.parametrize("path", [LinearPath(), VPCosinePath()], ids=repr)
def test_hard_consistency_clips_an_overshooting_prediction_to_x1_range(path) -> None:
    # A model whose clean prediction lies far outside the data's range (its data: mean 10 on [-2, 2]
    # data) is clipped at every step; both paths end at sigma(1) = 0, so the result is the clipped x1_hat.
    oracle = GaussianOracle(torch.full((3,), 10.0, dtype=F64), COV, path)
    x0 = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    y, grid = (torch.tensor([Y0, 0.0, 0.0], dtype=F64) * MASK).expand(500, 3), time_grid(20, dtype=F64)

    def run(x1_range):
        return steer(oracle.velocity, x0, grid, path, Mask(MASK), y, SteeringConfig(method="hard", x1_range=x1_range))

    free, clipped = run(None), run((-2.0, 2.0))
    assert free.x[:, 1:].mean().item() > 5.0  # without the clip: near its conditional mean (7.7 on the linear path)
    assert clipped.residual.max().item() < 1e-12 and clipped.x.abs().max().item() <= 2.0 + 1e-12
    torch.testing.assert_close(clipped.x[:, 0], torch.full((500,), Y0, dtype=F64), rtol=0, atol=1e-12)
    # a range the prediction never leaves changes nothing but rounding (x0_hat recomputed from x_t)
    torch.testing.assert_close(run((-1e6, 1e6)).x, free.x, rtol=0, atol=1e-9)


def test_flowchef_super_resolution_by_average_pooling() -> None:
    # x in R^4, y = pairwise means (A A^T = I / 2, so eta = 2 is the exact projection step).
    mean = torch.tensor([0.5, -1.0, 0.0, 1.0], dtype=F64)
    B = torch.tensor([[1.0, 0.5, 0.0, 0.2], [0.0, 1.0, 0.3, 0.0], [0.4, 0.0, 1.0, 0.5], [0.0, 0.2, 0.0, 1.0]],
                     dtype=F64)
    cov = B @ B.T + 0.1 * torch.eye(4, dtype=F64)
    A = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]], dtype=F64)
    y = torch.tensor([1.0, -0.5], dtype=F64)
    cond_mean, _ = _posterior(A, y, mean, cov)
    oracle = GaussianOracle(mean, cov, LinearPath())
    x0 = torch.randn(20000, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    grid, cfg = time_grid(50, dtype=F64), SteeringConfig(step_size=2.0)
    res = steer(oracle.velocity, x0, grid, oracle.path, AvgPool(2, 1), y.expand(20000, 2), cfg)
    assert res.residual.max().item() < 1e-12
    # measured mean error <= 0.0042 over seeds 0-2 (SE 0.0044); tolerance 0.025. (Cov error
    # 0.02-0.025 on conditional variances of 0.39-0.40: under-dispersed again.)
    assert (res.x.mean(0) - cond_mean).abs().max().item() < 0.025


class _LinearVelocity(nn.Module):
    """A network-like field with trainable parameters that records whether autograd is on."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3, dtype=F64)
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.lin(x) * t[:, None]


@pytest.mark.parametrize("method", ["flowchef", "hard"])
def test_no_autograd_graph_through_the_model(method) -> None:
    model = _LinearVelocity()
    x0 = torch.randn(8, 3, dtype=F64, requires_grad=True)
    y, cfg = torch.zeros(8, 3, dtype=F64), SteeringConfig(method=method)
    res = steer(model, x0, time_grid(6, dtype=F64), LinearPath(), Mask(MASK), y, cfg)
    assert model.grad_enabled == [False] * 6
    assert not res.x.requires_grad and res.x.grad_fn is None and res.residual.grad_fn is None


def test_errors_name_the_bad_input() -> None:
    with pytest.raises(ConfigError, match="step_size"):
        SteeringConfig(step_size=-1.0)
    with pytest.raises(ConfigError, match="method"):
        SteeringConfig(method="dps")
    with pytest.raises(ConfigError, match="x1_range"):
        SteeringConfig(x1_range=(-1.0, 1.0))  # flowchef does not clip
    with pytest.raises(ConfigError, match="x1_range"):
        SteeringConfig(method="hard", x1_range=(1.0, -1.0))
    assert all(field_docs(SteeringConfig).values())
    oracle = GaussianOracle(MEAN, COV, LinearPath())
    with pytest.raises(ValueError, match="y must have the shape of A x"):
        x, y = torch.zeros(4, 3, dtype=F64), torch.zeros(4, 3, dtype=F64)  # A x is (4, 1)
        steer(oracle.velocity, x, time_grid(3, dtype=F64), oracle.path, AvgPool(3, 1), y, SteeringConfig())
