"""Neural Latents Benchmark metrics exactly as ``nlb_tools.evaluation`` defines them
(Pei et al. 2021, arXiv 2109.04463, sec. 4), plus rate R² against true rates and the
EEG/MEG metrics.

Rates are **expected counts per bin** (not Hz). Arrays are ``(N, T, C)`` (trials, bins,
channels) unless stated.

* ``neg_log_likelihood(r, n) = sum(r - n log r + lgamma(n + 1))`` over entries whose spike
  count is not NaN; zero rates are replaced by 1e-9; negative or NaN rates are errors.
* ``bits_per_spike(r, n) = (NLL(null, n) - NLL(r, n)) / nansum(n) / ln 2`` with the null
  rate of each channel its mean count over trials and bins (``nanmean`` over axes 0, 1).
  co-bps: held-out channels, observed bins; fp-bps: all channels, forward bins.
* ``velocity_r2``: ridge regression (scikit-learn ``Ridge``, alpha chosen by 5-fold
  ``GridSearchCV`` over ``logspace(-4, 0, 9)``) from rates to behaviour ``lag`` bins later,
  fitted on train trials and scored (R², uniform average over outputs) on eval trials;
  bins whose behaviour is NaN are dropped.
* ``psth_r2(psth, rates)``: ``r2_score(psth, rates)`` over ``(N T, C)``, averaged over
  channels; rows whose PSTH is NaN are dropped.
* ``rate_r2(true, pred)``: ``r2_score(y_true=true, y_pred=pred)`` over ``(N T, C)``,
  uniform average over channels: the **true rates are the first argument** (the
  reference), so the score is ``1 - SS_res / SS_tot(true)``.
* EEG/MEG: ``r2`` of held-out channels, Gaussian NLL per element
  ``1/2 (log 2 pi + log var + (x - mu)^2 / var)``, forecast MSE on standardised signals.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln

__all__ = [
    "neg_log_likelihood",
    "bits_per_spike",
    "co_bps",
    "fp_bps",
    "velocity_r2",
    "psth_r2",
    "condition_psth",
    "rate_r2",
    "r2_uniform",
    "gaussian_nll",
    "forecast_mse",
    "VEL_ALPHAS",
]

VEL_ALPHAS = np.logspace(-4, 0, 9)
"""The ridge alpha grid of nlb_tools' velocity decoder."""


def _f64(a) -> np.ndarray:
    return np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a, dtype=np.float64)


def neg_log_likelihood(rates, spikes) -> float:
    """Poisson NLL summed over non-NaN entries (nlb_tools ``neg_log_likelihood``)."""
    rates, spikes = _f64(rates), _f64(spikes)
    if rates.shape != spikes.shape:
        raise ValueError(f"rates {rates.shape} and spikes {spikes.shape} must have one shape")
    keep = ~np.isnan(spikes)
    rates, spikes = rates[keep], spikes[keep]
    if np.isnan(rates).any():
        raise ValueError("NaN rate predictions found")
    if (rates < 0).any():
        raise ValueError("negative rate predictions found")
    rates = np.where(rates == 0, 1e-9, rates)
    return float(np.sum(rates - spikes * np.log(rates) + gammaln(spikes + 1.0)))


def bits_per_spike(rates, spikes) -> float:
    """Bits per spike of ``rates`` against the per-channel mean-count null (nlb_tools)."""
    rates, spikes = _f64(rates), _f64(spikes)
    if spikes.ndim != 3:
        raise ValueError(f"spikes must be (N, T, C); got shape {spikes.shape}")
    null = np.broadcast_to(np.nanmean(spikes, axis=(0, 1), keepdims=True), spikes.shape)
    total = np.nansum(spikes)
    if total == 0:
        raise ValueError("bits per spike is undefined without spikes")
    return (neg_log_likelihood(null, spikes) - neg_log_likelihood(rates, spikes)) / total / math.log(2)


def co_bps(rates, spikes, n_heldin: int, t_obs: int) -> float:
    """co-bps: held-out channels over the observed bins of ``(N, T, C)`` arrays."""
    return bits_per_spike(_f64(rates)[:, :t_obs, n_heldin:], _f64(spikes)[:, :t_obs, n_heldin:])


