"""Conservativity diagnostics against closed forms: gradient fields give 0, rotations give
asymmetry 2 and circulation 2 omega x area, mixed linear fields ||2 Omega|| / ||S + Omega||."""

import math

import pytest
import torch

from modaflow.core.diagnostics import (
    ConservativityReport,
    circulation,
    conservativity_report,
    jacobian_asymmetry,
    path_samples,
)
from modaflow.core.gaussian import GaussianOracle
from modaflow.core.paths import LinearPath, VPCosinePath

F64 = torch.float64


def _sym_antisym(D: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    M, W = torch.randn(2, D, D, generator=g, dtype=F64)
    return (M + M.T) / 2, (W - W.T) / 2


def _linear(J: torch.Tensor):
    """The field ``v(x, t) = J x`` (Jacobian ``J``) on ``(B, D)``."""
    return lambda x, t: x @ J.T


def _gradient_field(D: int = 3, seed: int = 1):
    """A nonlinear gradient field: ``v = grad sum log cosh(W x + b) = W^T tanh(W x + b)``."""
    g = torch.Generator().manual_seed(seed)
    W, b = torch.randn(D, D, generator=g, dtype=F64), torch.randn(D, generator=g, dtype=F64)
    return lambda x, t: torch.tanh(x @ W.T + b) @ W * (1 + t[:, None])


def test_symmetric_linear_field_has_zero_asymmetry(gen) -> None:
    S, _ = _sym_antisym(4)
    x = torch.randn(16, 4, generator=gen, dtype=F64)
    res = jacobian_asymmetry(_linear(-S), x, 0.5, n_probes=4, generator=gen)
    assert res.ratio.shape == (16,)
    assert res.ratio.abs().max() < 1e-12 and (res.frobenius_sq > 0).all()


def test_rotation_has_asymmetry_exactly_two(gen) -> None:
    # J = Omega antisymmetric: (J - J^T) eps = 2 J eps for every probe, so the ratio is 2.
    _, Om = _sym_antisym(5)
    x = torch.randn(8, 5, generator=gen, dtype=F64)
    for probe in ("rademacher", "gaussian"):
        res = jacobian_asymmetry(_linear(Om), x, 0.3, n_probes=3, probe=probe, generator=gen)
        torch.testing.assert_close(res.ratio, torch.full((8,), 2.0, dtype=F64), rtol=0, atol=1e-12)


def test_mixed_linear_field_matches_closed_form() -> None:
    # ||J - J^T||_F / ||J||_F = ||2 Omega||_F / ||S + Omega||_F. Stated tolerance: 4 standard
    # errors over 400 samples (16 probes each) plus 0.005 for the O(1/n_probes) bias of a ratio.
    S, Om = _sym_antisym(3)
    truth = (2 * Om).norm() / (S + Om).norm()
    x = torch.randn(400, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    res = jacobian_asymmetry(_linear(S + Om), x, 0.5, n_probes=16, generator=torch.Generator().manual_seed(3))
    mean, stderr = res.ratio.mean(), res.ratio.std() / math.sqrt(400)
    assert stderr > 0
    assert abs(mean - truth) < 4 * stderr + 0.005, (mean.item(), truth.item(), stderr.item())
    # the two squared norms are unbiased on their own
    torch.testing.assert_close(res.frobenius_sq.mean(), (S + Om).norm() ** 2, rtol=0.03, atol=0)
    torch.testing.assert_close(res.antisym_sq.mean(), (2 * Om).norm() ** 2, rtol=0.03, atol=0)


def test_nonlinear_gradient_field_is_conservative(gen) -> None:
    field = _gradient_field()
    x = torch.randn(32, 3, generator=gen, dtype=F64)
    assert jacobian_asymmetry(field, x, 0.7, n_probes=4, generator=gen).ratio.abs().max() < 1e-12
    circ = circulation(field, x, 0.7, radius=0.1, n_points=16, generator=gen)
    assert circ.circulation.abs().max() < 1e-10 and circ.normalized.abs().max() < 1e-8


def test_planar_rotation_circulation_is_two_omega_area(gen) -> None:
    # v = omega (-y, x): oint v . dl = 2 omega pi r^2, signed by the loop's orientation.
    omega, r = 1.7, 0.3
    Om = torch.tensor([[0.0, -omega], [omega, 0.0]], dtype=F64)
    x = torch.randn(10, 2, generator=gen, dtype=F64)
    res = circulation(_linear(Om), x, 0.0, radius=r, n_points=5, generator=gen)
    orientation = torch.linalg.det(res.plane)  # +1 when (u, w) is counter-clockwise
    torch.testing.assert_close(res.circulation, 2 * omega * math.pi * r**2 * orientation, rtol=0, atol=1e-13)
    # around the origin |v| = omega r on the whole loop: normalised circulation is +-1
    at0 = circulation(_linear(Om), torch.zeros(4, 2, dtype=F64), 0.0, radius=r, generator=gen)
    torch.testing.assert_close(at0.normalized.abs(), torch.ones(4, dtype=F64), rtol=0, atol=1e-12)


def test_circulation_of_linear_field_in_random_planes(gen) -> None:
    # Stokes for v = J x: oint = pi r^2 w^T (J - J^T) u on the plane (u, w); S drops out.
    S, Om = _sym_antisym(4)
    x = torch.randn(12, 4, generator=gen, dtype=F64)
    res = circulation(_linear(S + Om), x, 0.5, radius=0.2, n_points=3, generator=gen)
    u, w = res.plane[:, 0], res.plane[:, 1]
    torch.testing.assert_close(res.plane @ res.plane.transpose(1, 2), torch.eye(2, dtype=F64).expand(12, 2, 2), rtol=0, atol=1e-12)
    expected = math.pi * 0.2**2 * ((w @ (2 * Om)) * u).sum(1)
    torch.testing.assert_close(res.circulation, expected, rtol=0, atol=1e-13)
    assert (res.normalized.abs() <= 1).all()


def test_event_shapes_are_flattened(gen) -> None:
    _, Om = _sym_antisym(6)

    def field(x, t):
        return (x.reshape(x.shape[0], 6) @ Om.T).reshape(x.shape)

    x = torch.randn(4, 2, 3, generator=gen, dtype=F64)
    torch.testing.assert_close(jacobian_asymmetry(field, x, 0.5, generator=gen).ratio, torch.full((4,), 2.0, dtype=F64))
    assert circulation(field, x, 0.5, generator=gen).plane.shape == (4, 2, 6)


def test_report_on_oracle_velocity_and_score(gen) -> None:
    # The exact velocity and score of Gaussian data are gradient fields at every t.
    cov = torch.tensor([[1.0, 0.6, 0.0], [0.6, 2.0, 0.3], [0.0, 0.3, 0.5]], dtype=F64)
    o = GaussianOracle(torch.tensor([0.5, -1.0, 0.0], dtype=F64), cov, VPCosinePath())
    times = [0.1, 0.5, 0.9]
    xs = path_samples(o.path, o.sample(1.0, 64, gen), times, gen)
    for field in (o.velocity, o.score):
        rep = conservativity_report(field, xs, times, n_probes=2, generator=gen)
        assert isinstance(rep, ConservativityReport) and rep.asymmetry.shape == (3,)
        assert rep.asymmetry.abs().max() < 1e-10 and rep.circulation.abs().max() < 1e-10
    rows = rep.rows()
    assert [r["t"] for r in rows] == pytest.approx(times) and set(rows[0]) == {
        "t", "asymmetry", "asymmetry_stderr", "circulation", "circulation_stderr"}


def test_report_on_rotational_field(gen) -> None:
    _, Om = _sym_antisym(3)

    def field(x, t):
        return t[:, None] * (x @ Om.T)

    x = torch.randn(32, 3, generator=gen, dtype=F64)
    rep = conservativity_report(field, x, torch.tensor([0.25, 1.0]), n_probes=2, generator=gen, radius=0.5)
    torch.testing.assert_close(rep.asymmetry, torch.full((2,), 2.0, dtype=F64), rtol=0, atol=1e-12)
    assert (rep.circulation > 0.01).all() and (rep.circulation_stderr > 0).all()
    assert rep.n_samples == 32 and rep.n_probes == 2 and rep.radius == 0.5


def test_path_samples_follow_the_path(gen) -> None:
    x1 = torch.randn(5, 2, generator=gen, dtype=F64)
    xs = path_samples(LinearPath(), x1, [0.0, 1.0], torch.Generator().manual_seed(0))
    x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert len(xs) == 2
    torch.testing.assert_close(xs[0], x0)
    torch.testing.assert_close(xs[1], x1)


def test_bad_arguments_are_named() -> None:
    f = lambda x, t: x  # noqa: E731
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="n_probes"):
        jacobian_asymmetry(f, x, 0.5, n_probes=0)
    with pytest.raises(ValueError, match="radius"):
        circulation(f, x, 0.5, radius=0.0)
    with pytest.raises(ValueError, match="n_points"):
        circulation(f, x, 0.5, n_points=2)
    with pytest.raises(ValueError, match="dimension >= 2"):
        circulation(f, torch.zeros(3, 1), 0.5)
    with pytest.raises(ValueError, match="times must lie"):
        conservativity_report(f, x, [1.5])
    with pytest.raises(ValueError, match="list of T = 2"):
        conservativity_report(f, [x], [0.1, 0.2])
