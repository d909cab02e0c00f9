"""Reflow against the Gaussian oracle: the teacher pairs are the exact flow map, the exact
flow's straightness is (2 - pi/2) tr(Sigma^1/2), the exact 2-rectified flow is straight,
and a student retrained on the pairs is straighter than its teacher."""

from __future__ import annotations

import math

import pytest
import torch

from modaflow.core.gaussian import GaussianOracle
from modaflow.core.nn import ResidualMLP, ResidualMLPConfig
from modaflow.core.ode import solve_ode, time_grid
from modaflow.core.paths import LinearPath
from modaflow.core.reflow import ReflowDataset, ReflowPairs, reflow_pairs, straightness, train_reflow
from modaflow.core.training import FlowMatchingConfig, TrainerArgs

F64 = torch.float64
MEAN = torch.tensor([1.0, -0.5], dtype=F64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=F64)  # non-isotropic


def _oracle(mean=MEAN, cov=COV) -> GaussianOracle:
    return GaussianOracle(mean, cov, LinearPath())


def _exact_straightness(oracle: GaussianOracle) -> float:
    """(2 - pi/2) tr(Sigma^1/2): per eigenvalue l, c(t) = sqrt(t^2 l + (1-t)^2) and
    int_0^1 c'^2 dt - (c(1) - c(0))^2 = l + 1 - (pi/2) sqrt(l) - (sqrt(l) - 1)^2."""
    return (2 - math.pi / 2) * oracle.eigvals.sqrt().sum().item()


def test_pairs_are_deterministic_given_the_seed():
    field = _oracle().velocity
    a = reflow_pairs(field, 20, (2,), steps=10, seed=7, batch_size=6, dtype=F64)
    b = reflow_pairs(field, 20, (2,), steps=10, seed=7, batch_size=20, dtype=F64)
    c = reflow_pairs(field, 20, (2,), steps=10, seed=8, dtype=F64)
    assert torch.equal(a.x0, b.x0) and torch.allclose(a.x1, b.x1, rtol=0, atol=1e-14)  # chunking changes nothing
    assert not torch.equal(a.x0, c.x0)
    assert a.x0.shape == a.x1.shape == (20, 2) and a.nfe == 40  # rk4: 4 calls x 10 steps


def test_reflow_pairs_of_the_exact_flow_are_the_flow_map():
    oracle = _oracle()
    pairs = reflow_pairs(oracle.velocity, 64, (2,), steps=50, method="rk4", seed=3, dtype=F64)
    ones = torch.ones(64, dtype=F64)
    assert torch.allclose(pairs.x1, oracle.flow_map(0 * ones, ones, pairs.x0), rtol=0, atol=1e-7)


@pytest.mark.parametrize("cov", [COV, torch.eye(2, dtype=F64), torch.diag(torch.tensor([0.1, 3.0], dtype=F64))])
def test_straightness_of_the_exact_flow_is_known(cov):
    """Exact: starting from the eigenvectors u_k, the per-sample integral is the k-th term
    (2 - pi/2) sqrt(l_k), so the sum over k is the expectation over z ~ N(0, I)."""
    oracle = _oracle(cov=cov)
    result = straightness(oracle.velocity, oracle.eigvecs.T.contiguous(), steps=200)
    assert result.per_sample.sum().item() == pytest.approx(_exact_straightness(oracle), rel=1e-4)
    assert _exact_straightness(oracle) > 0.1  # the 1-rectified Gaussian flow is never straight


def test_exact_two_rectified_flow_is_straight():
    """The reflow coupling of the exact flow is z -> mu + A z, A = Sigma^1/2 (symmetric
    positive definite: the OT map). Its linear interpolation x_t = M_t z + t mu,
    M_t = (1 - t) I + t A, never crosses, so the 2-rectified velocity is
    (A - I) M_t^-1 (x - t mu) + mu, with straightness 0, and its one Euler step is exact."""
    oracle = _oracle()
    lam, U = oracle.eigvals, oracle.eigvecs

    def reflowed(x, t):
        m = (1 - t)[:, None] + t[:, None] * lam.sqrt()  # eigenvalues of M_t, (B, D)
        y = ((x - t[:, None] * MEAN) @ U) / m
        return (y * (lam.sqrt() - 1)) @ U.T + MEAN

    pairs = reflow_pairs(oracle.velocity, 256, (2,), steps=50, seed=1, dtype=F64)
    one_step = solve_ode(reflowed, pairs.x0, time_grid(1, dtype=F64)).x
    assert torch.allclose(one_step, pairs.x1, rtol=0, atol=1e-7)
    assert straightness(reflowed, pairs.x0, steps=20).value.item() < 1e-20


def test_dataset_items_keep_the_pairing():
    pairs = ReflowPairs(x0=torch.arange(6.0).reshape(3, 2), x1=-torch.arange(6.0).reshape(3, 2), nfe=1)
    item = ReflowDataset(pairs, cond=torch.tensor([0, 1, 2]))[1]
    assert torch.equal(item["x0"], torch.tensor([2.0, 3.0])) and torch.equal(item["x1"], -item["x0"])
    assert item["cond"].item() == 1
    with pytest.raises(ValueError, match="cond"):
        ReflowDataset(pairs, cond=torch.zeros(2))


def test_train_reflow_needs_the_linear_path(tmp_path):
    pairs = reflow_pairs(_oracle().velocity, 8, (2,), steps=2)
    with pytest.raises(ValueError, match="FlowMatchingConfig.path"):
        train_reflow(torch.nn.Linear(2, 2), pairs, FlowMatchingConfig(path="vp_cosine"), tmp_path)


def test_one_reflow_straightens_the_flow(tmp_path):
    """Teacher: the exact flow of 2-D Gaussian data, straightness (2 - pi/2) tr(Sigma^1/2)
    ~ 0.76. A small student retrained for 300 steps on 4096 of its pairs is less than a
    tenth as curved (about 1e-4 in practice), and its one-step samples are close to the
    data law (Gaussian W2 about 0.05)."""
    oracle = _oracle()
    teacher = oracle.velocity
    pairs = reflow_pairs(lambda x, t: teacher(x.double(), t.double()).float(), 4096, (2,), steps=20, seed=0)
    torch.manual_seed(0)
    student = ResidualMLP(ResidualMLPConfig(dim=2, hidden=32, depth=2, time_embed_dim=16))
    cfg = FlowMatchingConfig(lr=3e-3, ema_decay=0.99, batch_size=256, max_steps=300, log_every=100, ckpt_every=1000)
    run = train_reflow(student, pairs, cfg, tmp_path, TrainerArgs(accelerator="cpu", devices=1))
    assert run.fit.step == 300
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5))
    field = run.module.velocity_field()
    s_student = straightness(field, z, steps=32).value.item()
    s_teacher = straightness(teacher, z.double(), steps=32).value.item()
    assert s_teacher == pytest.approx(_exact_straightness(oracle), rel=0.1)
    assert s_student < s_teacher / 10, (s_student, s_teacher)
    assert oracle.w2_to(solve_ode(field, z, time_grid(1)).x) < 0.15
