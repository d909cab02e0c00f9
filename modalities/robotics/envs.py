"""Headless simulators behind one interface: PushT (gym-pusht, state observations) and
FetchPush / FetchPickAndPlace (gymnasium-robotics, MuJoCo, no rendering unless asked).

Every environment exposes flat float32 observations ``(obs_dim,)`` and actions
``(act_dim,)`` in ``[-1, 1]``:

- ``pusht``: obs = (agent x, y, block x, y) / 512 and (cos θ, sin θ) of the block angle
  (6); action a ↦ agent target ``256 + 256 a`` in pixels (2). Episodes of at most 300 steps;
  success when the coverage of the goal zone exceeds ``success_threshold`` (0.95 in the
  Diffusion Policy protocol, Chi et al. 2023, arXiv 2303.04137); score = max coverage/0.95
  clipped to 1.
- ``fetch-push`` / ``fetch-pick``: obs = Fetch ``observation`` (25) + ``desired_goal`` (3)
  = 28; action = (dx, dy, dz, gripper) (4). 50 steps; success = the env's ``is_success``
  (object within 5 cm of the goal) at the last step.

``reset(seed)`` gives the same initial state for the same seed (paired evaluation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ENV_NAMES", "EnvSpec", "ENV_SPECS", "RoboEnv", "make_env", "check_env_name", "UnknownEnvError"]

ENV_NAMES: tuple[str, ...] = ("pusht", "fetch-push", "fetch-pick")


class UnknownEnvError(KeyError):
    """An environment name that is not one of :data:`ENV_NAMES`."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class EnvSpec:
    """Sizes of one environment."""

    obs_dim: int
    """Width of the flat observation."""
    act_dim: int
    """Width of the action."""
    max_steps: int
    """Episode length limit."""
    gym_id: str
    """The gymnasium id it wraps."""


ENV_SPECS: dict[str, EnvSpec] = {
    "pusht": EnvSpec(6, 2, 300, "gym_pusht/PushT-v0"),
    "fetch-push": EnvSpec(28, 4, 50, "FetchPush-v4"),
    "fetch-pick": EnvSpec(28, 4, 50, "FetchPickAndPlace-v4"),
}


def check_env_name(name: str) -> EnvSpec:
    if name not in ENV_SPECS:
        raise UnknownEnvError(f"unknown environment {name!r}; known: {list(ENV_NAMES)}")
    return ENV_SPECS[name]


class RoboEnv:
    """One environment with flat observations, actions in [-1, 1] and success labels."""

    def __init__(self, name: str, max_steps: int | None = None, render: bool = False,
                 success_threshold: float = 0.95) -> None:
        self.spec = check_env_name(name)
        self.name = name
        self.max_steps = max_steps or self.spec.max_steps
        self.success_threshold = success_threshold
        self.render_enabled = render
        os.environ.setdefault("MUJOCO_GL", "egl")
        try:
            import gymnasium as gym
        except ImportError as e:  # pragma: no cover
            raise ImportError("the robotics modality needs gymnasium: pip install modaflow[robotics]") from e
        kwargs: dict[str, Any] = {"render_mode": "rgb_array"} if render else {}
        if name == "pusht":
            import importlib

            importlib.import_module("gym_pusht")  # registers the env

            self.env = gym.make(self.spec.gym_id, obs_type="state", max_episode_steps=self.max_steps, **kwargs)
            self.env.unwrapped.success_threshold = success_threshold
        else:
            import gymnasium_robotics

            gym.register_envs(gymnasium_robotics)
            self.env = gym.make(self.spec.gym_id, max_episode_steps=self.max_steps, **kwargs)
        self.raw: Any = None
        self.t = 0
        self.best_coverage = 0.0
        self.success = False

    @property
    def obs_dim(self) -> int:
        return self.spec.obs_dim

    @property
    def act_dim(self) -> int:
        return self.spec.act_dim

    def _flat(self, raw: Any) -> np.ndarray:
        if self.name == "pusht":
            r = np.asarray(raw, dtype=np.float64)
            return np.concatenate([r[:4] / 512.0, [np.cos(r[4]), np.sin(r[4])]]).astype(np.float32)
        return np.concatenate([raw["observation"], raw["desired_goal"]]).astype(np.float32)

    def reset(self, seed: int) -> np.ndarray:
        """Reset to the initial state of ``seed``; returns the observation ``(obs_dim,)``."""
        self.raw, _ = self.env.reset(seed=int(seed))
        self.t, self.best_coverage, self.success = 0, 0.0, False
        return self._flat(self.raw)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool, dict]:
        """Apply ``action`` ``(act_dim,)`` in [-1, 1]; returns ``(obs, done, info)`` where
        ``info`` has ``success`` (so far) and ``coverage`` (PushT only)."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        if a.shape[0] != self.act_dim:
            raise ValueError(f"{self.name}: action must have {self.act_dim} entries; got {a.shape[0]}")
        if self.name == "pusht":
            a = 256.0 + 256.0 * a
        self.raw, _, terminated, truncated, info = self.env.step(a.astype(np.float32))
        self.t += 1
        if self.name == "pusht":
            self.best_coverage = max(self.best_coverage, float(info["coverage"]))
            self.success = self.success or bool(info["is_success"])
            done = bool(terminated or truncated)
        else:
            self.success = bool(info["is_success"])  # Fetch: success is judged at the final step
            done = bool(truncated)
        done = done or self.t >= self.max_steps
        return self._flat(self.raw), done, {"success": self.success, "coverage": self.best_coverage}

    def render(self) -> np.ndarray:
        """An RGB frame ``(H, W, 3)`` uint8 (needs ``render=True``)."""
        return self.env.render()

    def close(self) -> None:
        self.env.close()


def make_env(name: str, max_steps: int | None = None, render: bool = False, success_threshold: float = 0.95) -> RoboEnv:
    """The environment ``name`` (one of :data:`ENV_NAMES`)."""
    return RoboEnv(name, max_steps, render, success_threshold)
