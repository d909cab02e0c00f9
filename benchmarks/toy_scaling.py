"""Inference-time scaling and steering rows of the toy benchmark (issue 3).

* **Scaling** (:func:`scaling_table`): mean reward of 1 sample against the NFE budget
  ``K * steps`` (``K`` particles or paths per sample) for best-of-N SDE paths, greedy
  particle search, SMC with systematic resampling, rollover budget forcing and greedy search
  along the VP cosine interpolant (:func:`modaflow.core.scaling.sample_scaled`). The reward is
  ``r(x) = -|x - x*|^2`` with ``x*`` a held-out data point. ``K = 1`` is the plain SDE sampler
  for every method, the baseline of the table. A zero-reward control (SMC, largest ``K``)
  checks that the sampled law is unchanged: its sliced W2 to held-out data sits beside that of
  the plain SDE sampler.
* **Steering** (:func:`steering_rows`): FlowChef and hard data consistency
  (:func:`modaflow.core.steering.steer`) on Gaussian data with half the coordinates observed,
  driven by the exact oracle velocity, so the unobserved mean can be compared with the exact
  conditional mean ``mu_u + S_uo S_oo^-1 (y - mu_o)``; "none" is the unsteered flow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from modaflow.core.gaussian import GaussianOracle
from modaflow.core.ode import Field, time_grid
from modaflow.core.paths import AffinePath, LinearPath
from modaflow.core.scaling import Reward, ScalingConfig, ScalingResult, sample_scaled
from modaflow.core.steering import Mask, SteeringConfig, steer
from modaflow.modalities.toy.data import gaussian_params
from modaflow.modalities.toy.metrics import sliced_wasserstein

from .harness import progress

__all__ = ["ScalingSettings", "SCALING_METHODS", "scaling_table", "steering_rows"]


@dataclass(frozen=True)
class ScalingSettings:
    """Sizes of the scaling and steering rows."""

    n: int
    """Output samples per (method, budget)."""
    budgets: tuple[int, ...]
    """Particles (or paths) K per sample; the NFE budget is K * steps."""
    steps: int
    """Euler-Maruyama steps of every scaled sampler."""
    steer_dim: int
    """Dimension of the Gaussian steering problem (the first half of the coordinates is observed)."""
    steer_n: int
    """Steered samples (all with the same measurement)."""
    steer_steps: int
    """Sampler steps of the steering rows."""


SCALING_METHODS: dict[str, ScalingConfig] = {
    "best_of_n": ScalingConfig(method="best_of_n"),
    "greedy": ScalingConfig(method="particles", resample="greedy"),
    "smc": ScalingConfig(method="particles", resample="systematic"),
    "rollover": ScalingConfig(method="rollover"),
    "greedy_vp": ScalingConfig(method="particles", resample="greedy", interpolant="vp_cosine"),
}
"""Row name -> the scaling options (``num_particles`` and ``steps`` set per budget)."""


def scaling_table(field: Field, path: AffinePath, ref: Tensor, s: ScalingSettings, key: str, seed: int,
                  directions: Tensor) -> dict:
    """Mean reward against the NFE budget of each method of :data:`SCALING_METHODS` for the
    teacher ``field`` on ``path``, and the zero-reward control; ``ref`` ``(N, D)`` held-out
    data (``ref[0]`` is the reward's target). Returns ``{"metrics", "curves"}``."""
    dim, device = ref.shape[1], ref.device
    target = ref[0]

    def reward(x: Tensor) -> Tensor:
        return -(x - target).pow(2).sum(1)

    def zero(x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)

    def draw(cfg: ScalingConfig, r: Reward, seed_: int = seed) -> ScalingResult:
        g = torch.Generator(device).manual_seed(seed_)
        return sample_scaled(field, path, r, s.n, (dim,), cfg, g, device=device)

    metrics, series = {}, {}
    rows = [(name, k) for name in SCALING_METHODS for k in s.budgets]
    for name, k in progress(rows, f"scaling {key}"):
        cfg = SCALING_METHODS[name].replace(num_particles=k, steps=s.steps)
        res = draw(cfg, reward)
        mean = float(res.rewards.mean())
        metrics[f"scaling.{key}.{name}.reward@nfe{res.nfe}"] = mean
        xs, ys = series.setdefault(name, {"x": [], "y": []}).values()
        xs.append(res.nfe)
        ys.append(mean)
    plain_cfg = SCALING_METHODS["smc"].replace(num_particles=1, steps=s.steps)
    plain, plain2 = draw(plain_cfg, zero, seed).samples, draw(plain_cfg, zero, seed + 1).samples
    control = draw(SCALING_METHODS["smc"].replace(num_particles=max(s.budgets), steps=s.steps), zero, seed).samples
    metrics[f"scaling.{key}.zero_reward.sw_plain_sde"] = sliced_wasserstein(plain, ref, directions=directions)
    metrics[f"scaling.{key}.zero_reward.sw_plain_sde_seed2"] = sliced_wasserstein(plain2, ref, directions=directions)
    metrics[f"scaling.{key}.zero_reward.sw_smc_k{max(s.budgets)}"] = sliced_wasserstein(control, ref, directions=directions)
    curves = {f"scaling.{key}.reward_vs_nfe": {"xlabel": "NFE per sample", "ylabel": "mean reward -|x - x*|^2",
                                               "series": series}}
    return {"metrics": metrics, "curves": curves}


def steering_rows(s: ScalingSettings, seed: int) -> dict[str, float]:
    """Steering of the exact Gaussian flow (linear path) towards a half-coordinate mask:
    per method (flowchef, hard, none), the mean measurement residual ``|A x - y|`` and the
    largest error of the unobserved sample mean against the exact conditional mean."""
    path = LinearPath()
    mean, cov = gaussian_params(s.steer_dim)
    oracle = GaussianOracle(mean, cov, path)
    o = torch.arange(s.steer_dim) < s.steer_dim // 2  # observed coordinates
    g = torch.Generator().manual_seed(seed)
    x_true = oracle.sample(1.0, 1, g, torch.float64)[0]
    cond_mean = mean[~o] + cov[~o][:, o] @ torch.linalg.solve(cov[o][:, o], x_true[o] - mean[o])
    mask = Mask(o.to(torch.float64))
    y = mask.forward(x_true).expand(s.steer_n, -1)
    x0 = torch.randn(s.steer_n, s.steer_dim, generator=g, dtype=torch.float64)
    grid = time_grid(s.steer_steps, dtype=torch.float64)
    out = {}
    for name, cfg in (("flowchef", SteeringConfig(method="flowchef", step_size=1.0)),
                      ("hard", SteeringConfig(method="hard")),
                      ("none", SteeringConfig(method="flowchef", step_size=0.0))):
        res = steer(oracle.velocity, x0, grid, path, mask, y, cfg)
        out[f"steering.gaussian{s.steer_dim}d.{name}.residual"] = float(res.residual.mean())
        out[f"steering.gaussian{s.steer_dim}d.{name}.cond_mean_max_err"] = float(
            (res.x[:, ~o].mean(0) - cond_mean).abs().max())
    return out
