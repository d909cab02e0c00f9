"""Inference-time scaling against the Gaussian oracle: the exact interpolant conversion, the
NFE budget, the law under a constant reward, and the mean reward rising with the budget."""

import math

import pytest
import torch

from modaflow.core.config import ConfigError, field_docs
from modaflow.core.gaussian import GaussianOracle
from modaflow.core.paths import DiscreteVPPath, LinearPath, VPCosinePath, bridge
from modaflow.core.scaling import ScalingConfig, ScalingResult, convert_interpolant, sample_scaled, snr_time

F64 = torch.float64
MEAN = torch.tensor([1.0, -0.5], dtype=F64)
COV = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
TARGET = torch.tensor([2.5, 0.5], dtype=F64)  # 1.9 data standard deviations from the mean
LINEAR = GaussianOracle(MEAN, COV, LinearPath())

METHODS = {
    "best_of_n": dict(method="best_of_n"),
    "greedy": dict(method="particles", resample="greedy"),
    "systematic": dict(method="particles", resample="systematic"),
    "multinomial": dict(method="particles", resample="multinomial", ess_threshold=1.0, select="weighted"),
    "rollover": dict(method="rollover"),
}


def _sq_distance_reward(x: torch.Tensor) -> torch.Tensor:
    return -((x - TARGET) ** 2).sum(-1)


def _zero_reward(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape[0], dtype=x.dtype)


def _sample(reward, n: int, seed: int = 0, oracle: GaussianOracle = LINEAR, **options) -> ScalingResult:
    cfg = ScalingConfig(**options)
    gen = torch.Generator().manual_seed(seed)
    return sample_scaled(oracle.velocity, oracle.path, reward, n, (2,), cfg, gen, dtype=F64)


# --- interpolant conversion -------------------------------------------------------------------

CONVERSIONS = [
    (LinearPath(), VPCosinePath(), 0.0, 1.0),
    (VPCosinePath(), LinearPath(), 0.0, 1.0),
    (LinearPath(), DiscreteVPPath.linear(), 0.02, 0.98),  # DDPM's d sigma/dt is infinite at t = 1
    (DiscreteVPPath.cosine(), VPCosinePath(), 0.02, 0.98),  # source SNR inverted by bisection
]


@pytest.mark.parametrize(("source", "target", "s0", "s1"), CONVERSIONS, ids=["lin-vp", "vp-lin", "lin-ddpm", "ddpm-vp"])
def test_converted_velocity_is_the_target_paths_oracle_velocity(source, target, s0, s1, gen) -> None:
    # The source's oracle velocity, converted, must BE the target's oracle velocity (float64;
    # Kim et al. 2025 convert a linear-path model to a VP path).
    converted = convert_interpolant(GaussianOracle(MEAN, COV, source).velocity, source, target)
    s = torch.linspace(s0, s1, 201, dtype=F64)
    x = 2.0 * torch.randn(201, 2, generator=gen, dtype=F64)
    exact = GaussianOracle(MEAN, COV, target).velocity(x, s)
    torch.testing.assert_close(converted(x, s), exact, rtol=0, atol=1e-8)


def test_conversion_to_the_same_path_is_the_identity(gen) -> None:
    path = VPCosinePath()
    field = GaussianOracle(MEAN, COV, path).velocity
    s, x = torch.rand(64, generator=gen, dtype=F64), torch.randn(64, 2, generator=gen, dtype=F64)
    torch.testing.assert_close(convert_interpolant(field, path, path)(x, s), field(x, s), rtol=0, atol=1e-12)


class _UnlistedLinear(LinearPath):
    """Same coefficients, but not in the closed-form table: snr_time bisects."""


def test_snr_time_bisection_matches_the_closed_forms(gen) -> None:
    t = torch.rand(500, generator=gen, dtype=F64)
    vp = VPCosinePath()
    a, s = vp.alpha(t), vp.sigma(t)
    torch.testing.assert_close(snr_time(vp, a, s), t, rtol=0, atol=1e-12)
    torch.testing.assert_close(snr_time(_UnlistedLinear(), a, s), snr_time(LinearPath(), a, s), rtol=0, atol=1e-14)


def test_sampling_along_vp_equals_sampling_the_vp_oracle() -> None:
    # interpolant="vp_cosine" on a linear-path field must reproduce, draw for draw, the sampler
    # run on the VP oracle itself (same seed, same noise). (Not greedy / rollover / multinomial
    # with ess_threshold=1: at t = 0 every x1_hat is E[x1], so their first choice is a tie
    # that rounding breaks differently.)
    vp = GaussianOracle(MEAN, COV, VPCosinePath())
    for name in ("best_of_n", "systematic"):
        a = _sample(_sq_distance_reward, 64, interpolant="vp_cosine", num_particles=3, steps=10, **METHODS[name])
        b = _sample(_sq_distance_reward, 64, oracle=vp, num_particles=3, steps=10, **METHODS[name])
        torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=1e-10)


# --- budget, determinism, errors ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("steps", [1, 5])
def test_nfe_is_particles_times_steps(name, steps) -> None:
    rows = []

    def counting(x, t):
        rows.append(x.shape[0])
        return LINEAR.velocity(x, t)

    B, K = 3, 4
    cfg = ScalingConfig(num_particles=K, steps=steps, **METHODS[name])
    gen = torch.Generator().manual_seed(0)
    res = sample_scaled(counting, LinearPath(), _sq_distance_reward, B, (2,), cfg, gen, dtype=F64)
    assert res.nfe == K * steps and sum(rows) == B * K * steps
    assert res.samples.shape == (B, 2) and res.rewards.shape == (B,)
    torch.testing.assert_close(res.rewards, _sq_distance_reward(res.samples))


