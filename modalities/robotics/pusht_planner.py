"""Scripted PushT expert: a push planner with short-horizon lookahead in gym-pusht's own
physics (pymunk), followed by a fine-alignment phase.

Every decision enumerates candidate pushes: a contact point on the T's outline, a push
direction (the inward edge normal, or that normal turned by up to 0.6 rad, inside the
friction cone of ±45°: block and agent friction are 1) and a push depth. Each candidate is simulated
in a scratch copy of the simulator (the same PD control, substeps and contact model as
``PushTEnv.step``), started from the observed block pose with the agent at rest at the push's
start, and scored by the keypoint distance of the resulting block pose to the goal pose
(:func:`keypoint_cost`). The chosen push is executed in the real environment as

1. travel to the push's start around the block (a collision-free path: straight if the segment
   keeps the agent off the T, else around a ring about the T's centre of mass);
2. settle at the start until the agent is at rest (so the real push starts from the state the
   lookahead assumed);
3. the push itself (the simulated target sequence).

While the block is far from the goal, pushes are deep (coarse phase) and ranked by cost
reduction per control step; once the keypoint cost falls below ``fine_below`` pixels the
depths shrink to a few pixels (fine-alignment phase) and the push with the lowest predicted
cost wins. The expert reads only observations; the real environment is never reset or
written to (no state teleporting), only driven by actions.

Quasi-static pushing: gym-pusht sets ``space.damping = 0``, so the block stops as soon as it
is not pushed (Mason 1986, "Mechanics and planning of manipulator pushing operations",
IJRR 5(3)); the single-push lookahead is then exact up to the settle tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PushTPlannerConfig", "PushTExpert", "GOAL_POSE", "keypoint_cost", "T_OUTLINE"]

GOAL_POSE = np.array([256.0, 256.0, math.pi / 4])
"""gym-pusht's fixed goal pose (x, y in pixels, angle in radians)."""

T_OUTLINE = np.array([(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)], float)
"""The T's outline in the block frame (``PushTEnv.add_tee`` with scale 30, length 4)."""

_EDGES = [(T_OUTLINE[i], T_OUTLINE[(i + 1) % 8]) for i in range(8)]
_COG = np.array([0.0, 45.0])  # centre of gravity in the block frame (mean of the two boxes')
_AGENT_R = 15.0  # agent radius in pixels


def _rot(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]])


def keypoint_cost(pose: np.ndarray) -> float:
    """Root-mean-square distance in pixels between the T's 8 outline vertices at ``pose``
    (x, y, angle) and at :data:`GOAL_POSE` (the keypoint error used by PushT's keypoint
    observations, Chi et al. 2023, arXiv 2303.04137)."""
    a = T_OUTLINE @ _rot(pose[2]).T + pose[:2]
    b = T_OUTLINE @ _rot(GOAL_POSE[2]).T + GOAL_POSE[:2]
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=1))))


@dataclass(frozen=True)
class PushTPlannerConfig:
    """Settings of :class:`PushTExpert` (chosen on seeds 100000+, never the test seeds)."""

    coarse_fractions: tuple[float, ...] = (0.15, 0.5, 0.85)
    """Coarse phase: contact points along each of the 8 outline edges (fractions of the edge)."""
    coarse_angles: tuple[float, ...] = (0.0, 0.5, -0.5)
    """Coarse phase: push directions, the inward normal turned by these (rad, inside the
    friction cone of ±45°)."""
    coarse_depths: tuple[float, ...] = (10.0, 25.0, 50.0, 80.0, 120.0)
    """Push depths (px past first contact) while the keypoint cost is >= ``fine_below``."""
    coarse_push_speed: float = 10.0
    """Coarse phase: agent target speed (px per control step) during a push."""
    fine_fractions: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    """Fine phase: contact points along each edge."""
    fine_angles: tuple[float, ...] = (0.0, 0.3, -0.3, 0.6, -0.6)
    """Fine phase: push directions."""
    fine_depths: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
    """Push depths in the fine-alignment phase."""
    fine_push_speed: float = 4.0
    """Fine phase: agent target speed (px per control step) during a push."""
    fine_below: float = 10.0
    """Keypoint cost (px) under which the fine-alignment phase starts."""
    gap: float = 6.0
    """Distance (px) from the start of a push to first contact, along the push."""
    hold: int = 2
    """Control steps the target rests at the push's end."""
    travel_speed: float = 20.0
    """Agent target speed (px per control step) while travelling."""
    ring_margin: float = 25.0
    """Travel ring radius = the T's reach from its centre of mass + agent radius + this."""
    clearance: float = 2.0
    """Extra clearance (px) between the agent and the T on travel segments."""
    settle_tol: float = 0.5
    """Settled: the agent moved less than this (px) in the last step and is this close to the start."""
    settle_max: int = 8
    """At most this many settle steps."""
    min_gain: float = 0.05
    """A push must lower the predicted keypoint cost by at least this (px)."""
    step_cost: float = 0.01
    """Fine phase: predicted cost + step_cost x control steps is minimised."""
    workspace: tuple[float, float] = (18.0, 494.0)
    """Agent targets stay inside this square (px); the walls are at 5 and 506."""
    reach: float = field(default=float(np.max(np.linalg.norm(T_OUTLINE - _COG, axis=1))), init=False)


