"""Conceptors against their closed forms (Jaeger 2014, arXiv 1403.3369): C = R(R + α⁻²I)⁻¹,
NOT, AND = conceptor of the harmonic combination, OR = conceptor of the sum, De Morgan,
singular AND through the range intersection, and the steering/recording hooks."""

import pytest
import torch
from torch import nn

from modaflow.core.conceptors import (
    AND,
    NOT,
    OR,
    GateHook,
    LayerNotFoundError,
    conceptor_from_correlation,
    correlation,
    fit_conceptor,
    gate_layer,
    gate_matrix,
    record_layers,
    steer_layer,
)

F64 = torch.float64


def _spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=F64)
    return A @ A.T / d + 0.1 * torch.eye(d, dtype=F64)


def _slow_conceptor(R: torch.Tensor, a: float) -> torch.Tensor:
    """The formula as written: R (R + α⁻² I)⁻¹ with a plain matrix inverse."""
    return R @ torch.linalg.inv(R + a**-2 * torch.eye(R.shape[0], dtype=R.dtype))


@pytest.mark.parametrize("aperture", [0.3, 1.0, 4.0])
def test_conceptor_matches_formula_float64(aperture):
    g = torch.Generator().manual_seed(0)
    H = torch.randn(200, 6, generator=g, dtype=F64) @ torch.randn(6, 6, generator=g, dtype=F64)
    C = fit_conceptor(H, aperture)
    R = H.T @ H / 200
    torch.testing.assert_close(C, _slow_conceptor(R, aperture), atol=1e-12, rtol=0)
    assert C.dtype == F64
    s = torch.linalg.svdvals(C)
    assert bool((s >= 0).all()) and bool((s < 1).all())
    torch.testing.assert_close(C, C.T, atol=0, rtol=0)


def test_centering_uses_the_covariance():
    H = torch.randn(100, 4, dtype=F64) + 5.0
    Hc = H - H.mean(0)
    torch.testing.assert_close(correlation(H, center=True), Hc.T @ Hc / 100, atol=1e-12, rtol=0)
    # without centring, the large mean dominates: a direction near (1,1,1,1) gets C close to 1
    C = fit_conceptor(H, 1.0)
    v = torch.ones(4, dtype=F64) / 2
    assert float(v @ C @ v) > 0.95
    assert float(v @ fit_conceptor(H, 1.0, center=True) @ v) < 0.8


def test_not_is_conceptor_of_inverse_correlation_at_inverse_aperture():
    R, a = _spd(5, 1), 2.0
    C = conceptor_from_correlation(R, a)
    torch.testing.assert_close(NOT(C), _slow_conceptor(torch.linalg.inv(R), 1 / a), atol=1e-12, rtol=0)


def test_and_is_conceptor_of_harmonic_combination_or_of_sum():
    R, Q, a = _spd(5, 2), _spd(5, 3), 1.5
    C, B = conceptor_from_correlation(R, a), conceptor_from_correlation(Q, a)
    harmonic = torch.linalg.inv(torch.linalg.inv(R) + torch.linalg.inv(Q))
    torch.testing.assert_close(AND(C, B), _slow_conceptor(harmonic, a), atol=1e-10, rtol=0)
    torch.testing.assert_close(OR(C, B), _slow_conceptor(R + Q, a), atol=1e-10, rtol=0)


def test_de_morgan_both_ways():
    C, B = conceptor_from_correlation(_spd(4, 4), 1.0), conceptor_from_correlation(_spd(4, 5), 0.7)
    torch.testing.assert_close(NOT(OR(C, B)), AND(NOT(C), NOT(B)), atol=1e-10, rtol=0)
    torch.testing.assert_close(NOT(AND(C, B)), OR(NOT(C), NOT(B)), atol=1e-10, rtol=0)


def test_and_bounds_and_commutes():
    C, B = conceptor_from_correlation(_spd(5, 6), 2.0), conceptor_from_correlation(_spd(5, 7), 0.5)
    A = AND(C, B)
    torch.testing.assert_close(A, AND(B, C), atol=1e-12, rtol=0)
    # C AND B ≤ C and ≤ B in the Loewner order; C OR B ≥ both
    for M in (C, B):
        assert float(torch.linalg.eigvalsh(M - A).min()) > -1e-10
        assert float(torch.linalg.eigvalsh(OR(C, B) - M).min()) > -1e-10
    s = torch.linalg.eigvalsh(A)
    assert bool((s >= -1e-12).all()) and bool((s < 1).all())