@pytest.mark.parametrize("name", ["multinomial", "rollover"])
def test_same_seed_same_samples(name) -> None:
    a = _sample(_sq_distance_reward, 16, seed=3, num_particles=4, steps=8, **METHODS[name])
    b = _sample(_sq_distance_reward, 16, seed=3, num_particles=4, steps=8, **METHODS[name])
    assert torch.equal(a.samples, b.samples)


def test_errors_name_the_bad_input() -> None:
    with pytest.raises(ConfigError, match="num_particles"):
        ScalingConfig(num_particles=0)
    with pytest.raises(ConfigError, match="ess_threshold"):
        ScalingConfig(ess_threshold=1.5)
    with pytest.raises(ConfigError, match="resample"):
        ScalingConfig(resample="stratified")
    assert all(field_docs(ScalingConfig).values())
    with pytest.raises(ValueError, match="reward must map"):
        _sample(lambda x: x, 4, num_particles=2, steps=3)
    with pytest.raises(ValueError, match="Gaussian source"):
        sample_scaled(LINEAR.velocity, bridge(), _zero_reward, 4, (2,), ScalingConfig())


# --- the law with a constant reward -------------------------------------------------------------


def _assert_whitened_standard(x: torch.Tensor, n_se: float = 5.0) -> None:
    """``z = L^-1 (x - MEAN)`` with ``COV = L L^T`` must look N(0, I): each mean within
    ``n_se`` SE = ``1/sqrt(N)``, each covariance entry within ``n_se`` SE (``sqrt(2/N)`` on the
    diagonal, ``sqrt(1/N)`` off it)."""
    N, D = x.shape
    z = torch.linalg.solve_triangular(torch.linalg.cholesky(COV), (x - MEAN).T, upper=False).T
    eye = torch.eye(D, dtype=F64)
    se = (1.0 + (math.sqrt(2.0) - 1.0) * eye) / math.sqrt(N)
    z_mean = (z.mean(0) * math.sqrt(N)).abs().max().item()
    z_cov = ((torch.cov(z.T) - eye) / se).abs().max().item()
    assert z_mean < n_se and z_cov < n_se, (z_mean, z_cov)


# 10000 samples, K = 4, 100 steps: 5 SE is 0.05 on whitened means, 0.07 on whitened variances.
# The Euler–Maruyama bias at 100 steps (g = sigma(t)), measured with a plain SDE run of 4e5
# samples: whitened means within 0.008, whitened variances -0.024 (linear path) and -0.005
# (VP path).
@pytest.mark.parametrize(
    ("name", "interpolant"),
    [(name, "trained") for name in METHODS] + [("multinomial", "vp_cosine"), ("rollover", "vp_cosine")],
)
def test_constant_reward_leaves_the_law_unchanged(name, interpolant) -> None:
    res = _sample(_zero_reward, 10000, num_particles=4, steps=100, interpolant=interpolant, **METHODS[name])
    _assert_whitened_standard(res.samples)


# --- more budget, more reward ---------------------------------------------------------------------


# 512 samples, 20 steps. Measured means (seed 0): best_of_n -5.0 / -1.4 / -0.41 for K = 1 / 4 / 16,
# greedy -5.0 / -0.28 / -0.001, systematic -4.9 / -0.68 / -0.10, rollover -5.0 / -0.51 / -0.41.
# Each rise must exceed 3 standard errors of the difference.
@pytest.mark.parametrize("name", ["best_of_n", "greedy", "systematic", "rollover"])
def test_mean_reward_rises_with_the_budget(name) -> None:
    stats = []
    for K in (1, 4, 16):
        r = _sample(_sq_distance_reward, 512, num_particles=K, steps=20, **METHODS[name]).rewards
        stats.append((r.mean().item(), r.var().item() / r.numel()))
    for (m_lo, v_lo), (m_hi, v_hi) in zip(stats, stats[1:]):
        assert m_hi - m_lo > 3.0 * math.sqrt(v_lo + v_hi), stats


def test_smc_approaches_the_tilted_law() -> None:
    # A linear reward r = w.x tilts N(mu, S) into N(mu + lam S w, S) exactly. The weighted SMC
    # output mean should move there as K grows (measured first coordinate, 2000 samples, 20
    # steps: 1.66 at K = 4, 1.88 at K = 32; target 2.0, untilted 1.0). Weights that forgot the
    # difference potential (exp(lam r_k) at every step) overshoot past 2.5 instead.
    w, lam = torch.tensor([1.0, 0.0], dtype=F64), 1.0
    tilted = MEAN + lam * COV @ w
    means = []
    for K in (4, 32):
        options = METHODS["systematic"] | {"select": "weighted", "temperature": lam}
        res = _sample(lambda x: x @ w, 2000, num_particles=K, steps=20, **options)
        means.append(res.samples.mean(0))
    err = [(m - tilted).norm().item() for m in means]
    assert err[1] < 0.2 and err[1] < 0.7 * err[0], (means, tilted)
