"""The robotics recipe: typed config, demonstrations -> windows -> policy -> Lightning
training through the core's :func:`~modaflow.core.training.fit`, and restoring a run.

- flow: :class:`~modaflow.core.training.FlowMatchingModule` on the linear path,
  velocity parametrization (``fm.path``/``fm.parametrization`` are set to these).
- diffusion: the same module on the policy's DDPM path (linear betas, ``diffusion_steps``),
  noise parametrization (epsilon prediction, as Diffusion Policy).
- ar: :class:`ARModule`, the same training loop (EMA, checkpoints, resume) with the
  cross-entropy of the binned action tokens as the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torch import Tensor

from modaflow.core.config import Config, ConfigError
from modaflow.core.training import FlowMatchingConfig, FlowMatchingModule, TrainerArgs, fit, load_checkpoint
from modaflow.core.training import checkpoint_path

from ..runs import absolute_source, load_recipe, load_weights, save_recipe
from .data import DemoDataModule, Demos, collect, load_demos, make_windows
from .envs import ENV_SPECS
from .policies import ARPolicy, Policy, build_policy

__all__ = ["RoboticsConfig", "ARModule", "NAME", "demos_for", "build", "make_module", "train_policy", "restore", "DEMO_SEED"]

NAME = "robotics"
EnvName = Literal["pusht", "fetch-push", "fetch-pick"]
PolicyName = Literal["flow", "diffusion", "ar"]
DEMO_SEED = 100_000
"""Expert demonstrations use reset seeds from here on; rollouts use seeds below it."""


def _default_fm() -> FlowMatchingConfig:
    return FlowMatchingConfig(lr=1e-3, max_steps=3000, batch_size=256, ema_decay=0.995, log_every=50, ckpt_every=1000,
                              warmup_steps=100)


@dataclass
class RoboticsConfig(Config):
    """A policy: environment, demonstrations, architecture, sampler and training setup."""

    data: str = "expert"
    """"expert" (collect demonstrations with the scripted expert) or an .npz demonstration file."""
    env: EnvName = "fetch-push"
    """Environment: pusht, fetch-push or fetch-pick."""
    policy: PolicyName = "flow"
    """Policy: flow (transformer action expert), diffusion (1-D FiLM UNet, DDIM) or ar (binned tokens)."""
    n_demos: int = 100
    """Expert episodes to collect when data = expert."""
    demo_noise: float = 0.05
    """Gaussian action noise of the expert during collection."""
    only_success: bool = True
    """Train on successful episodes only: collected ones, or those a demonstrations file flags as successful."""
    n_obs: int = 2
    """Observation history length T_o."""
    horizon: int = 8
    """Predicted action chunk length H."""
    execute: int = 4
    """Actions of each chunk executed before re-planning."""
    width: int = 64
    """Hidden width d of the policy network (the width of its hookable layers)."""
    depth: int = 2
    """Transformer blocks (flow, ar)."""
    steps: int = 10
    """Sampler steps: Euler steps (flow) or DDIM steps (diffusion); ignored by ar."""
    diffusion_steps: int = 100
    """DDPM steps T of the diffusion policy's path."""
    ddim_eta: float = 0.0
    """Diffusion policy sampler: 0 = DDIM (deterministic), 1 = DDPM-like ancestral noise."""
    episode_steps: int = 0
    """Episode length limit in rollouts (0: the environment's default)."""
    success_threshold: float = 0.95
    """PushT: coverage that counts as success."""
    fm: FlowMatchingConfig = field(default_factory=_default_fm)
    """Training setup (optimiser, steps, batch size, EMA, seed)."""

    def validate(self) -> None:
        self._require(bool(self.data), "data", '"expert" or an .npz file')
        for name in ("n_demos", "n_obs", "horizon", "execute", "width", "depth", "steps", "diffusion_steps"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.execute <= self.horizon, "execute", f"at most horizon = {self.horizon}")
        self._require(self.width % 8 == 0, "width", "a multiple of 8 (GroupNorm / attention heads)")
        self._require(self.policy != "diffusion" or self.horizon % 2 == 0, "horizon", "even for the diffusion policy")
        self._require(self.steps <= self.diffusion_steps, "steps", f"at most diffusion_steps = {self.diffusion_steps}")
        self._require(0 <= self.ddim_eta <= 1, "ddim_eta", "a number in [0, 1]")
        self._require(self.episode_steps >= 0, "episode_steps", "an integer >= 0")
        self._require(0 < self.success_threshold <= 1, "success_threshold", "a coverage in (0, 1]")
        self._require(0 <= self.demo_noise, "demo_noise", "a number >= 0")


