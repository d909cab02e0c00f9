"""Trial-structured recordings and spike binning.

:class:`TrialData` is the one container every ephys loader returns, for spikes and for
EEG/MEG alike:

* ``x`` ``(N, T, C)`` float32: spike counts per bin (``likelihood="poisson"``) or
  standardised signal (``likelihood="gaussian"``), ``N`` trials, ``T`` bins, ``C`` channels;
  channels ``[:n_heldin]`` are **held in** (given to the model), ``[n_heldin:]`` **held out**
  (only predicted, the Neural Latents Benchmark co-smoothing split);
* bins ``[:t_obs]`` are observed; bins ``[t_obs:]`` are the **forward-prediction window**
  (never given to the model; scored by fp-bps or forecast error);
* optional ground truth and covariates: ``rates`` ``(N, T, C)`` true expected counts per bin
  (Lorenz), ``latents`` ``(N, T, 3)`` (Lorenz states), ``behavior`` ``(N, T, B)`` (hand
  velocity in NWB), ``condition`` ``(N,)`` int64 (for PSTHs).

:func:`bin_spike_times` turns spike times (seconds) and trial windows into counts, with
clear errors for NaN spike times and spikes that fall outside every trial.
:func:`load_nitime_spikes` reads the locust auditory-receptor spike trains that nitime ships.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["TrialData", "Likelihood", "bin_spike_times", "load_nitime_spikes", "split_trials", "NITIME_FILES"]

Likelihood = Literal["poisson", "gaussian"]
NITIME_FILES = ("grasshopper_spike_times1.txt", "grasshopper_spike_times2.txt")
"""nitime's two spike-time files: one locust auditory receptor cell each, times in µs."""


