"""Robotics: environments, experts, NPZ demonstrations and their checks, policies'
interface and hookable layers, paired rollouts with hidden-state capture, statistics with
known values, the study's conceptor, and the CLI entry points on a tiny run."""

import json
import math

import numpy as np
import pytest
import torch

from modaflow.core.conceptors import AND, NOT, LayerNotFoundError, conceptor_from_correlation, gate_layer
from modaflow.core.config import ConfigError
from modaflow.core.training import TrainerArgs
from modaflow.modalities.robotics import data as D
from modaflow.modalities.robotics.envs import UnknownEnvError, make_env
from modaflow.modalities.robotics.metrics import mcnemar_exact, paired_bootstrap, pusht_score, wilson_interval
from modaflow.modalities.robotics.policies import UnknownPolicyError, build_policy
from modaflow.modalities.robotics.recipe import RoboticsConfig
from modaflow.modalities.robotics.rollout import RolloutConfig, rollout
from modaflow.modalities.robotics.study import random_rotation_like, steering_conceptor


# --- metrics with known values -------------------------------------------------------------

def test_wilson_known_values():
    lo, hi = wilson_interval(5, 10)  # textbook: 0.2366, 0.7634
    assert lo == pytest.approx(0.23659, abs=1e-4) and hi == pytest.approx(0.76341, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.16113, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_mcnemar_exact_against_binomial_tail():
    base = [True] * 3 + [False] * 10 + [True] * 7 + [False] * 5
    steer = [False] * 3 + [True] * 10 + [True] * 7 + [False] * 5  # b = 10, c = 3
    r = mcnemar_exact(base, steer)
    assert (r["b"], r["c"]) == (10, 3)
    expected = 2 * sum(math.comb(13, i) for i in range(4)) / 2**13  # = 0.09229
    assert r["p_value"] == pytest.approx(expected, rel=1e-12) and r["p_value"] == pytest.approx(0.0923, abs=1e-4)
    assert mcnemar_exact(base, base)["p_value"] == 1.0


def test_paired_bootstrap_and_pusht_score():
    d, lo, hi = paired_bootstrap([0, 0, 1, 1], [1, 1, 1, 1], seed=0)
    assert d == 0.5 and 0 <= lo <= 0.5 <= hi <= 1
    d, lo, hi = paired_bootstrap([1, 0, 1], [1, 0, 1])
    assert (d, lo, hi) == (0.0, 0.0, 0.0)
    assert pusht_score([0.95, 0.475, 1.0]) == pytest.approx((1 + 0.5 + 1) / 3)


# --- environments, experts, demonstrations -------------------------------------------------

def test_unknown_env_and_policy_names():
    with pytest.raises(UnknownEnvError, match="unknown environment 'fetch-slide'.*pusht"):
        make_env("fetch-slide")
    with pytest.raises(UnknownPolicyError, match="unknown policy 'gpt'.*flow"):
        build_policy("gpt", 6, 2, 2, 8, 32, 1)
    with pytest.raises(ConfigError, match="env"):
        RoboticsConfig.from_dict({"env": "cartpole"})


def test_same_seed_same_initial_state_pusht_and_fetch():
    for name in ("pusht", "fetch-push"):
        e = make_env(name)
        a, b, c = e.reset(3), e.reset(3), e.reset(4)
        assert np.array_equal(a, b) and not np.array_equal(a, c)
        assert a.shape == (e.obs_dim,) and a.dtype == np.float32
        o, done, info = e.step(np.zeros(e.act_dim))
        assert o.shape == (e.obs_dim,) and "success" in info
        with pytest.raises(ValueError, match="action must have"):
            e.step(np.zeros(e.act_dim + 1))


@pytest.fixture(scope="module")
def demos():
    return D.collect("fetch-pick", 3, seed=100_000)


def test_expert_solves_fetch_pick_and_npz_round_trip(demos, tmp_path):
    assert demos.success.all() and demos.obs.shape == (150, 28) and demos.actions.shape == (150, 4)
    path = D.save_demos(tmp_path / "d.npz", demos)
    back = D.load_demos(path, env="fetch-pick")
    for k in ("obs", "actions", "episode_ends", "success", "seeds"):
        assert np.array_equal(getattr(back, k), getattr(demos, k))
    w = D.make_windows(back, 2, 8)
    assert len(w) == 150 and w[0].shape == (8, 4) and w.cond.shape == (150, 56)
    # window of step 0: history = first obs twice; chunk of the last step = last action repeated
    assert torch.equal(w.cond[0], torch.from_numpy(np.concatenate([demos.obs[0]] * 2)))
    assert torch.equal(w.x1[49], torch.from_numpy(np.stack([demos.actions[49]] * 8)))


def test_only_success_keeps_the_successful_episodes_of_a_file(tmp_path):
    from modaflow.modalities.robotics.recipe import RoboticsConfig, demos_for

    lengths, success = [3, 2, 4], np.array([True, False, True])
    n = sum(lengths)
    obs = np.arange(n * 28, dtype=np.float32).reshape(n, 28)
    actions = np.linspace(-1, 1, n * 4, dtype=np.float32).reshape(n, 4)
    mixed = D.Demos("fetch-pick", obs, actions, np.cumsum(lengths), success, np.array([7, 8, 9]))
    path = str(D.save_demos(tmp_path / "mixed.npz", mixed))
    kept = demos_for(RoboticsConfig(env="fetch-pick", data=path))
    # episodes 0 (rows 0-2) and 2 (rows 5-8) remain, re-indexed; the failed one (rows 3-4) is gone
    assert kept.episode_ends.tolist() == [3, 7] and kept.seeds.tolist() == [7, 9] and kept.success.all()
    assert np.array_equal(kept.obs, obs[[0, 1, 2, 5, 6, 7, 8]]) and np.array_equal(kept.actions, actions[[0, 1, 2, 5, 6, 7, 8]])
    assert demos_for(RoboticsConfig(env="fetch-pick", data=path, only_success=False)).n_episodes == 3
    failed = D.save_demos(tmp_path / "failed.npz", D.Demos("fetch-pick", obs, actions, np.cumsum(lengths),
                                                             np.zeros(3, bool), np.array([7, 8, 9])))
    with pytest.raises(ValueError, match=r"failed\.npz: none of the 3 episodes succeeded.*--no-only-success"):
        demos_for(RoboticsConfig(env="fetch-pick", data=str(failed)))


def _write(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


@pytest.mark.parametrize("change,message", [
    ({"obs": np.zeros((150, 27), np.float32)}, r"obs has shape \(150, 27\); fetch-pick needs \(N, 28\)"),
    ({"actions": np.zeros((150, 2), np.float32)}, r"actions has shape \(150, 2\); fetch-pick needs \(N, 4\)"),
    ({"actions": np.full((150, 4), 2.0, np.float32)}, r"actions must lie in \[-1, 1\]"),
    ({"episode_ends": np.array([50, 100, 140])}, "episode_ends"),
    ({"env": np.array("fetch-slide")}, "unknown environment"),
    ({"success": np.array([True])}, "success has shape"),
])
def test_bad_demonstration_files(demos, tmp_path, change, message):
    arrays = dict(obs=demos.obs, actions=demos.actions, episode_ends=demos.episode_ends, success=demos.success,
                  seeds=demos.seeds, env=np.array(demos.env))
    arrays.update(change)
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(D.DemoFormatError, match=f"bad.npz: {message}"):
        D.load_demos(path)


def test_missing_corrupt_and_wrong_env_files(demos, tmp_path):
    with pytest.raises(D.DemoFormatError, match="not found"):
        D.load_demos(tmp_path / "none.npz")
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(D.DemoFormatError, match="not a readable"):
        D.load_demos(tmp_path / "x.npz")
    p = D.save_demos(tmp_path / "d.npz", demos)
    with pytest.raises(D.DemoFormatError, match="demonstrations of 'fetch-pick', expected 'fetch-push'"):
        D.load_demos(p, env="fetch-push")
    arrays = dict(obs=demos.obs, actions=demos.actions)
    with pytest.raises(D.DemoFormatError, match="missing array"):
        D.load_demos(_write(tmp_path / "m.npz", **arrays))


# --- policies, hooks, rollouts -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["flow", "diffusion", "ar"])
def test_policy_interface_and_beta_zero_hook(kind):
    torch.manual_seed(0)
    p = build_policy(kind, 28, 4, 2, 8, 32, 1).eval()
    cond = torch.randn(3, 56)
    a = p.act(cond, 4, torch.Generator().manual_seed(0))
    assert a.shape == (3, 8, 4) and bool((a.abs() <= 1).all())
    for layer in p.hook_layers:
        C = conceptor_from_correlation(torch.eye(p.get_submodule(layer).out_features if hasattr(p.get_submodule(layer), "out_features") else 32), 1.0)
        with gate_layer(p, layer, C, 0.0):
            b = p.act(cond, 4, torch.Generator().manual_seed(0))
        assert torch.equal(a, b)
    with pytest.raises(LayerNotFoundError, match="'blocks.9' not found"):
        with gate_layer(p, "blocks.9", torch.eye(32), 0.5):
            pass
    with pytest.raises(ValueError, match="cond must be"):
        p.act(torch.randn(3, 10), 4)


def test_rollout_paired_and_captures_every_step():
    torch.manual_seed(0)
    p = build_policy("flow", 28, 4, 2, 8, 32, 1).eval()
    cfg = RolloutConfig("fetch-push", steps=3, execute=4, episode_steps=8)
    r1 = rollout(p, cfg, [0, 1, 2], capture=("blocks.0",))
    r2 = rollout(p, cfg, [0, 1, 2])
    assert np.array_equal(r1.success, r2.success) and r1.lengths.tolist() == [8, 8, 8]
    n, s1, s2 = r1.stats["blocks.0"]
    # 2 policy calls per episode x (T_o + 1 + H = 11 tokens) per denoising step, 3 steps
    assert n.shape == (3, 3) and bool((n == 22).all()) and s2.shape == (3, 3, 32, 32)
    # a success/failure split gives a valid steering conceptor; a random rotation keeps its spectrum
    C = steering_conceptor(r1.stats["blocks.0"], np.array([True, False, True]), 1.0, "global", False)
    lam = torch.linalg.eigvalsh(C)
    assert bool((lam > -1e-9).all()) and bool((lam < 1).all())
    Cr = random_rotation_like(C, torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.linalg.eigvalsh(Cr), lam, atol=1e-10, rtol=0)
    Rs = s2[[0, 2]].sum((0, 1)) / n[[0, 2]].sum()
    Rf = s2[1].sum(0) / n[1].sum()
    expected = AND(conceptor_from_correlation(Rs, 1.0), NOT(conceptor_from_correlation(Rf, 1.0)))
    torch.testing.assert_close(C, expected, atol=1e-10, rtol=0)
    assert steering_conceptor(r1.stats["blocks.0"], np.array([True, False, True]), 1.0, "per_step", False).shape == (3, 32, 32)


# --- CLI entry points on a tiny run ---------------------------------------------------------

def test_train_evaluate_sample_finetune_steer(tmp_path, demos):
    from modaflow.modalities.robotics import MODALITY
    from modaflow.modalities.robotics.commands import SteerOptions

    path = D.save_demos(tmp_path / "d.npz", demos)
    cfg = RoboticsConfig(data=str(path), env="fetch-pick", policy="flow", width=16, depth=1, steps=2, episode_steps=8)
    cfg = cfg.replace(fm=cfg.fm.replace(max_steps=3, batch_size=32, warmup_steps=0, log_every=1))
    out = tmp_path / "run"
    s = MODALITY.train(cfg, TrainerArgs(accelerator="cpu"), out, progress=False)
    assert s["steps"] == 3 and math.isfinite(s["final_loss"])
    m = MODALITY.evaluate(out, None, 2, None, None, 0)
    assert m["success_n"] == 2 and 0 <= m["success_low"] <= m["success_rate"] <= m["success_high"] <= 1
    with pytest.raises(ConfigError, match="--data must be the run's environment"):
        MODALITY.evaluate(out, "pusht", 2, None, None, 0)
    f = MODALITY.sample(out, 1, None, None, tmp_path / "s.npz", 0)
    z = np.load(f)
    assert z["frames"].ndim == 4 and z["frames"].dtype == np.uint8 and z["success"].shape == (1,)
    with pytest.raises(ConfigError, match="cannot change width"):
        MODALITY.finetune(out, str(path), tmp_path / "ft", {"width": 32}, TrainerArgs(accelerator="cpu"))
    ft = MODALITY.finetune(out, str(path), tmp_path / "ft", {"fm": {"max_steps": 2}}, TrainerArgs(accelerator="cpu"), progress=False)
    assert ft["steps"] == 2
    from modaflow.benchmarks.cli import main

    argv = ["steer", "robotics", "--ckpt", str(out), "--out", str(tmp_path / "steer"), "--n-fit", "2", "--n-test", "2",
            "--test-seed", "10", "--apertures", "1.0", "--betas", "0.5", "--modes", "global", "--mean-diff-scales", "1.0"]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "steer" / "steer.json").read_text())
    assert saved["test"]["base"]["n"] == 2 and saved["fit_base"]["n"] == 2
    with pytest.raises(ConfigError, match="ckpt"):
        MODALITY.commands["steer"].run(SteerOptions(), None)
    assert main(["collect", "robotics", "--env", "fetch-pick", "--n-episodes", "1", "--out", str(tmp_path / "c")]) == 0
    assert D.load_demos(tmp_path / "c" / "fetch-pick.npz").n_episodes == 1