class PushTExpert:
    """Push planner with a fine-alignment phase for ``pusht`` (state observations); see the
    module docstring. ``noise`` adds seeded Gaussian noise to the actions."""

    def __init__(self, noise: float, seed: int, env: object, config: PushTPlannerConfig | None = None) -> None:
        import importlib

        import gymnasium as gym

        importlib.import_module("gym_pusht")  # registers the env

        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.cfg = config or PushTPlannerConfig()
        self.scratch = gym.make("gym_pusht/PushT-v0", obs_type="state").unwrapped
        self.scratch.reset(seed=0)
        self.env = env
        self.reset()

    def reset(self) -> None:
        self.queue: list[tuple[str, np.ndarray]] = []
        self.prev_agent: np.ndarray | None = None
        self.settle_steps = 0
        self.decisions: list[dict] = []

    # -- observation helpers -------------------------------------------------------------
    @staticmethod
    def _state(obs: np.ndarray) -> np.ndarray:
        """(agent x, y, block x, y, angle) in pixels / radians from a flat observation."""
        ang = math.atan2(float(obs[5]), float(obs[4]))
        return np.array([*(np.asarray(obs[:4], np.float64) * 512.0), ang])

    @staticmethod
    def _pose_cost(state: np.ndarray) -> float:
        """Keypoint cost (px) of the block pose in ``state``."""
        return keypoint_cost(state[2:5])

    def _out(self, target: np.ndarray) -> np.ndarray:
        a = (np.asarray(target, np.float64) - 256.0) / 256.0
        self.clean_action = np.clip(a, -1.0, 1.0).astype(np.float32)  # the action before noise (DART labels)
        if self.noise > 0:
            a = a + self.noise * self.rng.standard_normal(a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    # -- lookahead in the scratch simulator ----------------------------------------------
    def _push_targets(self, start: np.ndarray, end: np.ndarray, speed: float) -> list[np.ndarray]:
        n = max(1, int(math.ceil(np.linalg.norm(end - start) / speed)))
        return [start + (end - start) * (k + 1) / n for k in range(n)] + [end] * self.cfg.hold

    def _simulate(self, pose: np.ndarray, start: np.ndarray, targets: list[np.ndarray]) -> np.ndarray:
        """Block pose after the agent, at rest at ``start``, follows ``targets`` (one per
        control step), integrated like ``PushTEnv.step``: PD acceleration
        ``k_p (target - x) - k_v v`` on the kinematic agent, 10 substeps of 0.01 s."""
        sim = self.scratch
        agent, block = sim.agent, sim.block
        agent.position, agent.velocity = (float(start[0]), float(start[1])), (0.0, 0.0)
        block.angle = float(pose[2])  # angle first: pymunk rotates about the centre of gravity
        block.position = (float(pose[0]), float(pose[1]))
        block.velocity, block.angular_velocity = (0.0, 0.0), 0.0
        n_sub = int(1 / (sim.dt * sim.control_hz))
        kp, kv, dt = sim.k_p, sim.k_v, sim.dt
        for tx, ty in targets:
            for _ in range(n_sub):
                px, py = agent.position
                vx, vy = agent.velocity
                agent.velocity = (vx + (kp * (tx - px) - kv * vx) * dt, vy + (kp * (ty - py) - kv * vy) * dt)
                sim.space.step(dt)
        return np.array([*block.position, block.angle])

    # -- geometry ------------------------------------------------------------------------
    def _polygon(self, pose: np.ndarray):
        import shapely.geometry as sg

        rot = _rot(pose[2])
        bar = [tuple(rot @ v + pose[:2]) for v in ((-60, 0), (60, 0), (60, 30), (-60, 30))]
        stem = [tuple(rot @ v + pose[:2]) for v in ((-15, 30), (15, 30), (15, 120), (-15, 120))]
        return sg.Polygon(bar).union(sg.Polygon(stem))

    def _path(self, agent: np.ndarray, start: np.ndarray, pose: np.ndarray, poly, keep_off) -> list[np.ndarray] | None:
        """Collision-free waypoints from ``agent`` to ``start`` (None if none is found)."""
        import shapely.geometry as sg

        cfg = self.cfg
        lo, hi = cfg.workspace

        def clear(pts: list[np.ndarray]) -> bool:
            return not keep_off.intersects(sg.LineString([tuple(p) for p in pts]))

        pts = [agent]
        d = poly.distance(sg.Point(*agent))
        if d < _AGENT_R + cfg.clearance + 1.0:  # in contact: back off from the nearest point first
            from shapely.ops import nearest_points

            q = np.array(nearest_points(poly, sg.Point(*agent))[0].coords[0])
            away = agent - q
            away = away / (np.linalg.norm(away) + 1e-9)
            pts.append(np.clip(q + (_AGENT_R + cfg.clearance + 8.0) * away, lo, hi))
        if clear([pts[-1], start]):
            return pts[1:] + [start]
        cog = pose[:2] + _rot(pose[2]) @ _COG
        radius = cfg.reach + _AGENT_R + cfg.ring_margin
        a0 = math.atan2(pts[-1][1] - cog[1], pts[-1][0] - cog[0])
        a1 = math.atan2(start[1] - cog[1], start[0] - cog[0])
        diff = (a1 - a0 + math.pi) % (2 * math.pi) - math.pi
        for sweep in (diff, diff - math.copysign(2 * math.pi, diff)):  # the shorter way round first
            n = max(1, int(abs(sweep) / 0.3))
            ring = [np.clip(cog + radius * np.array([math.cos(a0 + sweep * i / n), math.sin(a0 + sweep * i / n)]), lo, hi)
                    for i in range(n + 1)]
            route = pts[-1:] + ring
            if not clear(route):
                continue
            if clear([ring[-1], start]):
                return pts[1:] + ring + [start]
        return None

    @staticmethod
    def _length(pts: list[np.ndarray]) -> float:
        return float(sum(np.linalg.norm(b - a) for a, b in zip(pts[:-1], pts[1:])))

    def _interp(self, a: np.ndarray, pts: list[np.ndarray]) -> list[np.ndarray]:
        out, cur = [], a
        for p in pts:
            n = max(1, int(math.ceil(np.linalg.norm(p - cur) / self.cfg.travel_speed)))
            out += [cur + (p - cur) * (k + 1) / n for k in range(n)]
            cur = p
        return out

    # -- planning ------------------------------------------------------------------------
    def _replan(self, obs: np.ndarray) -> None:
        import shapely.geometry as sg

        cfg = self.cfg
        state = self._state(obs)
        agent, pose = state[:2], state[2:5]
        cost0 = keypoint_cost(pose)
        fine = cost0 < cfg.fine_below
        depths = cfg.fine_depths if fine else cfg.coarse_depths
        fractions = cfg.fine_fractions if fine else cfg.coarse_fractions
        angles = cfg.fine_angles if fine else cfg.coarse_angles
        speed = cfg.fine_push_speed if fine else cfg.coarse_push_speed
        poly = self._polygon(pose)
        keep_off = poly.buffer(_AGENT_R + cfg.clearance)
        rot = _rot(pose[2])
        lo, hi = cfg.workspace
        best, best_score = None, -math.inf
        for a, b in _EDGES:
            t = (b - a) / np.linalg.norm(b - a)
            n_loc = np.array([t[1], -t[0]])  # outward normal (T_OUTLINE's vertex order)
            for f in fractions:
                p_loc = a + f * (b - a)
                p = rot @ p_loc + pose[:2]
                nrm = rot @ n_loc
                c0 = p + _AGENT_R * nrm  # agent centre touching the edge at p
                for off in angles:
                    u = -(_rot(off) @ nrm)  # push direction
                    start = c0 - cfg.gap * u
                    if np.any(start < lo) or np.any(start > hi):
                        continue
                    if poly.distance(sg.Point(*start)) < _AGENT_R + 0.5:
                        continue
                    path = self._path(agent, start, pose, poly, keep_off)
                    if path is None:
                        continue
                    travel = int(math.ceil(self._length([agent] + path) / cfg.travel_speed)) + 2
                    for d in depths:
                        end = np.clip(c0 + d * u, lo, hi)
                        targets = self._push_targets(start, end, speed)
                        cost = keypoint_cost(self._simulate(pose, start, targets))
                        steps = travel + len(targets)
                        if cost > cost0 - cfg.min_gain:
                            continue
                        score = -(cost + cfg.step_cost * steps) if fine else (cost0 - cost) / steps
                        if score > best_score:
                            best, best_score = (path, targets, cost, steps), score
        if best is None:  # nothing improves: a small random nudge away from where the agent is
            self.queue = [("move", np.clip(agent + self.rng.normal(0, 20, 2), lo, hi))]
            self.decisions.append({"cost0": cost0, "fine": fine, "nudge": True})
            return
        path, targets, cost, steps = best
        self.decisions.append({"cost0": cost0, "fine": fine, "predicted": cost, "steps": steps})
        self.queue = [("move", w) for w in self._interp(agent, path)]
        self.queue.append(("settle", path[-1]))
        self.queue += [("move", w) for w in targets]

    def act(self, obs: np.ndarray) -> np.ndarray:
        agent = np.asarray(obs[:2], np.float64) * 512.0
        while True:
            if not self.queue:
                self._replan(obs)
            kind, target = self.queue[0]
            if kind == "settle":
                moved = np.inf if self.prev_agent is None else float(np.linalg.norm(agent - self.prev_agent))
                near = float(np.linalg.norm(agent - target))
                if (moved < self.cfg.settle_tol and near < self.cfg.settle_tol) or self.settle_steps >= self.cfg.settle_max:
                    self.queue.pop(0)
                    self.settle_steps = 0
                    continue
                self.settle_steps += 1
                break
            self.queue.pop(0)
            break
        self.prev_agent = agent
        return self._out(target)