@dataclass(frozen=True)
class TrialData:
    """Trials ``(N, T, C)`` with the held-in/held-out and observed/forward split (see the
    module docstring for every field's shape)."""

    x: Tensor
    n_heldin: int
    t_obs: int
    bin_s: float
    likelihood: Likelihood
    rates: Tensor | None = None
    latents: Tensor | None = None
    behavior: Tensor | None = None
    condition: Tensor | None = None
    channel_names: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or "TrialData"
        if self.x.ndim != 3:
            raise ValueError(f"{where}: x must have shape (N, T, C); got {tuple(self.x.shape)}")
        n, t, c = self.x.shape
        if n < 1 or t < 2 or c < 2:
            raise ValueError(f"{where}: need >= 1 trial, >= 2 bins and >= 2 channels; got (N, T, C) = {(n, t, c)}")
        if not torch.isfinite(self.x).all():
            bad = torch.nonzero(~torch.isfinite(self.x))[0].tolist()
            name = self.channel_names[bad[2]] if self.channel_names and bad[2] < len(self.channel_names) else bad[2]
            raise ValueError(f"{where}: the recording holds NaN or Inf values (first: trial {bad[0]}, bin {bad[1]}, "
                             f"channel {name!r}); expected finite samples")
        if self.likelihood == "poisson" and bool((self.x < 0).any()):
            raise ValueError(f"{where}: spike counts must be >= 0")
        if not 1 <= self.n_heldin < c:
            raise ValueError(f"{where}: n_heldin must lie in [1, C-1] = [1, {c - 1}]; got {self.n_heldin}")
        if not 1 <= self.t_obs <= t:
            raise ValueError(f"{where}: t_obs must lie in [1, T] = [1, {t}]; got {self.t_obs}")
        for name in ("rates", "latents", "behavior"):
            v = getattr(self, name)
            if v is not None and (v.ndim != 3 or v.shape[:2] != (n, t)):
                raise ValueError(f"{where}: {name} must have shape (N, T, *) = ({n}, {t}, *); got {tuple(v.shape)}")
        if self.rates is not None and self.rates.shape != self.x.shape:
            raise ValueError(f"{where}: rates must have the shape of x {tuple(self.x.shape)}; got {tuple(self.rates.shape)}")
        if self.condition is not None and self.condition.shape != (n,):
            raise ValueError(f"{where}: condition must have shape (N,) = ({n},); got {tuple(self.condition.shape)}")

    @property
    def n_channels(self) -> int:
        return int(self.x.shape[2])

    @property
    def n_bins(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_heldout(self) -> int:
        return self.n_channels - self.n_heldin

    def model_input(self) -> Tensor:
        """What a model sees: held-in channels of the observed bins, zeros in the forward
        window, ``(N, T, n_heldin)``."""
        x = self.x[:, :, : self.n_heldin].clone()
        x[:, self.t_obs :] = 0.0
        return x

    def subset(self, index: Tensor | np.ndarray | list[int]) -> "TrialData":
        """The trials ``index`` (every per-trial field sliced alike)."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        pick = lambda v: None if v is None else v[idx]  # noqa: E731
        return replace(self, x=self.x[idx], rates=pick(self.rates), latents=pick(self.latents),
                       behavior=pick(self.behavior), condition=pick(self.condition))


def split_trials(n: int, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """A seeded random split of ``n`` trials: ``{"train": idx, "test": idx}`` (at least one
    trial in each). Test indices are sorted; training indices stay in the random order, so
    the last ones (the validation trials of :func:`~.training.fit_vae`) are a random subset."""
    if n < 2:
        raise ValueError(f"need at least 2 trials to split into train and test; got {n}")
    perm = np.random.default_rng(np.random.SeedSequence([seed, 7919])).permutation(n)
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    return {"train": perm[n_test:], "test": np.sort(perm[:n_test])}


def bin_spike_times(
    spike_times: list[np.ndarray],
    starts: np.ndarray,
    bin_s: float,
    n_bins: int,
    outside: Literal["error", "drop"] = "error",
    stops: np.ndarray | None = None,
    where: str = "spike times",
) -> Tensor:
    """Count spikes in ``n_bins`` bins of ``bin_s`` seconds from each trial start.

    Args:
        spike_times: one 1-D array of spike times (seconds) per unit.
        starts: trial start times ``(N,)`` (seconds).
        stops: trial stop times ``(N,)``; spikes in ``[start, stop)`` belong to the trial
            (default ``start + n_bins * bin_s``). Bins past a trial's stop stay empty.
        outside: what to do with spikes that fall in no trial window: ``"error"`` (raise,
            naming the unit and how many) or ``"drop"`` (ignore them, e.g. the inter-trial
            intervals of a real session).
        where: the file or source, for error messages.

    Returns:
        counts ``(N, n_bins, U)`` float32.
    """
    starts = np.asarray(starts, dtype=np.float64)
    if starts.ndim != 1 or starts.size == 0:
        raise ValueError(f"{where}: expected a non-empty 1-D array of trial starts; got shape {starts.shape}")
    if not np.isfinite(starts).all():
        raise ValueError(f"{where}: trial start times hold NaN or Inf")
    if not bin_s > 0 or n_bins < 1:
        raise ValueError(f"{where}: bin_s must be > 0 and n_bins >= 1; got {bin_s}, {n_bins}")
    stops = starts + n_bins * bin_s if stops is None else np.asarray(stops, dtype=np.float64)
    if stops.shape != starts.shape or not np.isfinite(stops).all() or bool((stops <= starts).any()):
        raise ValueError(f"{where}: trial stops must be finite, one per trial and after each start")
    window_end = np.minimum(stops, starts + n_bins * bin_s)
    order = np.argsort(starts)
    counts = np.zeros((starts.size, n_bins, len(spike_times)), dtype=np.float32)
    for u, times in enumerate(spike_times):
        times = np.asarray(times, dtype=np.float64).ravel()
        if np.isnan(times).any():
            raise ValueError(f"{where}: unit {u} has {int(np.isnan(times).sum())} NaN spike time(s)")
        if not np.isfinite(times).all():
            raise ValueError(f"{where}: unit {u} has infinite spike time(s)")
        # trial of each spike: the last start <= t, then check t < stop (trials may not overlap)
        k = np.searchsorted(starts[order], times, side="right") - 1
        trial = np.where(k >= 0, order[np.clip(k, 0, None)], -1)
        inside = (trial >= 0) & (times < stops[np.clip(trial, 0, None)])
        if outside == "error" and not inside.all():
            bad = times[~inside]
            raise ValueError(
                f"{where}: unit {u} has {bad.size} spike(s) outside every trial (first at {bad[0]:.6g} s; trials span "
                f"[{starts.min():.6g}, {stops.max():.6g}] s); pass outside='drop' (--outside-trials drop) to ignore them"
            )
        keep = inside & (times < window_end[np.clip(trial, 0, None)])
        b = np.floor((times[keep] - starts[trial[keep]]) / bin_s).astype(np.int64)
        np.add.at(counts[:, :, u], (trial[keep], np.clip(b, 0, n_bins - 1)), 1.0)
    return torch.from_numpy(counts)


def nitime_data_dir() -> str:
    """nitime's data folder (raises ImportError naming the extra when nitime is missing)."""
    try:
        import nitime
    except ImportError as e:  # pragma: no cover - in the ephys extra
        raise ImportError("the nitime spike trains need nitime: pip install modaflow[ephys]") from e
    return os.path.join(os.path.dirname(nitime.__file__), "data")


def load_nitime_spikes(bin_s: float = 0.02, n_bins: int = 50, fp_bins: int = 10) -> TrialData:
    """nitime's locust auditory-receptor recordings: two cells, ~10 s each (times in µs in
    the files), cut into consecutive trials of ``n_bins`` bins of ``bin_s`` s; cell 1 is
    held in, cell 2 held out; the last ``fp_bins`` bins of each trial are the forward window."""
    d = nitime_data_dir()
    times = []
    for name in NITIME_FILES:
        path = os.path.join(d, name)
        arr = np.loadtxt(path, ndmin=1)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{path}: expected one column of spike times")
        times.append(arr * 1e-6)  # µs -> s
    duration = max(float(t.max()) for t in times)
    trial_s = n_bins * bin_s
    n_trials = int(duration // trial_s)
    starts = np.arange(n_trials) * trial_s
    x = bin_spike_times(times, starts, bin_s, n_bins, outside="drop", where=d)
    return TrialData(x=x, n_heldin=1, t_obs=n_bins - fp_bins, bin_s=bin_s, likelihood="poisson",
                     channel_names=("cell1", "cell2"), source="nitime grasshopper spike times")
