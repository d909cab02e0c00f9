"""Underdamped Langevin integrators on a harmonic potential U = k q^2 / 2."""

import math

import pytest
import torch

from modaflow.core.langevin import (
    LANGEVIN_SCHEMES,
    baoab_step,
    ou_refresh,
    rollout,
    symplectic_euler_step,
)

F64 = torch.float64
K_SPRING = 2.0


def grad_U(q: torch.Tensor) -> torch.Tensor:
    return K_SPRING * q


def energy(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return 0.5 * K_SPRING * q**2 + 0.5 * p**2


@pytest.mark.parametrize("scheme, h, steps", [("baoab", 0.1, 300), ("symplectic_euler", 0.01, 3000)])
def test_long_run_variances_are_T_over_k_and_T(scheme, h, steps, gen) -> None:
    # B = 10000 independent chains from (0, 0), friction 1, run to time 30 (relaxation
    # e^{-15}). Stationary law N(0, T/k) x N(0, T). Tolerance: 5 standard errors of a sample
    # variance, 5 var sqrt(2/B) (0.018 for q, 0.035 for p). Discretisation bias, from the
    # exact stationary covariance of the linear recursion: BAOAB q exact, p -0.5%;
    # symplectic Euler + OU at h = 0.01 q +0.5%, p +0.005% (all below 1 SE).
    T, B = 0.5, 10000
    step = LANGEVIN_SCHEMES[scheme]
    q = torch.zeros(B, dtype=F64)
    p = torch.zeros(B, dtype=F64)
    for _ in range(steps):
        q, p = step(q, p, grad_U, h, 1.0, T, torch.randn(B, generator=gen, dtype=F64))
    se = math.sqrt(2 / B)
    assert abs(q.var().item() - T / K_SPRING) < 5 * (T / K_SPRING) * se
    assert abs(p.var().item() - T) < 5 * T * se
    assert abs(q.mean().item()) < 5 * math.sqrt(T / K_SPRING / B)


@pytest.mark.parametrize("scheme, order", [("baoab", 2), ("symplectic_euler", 1)])
def test_energy_without_friction_is_conserved_to_the_schemes_order(scheme, order) -> None:
    # gamma = 0: BAOAB is velocity Verlet (energy error O(h^2)), symplectic Euler O(h);
    # both are symplectic, so the error stays bounded over 2000 periods' worth of steps
    # instead of drifting.
    q0, p0 = torch.tensor([1.0], dtype=F64), torch.tensor([0.3], dtype=F64)
    errs = []
    for h in (0.1, 0.05):
        traj = rollout(q0, p0, grad_U, h, int(200 / h), gamma=0.0, scheme=scheme)
        err = (energy(traj.q, traj.p) - energy(q0, p0)).abs()[:, 0]
        half = err.shape[0] // 2
        assert err[half:].max() < 1.05 * err[:half].max()  # no drift
        errs.append(err.max().item())
    ratio = errs[0] / errs[1]
    assert abs(math.log2(ratio) - order) < 0.15, (errs, ratio)


def test_steps_match_their_definitions() -> None:
    g = torch.Generator().manual_seed(0)
    q, p, xi = (torch.randn(4, 3, generator=g, dtype=F64) for _ in range(3))
    h, gamma, T = 0.1, 0.7, 1.3
    q1, p1 = symplectic_euler_step(q, p, grad_U, h)
    torch.testing.assert_close(q1, q + h * p)
    torch.testing.assert_close(p1, p - h * K_SPRING * (q + h * p))
    d = math.exp(-gamma * h)
    torch.testing.assert_close(ou_refresh(p, gamma, h, T, xi), d * p + math.sqrt((1 - d * d) * T) * xi)
    assert torch.equal(ou_refresh(p, 0.0, h, T, xi), p)
    # BAOAB with gamma = 0 is velocity Verlet:
    qb, pb = baoab_step(q, p, grad_U, h, 0.0, T, xi)
    p_half = p - 0.5 * h * K_SPRING * q
    q_new = q + h * p_half
    torch.testing.assert_close(qb, q_new)
    torch.testing.assert_close(pb, p_half - 0.5 * h * K_SPRING * q_new)


def test_rollout_shapes_explicit_noise_and_reparameterisation() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 2, 3, generator=g, dtype=F64)
    p = torch.randn(5, 2, 3, generator=g, dtype=F64)
    noise = torch.randn(7, 5, 2, 3, generator=g, dtype=F64)
    gamma = torch.tensor(0.5, dtype=F64, requires_grad=True)
    traj = rollout(q, p, grad_U, 0.1, 7, gamma=gamma, temperature=1.0, scheme="symplectic_euler", noise=noise)
    assert traj.q.shape == traj.p.shape == (8, 5, 2, 3)
    assert torch.equal(traj.q[0], q) and torch.equal(traj.p[0], p)
    # hand-rolled steps with the same noise give the same states
    qq, pp = q, p
    for xi in noise:
        qq, pp = symplectic_euler_step(qq, pp, grad_U, 0.1)
        pp = ou_refresh(pp, gamma, 0.1, 1.0, xi)
    torch.testing.assert_close(traj.q[-1], qq)
    torch.testing.assert_close(traj.p[-1], pp)
    # gradients reach the friction through the explicit noise (reparameterisation)
    traj.q[-1].pow(2).sum().backward()
    assert gamma.grad is not None and torch.isfinite(gamma.grad) and gamma.grad != 0
    # same generator seed -> same rollout
    a = rollout(q, p, grad_U, 0.1, 3, 1.0, 1.0, "baoab", generator=torch.Generator().manual_seed(5))
    b = rollout(q, p, grad_U, 0.1, 3, 1.0, 1.0, "baoab", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.q, b.q) and torch.equal(a.p, b.p)


def test_rollout_rejects_bad_arguments() -> None:
    q = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="scheme"):
        rollout(q, q, grad_U, 0.1, 2, scheme="leapfrog")
    with pytest.raises(ValueError, match="one shape"):
        rollout(q, torch.zeros(3, 3), grad_U, 0.1, 2)
    with pytest.raises(ValueError, match="steps"):
        rollout(q, q, grad_U, 0.1, 0)
    with pytest.raises(ValueError, match="noise"):
        rollout(q, q, grad_U, 0.1, 2, noise=torch.zeros(3, 3, 2))
