"""Minibatch OT couplings: exact OT against brute force, the 1-D sorted matching, Sinkhorn
marginals and its convergence to the exact plan, and OT-coupled flow-matching training."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from modaflow.core.config import ConfigError
from modaflow.core.coupling import (
    COUPLING_METHODS,
    couple,
    exact_ot,
    independent_coupling,
    sinkhorn_coupling,
    sinkhorn_plan,
    squared_distances,
)
from modaflow.core.gaussian import GaussianOracle
from modaflow.core.nn import ResidualMLP, ResidualMLPConfig
from modaflow.core.ode import solve_ode, time_grid
from modaflow.core.paths import LinearPath
from modaflow.core.reflow import straightness
from modaflow.core.training import FlowMatchingConfig, FlowMatchingModule, TrainerArgs, fit

F64 = torch.float64


def _pair(B: int, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, *shape, generator=g, dtype=F64), 0.7 * torch.randn(B, *shape, generator=g, dtype=F64) + 0.5


def _pair_cost(x0: torch.Tensor, x1: torch.Tensor, index) -> float:
    return float((x0[list(index)] - x1).flatten(1).pow(2).sum(1).mean())


# --- exact OT ------------------------------------------------------------------------------


@pytest.mark.parametrize("B", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("shape", [(2,), (2, 3)])
def test_exact_ot_equals_brute_force(B, shape):
    for seed in range(3):
        x0, x1 = _pair(B, shape, seed)
        result = exact_ot(x0, x1)
        best = min(_pair_cost(x0, x1, p) for p in itertools.permutations(range(B)))
        assert result.cost.item() == pytest.approx(best, rel=1e-12, abs=1e-12)
        assert sorted(result.index.tolist()) == list(range(B))  # a permutation
        assert torch.equal(result.x0, x0[result.index]) and result.x1 is x1
        assert torch.allclose(result.plan.sum(0), torch.full((B,), 1.0 / B, dtype=F64))
        assert torch.allclose(result.plan.sum(1), torch.full((B,), 1.0 / B, dtype=F64))
        assert result.cost.item() == pytest.approx(float((result.plan * squared_distances(x0, x1)).sum()), rel=1e-12)


def test_exact_ot_cost_is_at_most_any_random_pairing():
    x0, x1 = _pair(64, (3,), 7)
    cost = exact_ot(x0, x1).cost.item()
    g = torch.Generator().manual_seed(0)
    random_costs = [_pair_cost(x0, x1, torch.randperm(64, generator=g).tolist()) for _ in range(50)]
    assert cost <= min(random_costs)
    assert cost < independent_coupling(x0, x1).cost.item()


def test_exact_ot_in_one_dimension_is_the_sorted_matching():
    x0, x1 = _pair(50, (1,), 3)
    paired = exact_ot(x0, x1).x0[:, 0]
    ranks = torch.argsort(torch.argsort(x1[:, 0]))
    assert torch.equal(paired, torch.sort(x0[:, 0]).values[ranks])  # the k-th smallest x0 meets the k-th smallest x1


def test_index_lives_on_the_input_device_and_dtype_is_kept():
    x0, x1 = _pair(9, (2,), 1)
    for method in COUPLING_METHODS:
        c = couple(x0.float(), x1.float(), method, generator=torch.Generator().manual_seed(0))
        assert c.index.dtype == torch.long and c.index.device == x0.device and c.x0.dtype == torch.float32


def test_bad_inputs_are_named():
    x0, x1 = _pair(4, (2,), 0)
    with pytest.raises(ValueError, match="x0 and x1"):
        exact_ot(x0, x1[:3])
    with pytest.raises(ValueError, match="method must be one of"):
        couple(x0, x1, "hungarian")
    with pytest.raises(ValueError, match="pairing"):
        sinkhorn_coupling(x0, x1, pairing="max")
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_plan(squared_distances(x0, x1), 0.0)


# --- Sinkhorn -------------------------------------------------------------------------------


def test_sinkhorn_plan_has_uniform_marginals():
    x0, x1 = _pair(16, (2,), 2)
    plan = sinkhorn_coupling(x0, x1, epsilon=0.05, iterations=500).plan
    uniform = torch.full((16,), 1.0 / 16, dtype=F64)
    assert (plan.sum(0) - uniform).abs().max() < 1e-6 and (plan.sum(1) - uniform).abs().max() < 1e-6
    assert (plan >= 0).all()
    # with a tolerance the loop stops early, once the row marginals are within it
    early = sinkhorn_plan(squared_distances(x0, x1) / squared_distances(x0, x1).mean(), 0.05, 10_000, tol=1e-9)
    assert (early.sum(1) - uniform).abs().sum() < 1e-9


def test_sinkhorn_cost_is_within_the_entropic_bound_and_decreases_with_epsilon():
    """OT <= <P_eps, C> <= OT + eps log B: the plan minimises <P, C> - eps H(P), and
    H(P_eps) - H(P*) <= 2 log B - log B for a permutation optimum P*."""
    B = 7
    x0, x1 = _pair(B, (2,), 4)
    C = squared_distances(x0, x1)
    ot = exact_ot(x0, x1).cost.item()
    costs = []
    for eps in (1.0, 0.3, 0.1, 0.03):
        eps_abs = eps * C.mean().item()
        plan = sinkhorn_plan(C / C.mean(), eps, iterations=2000)
        cost = float((plan * C).sum())
        assert ot - 1e-12 <= cost <= ot + eps_abs * math.log(B) + 1e-9
        costs.append(cost)
    assert costs == sorted(costs, reverse=True)


def test_sinkhorn_plan_approaches_the_exact_plan():
    """A well-separated optimum (x0 on a unit grid, x1 a permutation of it plus 0.1 noise):
    as eps -> 0 the entropic plan tends to the exact permutation plan (L1 error < 1e-6 at
    eps = 0.01), and the argmax pairing equals the exact one."""
    g = torch.Generator().manual_seed(5)
    x0 = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(3.0), indexing="ij"), -1).reshape(12, 2).to(F64)
    x1 = x0[torch.randperm(12, generator=g)] + 0.1 * torch.randn(12, 2, generator=g, dtype=F64)
    exact = exact_ot(x0, x1)
    plans = [sinkhorn_coupling(x0, x1, eps, 500, "argmax").plan for eps in (0.3, 0.1, 0.03, 0.01)]
    errors = [float((plan - exact.plan).abs().sum()) for plan in plans]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-6, errors
    assert torch.equal(sinkhorn_coupling(x0, x1, 0.01, 500, "argmax").index, exact.index)


def test_sampled_pairs_follow_the_plan():
    """Partners of x1[j] are drawn from column j of the plan: frequencies over 400 draws
    match P[i, j] / sum_i P[i, j] within 4 standard errors."""
    x0, x1 = _pair(4, (2,), 6)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sinkhorn_coupling(x0, x1, 0.5, 30, "sample", g).index for _ in range(400)])  # (400, 4)
    plan = sinkhorn_coupling(x0, x1, 0.5, 30).plan
    expected = plan / plan.sum(0, keepdim=True)  # (i, j)
    for j in range(4):
        freq = torch.bincount(draws[:, j], minlength=4).to(F64) / 400
        se = (expected[:, j] * (1 - expected[:, j]) / 400).sqrt()
        assert ((freq - expected[:, j]).abs() <= 4 * se + 1e-3).all(), (j, freq, expected[:, j])
    again = [sinkhorn_coupling(x0, x1, 0.5, 30, "sample", torch.Generator().manual_seed(0)).index for _ in range(2)]
    assert torch.equal(again[0], again[1])  # deterministic given the generator


# --- training integration ---------------------------------------------------------------

MEAN = torch.tensor([1.0, -0.5])
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]])


def _mlp(num_classes: int = 0) -> ResidualMLP:
    torch.manual_seed(0)
    return ResidualMLP(ResidualMLPConfig(dim=2, hidden=64, depth=2, time_embed_dim=32, num_classes=num_classes))


def test_config_validates_the_coupling_fields():
    assert FlowMatchingConfig().coupling == "independent"
    with pytest.raises(ConfigError, match="coupling"):
        FlowMatchingConfig(coupling="hungarian")
    with pytest.raises(ConfigError, match="sinkhorn_epsilon"):
        FlowMatchingConfig(sinkhorn_epsilon=0.0)
    with pytest.raises(ConfigError, match="sinkhorn_iterations"):
        FlowMatchingConfig(sinkhorn_iterations=0)


def test_module_repairs_the_drawn_noise_and_lowers_the_pair_cost():
    x1 = GaussianOracle(MEAN, COV, LinearPath()).sample(1.0, 256, torch.Generator().manual_seed(1)).float()
    cost = {}
    for method in COUPLING_METHODS:
        module = FlowMatchingModule(_mlp(), None, FlowMatchingConfig(coupling=method))
        x0 = module.draw_source(x1, torch.Generator().manual_seed(3))
        cost[method] = float((x0 - x1).pow(2).sum(1).mean())
        if method == "exact_ot":  # the same noise, re-ordered
            drawn = torch.randn(x1.shape, generator=torch.Generator().manual_seed(3))
            assert torch.equal(torch.sort(x0, 0).values, torch.sort(drawn, 0).values)
    assert cost["exact_ot"] < cost["sinkhorn"] < 0.5 * cost["independent"], cost


def test_coupling_keeps_x1_and_cond_together():
    module = FlowMatchingModule(_mlp(num_classes=3), None, FlowMatchingConfig(coupling="exact_ot"))
    x1 = torch.randn(16, 2)
    cond = torch.randint(0, 3, (16,))
    seen = {}

    def spy(x, t, c=None):
        seen["cond"] = c
        return torch.zeros_like(x)

    module.model.forward = spy  # the network sees the batch's cond in its own order
    module.compute_loss({"x1": x1, "cond": cond}, step=0)
    assert torch.equal(seen["cond"], cond)


def test_ot_coupled_training_trains_and_straightens(tmp_path):
    """OT-CFM (exact minibatch OT, 200 steps) on 2-D Gaussian data: the pairs' mean squared
    distance is below half the independent pairing's, the learned flow carries N(0, I) to the
    data (Gaussian W2 of 8-step Euler samples < 0.15, and < 0.2 even at one step), and its
    straightness is below a tenth of the exact independent-coupling flow's,
    (2 - pi/2) tr(Sigma^1/2) (see modaflow.core.reflow)."""
    oracle = GaussianOracle(MEAN, COV, LinearPath())
    data = oracle.sample(1.0, 4096, torch.Generator().manual_seed(1)).float()
    cfg = FlowMatchingConfig(coupling="exact_ot", lr=3e-3, ema_decay=0.99, max_steps=200, log_every=100,
                             ckpt_every=1000)
    torch.manual_seed(0)
    module = FlowMatchingModule(ResidualMLP(ResidualMLPConfig(dim=2, hidden=32, depth=2, time_embed_dim=16)), None, cfg)
    loader = DataLoader(TensorDataset(data), batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(2))
    fit(module, loader, tmp_path, TrainerArgs(accelerator="cpu", devices=1), progress=False)

    batch = data[:128]
    gen = torch.Generator().manual_seed(4)
    pair_cost = float((module.draw_source(batch, gen) - batch).pow(2).sum(1).mean())
    drawn = torch.randn(batch.shape, generator=torch.Generator().manual_seed(4))
    independent = float((drawn - batch).pow(2).sum(1).mean())
    assert pair_cost < 0.5 * independent

    field = module.velocity_field()
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(9))
    assert oracle.w2_to(solve_ode(field, z, time_grid(8)).x) < 0.15
    assert oracle.w2_to(solve_ode(field, z, time_grid(1)).x) < 0.2
    exact_independent = (2 - math.pi / 2) * oracle.eigvals.sqrt().sum().item()
    assert straightness(field, z[:500], steps=32).value.item() < 0.1 * exact_independent
