"""Pieces of the issue-3 toy benchmark that are cheap to check exactly (the whole smoke run is
checked in test_cli.py): the true toy log-densities, the scaling table and the steering rows."""

from __future__ import annotations

import math

import pytest
import torch

from modaflow.benchmarks.toy_onestep import _data_log_prob
from modaflow.benchmarks.toy_scaling import SCALING_METHODS, ScalingSettings, scaling_table, steering_rows
from modaflow.core.gaussian import GaussianOracle
from modaflow.core.paths import LinearPath
from modaflow.modalities.toy import data as D
from modaflow.modalities.toy.metrics import random_directions
from modaflow.modalities.toy.recipe import ToyConfig

SETTINGS = ScalingSettings(n=32, budgets=(1, 2), steps=4, steer_dim=4, steer_n=256, steer_steps=16)


@pytest.mark.parametrize("dim", [2, 5])
def test_gmm_log_density_is_the_mixture(dim) -> None:
    x = D.sample_toy("gmm", 16, dim, torch.Generator().manual_seed(0)).double()
    angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = 3.0 * torch.stack([torch.cos(angle), torch.sin(angle)], -1) @ D.orthonormal_frame(dim).T
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.full((8,), 1 / 8, dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(means, torch.full_like(means, 0.35)), 1))
    got = _data_log_prob(ToyConfig(data="gmm", dim=dim), x)
    torch.testing.assert_close(got, mix.log_prob(x), rtol=0, atol=1e-12)


def test_gaussian_log_density_and_none_for_shapes() -> None:
    x = D.sample_toy("gaussian", 8, 3, torch.Generator().manual_seed(1)).double()
    mean, cov = D.gaussian_params(3)
    oracle = GaussianOracle(mean, cov, LinearPath())
    torch.testing.assert_close(_data_log_prob(ToyConfig(data="gaussian", dim=3), x), oracle.log_prob(x), rtol=0, atol=1e-10)
    assert _data_log_prob(ToyConfig(data="moons", dim=2), x[:, :2]) is None


def test_scaling_table_rows_and_shared_plain_sde_baseline() -> None:
    mean, cov = D.gaussian_params(2)
    path = LinearPath()
    oracle = GaussianOracle(mean, cov, path)
    ref = oracle.sample(1.0, 64, torch.Generator().manual_seed(0), torch.float32)
    res = scaling_table(oracle.velocity, path, ref, SETTINGS, "g2d", 0, random_directions(16, 2))
    m = res["metrics"]
    for name in SCALING_METHODS:
        assert [f"scaling.g2d.{name}.reward@nfe{k * 4}" in m for k in (1, 2)] == [True, True]
        assert res["curves"]["scaling.g2d.reward_vs_nfe"]["series"][name]["x"] == [4, 8]
    # K = 1: best-of-N and greedy search are both the plain SDE sampler on the same noise
    assert m["scaling.g2d.best_of_n.reward@nfe4"] == m["scaling.g2d.greedy.reward@nfe4"]
    assert m["scaling.g2d.zero_reward.sw_plain_sde"] > 0


def test_steering_meets_the_mask_and_moves_towards_the_conditional_mean() -> None:
    m = steering_rows(SETTINGS, 0)
    # eta = 1 on a mask: observed entries equal y, to the rounding of x + (y - x) (1e-17 on AMD EPYC)
    assert m["steering.gaussian4d.flowchef.residual"] < 1e-12
    assert m["steering.gaussian4d.hard.residual"] < 1e-12
    assert m["steering.gaussian4d.none.residual"] > 0.1
    assert m["steering.gaussian4d.flowchef.cond_mean_max_err"] < m["steering.gaussian4d.none.cond_mean_max_err"]
