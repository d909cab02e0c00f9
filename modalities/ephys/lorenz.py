"""Lorenz spiking populations, the synthetic latent-dynamics benchmark of LFADS / NDT /
LangevinFlow (arXiv 2507.11531, sec. 4.1; the paper's data is not released, so this is our
own NDT-style generator, with every constant below).

1. Lorenz system ``dx = sigma (y - x)``, ``dy = x (rho - z) - y``, ``dz = x y - beta z``,
   ``sigma = 10, rho = 28, beta = 8/3`` (Lorenz 1963), integrated by forward Euler with
   ``dt = 0.01``, one Euler step per 20 ms bin.
2. ``n_conditions`` initial states: a uniform draw in ``[-15, 15]^2 x [5, 40]`` run for
   ``burn_in`` steps onto the attractor; each condition is repeated ``trials_per_condition``
   times with independent Poisson spikes (same rates), so conditions give PSTHs.
3. States are min-max normalised per trial and per dimension to ``[-1, 1]``
   (``s = 2 (x - min) / (max - min) - 1``), then mapped to ``n_neurons`` log firing rates
   ``log lambda_i = log(base_rate_hz) + gain * W_i . s`` with ``W ~ U(-1, 1)`` (one fixed
   readout per dataset seed); expected counts per bin ``r = lambda * bin_s``; spikes
   ``~ Poisson(r)``.
4. Each trial has ``bins + fp_bins`` bins: ``bins`` observed, then a forward-prediction
   window of ``fp_bins``; the last ``heldout_fraction`` of the neurons are held out.

The true rates ``r`` and states are kept in :class:`~.spikes.TrialData` for rate R².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from modaflow.core.config import Config

from .spikes import TrialData

__all__ = ["LorenzConfig", "lorenz_states", "make_lorenz"]

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0


@dataclass
class LorenzConfig(Config):
    """Sizes and constants of a generated Lorenz spiking dataset."""

    n_conditions: int = 40
    """Distinct initial states (conditions)."""
    trials_per_condition: int = 10
    """Trials per condition (same rates, independent Poisson spikes)."""
    n_neurons: int = 96
    """Neurons (held-in plus held-out)."""
    heldout_fraction: float = 0.25
    """Fraction of neurons held out (the last ones), for co-smoothing."""
    bins: int = 50
    """Observed bins per trial."""
    fp_bins: int = 10
    """Forward-prediction bins after the observed ones."""
    bin_ms: float = 20.0
    """Bin width in milliseconds."""
    lorenz_dt: float = 0.01
    """Euler step of the Lorenz system per bin (Lorenz time units)."""
    burn_in: int = 500
    """Euler steps from the random initial draw to the attractor."""
    base_rate_hz: float = 15.0
    """Firing rate at s = 0 (spikes per second)."""
    gain: float = 1.5
    """Scale of the random readout W (log-rate change per unit of normalised state)."""

    def validate(self) -> None:
        for name in ("n_conditions", "trials_per_condition", "bins", "burn_in"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.n_neurons >= 2, "n_neurons", "an integer >= 2")
        self._require(self.fp_bins >= 0, "fp_bins", "an integer >= 0")
        self._require(0 < self.heldout_fraction < 1, "heldout_fraction", "a fraction in (0, 1)")
        for name in ("bin_ms", "lorenz_dt", "base_rate_hz"):
            self._require(getattr(self, name) > 0, name, "a number > 0")
        self._require(self.gain >= 0, "gain", "a number >= 0")

    @property
    def n_heldout(self) -> int:
        return min(self.n_neurons - 1, max(1, int(round(self.heldout_fraction * self.n_neurons))))


def lorenz_states(x0: np.ndarray, steps: int, dt: float) -> np.ndarray:
    """Forward-Euler Lorenz trajectories from ``x0`` ``(M, 3)``: ``(M, steps + 1, 3)``
    float64, ``out[:, 0] = x0`` (Lorenz 1963 with sigma = 10, rho = 28, beta = 8/3)."""
    out = np.empty((x0.shape[0], steps + 1, 3))
    out[:, 0] = s = np.asarray(x0, dtype=np.float64)
    for k in range(steps):
        x, y, z = s[:, 0], s[:, 1], s[:, 2]
        ds = np.stack([SIGMA * (y - x), x * (RHO - z) - y, x * y - BETA * z], axis=1)
        s = s + dt * ds  # forward Euler, dt = 0.01
        out[:, k + 1] = s
    return out


def make_lorenz(cfg: LorenzConfig, seed: int) -> TrialData:
    """The Lorenz dataset of ``cfg`` drawn from ``seed``: every trial, conditions
    ``0..n_conditions-1`` each repeated ``trials_per_condition`` times (trial order
    ``condition-major``)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1963]))
    n_c, reps, t_total = cfg.n_conditions, cfg.trials_per_condition, cfg.bins + cfg.fp_bins
    init = rng.uniform([-15.0, -15.0, 5.0], [15.0, 15.0, 40.0], size=(n_c, 3))
    on_attractor = lorenz_states(init, cfg.burn_in, cfg.lorenz_dt)[:, -1]
    states = lorenz_states(on_attractor, t_total - 1, cfg.lorenz_dt)  # (n_c, T, 3)
    lo, hi = states.min(axis=1, keepdims=True), states.max(axis=1, keepdims=True)
    s = 2.0 * (states - lo) / np.maximum(hi - lo, 1e-12) - 1.0  # per-trial min-max to [-1, 1]
    w = rng.uniform(-1.0, 1.0, size=(3, cfg.n_neurons))
    bin_s = cfg.bin_ms / 1000.0
    rates = cfg.base_rate_hz * bin_s * np.exp(cfg.gain * s @ w)  # expected counts per bin
    rates = np.repeat(rates, reps, axis=0)  # (N, T, C)
    counts = rng.poisson(rates).astype(np.float32)
    condition = np.repeat(np.arange(n_c), reps)
    return TrialData(
        x=torch.from_numpy(counts),
        n_heldin=cfg.n_neurons - cfg.n_heldout,
        t_obs=cfg.bins,
        bin_s=bin_s,
        likelihood="poisson",
        rates=torch.from_numpy(rates.astype(np.float32)),
        latents=torch.from_numpy(np.repeat(s, reps, axis=0).astype(np.float32)),
        condition=torch.from_numpy(condition),
        channel_names=tuple(f"n{i}" for i in range(cfg.n_neurons)),
        source=f"lorenz(seed={seed})",
    )
