"""ephys metrics against slow, obvious implementations on random data (to 1e-6) and known
cases: the null model scores 0 bits per spike, true rates beat the null, perfect
predictions score R² = 1; the baselines' GLM against scikit-learn."""

import math

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import r2_score

from modaflow.modalities.ephys import metrics as M
from modaflow.modalities.ephys.baselines import gaussian_smooth, poisson_glm
from modaflow.modalities.ephys.lorenz import LorenzConfig, make_lorenz


def _slow_nll(rates, spikes) -> float:
    total = 0.0
    for r, n in zip(rates.ravel(), spikes.ravel()):
        if math.isnan(n):
            continue
        r = 1e-9 if r == 0 else r
        total += r - n * math.log(r) + math.lgamma(n + 1)
    return total


def _slow_bps(rates, spikes) -> float:
    n, t, c = spikes.shape
    null = np.empty_like(spikes)
    for j in range(c):
        vals = [spikes[a, b, j] for a in range(n) for b in range(t) if not math.isnan(spikes[a, b, j])]
        null[:, :, j] = sum(vals) / len(vals)
    total = sum(v for v in spikes.ravel() if not math.isnan(v))
    return (_slow_nll(null, spikes) - _slow_nll(rates, spikes)) / total / math.log(2)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_nll_and_bits_per_spike_match_slow_loops(rng) -> None:
    rates = rng.gamma(2.0, 0.3, size=(7, 11, 5))
    spikes = rng.poisson(rates).astype(float)
    spikes[0, 3, 2] = np.nan  # nlb_tools masks NaN spikes
    rates[1, 2, 0] = 0.0  # and replaces zero rates by 1e-9
    assert M.neg_log_likelihood(rates, spikes) == pytest.approx(_slow_nll(rates, spikes), rel=1e-9, abs=1e-6)
    assert M.bits_per_spike(rates, spikes) == pytest.approx(_slow_bps(rates, spikes), abs=1e-6)
    hi, to = 3, 8
    assert M.co_bps(rates, spikes, hi, to) == pytest.approx(_slow_bps(rates[:, :to, hi:], spikes[:, :to, hi:]), abs=1e-6)
    assert M.fp_bps(rates, spikes, to) == pytest.approx(_slow_bps(rates[:, to:], spikes[:, to:]), abs=1e-6)


def test_null_scores_zero_and_true_rates_beat_it() -> None:
    d = make_lorenz(LorenzConfig(n_conditions=10, trials_per_condition=5), seed=0)
    x = d.x.numpy().astype(float)
    null = np.broadcast_to(x.mean((0, 1), keepdims=True), x.shape)
    assert M.bits_per_spike(null, x) == 0.0
    assert M.co_bps(d.rates, d.x, d.n_heldin, d.t_obs) > 0.2
    assert M.fp_bps(d.rates, d.x, d.t_obs) > 0.2


def test_bad_rates_are_errors(rng) -> None:
    spikes = rng.poisson(1.0, size=(2, 3, 2)).astype(float)
    with pytest.raises(ValueError, match="negative rate"):
        M.neg_log_likelihood(-np.ones_like(spikes), spikes)
    with pytest.raises(ValueError, match="NaN rate"):
        M.neg_log_likelihood(np.full_like(spikes, np.nan), spikes)
    with pytest.raises(ValueError, match="one shape"):
        M.neg_log_likelihood(np.ones((2, 3, 1)), spikes)


def test_r2_matches_sklearn_and_a_loop(rng) -> None:
    y, p = rng.normal(size=(40, 4)), rng.normal(size=(40, 4))
    p[:, 0] = y[:, 0]  # a perfect column
    assert M.r2_uniform(y, p) == pytest.approx(r2_score(y, p), abs=1e-12)
    const = np.ones((5, 2))
    assert M.r2_uniform(const, const) == r2_score(const, const) == 1.0
    assert M.r2_uniform(const, const + 1) == r2_score(const, const + 1) == 0.0


def test_rate_r2_takes_the_true_rates_first(rng) -> None:
    true, pred = rng.gamma(2, 0.2, size=(6, 9, 3)), rng.gamma(2, 0.2, size=(6, 9, 3))
    scores = []
    for c in range(3):
        t, q = true[..., c].ravel(), pred[..., c].ravel()
        scores.append(1 - sum((a - b) ** 2 for a, b in zip(t, q)) / sum((a - t.mean()) ** 2 for a in t))
    assert M.rate_r2(true, pred) == pytest.approx(sum(scores) / 3, abs=1e-9)
    assert M.rate_r2(true, pred) != pytest.approx(M.rate_r2(pred, true), abs=1e-3)  # the order matters
    assert M.rate_r2(true, true) == 1.0


