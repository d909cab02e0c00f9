"""PushT demonstrations: the sampling-planner expert collects short episodes, the CLI's
collect entry point writes them, and the NPZ loader reads them back (shapes, values, env
checks); the registered ``pusht`` dataset and its card agree on the item shape."""

import numpy as np
import pytest

from modaflow.modalities.robotics import MODALITY, CollectOptions, collect_demos
from modaflow.modalities.robotics import data as D


def test_pusht_collect_round_trip_and_windows(tmp_path):
    demos = D.collect("pusht", 2, seed=100_000, noise=0.05, max_steps=15)
    assert demos.env == "pusht" and demos.n_episodes == 2
    assert demos.obs.shape == (30, 6) and demos.actions.shape == (30, 2)
    assert list(demos.episode_ends) == [15, 30] and list(demos.seeds) == [100_000, 100_001]
    assert np.abs(demos.actions).max() <= 1.0
    # (cos, sin) of the block angle lie on the unit circle; positions inside the 512 px workspace
    assert np.allclose(np.hypot(demos.obs[:, 4], demos.obs[:, 5]), 1.0, atol=1e-5)
    assert (demos.obs[:, :4] >= 0).all() and (demos.obs[:, :4] <= 1).all()
    back = D.load_demos(D.save_demos(tmp_path / "p.npz", demos), env="pusht")
    for k in ("obs", "actions", "episode_ends", "success", "seeds"):
        assert np.array_equal(getattr(back, k), getattr(demos, k))
    w = D.make_windows(back, 2, 8)
    assert len(w) == 30 and w[0].shape == (8, 2) and w.cond.shape == (30, 12)
    with pytest.raises(D.DemoFormatError, match="demonstrations of 'pusht', expected 'fetch-push'"):
        D.load_demos(tmp_path / "p.npz", env="fetch-push")
    # same seed and noise seed -> the same demonstrations (paired, reproducible)
    again = D.collect("pusht", 1, seed=100_000, noise=0.05, max_steps=15)
    assert np.array_equal(again.actions, demos.actions[:15])


def test_pusht_collect_command_writes_a_loadable_file(tmp_path):
    out = collect_demos(CollectOptions(env="pusht", n_episodes=1, noise=0.05), tmp_path)
    demos = D.load_demos(out["path"], env="pusht")
    assert out["episodes"] == 1 and out["steps"] == demos.obs.shape[0] <= 300
    assert 0.0 <= out["expert_success"] <= 1.0
    info = MODALITY.datasets["pusht"]
    assert info.card == "robotics-pusht"


def test_only_success_with_no_success_is_a_clear_error():
    # 5-step PushT episodes never reach 0.95 coverage: all 8 tries fail
    with pytest.raises(ValueError, match="none of the 8 expert episodes from seed 100000 succeeded.*--no-only-success"):
        D.collect("pusht", 1, seed=100_000, max_steps=5, only_success=True)


def test_pusht_expert_actions_are_valid_and_it_solves_a_fixed_seed():
    """The planner's actions are finite float32 pairs in [-1, 1]; on a fixed (tuning) seed it
    lifts coverage from its start to success; every push lands where the lookahead in the
    scratch simulator said it would (the real environment is only driven by actions)."""
    from modaflow.modalities.robotics.envs import make_env
    from modaflow.modalities.robotics.experts import make_expert
    from modaflow.modalities.robotics.pusht_planner import keypoint_cost

    env = make_env("pusht")
    expert = make_expert(env, 0.0, 0)
    o, done = env.reset(100_002), False
    cov0 = env.env.unwrapped._get_coverage()
    costs = []
    while not done:
        if not expert.queue:
            costs.append(keypoint_cost(expert._state(o)[2:5]))
        a = expert.act(o)
        assert a.shape == (2,) and a.dtype == np.float32 and np.isfinite(a).all() and np.abs(a).max() <= 1.0
        o, done, info = env.step(a)
    env.close()
    assert info["success"] and info["coverage"] > 0.95 > cov0 + 0.5 and env.t < 300
    pushes = [d for d in expert.decisions if "predicted" in d]
    assert len(pushes) >= 2 and pushes[-1]["fine"] and not pushes[0]["fine"]  # coarse, then fine alignment
    for d, after in zip(expert.decisions, costs[1:]):
        assert abs(d["predicted"] - after) < 0.5, (d, after)  # lookahead matches the real physics


def test_clean_labels_record_the_expert_action_before_the_noise():
    """DART labels: the same noisy rollout (same observations), but the recorded actions are
    the expert's own, so they differ from the executed ones by the noise."""
    noisy = D.collect("pusht", 1, seed=100_000, noise=0.05, max_steps=10)
    clean = D.collect("pusht", 1, seed=100_000, noise=0.05, max_steps=10, clean_labels=True)
    assert np.array_equal(noisy.obs, clean.obs)
    diff = noisy.actions - clean.actions
    assert np.abs(clean.actions).max() <= 1.0 and 0.01 < diff.std() < 0.1  # N(0, 0.05^2), clipped
