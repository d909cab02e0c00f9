"""Fixed-step and adaptive ODE solvers against the Gaussian oracle's exact flow map."""

import math

import pytest
import torch
import torch.nn.functional as F

from modaflow.core.gaussian import GaussianOracle
from modaflow.core.ode import ODE_METHODS, SolveResult, solve_ode, solve_ode_adaptive, time_grid
from modaflow.core.paths import LinearPath, VPCosinePath

F64 = torch.float64
ORDERS = {"euler": 1.0, "midpoint": 2.0, "heun": 2.0, "rk4": 4.0}


def _oracle(path) -> GaussianOracle:
    """Well-conditioned 3-d Gaussian (eigenvalues 0.25, 1, 2), so K = 8..64 is asymptotic."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))
    cov = Q @ torch.diag(torch.tensor([0.25, 1.0, 2.0], dtype=F64)) @ Q.T
    return GaussianOracle(torch.tensor([1.0, -0.5, 0.3], dtype=F64), cov, path)


def _exact(o: GaussianOracle, s: float, t: float, x: torch.Tensor) -> torch.Tensor:
    return o.flow_map(torch.tensor(s, dtype=F64), torch.tensor(t, dtype=F64), x)


class Counting:
    """A field that counts its calls."""

    def __init__(self, field):
        self.field, self.calls = field, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.field(x, t)


def test_methods_and_orders_listed() -> None:
    assert ODE_METHODS == ("euler", "midpoint", "heun", "rk4")


@pytest.mark.parametrize("method", ODE_METHODS)
def test_convergence_order_on_oracle(method, gen) -> None:
    # VP-cosine path: on the linear path the midpoint rule is superconvergent (order 3)
    # for Gaussian data, which would hide a wrong midpoint time.
    o = _oracle(VPCosinePath())
    x0 = torch.randn(64, 3, generator=gen, dtype=F64)
    ref = _exact(o, 0.0, 1.0, x0)
    Ks = [8, 16, 32, 64]
    errs = [(solve_ode(o.velocity, x0, time_grid(K, dtype=F64), method).x - ref).abs().max() for K in Ks]
    lk, le = torch.log(torch.tensor(Ks, dtype=F64)), torch.log(torch.stack(errs))
    slope = -((lk - lk.mean()) * (le - le.mean())).sum() / ((lk - lk.mean()) ** 2).sum()
    assert abs(slope.item() - ORDERS[method]) < 0.2, (method, slope.item(), errs)


@pytest.mark.parametrize("method", ODE_METHODS)
def test_nfe_counts_field_calls(method) -> None:
    o = _oracle(LinearPath())
    field = Counting(o.velocity)
    res = solve_ode(field, torch.randn(5, 3, dtype=F64), time_grid(7, dtype=F64), method)
    assert isinstance(res, SolveResult) and res.trajectory is None
    assert res.nfe == field.calls == 7 * {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[method]


@pytest.mark.parametrize("method", ODE_METHODS)
def test_per_sample_grid_equals_each_sample_alone(method, gen) -> None:
    o = _oracle(LinearPath())
    x = torch.randn(4, 3, generator=gen, dtype=F64)
    grids = torch.stack([
        time_grid(6, 0.0, 1.0, dtype=F64),
        time_grid(6, 0.2, 1.0, shift=3.0, dtype=F64),
        time_grid(6, 1.0, 0.1, dtype=F64),  # backwards
        time_grid(6, 0.5, 0.7, shift=0.5, dtype=F64),
    ])
    batched = solve_ode(o.velocity, x, grids, method, return_trajectory=True)
    for i in range(4):
        alone = solve_ode(o.velocity, x[i : i + 1], grids[i], method, return_trajectory=True)
        torch.testing.assert_close(batched.x[i : i + 1], alone.x, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(batched.trajectory[:, i : i + 1], alone.trajectory, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("path", [LinearPath(), VPCosinePath()], ids=repr)
def test_backward_solve_inverts_forward(path, gen) -> None:
    o = _oracle(path)
    x0 = torch.randn(32, 3, generator=gen, dtype=F64)
    x1 = solve_ode(o.velocity, x0, time_grid(64, dtype=F64), "rk4").x
    back = solve_ode(o.velocity, x1, time_grid(64, 1.0, 0.0, dtype=F64), "rk4").x
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(back, _exact(o, 1.0, 0.0, x1), rtol=0, atol=1e-6)


def test_trajectory_shape_and_ends() -> None:
    field = lambda x, t: -x * t[:, None, None]  # noqa: E731  (B, 2, 5) data
    x = torch.randn(3, 2, 5)
    res = solve_ode(field, x, time_grid(4), "heun", return_trajectory=True)
    assert res.trajectory.shape == (5, 3, 2, 5)
    assert torch.equal(res.trajectory[0], x) and torch.equal(res.trajectory[-1], res.x)
    # dx/dt = -t x has x(1) = exp(-1/2) x(0); Heun with 4 steps is within 1e-2.
    torch.testing.assert_close(res.x, math.exp(-0.5) * x, rtol=0, atol=1e-2 * x.abs().max().item())


@pytest.mark.parametrize("path", [LinearPath(), VPCosinePath()], ids=repr)
def test_adaptive_matches_oracle(path, gen) -> None:
    pytest.importorskip("torchdiffeq")
    o = _oracle(path)
    field = Counting(o.velocity)
    x0 = torch.randn(16, 3, generator=gen, dtype=F64)
    res = solve_ode_adaptive(field, x0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(res.x, _exact(o, 0.0, 1.0, x0), rtol=0, atol=1e-5)
    assert res.nfe == field.calls and res.nfe > 6 and res.trajectory is None
    back = solve_ode_adaptive(o.velocity, res.x, t0=1.0, t1=0.0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(back.x, x0, rtol=0, atol=1e-5)


def test_gradient_to_x_is_the_flow_map_jacobian(gen) -> None:
    # X(0, 1, x) is affine in x with Jacobian U diag(c1/c0) U^T (see gaussian.py).
    o = _oracle(VPCosinePath())
    x0 = torch.randn(8, 3, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn(8, 3, generator=gen, dtype=F64)
    (grad,) = torch.autograd.grad((solve_ode(o.velocity, x0, time_grid(32, dtype=F64), "rk4").x * w).sum(), x0)
    x0_exact = x0.detach().clone().requires_grad_(True)
    (ref,) = torch.autograd.grad((_exact(o, 0.0, 1.0, x0_exact) * w).sum(), x0_exact)
    torch.testing.assert_close(grad, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ODE_METHODS)
def test_gradients_to_x_and_parameters_pass_gradcheck(method) -> None:
    grid = time_grid(3, dtype=F64)

    def run(x, weight, bias):
        field = lambda y, t: torch.tanh(F.linear(torch.cat([y, t[:, None]], 1), weight, bias))  # noqa: E731
        return solve_ode(field, x, grid, method).x

    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*s, generator=g, dtype=F64, requires_grad=True) for s in [(4, 2), (2, 3), (2,)]]
    assert torch.autograd.gradcheck(run, args)
    # and into an nn.Module's own parameters:
    net = torch.nn.Linear(3, 2, dtype=F64)
    solve_ode(lambda y, t: net(torch.cat([y, t[:, None]], 1)), args[0].detach(), grid, method).x.sum().backward()
    assert net.weight.grad is not None and bool((net.weight.grad != 0).any())


def test_time_grid_ends_order_and_shift() -> None:
    g = time_grid(10, dtype=F64)
    torch.testing.assert_close(g, torch.linspace(0, 1, 11, dtype=F64), rtol=0, atol=1e-15)
    for t0, t1, shift in [(0.0, 1.0, 3.0), (0.2, 0.9, 3.0), (1.0, 0.0, 0.5), (0.7, 0.3, 2.0)]:
        g = time_grid(8, t0, t1, shift=shift, dtype=F64)
        assert g.shape == (9,) and g[0].item() == t0 and g[-1].item() == t1
        d = g.diff()
        assert bool((d > 0).all()) if t1 > t0 else bool((d < 0).all())
    # shift > 1 spends more steps near the source: the first step is shorter than uniform.
    assert time_grid(10, shift=3.0)[1].item() < 0.1 / 2
    assert time_grid(4, device="cpu").dtype == torch.float32


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"),
    (dict(steps=4, t0=-0.1), "t0"),
    (dict(steps=4, t1=1.5), "t1"),
    (dict(steps=4, shift=0.0), "shift"),
])
def test_time_grid_rejects_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        time_grid(**kwargs)


def test_solve_ode_rejects_bad_method_and_grid() -> None:
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="method"):
        solve_ode(lambda x, t: x, x, time_grid(2), "rk45")
    with pytest.raises(ValueError, match="grid"):
        solve_ode(lambda x, t: x, x, torch.zeros(4, 3), "euler")
    with pytest.raises(ValueError, match="grid"):
        solve_ode(lambda x, t: x, x, torch.zeros(1), "euler")