def test_psth_r2_is_nlb_eval_psth(rng) -> None:
    rates = rng.gamma(2, 0.2, size=(8, 5, 3))
    cond = np.array([0, 1, 0, 1, 2, 2, 0, 1])
    psth = M.condition_psth(rates, cond)
    np.testing.assert_allclose(psth[0], rates[[0, 2, 6]].mean(0))
    flat = psth.reshape(-1, 3).copy()
    flat[:5] = np.nan  # rows outside the required times are dropped
    expected = r2_score(flat[5:], rates.reshape(-1, 3)[5:])
    assert M.psth_r2(flat, rates) == pytest.approx(expected, abs=1e-12)


def _slow_velocity_r2(tr, tb, er, eb) -> float:
    """Ridge with intercept, alpha by 5-fold contiguous CV (mean R² over folds, first best
    alpha on ties), refit on all training rows, R² (uniform) on eval rows."""

    def fit(x, y, alpha):
        xm, ym = x.mean(0), y.mean(0)
        w = np.linalg.solve((x - xm).T @ (x - xm) + alpha * np.eye(x.shape[1]), (x - xm).T @ (y - ym))
        return lambda z: (z - xm) @ w + ym

    n = tr.shape[0]
    sizes = np.full(5, n // 5)
    sizes[: n % 5] += 1
    bounds = np.r_[0, np.cumsum(sizes)]
    best, best_score = None, -np.inf
    for alpha in np.logspace(-4, 0, 9):
        fold_scores = []
        for k in range(5):
            test = np.arange(bounds[k], bounds[k + 1])
            train = np.setdiff1d(np.arange(n), test)
            f = fit(tr[train], tb[train], alpha)
            fold_scores.append(r2_score(tb[test], f(tr[test])))
        if np.mean(fold_scores) > best_score + 1e-15:
            best, best_score = alpha, np.mean(fold_scores)
    return r2_score(eb, fit(tr, tb, best)(er))


def test_velocity_r2_matches_a_slow_ridge_cv_with_lag(rng) -> None:
    n, t, c, lag = 12, 10, 6, 2
    tr, er = rng.gamma(2, 0.3, size=(n, t, c)), rng.gamma(2, 0.3, size=(4, t, c))
    w = rng.normal(size=(c, 2))
    tb = np.zeros((n, t, 2))
    eb = np.zeros((4, t, 2))
    tb[:, lag:] = tr[:, :-lag] @ w + 0.3 * rng.normal(size=(n, t - lag, 2))
    eb[:, lag:] = er[:, :-lag] @ w + 0.3 * rng.normal(size=(4, t - lag, 2))
    tb[0, 5] = np.nan  # NaN behaviour rows are dropped
    fast = M.velocity_r2(tr, tb, er, eb, lag=lag)
    tr2, tb2 = tr[:, :-lag].reshape(-1, c), tb[:, lag:].reshape(-1, 2)
    keep = ~np.isnan(tb2[:, 0])
    slow = _slow_velocity_r2(tr2[keep], tb2[keep], er[:, :-lag].reshape(-1, c), eb[:, lag:].reshape(-1, 2))
    assert fast == pytest.approx(slow, abs=1e-6)
    assert fast > 0.5


def test_gaussian_nll_and_forecast_mse(rng) -> None:
    x, mu, lv = rng.normal(size=(3, 8, 2)), rng.normal(size=(3, 8, 2)), rng.normal(size=(3, 8, 2))
    expected = -scipy.stats.norm.logpdf(x, mu, np.exp(0.5 * lv)).mean()
    assert M.gaussian_nll(x, mu, lv) == pytest.approx(expected, abs=1e-9)
    assert M.forecast_mse(x, mu, 5) == pytest.approx(((x[:, 5:] - mu[:, 5:]) ** 2).mean(), abs=1e-12)
    assert M.forecast_mse(x, x, 5) == 0.0


def test_poisson_glm_matches_sklearn(rng) -> None:
    from sklearn.linear_model import PoissonRegressor

    x = rng.normal(size=(600, 4))
    y = rng.poisson(np.exp(x @ rng.normal(size=(4, 2)) * 0.3 - 0.5))
    w, b = poisson_glm(x, y, alpha=0.01)
    for j in range(2):
        ref = PoissonRegressor(alpha=0.01, tol=1e-10, max_iter=1000).fit(x, y[:, j])
        np.testing.assert_allclose(w[:, j], ref.coef_, atol=1e-5)
        assert b[j] == pytest.approx(ref.intercept_, abs=1e-5)


def test_gaussian_smoothing_matches_a_loop_and_keeps_constants(rng) -> None:
    x = rng.poisson(1.0, size=(2, 15, 3)).astype(float)
    sd = 1.5
    half = math.ceil(3 * sd)
    slow = np.zeros_like(x)
    for s in range(15):
        ws = [(j, math.exp(-0.5 * (j / sd) ** 2)) for j in range(-half, half + 1) if 0 <= s + j < 15]
        slow[:, s] = sum(w * x[:, s + j] for j, w in ws) / sum(w for _, w in ws)
    np.testing.assert_allclose(gaussian_smooth(x, sd), slow, atol=1e-12)
    np.testing.assert_allclose(gaussian_smooth(np.full((1, 9, 2), 3.0), 2.0), 3.0)
