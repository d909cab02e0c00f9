"""The robotics modality: COAST conceptor steering of flow-matching, diffusion and
autoregressive policies in PushT and Fetch (push, pick-and-place), headless.

Modules: ``envs`` (simulators), ``experts`` (scripted experts), ``data`` (NPZ
demonstrations, windows), ``policies`` (flow / diffusion / ar with hookable layers),
``recipe`` (config, training), ``rollout`` (paired rollouts, hidden-state capture),
``study`` (COAST and controls), ``metrics`` (Wilson, McNemar, bootstrap, PushT score),
``commands`` (CLI entry points, incl. ``modaflow steer robotics``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..registry import DatasetInfo, Modality, ModalityCommand
from .commands import SOLVERS, CollectOptions, SteerOptions, collect_demos, evaluate, finetune, sample, steer, train
from .recipe import RoboticsConfig

__all__ = ["MODALITY", "RoboticsConfig", "DATASET_EPISODES", "PUSHT_EPISODES"]

DATASET_EPISODES = {"train": 10, "test": 4}
"""Expert episodes per split of the registered Fetch datasets (50 steps each)."""

PUSHT_EPISODES = {"train": 2, "test": 1}
"""Expert episodes per split of the registered PushT dataset (up to 300 steps each, ~3 s of
planning per episode: kept small so the data-card test stays fast; record more with
``modaflow collect robotics --env pusht``)."""


def _load(env: str, split: str, seed: int):
    """Expert windows (T_o = 2, H = 8) of ``env``: ``ds[i]`` is an action chunk ``(8, act_dim)``."""
    from .data import collect, make_windows
    from .recipe import DEMO_SEED

    episodes = PUSHT_EPISODES if env == "pusht" else DATASET_EPISODES
    if split not in episodes:
        raise ValueError(f"split must be one of {list(episodes)}; got {split!r}")
    start = DEMO_SEED + (0 if split == "train" else 50_000) + 1000 * seed
    demos = collect(env, episodes[split], seed=start, noise=0.05)
    return make_windows(demos, 2, 8)


def _bench(profile: str, out_dir: str | Path, seed: int):
    from modaflow.benchmarks.robotics import run  # benchmarks import the modality, not the reverse

    return run(profile, out_dir, seed)


MODALITY = Modality(
    name="robotics",
    summary="COAST: conceptor steering of flow / diffusion / autoregressive policies (PushT, Fetch)",
    datasets={
        "pusht": DatasetInfo("pusht", "robotics-pusht", "PushT expert demonstrations (push planner, state observations)",
                             partial(_load, "pusht")),
        "fetch-push": DatasetInfo("fetch-push", "robotics-fetch-push", "FetchPush expert demonstrations (3-phase script)",
                                  partial(_load, "fetch-push")),
        "fetch-pick": DatasetInfo("fetch-pick", "robotics-fetch-pick",
                                  "FetchPickAndPlace expert demonstrations (4-phase script)", partial(_load, "fetch-pick")),
    },
    config_cls=RoboticsConfig,
    train=train,
    sample=sample,
    evaluate=evaluate,
    finetune=finetune,
    bench=_bench,
    solvers=SOLVERS,
    profiles=("smoke", "quick", "full", "gpu", "study"),
    commands={"steer": ModalityCommand("fit COAST conceptors on rollouts and evaluate steered vs controls",
                                       SteerOptions, steer),
              "collect": ModalityCommand("record scripted-expert demonstrations to an .npz file", CollectOptions,
                                         collect_demos)},
)