def test_and_singular_uses_range_intersection():
    d = 4
    P = torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64))  # projector on e1, e2
    I = torch.eye(d, dtype=F64)
    torch.testing.assert_close(AND(P, I), P, atol=1e-12, rtol=0)  # I is the neutral element
    torch.testing.assert_close(AND(P, P), P, atol=1e-12, rtol=0)  # a projector is idempotent
    Q = torch.diag(torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=F64))
    torch.testing.assert_close(AND(P, Q), torch.zeros(d, d, dtype=F64), atol=0, rtol=0)  # disjoint ranges
    # a singular conceptor on span(e1, e2) AND a full one: the 2x2 block of the regular formula
    Cs = torch.zeros(d, d, dtype=F64)
    Cs[:2, :2] = conceptor_from_correlation(_spd(2, 8), 1.0)
    B = conceptor_from_correlation(_spd(d, 9), 1.0)
    Binv = torch.linalg.inv(B)
    expected = torch.zeros(d, d, dtype=F64)
    block = torch.linalg.inv(torch.linalg.inv(Cs[:2, :2]) + Binv[:2, :2] - torch.eye(2, dtype=F64))
    expected[:2, :2] = block
    torch.testing.assert_close(AND(Cs, B), expected, atol=1e-10, rtol=0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="aperture"):
        fit_conceptor(torch.randn(10, 3), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        fit_conceptor(torch.tensor([[1.0, float("nan")]]), 1.0)
    with pytest.raises(ValueError, match="same shape"):
        AND(torch.eye(2), torch.eye(3))
    with pytest.raises(ValueError, match="beta"):
        gate_matrix(torch.eye(2), 1.5)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.block(self.inp(x)))


def test_beta_zero_is_bit_identical_and_unknown_layer_errors():
    net = _Net()
    x = torch.randn(5, 3)
    C = fit_conceptor(torch.randn(50, 8), 1.0)
    y0 = net(x)
    with gate_layer(net, "block", C, beta=0.0):
        y1 = net(x)
    assert torch.equal(y0, y1)
    with gate_layer(net, "block", C, beta=0.5):
        y2 = net(x)
    assert not torch.allclose(y0, y2)
    assert torch.equal(net(x), y0)  # hook removed on exit
    with pytest.raises(LayerNotFoundError, match="'blok' not found.*block"):
        with gate_layer(net, "blok", C, beta=0.0):
            pass


def test_gate_matches_manual_and_per_step_schedule():
    net = _Net().double()
    x = torch.randn(4, 3, dtype=F64)
    h = net.block(net.inp(x))
    C = fit_conceptor(torch.randn(30, 8, dtype=F64), 2.0)
    beta = 0.3
    G = (1 - beta) * torch.eye(8, dtype=F64) + beta * C
    with gate_layer(net, "block", C, beta):
        y = net(x)
    torch.testing.assert_close(y, net.out(h @ G.T), atol=1e-14, rtol=0)
    # per step: the k-th call uses G_k; after K calls the last one repeats; reset restarts
    Cs = torch.stack([torch.zeros(8, 8, dtype=F64), torch.eye(8, dtype=F64)])
    with gate_layer(net, "block", Cs, beta=1.0) as hook:
        y_a = net(x)  # G_0 = 0: the block output is zeroed
        y_b = net(x)  # G_1 = I
        y_c = net(x)
        hook.reset()
        y_d = net(x)
    torch.testing.assert_close(y_a, net.out(torch.zeros_like(h)).expand_as(y_a))
    torch.testing.assert_close(y_b, net(x))
    torch.testing.assert_close(y_c, net(x))
    torch.testing.assert_close(y_d, y_a)


def test_transform_hook_and_recorder():
    net = _Net()
    x = torch.randn(6, 3)
    v = torch.randn(8)
    with steer_layer(net, "block", GateHook(transform=lambda h, k: h + (k + 1) * v)):
        y = net(x)
    h = net.block(net.inp(x))
    torch.testing.assert_close(y, net.out(h + v))
    with record_layers(net, ["inp", "block"]) as rec:
        net(x)
        net(x)
    assert len(rec.states["block"]) == 2 and rec.states["inp"][0].shape == (6, 8)
    torch.testing.assert_close(rec.states["block"][1], h)
    net(x)
    assert len(rec.states["block"]) == 2  # hooks removed on exit
