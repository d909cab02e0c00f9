"""Demonstrations: collection with the scripted experts, the on-disk NPZ format, a loader
that checks it, and windows (observation history -> action chunk) for training.

NPZ format (one file per dataset; users may write their own in the same layout)::

    obs           (N, obs_dim)  float32   observations, episodes concatenated
    actions       (N, act_dim)  float32   actions in [-1, 1]
    episode_ends  (E,)          int64     exclusive end index of each episode (last = N)
    success       (E,)          bool      the episode's success label
    seeds         (E,)          int64     the reset seed of each episode
    env           ()            str       environment name (see envs.ENV_NAMES)

Windows (Diffusion Policy, Chi et al. 2023, arXiv 2303.04137, §3): at step ``t`` of an
episode the condition is ``obs[t - T_o + 1 .. t]`` (the first observation repeated before
the start) and the target is ``actions[t .. t + H - 1]`` (the last action repeated past the
end). Shapes: ``cond`` ``(B, T_o * obs_dim)``, ``x1`` ``(B, H, act_dim)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from modaflow.core.io import atomic_write

from .envs import check_env_name, make_env
from .experts import make_expert

__all__ = ["Demos", "DemoFormatError", "collect", "save_demos", "load_demos", "DemoWindows", "make_windows", "DemoDataModule"]

_KEYS = ("obs", "actions", "episode_ends", "success", "seeds", "env")


class DemoFormatError(ValueError):
    """A demonstration file that does not follow the NPZ format (the message names the file)."""


@dataclass(frozen=True)
class Demos:
    """Demonstrations of one environment (see the module docstring for the shapes)."""

    env: str
    obs: np.ndarray
    actions: np.ndarray
    episode_ends: np.ndarray
    success: np.ndarray
    seeds: np.ndarray

    @property
    def n_episodes(self) -> int:
        return int(self.episode_ends.shape[0])

    def episodes(self):
        """``(obs (T, O), actions (T, A))`` per episode."""
        start = 0
        for end in self.episode_ends:
            yield self.obs[start:end], self.actions[start:end]
            start = int(end)

    def successful(self, source: str = "the demonstrations") -> Demos:
        """The successful episodes only (``success`` flags); ``source`` names the file in the
        error raised when none succeeded."""
        if self.success.all():
            return self
        if not self.success.any():
            raise ValueError(f"{source}: none of the {self.n_episodes} episodes succeeded, and only successful ones "
                             "are kept for training (only_success); pass --no-only-success to train on them all")
        starts = np.concatenate([[0], self.episode_ends[:-1]])
        keep = np.flatnonzero(self.success)
        steps = np.concatenate([np.arange(starts[i], self.episode_ends[i]) for i in keep])
        return Demos(env=self.env, obs=self.obs[steps], actions=self.actions[steps],
                     episode_ends=np.cumsum(self.episode_ends[keep] - starts[keep]), success=self.success[keep],
                     seeds=self.seeds[keep])


def collect(env_name: str, n_episodes: int, seed: int = 0, noise: float = 0.0, max_steps: int | None = None,
            only_success: bool = False, clean_labels: bool = False) -> Demos:
    """Roll out the scripted expert of ``env_name`` from reset seeds ``seed, seed + 1, ...``;
    ``only_success`` keeps successful episodes only, trying further seeds until
    ``n_episodes`` are kept (at most ``4 n_episodes`` tries). ``clean_labels`` records the
    expert's action before the noise while executing the noisy one (DART, Laskey et al. 2017,
    "DART: Noise Injection for Robust Imitation Learning", CoRL): the noise widens the visited
    states, the labels stay the expert's."""
    env = make_env(env_name, max_steps)
    expert = make_expert(env, noise, seed)
    obs, acts, ends, succ, seeds = [], [], [], [], []
    s, n = seed, 0
    while len(ends) < n_episodes and s < seed + 4 * n_episodes + 4:
        o = env.reset(s)
        expert.reset()
        ep_o, ep_a, done = [], [], False
        while not done:
            a = expert.act(o)
            ep_o.append(o)
            ep_a.append(expert.clean_action if clean_labels else a)
            o, done, info = env.step(a)
        s += 1
        if only_success and not info["success"]:
            continue
        n += len(ep_o)
        obs += ep_o
        acts += ep_a
        ends.append(n)
        succ.append(info["success"])
        seeds.append(s - 1)
    env.close()
    if not ends:  # only_success and no episode succeeded: say so instead of failing later on empty arrays
        raise ValueError(f"{env_name}: none of the {s - seed} expert episodes from seed {seed} succeeded "
                         "(only_success=True); collect with only_success=False (--no-only-success) instead")
    return Demos(env_name, np.asarray(obs, np.float32), np.asarray(acts, np.float32), np.asarray(ends, np.int64),
                 np.asarray(succ, bool), np.asarray(seeds, np.int64))


