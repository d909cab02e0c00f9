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
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            run("gpu", tmp_path)
    with pytest.raises(ValueError, match="unknown profile"):
        run("huge", tmp_path)