class ARModule(FlowMatchingModule):
    """The core training module with the autoregressive policy's token cross-entropy as loss."""

    def compute_loss(self, batch, step: int) -> Tensor:
        x1, _, cond = self.unpack(batch)
        return self.model.loss(x1, cond)


def demos_for(cfg: RoboticsConfig, n: int | None = None) -> Demos:
    """The training demonstrations of ``cfg`` (collected, or read from ``cfg.data``)."""
    if cfg.data == "expert":
        return collect(cfg.env, n or cfg.n_demos, seed=DEMO_SEED, noise=cfg.demo_noise,
                       max_steps=cfg.episode_steps or None, only_success=cfg.only_success)
    demos = load_demos(cfg.data, env=cfg.env)
    return demos.successful(cfg.data) if cfg.only_success else demos


def build(cfg: RoboticsConfig) -> Policy:
    spec = ENV_SPECS[cfg.env]
    if cfg.policy == "diffusion":
        from .policies import DiffusionPolicy

        policy = DiffusionPolicy(spec.obs_dim, spec.act_dim, cfg.n_obs, cfg.horizon, cfg.width, cfg.diffusion_steps)
        policy.eta = cfg.ddim_eta
        return policy
    return build_policy(cfg.policy, spec.obs_dim, spec.act_dim, cfg.n_obs, cfg.horizon, cfg.width, cfg.depth)


def make_module(policy: Policy, cfg: RoboticsConfig) -> FlowMatchingModule:
    """The Lightning module that trains ``policy`` (see the module docstring)."""
    if cfg.policy == "diffusion":
        fm = cfg.fm.replace(path="ddpm_linear", ddpm_steps=cfg.diffusion_steps, parametrization="noise")
        return FlowMatchingModule(policy, policy.path, fm)
    fm = cfg.fm.replace(path="linear", parametrization="velocity")
    return (ARModule if isinstance(policy, ARPolicy) else FlowMatchingModule)(policy, None, fm)


def train_policy(cfg: RoboticsConfig, demos: Demos, trainer_args: TrainerArgs, out_dir: str | Path,
                 progress: bool = True, init_from: str | Path | None = None) -> dict:
    """Fit a policy on ``demos`` into ``out_dir`` (resumes there); ``init_from`` starts from
    another run's weights (finetune)."""
    if demos.env != cfg.env:
        raise ConfigError(f"demonstrations are of {demos.env!r} but env = {cfg.env!r}")
    windows = make_windows(demos, cfg.n_obs, cfg.horizon)
    cfg = cfg.replace(data=absolute_source(cfg.data, names=("expert",)))
    save_recipe(out_dir, NAME, cfg)
    policy = build(cfg)
    policy.set_normalizer(windows.cond)
    module = make_module(policy, cfg)
    if init_from is not None and not checkpoint_path(out_dir).exists():
        load_checkpoint(checkpoint_path(init_from), module.model, ema=module.ema)
    res = fit(module, DemoDataModule(windows, cfg.fm.batch_size, cfg.fm.seed), out_dir, trainer_args, progress=progress)
    final = res.history[-1][1] if res.history else math.nan
    return {"steps": res.step, "final_loss": final, "checkpoint": str(res.checkpoint), "history": res.history,
            "n_windows": len(windows), "n_episodes": demos.n_episodes, "demo_success": float(demos.success.mean())}


def restore(ckpt_dir: str | Path) -> tuple[RoboticsConfig, Policy]:
    """``(recipe, policy with EMA weights, eval mode)`` of a run folder."""
    cfg = load_recipe(ckpt_dir, NAME, RoboticsConfig)
    policy = build(cfg)
    load_weights(ckpt_dir, policy, use_ema=True)
    return cfg, policy.eval()