def test_study_config_rejects_overlapping_seeds_and_bad_grids():
    from modaflow.modalities.robotics.study import StudyConfig

    with pytest.raises(ConfigError, match="test_seed"):
        StudyConfig(n_fit=30, test_seed=10)
    with pytest.raises(ConfigError, match="betas"):
        StudyConfig(betas=(0.0,))
    with pytest.raises(ConfigError, match="modes"):
        StudyConfig(modes=("sometimes",))


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_diffusion_and_ar_train_through_core_fit_and_restore(kind, demos, tmp_path):
    from modaflow.modalities.robotics.recipe import restore, train_policy

    cfg = RoboticsConfig(env="fetch-pick", policy=kind, width=16, depth=1, steps=2, diffusion_steps=10)
    cfg = cfg.replace(fm=cfg.fm.replace(max_steps=2, batch_size=32, warmup_steps=0, log_every=1))
    s = train_policy(cfg, demos, TrainerArgs(accelerator="cpu"), tmp_path / kind, progress=False)
    assert s["steps"] == 2 and math.isfinite(s["final_loss"])
    if kind == "ar":  # cross-entropy of 32 bins starts near log(32)
        assert s["history"][0][1] == pytest.approx(math.log(32), abs=0.7)
    cfg2, pol = restore(tmp_path / kind)
    cond = D.make_windows(demos, 2, 8).cond.reshape(-1, 28)  # the normaliser saved with the weights
    assert cfg2 == cfg and torch.equal(pol.obs_mean, cond.mean(0))
    cond = torch.from_numpy(np.concatenate([demos.obs[0]] * 2))[None]
    assert pol.act(cond, 2).shape == (1, 8, 4)
    if kind == "diffusion":  # DDPM-like noise (eta = 1) changes the chunk; eta = 0 is deterministic DDIM
        a0 = pol.act(cond, 2, torch.Generator().manual_seed(0))
        pol.eta = 1.0
        a1 = pol.act(cond, 2, torch.Generator().manual_seed(0))
        assert a1.shape == a0.shape and not torch.equal(a0, a1)


def test_pusht_planner_brings_the_block_towards_the_goal():
    from modaflow.modalities.robotics.experts import make_expert

    env = make_env("pusht", max_steps=60)
    expert = make_expert(env, 0.0, 0)
    o = env.reset(1)
    start = expert._pose_cost(expert._state(o))  # keypoint distance to the goal pose in px
    done = False
    while not done:
        o, done, info = env.step(expert.act(o))
    assert expert._pose_cost(expert._state(o)) < 0.9 * start and 0 <= info["coverage"] <= 1


def test_a_rendered_rollout_exits_without_teardown_errors():
    """Frames come from MuJoCo's EGL renderer; at exit the pooled environments must close
    before MuJoCo tears EGL down (else every run ended in 'Exception ignored' tracebacks)."""
    import subprocess
    import sys

    code = ("import torch; from modaflow.modalities.robotics.policies import build_policy; "
            "from modaflow.modalities.robotics.rollout import RolloutConfig, rollout; "
            "p = build_policy('flow', 28, 4, 2, 8, 32, 1).eval(); "
            "r = rollout(p, RolloutConfig('fetch-push', steps=2, execute=4, episode_steps=4), [0], n_frames=2); "
            "print('frames', len(r.frames))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "frames 2" in run.stdout
    assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