def save_demos(path: str | Path, demos: Demos) -> Path:
    """Write ``demos`` to ``path`` (``.npz``) atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: demonstrations are written as .npz")
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, obs=demos.obs, actions=demos.actions, episode_ends=demos.episode_ends,
                     success=demos.success, seeds=demos.seeds, env=np.array(demos.env))

    atomic_write(path, write)
    return path


def load_demos(path: str | Path, env: str | None = None) -> Demos:
    """Read and check an NPZ demonstration file; ``env`` (if given) must match its env.
    Errors name the file and the array at fault."""
    path = Path(path)
    if not path.is_file():
        raise DemoFormatError(f"{path}: demonstration file not found")
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # corrupt zip / npz
        raise DemoFormatError(f"{path}: not a readable .npz file ({e})") from None
    missing = [k for k in _KEYS if k not in arrays]
    if missing:
        raise DemoFormatError(f"{path}: missing array(s) {missing}; expected {list(_KEYS)}")
    name = str(arrays["env"])
    try:
        spec = check_env_name(name)
    except KeyError as e:
        raise DemoFormatError(f"{path}: {e}") from None
    if env is not None and name != env:
        raise DemoFormatError(f"{path}: demonstrations of {name!r}, expected {env!r}")
    obs, act, ends = arrays["obs"], arrays["actions"], arrays["episode_ends"]
    if obs.ndim != 2 or obs.shape[1] != spec.obs_dim:
        raise DemoFormatError(f"{path}: obs has shape {obs.shape}; {name} needs (N, {spec.obs_dim})")
    if act.ndim != 2 or act.shape[1] != spec.act_dim:
        raise DemoFormatError(f"{path}: actions has shape {act.shape}; {name} needs (N, {spec.act_dim})")
    if act.shape[0] != obs.shape[0]:
        raise DemoFormatError(f"{path}: obs has {obs.shape[0]} rows but actions has {act.shape[0]}")
    if ends.ndim != 1 or ends.size == 0 or not np.all(np.diff(ends) > 0) or ends[0] <= 0 or ends[-1] != obs.shape[0]:
        raise DemoFormatError(f"{path}: episode_ends must be increasing positive ends with the last = N = {obs.shape[0]}")
    for key in ("success", "seeds"):
        if arrays[key].shape != ends.shape:
            raise DemoFormatError(f"{path}: {key} has shape {arrays[key].shape}; expected one per episode {ends.shape}")
    if not (np.isfinite(obs).all() and np.isfinite(act).all()):
        raise DemoFormatError(f"{path}: obs or actions contain NaN/Inf")
    if np.abs(act).max() > 1.0 + 1e-6:
        raise DemoFormatError(f"{path}: actions must lie in [-1, 1]; max |a| = {np.abs(act).max():.3g}")
    return Demos(name, obs.astype(np.float32), act.astype(np.float32), ends.astype(np.int64),
                 arrays["success"].astype(bool), arrays["seeds"].astype(np.int64))


class DemoWindows(Dataset):
    """Training windows; ``ds[i]`` is the action chunk ``(H, act_dim)`` (what the policy
    generates) and ``ds.cond[i]`` its observation history ``(T_o * obs_dim,)``."""

    def __init__(self, x1: Tensor, cond: Tensor) -> None:
        if x1.shape[0] != cond.shape[0]:
            raise ValueError(f"x1 and cond must have the same length; got {x1.shape[0]} and {cond.shape[0]}")
        self.x1, self.cond = x1, cond

    def __len__(self) -> int:
        return int(self.x1.shape[0])

    def __getitem__(self, i: int) -> Tensor:
        return self.x1[i]


def make_windows(demos: Demos, n_obs: int, horizon: int) -> DemoWindows:
    """Every step of every episode as (history of ``n_obs`` observations, chunk of
    ``horizon`` actions), padded at the episode's edges."""
    if n_obs < 1 or horizon < 1:
        raise ValueError(f"n_obs and horizon must be >= 1; got {n_obs}, {horizon}")
    xs, cs = [], []
    for o, a in demos.episodes():
        T = o.shape[0]
        t = np.arange(T)
        hist = np.clip(t[:, None] + np.arange(-n_obs + 1, 1)[None], 0, T - 1)  # (T, T_o)
        fut = np.clip(t[:, None] + np.arange(horizon)[None], 0, T - 1)  # (T, H)
        cs.append(o[hist].reshape(T, -1))
        xs.append(a[fut])
    return DemoWindows(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(cs)))


class DemoDataModule(LightningDataModule):
    """Shuffled batches ``(x1 (B, H, A), cond (B, T_o * O))`` of windows; order from ``seed``."""

    def __init__(self, windows: DemoWindows, batch_size: int, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.windows, self.batch_size, self.seed = windows, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        ds = TensorDataset(self.windows.x1, self.windows.cond)
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=True, drop_last=len(ds) >= self.batch_size, generator=g)

