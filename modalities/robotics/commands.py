"""The CLI entry points of the robotics modality: ``train``, ``evaluate`` (rollouts),
``sample`` (roll out and save frames / a GIF), ``finetune`` and ``steer`` (the COAST
study on a trained run)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from modaflow.core.config import Config, ConfigError
from modaflow.core.io import atomic_write_text
from modaflow.core.training import TrainerArgs

from ..runs import load_recipe
from .metrics import pusht_score, success_summary
from .recipe import DEMO_SEED, NAME, RoboticsConfig, demos_for, restore, train_policy
from .rollout import RolloutConfig, close_pool, rollout
from .study import StudyConfig, run_study

__all__ = ["SOLVERS", "train", "evaluate", "sample", "finetune", "SteerOptions", "steer", "CollectOptions", "collect_demos"]

SOLVERS: tuple[str, ...] = ("policy",)
"""Each policy samples with its own method (Euler, DDIM or token decoding)."""

_ARCH = ("env", "policy", "n_obs", "horizon", "width", "depth", "diffusion_steps")


def _check_solver(solver: str | None) -> None:
    if solver not in (None, *SOLVERS):
        raise ValueError(f"solver must be one of {list(SOLVERS)} (each policy uses its own sampler); got {solver!r}")


def _rollout_cfg(cfg: RoboticsConfig, steps: int | None, seed: int) -> RolloutConfig:
    return RolloutConfig(cfg.env, steps or cfg.steps, cfg.execute, cfg.episode_steps, cfg.success_threshold, noise_seed=seed)


def train(cfg: RoboticsConfig, trainer_args: TrainerArgs, out_dir: str | Path, progress: bool = True) -> dict:
    """Collect (or read) demonstrations and train the policy into ``out_dir``."""
    return train_policy(cfg, demos_for(cfg), trainer_args, out_dir, progress)


def evaluate(ckpt_dir: str | Path, data: str | None, n: int, steps: int | None, solver: str | None, seed: int) -> dict:
    """Success rate (Wilson 95% interval) of ``n`` rollouts from reset seeds ``seed ..
    seed + n − 1`` (below the demonstration seeds); ``data`` may only name the run's env."""
    _check_solver(solver)
    cfg, policy = restore(ckpt_dir)
    if data not in (None, cfg.env):
        raise ConfigError(f"evaluate: --data must be the run's environment {cfg.env!r} (or omitted); got {data!r}")
    if seed + n > DEMO_SEED:
        raise ValueError(f"evaluation seeds must stay below the demonstration seeds ({DEMO_SEED}); got seed={seed}, n={n}")
    r = rollout(policy, _rollout_cfg(cfg, steps, seed), list(range(seed, seed + n)))
    out = {f"success_{k}": v for k, v in success_summary(r.success).items()}
    out["mean_length"] = float(r.lengths.mean())
    if cfg.env == "pusht":
        out["pusht_score"] = pusht_score(r.coverage, cfg.success_threshold)
    return out


def sample(ckpt_dir: str | Path, n: int, steps: int | None, solver: str | None, out_path: str | Path, seed: int) -> Path:
    """Roll out ``n`` episodes; write ``out_path``: ``.npz`` (frames of the first episode
    ``(T, H, W, 3)`` uint8, success and coverage of all) or ``.gif`` (the first episode)."""
    _check_solver(solver)
    out_path = Path(out_path)
    if out_path.suffix not in (".npz", ".gif"):
        raise ValueError(f"{out_path}: sample writes .npz or .gif")
    cfg, policy = restore(ckpt_dir)
    r = rollout(policy, _rollout_cfg(cfg, steps, seed), list(range(seed, seed + n)), n_frames=64)
    close_pool()  # free the renderer now rather than at interpreter exit
    frames = np.stack(r.frames) if r.frames else np.zeros((0, 1, 1, 3), np.uint8)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".gif":
        import imageio.v2 as imageio

        imageio.mimsave(out_path, list(frames), duration=0.1)
    else:
        with open(out_path, "wb") as f:
            np.savez(f, frames=frames, success=r.success, coverage=r.coverage, seeds=np.array(r.seeds))
    return out_path


