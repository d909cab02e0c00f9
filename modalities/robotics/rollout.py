"""Paired rollouts: one environment per seed, all stepped in lockstep so the policy runs
batched; the same seeds give the same initial states and (through one seeded generator
and identical draw shapes) the same sampling noise under every condition.

Hidden states: with ``capture`` layers, forward hooks record each layer's output at every
denoising step ``k`` of every policy call. Per episode, layer and step the rollout keeps
the sufficient statistics of the token vectors ``h`` ``(d,)``: ``n``, ``Σh`` and ``Σhhᵀ``,
so conceptors (correlation ``R = Σhhᵀ/n``) and mean differences can be fitted for any
subset of episodes, globally (summed over ``k``) or per step.

Steering: ``hook`` (a :class:`~modaflow.core.conceptors.GateHook`) is attached to
``hook_layer`` for the whole rollout and reset before each policy call, so its step ``k``
is the denoising step.
"""

from __future__ import annotations

import atexit
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from modaflow.core.conceptors import GateHook, record_layers, steer_layer

from .envs import ENV_SPECS, RoboEnv, check_env_name, make_env
from .policies import Policy

__all__ = ["RolloutConfig", "Rollouts", "rollout", "close_pool"]


@dataclass(frozen=True)
class RolloutConfig:
    """How a policy is rolled out."""

    env: str
    """Environment name."""
    steps: int = 10
    """Sampler steps per action chunk."""
    execute: int = 4
    """Actions executed per chunk."""
    episode_steps: int = 0
    """Episode length limit (0: the environment's default)."""
    success_threshold: float = 0.95
    """PushT success coverage."""
    noise_seed: int = 0
    """Seed of the policy's sampling noise (shared by every condition)."""


@dataclass
class Rollouts:
    """Outcomes of one rollout batch. ``stats[layer]`` = ``(n (E, K), s1 (E, K, d), s2 (E, K, d, d))``."""

    seeds: list[int]
    success: np.ndarray
    coverage: np.ndarray
    lengths: np.ndarray
    stats: dict[str, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)
    frames: list[np.ndarray] = field(default_factory=list)


def _accumulate(stats, name: str, k: int, h: Tensor, alive: Tensor) -> None:
    """Add token vectors of ``h`` ``(B, L, d)`` (float64) of live episodes to step ``k``."""
    n, s1, s2 = stats[name]
    h = h.double().cpu() * alive[:, None, None]
    n[:, k] += alive * h.shape[1]
    s1[:, k] += h.sum(1)
    s2[:, k] += torch.einsum("bld,ble->bde", h, h)


@torch.no_grad()
def rollout(policy: Policy, cfg: RolloutConfig, seeds: list[int], capture: tuple[str, ...] = (),
            hook: GateHook | None = None, hook_layer: str | None = None, n_frames: int = 0) -> Rollouts:
    """Roll ``policy`` out from ``seeds``; returns success labels, max coverage (PushT),
    episode lengths, hidden-state statistics of ``capture`` layers and ``n_frames`` RGB
    frames of the first episode."""
    check_env_name(cfg.env)
    if hook is not None and hook_layer is None:
        raise ValueError("a steering hook needs hook_layer")
    envs = [_acquire(cfg, render=n_frames > 0 and i == 0) for i in range(len(seeds))]
    E = len(seeds)
    obs = [e.reset(s) for e, s in zip(envs, seeds)]
    hist = [deque([o] * policy.n_obs, maxlen=policy.n_obs) for o in obs]
    alive = torch.ones(E, dtype=torch.float64)
    gen = torch.Generator().manual_seed(cfg.noise_seed)
    max_t = envs[0].max_steps
    device = next(policy.parameters()).device
    K = policy.length if hasattr(policy, "length") else cfg.steps
    stats: dict = {}
    frames: list[np.ndarray] = []
    recorder = record_layers(policy, capture) if capture else None
    for name in capture:
        stats[name] = None  # allocated at the first call, when the layer's width is known
    steer = steer_layer(policy, hook_layer, hook) if hook is not None else None
    if steer is not None:
        steer.__enter__()
    if recorder is not None:
        recorder.__enter__()
    try:
        t = 0
        while t < max_t and bool(alive.any()):
            cond = torch.from_numpy(np.stack([np.concatenate(list(h)) for h in hist])).float().to(device)
            if hook is not None:
                hook.reset()
            if recorder is not None:
                recorder.clear()
            chunk = policy.act(cond, cfg.steps, gen).float().cpu().numpy()  # (E, H, A)
            if recorder is not None:
                for name, states in recorder.states.items():
                    if stats[name] is None:
                        d = states[0].shape[-1]
                        f64 = torch.float64
                        stats[name] = (torch.zeros(E, K, dtype=f64), torch.zeros(E, K, d, dtype=f64),
                                       torch.zeros(E, K, d, d, dtype=f64))
                    for k, h in enumerate(states[:K]):
                        _accumulate(stats, name, k, h, alive)
            for j in range(cfg.execute):
                if t >= max_t or not bool(alive.any()):
                    break
                for i, e in enumerate(envs):
                    if alive[i] == 0:
                        continue
                    o, done, info = e.step(chunk[i, j])
                    hist[i].append(o)
                    if done:
                        alive[i] = 0.0
                if n_frames and len(frames) < n_frames and t % max(1, max_t // n_frames) == 0:
                    frames.append(envs[0].render())
                t += 1
    finally:
        if recorder is not None:
            recorder.__exit__(None, None, None)
        if steer is not None:
            steer.__exit__(None, None, None)
    out = Rollouts(list(seeds), np.array([e.success for e in envs]), np.array([e.best_coverage for e in envs]),
                   np.array([e.t for e in envs]), stats, frames)
    for e in envs:
        _POOL.setdefault(_pool_key(e), []).append(e)
    if n_frames:
        # MuJoCo registers its EGL teardown at exit when the first renderer is made; atexit runs
        # callbacks last-in first-out, so registering again puts closing the pool before it
        atexit.unregister(close_pool)
        atexit.register(close_pool)
    return out


_POOL: dict[tuple, list[RoboEnv]] = {}
"""Idle environments kept for reuse: building a MuJoCo model costs far more than a reset,
and every reset restores the full initial state of its seed."""


def close_pool() -> None:
    """Close every pooled environment (also run at exit, before the interpreter tears down
    the EGL bindings that MuJoCo's renderers free)."""
    for envs in _POOL.values():
        for e in envs:
            e.close()
    _POOL.clear()


atexit.register(close_pool)


def _pool_key(e: RoboEnv) -> tuple:
    return (e.name, e.max_steps, e.render_enabled, e.success_threshold)


def _acquire(cfg: RolloutConfig, render: bool) -> RoboEnv:
    probe = (cfg.env, cfg.episode_steps or ENV_SPECS[cfg.env].max_steps, render, cfg.success_threshold)
    free = _POOL.get(probe)
    if free:
        return free.pop()
    return make_env(cfg.env, cfg.episode_steps or None, render=render, success_threshold=cfg.success_threshold)
