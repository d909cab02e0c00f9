"""Scripted experts, one per environment, acting on the flat observations of
:mod:`.envs` and returning actions in [-1, 1].

- Fetch push (3 phases): rise above the point behind the object (opposite the goal),
  descend, push through the object towards the goal.
- Fetch pick-and-place (4 phases): above the object with the gripper open, descend,
  close, carry to the goal.
- PushT: a sampling planner. At each decision it tries candidate pushes (a contact point on
  the T's outline, pushed inwards along the edge normal) in a scratch copy of the
  simulator started from the current state, and executes the push that brings the block's
  pose closest to the goal; the agent travels to the push's start around the block.

``noise`` adds Gaussian action noise (seeded), so demonstrations and the expert's own
success rate are not perfect: a natural mix of successes and failures.
"""

from __future__ import annotations

import math

import numpy as np

from .envs import RoboEnv

__all__ = ["FetchPushExpert", "FetchPickExpert", "PushTExpert", "make_expert"]

_GAIN = 10.0  # Fetch: action = gain * displacement in metres (one action unit moves ~5 cm)


def _toward(grip: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.clip(_GAIN * (target - grip), -1.0, 1.0)


class _Noisy:
    def __init__(self, noise: float, seed: int) -> None:
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def _out(self, a: np.ndarray) -> np.ndarray:
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


class PushTExpert(_Noisy):
    """Sampling planner for ``pusht`` (state observations)."""

    def __init__(self, noise: float, seed: int, env: RoboEnv, horizon: int = 8, candidates: int = 24) -> None:
        super().__init__(noise, seed)
        import gymnasium as gym

        self.scratch = gym.make("gym_pusht/PushT-v0", obs_type="state").unwrapped
        self.scratch.reset(seed=0)
        self.env = env
        self.horizon, self.candidates = horizon, candidates
        self.reset()

    def reset(self) -> None:
        self.plan: list[np.ndarray] = []

    def _state(self, obs: np.ndarray) -> np.ndarray:
        ang = math.atan2(float(obs[5]), float(obs[4]))
        return np.array([*(obs[:4] * 512.0), ang])

    @staticmethod
    def _pose_cost(state: np.ndarray) -> float:
        dpos = np.linalg.norm(state[2:4] - 256.0)
        dang = abs((state[4] - math.pi / 4 + math.pi) % (2 * math.pi) - math.pi)
        return float(dpos + 60.0 * dang)

    def _contacts(self, state: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(contact point, outward normal) in pixels along the T's outline."""
        c, s = math.cos(state[4]), math.sin(state[4])
        rot = np.array([[c, -s], [s, c]])
        pos = state[2:4]
        # T outline in the block frame (bar y in [0, 30], stem x in [-15, 15], y in [30, 120])
        edges = [((-60, 0), (60, 0), (0, -1)), ((60, 0), (60, 30), (1, 0)), ((-60, 0), (-60, 30), (-1, 0)),
                 ((-60, 30), (-15, 30), (0, 1)), ((15, 30), (60, 30), (0, 1)), ((15, 30), (15, 120), (1, 0)),
                 ((-15, 30), (-15, 120), (-1, 0)), ((-15, 120), (15, 120), (0, 1))]
        out = []
        for a, b, n in edges:
            for f in (0.2, 0.5, 0.8):
                p = (1 - f) * np.array(a, float) + f * np.array(b, float)
                out.append((pos + rot @ p, rot @ np.array(n, float)))
        return out

    def _simulate(self, state: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
        """Pose cost after pushing from ``start`` towards ``end``, simulated directly in the
        scratch env's pymunk space (same PD control and substeps as ``PushTEnv.step``)."""
        sim = self.scratch
        agent, block = sim.agent, sim.block
        agent.position, agent.velocity = (float(start[0]), float(start[1])), (0.0, 0.0)
        block.position, block.angle = (float(state[2]), float(state[3])), float(state[4])
        block.velocity, block.angular_velocity = (0.0, 0.0), 0.0
        n_sub = int(1 / (sim.dt * sim.control_hz))
        for k in range(self.horizon):
            tx, ty = start + (end - start) * min(1.0, (k + 1) / (self.horizon / 2))
            for _ in range(n_sub):
                px, py = agent.position
                vx, vy = agent.velocity
                agent.velocity = (vx + (sim.k_p * (tx - px) - sim.k_v * vx) * sim.dt,
                                  vy + (sim.k_p * (ty - py) - sim.k_v * vy) * sim.dt)
                sim.space.step(sim.dt)
        return self._pose_cost(np.array([*agent.position, *block.position, block.angle]))

    def _route(self, agent: np.ndarray, block: np.ndarray, start: np.ndarray, normal: np.ndarray) -> list[np.ndarray]:
        """Waypoints from the agent to ``start`` that go around the block (radius 130)."""
        far = start + 40.0 * normal
        a0 = math.atan2(agent[1] - block[1], agent[0] - block[0])
        a1 = math.atan2(far[1] - block[1], far[0] - block[0])
        diff = (a1 - a0 + math.pi) % (2 * math.pi) - math.pi  # the shorter way round
        n = max(1, int(abs(diff) / 0.5))
        ring = [block + 130.0 * np.array([math.cos(a0 + diff * i / n), math.sin(a0 + diff * i / n)]) for i in range(n + 1)]
        ring = [np.clip(p, 20, 492) for p in ring]
        return ring + [far, start]

    def _replan(self, obs: np.ndarray) -> None:
        state = self._state(obs)
        best, best_cost = None, self._pose_cost(state)
        contacts = self._contacts(state)
        idx = self.rng.permutation(len(contacts))[: self.candidates]
        for i in idx:
            p, n = contacts[i]
            start = p + 20.0 * n
            if np.any(start < 20) or np.any(start > 492):
                continue
            for push in (10.0, 25.0, 50.0):
                end = p - push * n
                cost = self._simulate(state, start, end)
                if cost < best_cost - 1.0:
                    best, best_cost = (start, end, n), cost
        if best is None:  # nothing improves: a small random nudge
            self.plan = [state[:2] + self.rng.normal(0, 20, 2)]
            return
        start, end, n = best
        route = self._route(state[:2], state[2:4], start, n)
        steps = []
        for w in route:
            steps += [w] * 3
        for k in range(self.horizon):
            steps.append(start + (end - start) * min(1.0, (k + 1) / (self.horizon / 2)))
        self.plan = steps

    def act(self, obs: np.ndarray) -> np.ndarray:
        if not self.plan:
            self._replan(obs)
        target = self.plan.pop(0)
        return self._out((np.asarray(target) - 256.0) / 256.0)


def make_expert(env: RoboEnv, noise: float = 0.0, seed: int = 0):
    """The scripted expert of ``env``."""
    if env.name == "fetch-push":
        return FetchPushExpert(noise, seed)
    if env.name == "fetch-pick":
        return FetchPickExpert(noise, seed)
    return PushTExpert(noise, seed, env)
