"""The robotics benchmark's verdict on the issue's goal and its profiles."""

import pytest
import torch

from modaflow.benchmarks.robotics import PROFILES, _verdict, run


def _paired(diff, low, high, p=0.01):
    return {"diff": diff, "diff_low": low, "diff_high": high, "b": 0, "c": 0, "p_value": p}


def test_verdict_needs_gain_interval_and_both_controls():
    st = {"paired": {"coast_vs_base": _paired(0.2, 0.05, 0.35), "coast_vs_shrink": _paired(0.1, -0.1, 0.2),
                     "coast_vs_random": _paired(0.05, -0.1, 0.2)}, "notes": []}
    assert "MET" in _verdict("k", st) and "NOT met" not in _verdict("k", st)
    st["paired"]["coast_vs_random"] = _paired(-0.02, -0.1, 0.1)  # not above the random control
    assert "NOT met" in _verdict("k", st)
    st["paired"]["coast_vs_random"] = _paired(0.05, -0.1, 0.2)
    st["paired"]["coast_vs_base"] = _paired(0.2, -0.01, 0.35)  # interval touches zero
    assert "NOT met" in _verdict("k", st)
    assert "steering not run" in _verdict("k", {"notes": ["all failures"]})


def test_profiles_keep_fit_and_test_seeds_apart_and_gpu_needs_cuda(tmp_path):
    for p in PROFILES.values():
        s = p.study
        assert s.test_seed >= s.fit_seed + s.n_fit and s.test_seed + s.n_test <= 100_000
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            run("gpu", tmp_path)
    with pytest.raises(ValueError, match="unknown profile"):
        run("huge", tmp_path)


def test_overall_verdict_needs_two_tasks_and_two_policy_types():
    from modaflow.benchmarks.robotics import _overall_verdict

    good = {"paired": {"coast_vs_base": _paired(0.2, 0.05, 0.35), "coast_vs_shrink": _paired(0.1, 0.0, 0.2),
                       "coast_vs_random": _paired(0.1, 0.0, 0.2)}, "notes": []}
    bad = {"paired": {**good["paired"], "coast_vs_base": _paired(0.05, -0.1, 0.2)}, "notes": []}
    cases = {("a", "flow"): {"study": good}, ("b", "flow"): {"study": good}, ("a", "ar"): {"study": bad}}
    n, text = _overall_verdict(cases)
    assert n == 2 and "NOT met" in text and "a/flow, b/flow" in text  # two tasks, one policy type
    cases[("a", "ar")] = {"study": good}
    n, text = _overall_verdict(cases)
    assert n == 3 and ": MET;" in text


def test_budget_stages_stop_at_moderate_success_and_fall_back_when_saturated(tmp_path, monkeypatch):
    """Stage 1 fails on every fit seed (train on), stage 2 succeeds on all (too easy): the stage-1
    policy is kept, from its copy; only fit seeds are rolled out."""
    from dataclasses import replace
    from types import SimpleNamespace

    import numpy as np

    import modaflow.benchmarks.robotics as B
    from modaflow.modalities.robotics.recipe import RoboticsConfig, demos_for, restore

    p = replace(PROFILES["smoke"], budget=(3, 6), moderate=(0.2, 0.7))
    rates, seen = iter([0.0, 1.0]), []

    def fake_rollout(policy, rcfg, seeds, **kw):
        seen.append(list(seeds))
        return SimpleNamespace(success=np.full(len(seeds), next(rates)))

    monkeypatch.setattr(B, "rollout", fake_rollout)
    cfg = RoboticsConfig(env="fetch-push", policy="flow", n_demos=p.n_demos, only_success=False, width=p.width,
                         depth=p.depth, episode_steps=p.episode_steps)
    cfg = cfg.replace(fm=cfg.fm.replace(max_steps=p.train_steps, seed=0))
    summary, chosen, trail = B._budgeted_training(p, cfg, demos_for(cfg), tmp_path / "case", "cpu")
    assert trail == [(3, 0.0), (6, 1.0)]
    assert chosen == tmp_path / "case_steps3" and summary["steps"] == 3
    assert restore(chosen)[0].fm.max_steps == 3 and restore(tmp_path / "case")[0].fm.max_steps == 6
    fit = list(range(p.study.fit_seed, p.study.fit_seed + p.study.n_fit))
    assert seen == [fit, fit]



def test_transfer_applies_one_task_conceptor_to_the_other_paired_with_its_base(monkeypatch):
    """Each case's COAST conceptor steers the other task's policy of the same kind, on that
    task's test seeds and with its study's test noise (noise seed = run seed + 1), so the
    difference is paired with its base outcomes; an identity gate reproduces them."""
    import numpy as np

    import modaflow.benchmarks.robotics as B
    from modaflow.modalities.robotics.recipe import RoboticsConfig, build
    from modaflow.modalities.robotics.rollout import RolloutConfig, rollout

    p = PROFILES["smoke"]
    seed, seeds = 3, list(range(p.study.test_seed, p.study.test_seed + p.study.n_test))
    cases = {}
    for env in ("fetch-push", "fetch-pick"):
        torch.manual_seed(0)
        pol = build(RoboticsConfig(env=env, policy="flow", width=p.width, depth=p.depth)).eval()
        rcfg = RolloutConfig(env, episode_steps=p.episode_steps)
        base = rollout(pol, RolloutConfig(env, episode_steps=p.episode_steps, noise_seed=seed + 1), seeds).success
        C = torch.eye(p.width, dtype=torch.float64) * 0.5
        cases[(env, "flow")] = {"policy": pol, "rcfg": rcfg,
                                "study": {"chosen": {"layer": "blocks.0", "beta": 0.3}, "conceptor": C,
                                          "test_outcomes": {"base": base}}}
    noise_seeds = []

    def spy(policy, rcfg, seeds, **kw):
        noise_seeds.append(rcfg.noise_seed)
        return rollout(policy, rcfg, seeds, **kw)

    monkeypatch.setattr(B, "rollout", spy)
    monkeypatch.setattr(B, "gate_matrix", lambda C, beta: torch.eye(C.shape[0], dtype=C.dtype))  # no steering
    rows, notes = B._transfer(cases, p, seed)
    assert sorted(rows) == ["transfer.fetch-pick->fetch-push.flow", "transfer.fetch-push->fetch-pick.flow"]
    assert noise_seeds == [seed + 1, seed + 1] and len(notes) == 2
    for row in rows.values():
        assert row["diff"] == 0.0 and row["b"] == row["c"] == 0 and np.isfinite(row["rate"])
