"""Measure the PushT scripted expert (:class:`modaflow.modalities.robotics.experts.PushTExpert`):
success rate (max coverage >= 0.95 during the episode, Diffusion Policy protocol, Chi et al.
2023, arXiv 2303.04137), the PushT score (mean of max coverage / 0.95 clipped to 1),
mean max coverage and seconds per episode (wall and CPU of this process).

Usage: ``python -m modaflow.benchmarks.robotics_pusht_expert --n 10 --seed 100000 --noise 0.05``
(prints one JSON line; seeds ``seed .. seed + n - 1``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from modaflow.modalities.robotics.envs import make_env
from modaflow.modalities.robotics.experts import make_expert
from modaflow.modalities.robotics.metrics import pusht_score, wilson_interval


def measure(n: int, seed: int, noise: float, max_steps: int | None = None) -> dict:
    env = make_env("pusht", max_steps)
    expert = make_expert(env, noise, seed)
    cov, succ, secs, cpu, steps = [], [], [], [], []
    for s in range(seed, seed + n):
        t0, c0 = time.perf_counter(), time.process_time()
        o, done = env.reset(s), False
        expert.reset()
        while not done:
            o, done, info = env.step(expert.act(o))
        secs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        cov.append(info["coverage"])
        succ.append(bool(info["success"]))
        steps.append(env.t)
    env.close()
    k = int(sum(succ))
    return {"n": n, "seed": seed, "noise": noise, "success": k / n, "wilson95": wilson_interval(k, n),
            "pusht_score": pusht_score(cov), "mean_max_coverage": float(np.mean(cov)),
            "coverage": [round(c, 3) for c in cov], "steps": steps,
            "sec_per_episode": float(np.mean(secs)), "cpu_sec_per_episode": float(np.mean(cpu)),
            "total_sec": float(np.sum(secs))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--max-steps", type=int, default=None)
    a = p.parse_args()
    print(json.dumps(measure(a.n, a.seed, a.noise, a.max_steps)))


if __name__ == "__main__":
    main()