def finetune(ckpt_dir: str | Path, data: str, out_dir: str | Path, overrides: dict, trainer_args: TrainerArgs,
             progress: bool = True) -> dict:
    """Continue training the run ``ckpt_dir`` on ``data`` ("expert" or an .npz file of the
    same environment); the architecture fields cannot change."""
    base = load_recipe(ckpt_dir, NAME, RoboticsConfig)
    merged = base.to_dict()
    for key, value in overrides.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    cfg = RoboticsConfig.from_dict({**merged, "data": data})
    for name in _ARCH:
        if getattr(cfg, name) != getattr(base, name):
            raise ConfigError(f"finetune cannot change {name} ({getattr(base, name)} in {ckpt_dir}); got {getattr(cfg, name)}")
    return train_policy(cfg, demos_for(cfg), trainer_args, out_dir, progress, init_from=ckpt_dir)


@dataclass
class SteerOptions(Config):
    """Options of ``modaflow steer robotics``."""

    ckpt: str = ""
    """Run folder of a trained policy (written by modaflow train robotics)."""
    study: StudyConfig = field(default_factory=StudyConfig)
    """Sizes and grids of the steering study."""


def steer(opts: SteerOptions, out_dir: Path | None) -> dict:
    """Fit COAST conceptors on fit rollouts, select on them, test on disjoint seeds against
    the shrink / random / mean-difference controls; writes ``out_dir/steer.json`` and the
    chosen conceptor (``conceptor.safetensors``) when ``out_dir`` is given."""
    if not opts.ckpt:
        raise ConfigError("ckpt: expected the run folder of a trained policy (--ckpt DIR)")
    cfg, policy = restore(opts.ckpt)
    res = run_study(policy, _rollout_cfg(cfg, None, 0), opts.study)
    C = res.pop("conceptor", None)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "steer.json", json.dumps(res, indent=2) + "\n")
        if C is not None:
            from safetensors.torch import save_file

            save_file({"C": C.contiguous().to(torch.float64)}, str(out_dir / "conceptor.safetensors"))
    return {k: v for k, v in res.items() if k not in ("selection", "test_outcomes", "spectra")}


@dataclass
class CollectOptions(Config):
    """Options of ``modaflow collect robotics``."""

    env: str = "fetch-push"
    """Environment: pusht, fetch-push or fetch-pick."""
    n_episodes: int = 100
    """Expert episodes to record."""
    noise: float = 0.05
    """Gaussian action noise of the expert."""
    seed: int = DEMO_SEED
    """First reset seed (keep >= 100000 so evaluation seeds stay unseen)."""
    only_success: bool = False
    """Keep successful episodes only."""
    clean_labels: bool = False
    """Record the expert's action before the noise (DART) instead of the executed one."""

    def validate(self) -> None:
        self._require(self.n_episodes >= 1, "n_episodes", "an integer >= 1")
        self._require(self.noise >= 0, "noise", "a number >= 0")


def collect_demos(opts: CollectOptions, out_dir: Path | None) -> dict:
    """Record expert demonstrations to ``out_dir/<env>.npz`` (the format ``--data`` reads)."""
    from .data import collect, save_demos
    from .envs import check_env_name

    check_env_name(opts.env)
    if out_dir is None:
        raise ConfigError("collect needs --out DIR (the .npz is written there)")
    demos = collect(opts.env, opts.n_episodes, opts.seed, opts.noise, only_success=opts.only_success,
                    clean_labels=opts.clean_labels)
    path = save_demos(Path(out_dir) / f"{opts.env}.npz", demos)
    return {"path": str(path), "episodes": demos.n_episodes, "steps": int(demos.obs.shape[0]),
            "expert_success": float(demos.success.mean())}