def fp_bps(rates, spikes, t_obs: int) -> float:
    """fp-bps: every channel over the forward bins ``[t_obs:]`` (NaN without any)."""
    rates, spikes = _f64(rates), _f64(spikes)
    if spikes.shape[1] <= t_obs:
        return float("nan")
    return bits_per_spike(rates[:, t_obs:], spikes[:, t_obs:])


def r2_uniform(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """``sklearn.metrics.r2_score(y_true, y_pred)`` for 2-D arrays: per-column
    ``1 - SS_res / SS_tot``, uniform average; a constant column scores 1 if predicted
    exactly, else 0 (scikit-learn's convention)."""
    y_true, y_pred = _f64(y_true), _f64(y_pred)
    ss_res = ((y_true - y_pred) ** 2).sum(0)
    ss_tot = ((y_true - y_true.mean(0)) ** 2).sum(0)
    ok = ss_tot != 0
    scores = np.where(ok, 1.0 - ss_res / np.where(ok, ss_tot, 1.0), np.where(ss_res == 0, 1.0, 0.0))
    return float(scores.mean())


def rate_r2(true_rates, pred_rates) -> float:
    """R² of predicted rates against the **true** rates (first argument), uniform average
    over channels, over all trials and bins."""
    t, p = _f64(true_rates), _f64(pred_rates)
    if t.shape != p.shape:
        raise ValueError(f"true {t.shape} and predicted {p.shape} rates must have one shape")
    return r2_uniform(t.reshape(-1, t.shape[-1]), p.reshape(-1, p.shape[-1]))


def condition_psth(x, condition) -> np.ndarray:
    """Condition averages of ``x`` ``(N, T, C)`` tiled back to every trial: ``(N, T, C)``."""
    x, cond = _f64(x), np.asarray(condition)
    out = np.empty_like(x)
    for c in np.unique(cond):
        out[cond == c] = x[cond == c].mean(0)
    return out


def psth_r2(psth, rates) -> float:
    """nlb_tools ``eval_psth``: R² of ``rates`` ``(N, T, C)`` to ``psth`` (same shape, or
    flattened ``(N T, C)``) over rows whose PSTH is not NaN."""
    rates = _f64(rates)
    psth = _f64(psth).reshape(-1, rates.shape[-1])
    rates = rates.reshape(-1, rates.shape[-1])
    keep = ~np.isnan(psth[:, 0])
    return r2_uniform(psth[keep], rates[keep])


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1]) if a.ndim > 2 else a


def velocity_r2(train_rates, train_behavior, eval_rates, eval_behavior, lag: int = 0) -> float:
    """nlb_tools ``fit_and_eval_decoder`` with behaviour ``lag`` bins after the rates:
    ``rates[:, :T - lag]`` predict ``behavior[:, lag:]`` (``(N, T, *)`` arrays)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV

    arrays = [_f64(a) for a in (train_rates, train_behavior, eval_rates, eval_behavior)]
    if lag:
        arrays = [a[:, :-lag] if i % 2 == 0 else a[:, lag:] for i, a in enumerate(arrays)]
    tr, tb, er, eb = (_flat(a) for a in arrays)
    keep_t, keep_e = ~np.isnan(tb[:, 0]), ~np.isnan(eb[:, 0])
    tr, tb, er, eb = tr[keep_t], tb[keep_t], er[keep_e], eb[keep_e]
    if np.isnan(tr).any() or np.isnan(er).any():
        raise ValueError("NaNs found in rate predictions within required trial times")
    search = GridSearchCV(Ridge(), {"alpha": VEL_ALPHAS})
    search.fit(tr, tb)
    return float(search.score(er, eb))


def gaussian_nll(x, mean, logvar) -> float:
    """Mean Gaussian NLL per element, ``1/2 (log 2 pi + logvar + (x - mean)^2 e^-logvar)``."""
    x, m, lv = _f64(x), _f64(mean), _f64(logvar)
    return float(np.mean(0.5 * (math.log(2 * math.pi) + lv + (x - m) ** 2 * np.exp(-lv))))


def forecast_mse(x, mean, t_obs: int) -> float:
    """Mean squared error over the forecast bins ``[t_obs:]`` of every channel."""
    x, m = _f64(x), _f64(mean)
    return float(np.mean((x[:, t_obs:] - m[:, t_obs:]) ** 2))
