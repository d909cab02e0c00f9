"""Time samplers: range, law (Kolmogorov–Smirnov against the exact CDF) and the shift."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from modaflow.core.time_samplers import LogitNormalTime, ModeTime, UniformTime, shift_time

N = 50_000
# KS critical value at significance 1e-4 for n samples: sqrt(-ln(1e-4 / 2) / (2 n)).
KS_CRIT = math.sqrt(-math.log(1e-4 / 2) / (2 * N))


def _ks(samples: torch.Tensor, cdf) -> float:
    return stats.kstest(samples.double().numpy(), cdf).statistic


def test_uniform(gen) -> None:
    t = UniformTime()(N, generator=gen, dtype=torch.float64)
    assert t.shape == (N,) and t.min() >= 0 and t.max() < 1
    assert _ks(t, stats.uniform.cdf) < KS_CRIT


def test_logit_normal_law(gen) -> None:
    m, s = 0.5, 0.8
    t = LogitNormalTime(m, s)(N, generator=gen, dtype=torch.float64)
    # noise level 1 - t = sigmoid(u), u ~ N(m, s^2)  =>  P(t <= x) = P(u >= logit(1 - x)).
    cdf = lambda x: stats.norm.sf(np.log((1 - x) / x), m, s)  # noqa: E731
    assert _ks(t, cdf) < KS_CRIT
    assert t.mean() < 0.5  # m > 0 favours the source side, as in the paper


def test_mode_zero_scale_is_uniform(gen) -> None:
    t = ModeTime(scale=0.0)(N, generator=gen, dtype=torch.float64)
    assert _ks(t, stats.uniform.cdf) < KS_CRIT


def test_mode_scale_validated() -> None:
    with pytest.raises(ValueError, match="ModeTime.scale"):
        ModeTime(scale=3.0)
    with pytest.raises(ValueError, match="LogitNormalTime.s"):
        LogitNormalTime(s=0.0)


def test_shift_time() -> None:
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(shift_time(t, 1.0), t)
    shifted = shift_time(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert (shifted[1:] > shifted[:-1]).all() and (shifted[1:-1] < t[1:-1]).all()
    # Inverse: shift s then 1/s is the identity.
    torch.testing.assert_close(shift_time(shifted, 1 / 3.0), t)
    # SD3 eq. 23 at noise level 1/2 with shift 3: 1.5 / 2 = 0.75 -> t = 0.25.
    assert shift_time(torch.tensor(0.5), 3.0).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="shift must be > 0"):
        shift_time(t, 0.0)
