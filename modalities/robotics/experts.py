"""Scripted experts, one per environment, acting on the flat observations of
:mod:`.envs` and returning actions in [-1, 1].

- Fetch push (3 phases): rise above the point behind the object (opposite the goal),
  descend, push through the object towards the goal.
- Fetch pick-and-place (4 phases): above the object with the gripper open, descend,
  close, carry to the goal.
- PushT: a push planner with lookahead in a scratch copy of gym-pusht's simulator and a
  fine-alignment phase (:mod:`.pusht_planner`).

``noise`` adds Gaussian action noise (seeded), so demonstrations and the expert's own
success rate are not perfect: a natural mix of successes and failures.
"""

from __future__ import annotations

import numpy as np

from .envs import RoboEnv
from .pusht_planner import PushTExpert, PushTPlannerConfig

__all__ = ["FetchPushExpert", "FetchPickExpert", "PushTExpert", "PushTPlannerConfig", "make_expert"]

_GAIN = 10.0  # Fetch: action = gain * displacement in metres (one action unit moves ~5 cm)


def _toward(grip: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.clip(_GAIN * (target - grip), -1.0, 1.0)


class _Noisy:
    def __init__(self, noise: float, seed: int) -> None:
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def _out(self, a: np.ndarray) -> np.ndarray:
        self.clean_action = np.clip(a, -1.0, 1.0).astype(np.float32)  # the action before noise (DART labels)
        if self.noise > 0:
            a = a + self.noise * self.rng.standard_normal(a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)


class FetchPushExpert(_Noisy):
    """Three-phase pushing expert for ``fetch-push``."""

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        grip, obj, goal = obs[0:3], obs[3:6], obs[25:28]
        d = goal[:2] - obj[:2]
        u = d / (np.linalg.norm(d) + 1e-8)
        behind = np.array([*(obj[:2] - 0.06 * u), obj[2]])
        a = np.zeros(4)
        a[3] = -1.0
        off_line = np.linalg.norm(grip[:2] - behind[:2]) > 0.025
        if off_line and np.dot(grip[:2] - obj[:2], u) > -0.03:  # phase 1: go over, behind the object
            a[:3] = _toward(grip, behind + np.array([0, 0, 0.06]))
        elif off_line:
            a[:3] = _toward(grip, np.array([*behind[:2], max(grip[2], obj[2])]))
        elif grip[2] - obj[2] > 0.01:  # phase 2: descend
            a[:3] = _toward(grip, behind)
        else:  # phase 3: push through the object towards the goal
            a[:3] = 0.5 * _toward(grip, np.array([*(goal[:2] - 0.05 * u), obj[2]]))
        return self._out(a)


class FetchPickExpert(_Noisy):
    """Four-phase pick-and-place expert for ``fetch-pick``."""

    def __init__(self, noise: float, seed: int) -> None:
        super().__init__(noise, seed)
        self.grasped = False

    def reset(self) -> None:
        self.grasped = False

    def act(self, obs: np.ndarray) -> np.ndarray:
        grip, obj, goal, fingers = obs[0:3], obs[3:6], obs[25:28], obs[9:11]
        a = np.zeros(4)
        xy_err = np.linalg.norm(grip[:2] - obj[:2])
        if not self.grasped:
            if xy_err > 0.01:  # phase 1: above the object, gripper open
                a[:3] = _toward(grip, obj + np.array([0, 0, 0.05]))
                a[3] = 1.0
            elif grip[2] - obj[2] > 0.005:  # phase 2: descend
                a[:3] = _toward(grip, obj)
                a[3] = 1.0
            else:  # phase 3: close
                a[3] = -1.0
                self.grasped = fingers.sum() < 0.06
        else:  # phase 4: carry to the goal
            a[:3] = _toward(grip, goal)
            a[3] = -1.0
            if np.linalg.norm(grip - obj) > 0.05:  # dropped: start again
                self.grasped = False
        return self._out(a)


def make_expert(env: RoboEnv, noise: float = 0.0, seed: int = 0):
    """The scripted expert of ``env``."""
    if env.name == "fetch-push":
        return FetchPushExpert(noise, seed)
    if env.name == "fetch-pick":
        return FetchPickExpert(noise, seed)
    return PushTExpert(noise, seed, env)
