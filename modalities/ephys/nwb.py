"""NWB files through pynwb: units' spike times, trials and behaviour, binned into
:class:`~.spikes.TrialData` (the layout of the Neural Latents Benchmark's NWB files:
``units`` with ``spike_times``, a ``trials`` table, ``hand_vel`` as a TimeSeries).

Trials: ``[start_time + offset_s, + (bins + fp_bins) * bin_s)`` of each row of ``trials``
(rows shorter than that window are dropped with their count reported); without a trials
table the session is cut into consecutive windows. Held-out units: the boolean ``heldout``
column of ``units`` when present, else the last ``heldout_fraction`` of the units.
Behaviour: the TimeSeries named ``behavior`` in ``acquisition`` or in the ``behavior``
processing module, linearly interpolated to bin centres. Conditions: a ``condition``
column of ``trials`` (integers or strings) when present.

:func:`write_nwb` writes such a file (the tests use it to make small real NWB files).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from modaflow.core.config import Config

from .spikes import TrialData, bin_spike_times

__all__ = ["NWBOptions", "read_nwb", "write_nwb"]


@dataclass
class NWBOptions(Config):
    """How an NWB file is binned into trials."""

    bin_ms: float = 20.0
    """Bin width in milliseconds."""
    bins: int = 50
    """Observed bins per trial."""
    fp_bins: int = 10
    """Forward-prediction bins after the observed ones."""
    offset_s: float = 0.0
    """Trial windows start this many seconds after each trial's start_time."""
    heldout_fraction: float = 0.25
    """Fraction of units held out (the last ones) when units has no 'heldout' column."""
    behavior: str = "hand_vel"
    """Name of the behaviour TimeSeries (acquisition or processing['behavior']); '' for none."""
    outside_trials: Literal["error", "drop"] = "error"
    """Spikes outside every trial window: error, or drop (the inter-trial intervals of a real session)."""

    def validate(self) -> None:
        self._require(self.bin_ms > 0, "bin_ms", "a number > 0")
        self._require(self.bins >= 2, "bins", "an integer >= 2")
        self._require(self.fp_bins >= 0, "fp_bins", "an integer >= 0")
        self._require(0 < self.heldout_fraction < 1, "heldout_fraction", "a fraction in (0, 1)")


def _pynwb():
    try:
        import pynwb
    except ImportError as e:  # pragma: no cover - in the ephys extra
        raise ImportError("reading NWB files needs pynwb: pip install modaflow[ephys]") from e
    return pynwb


def _find_series(nwb, name: str):
    if name in nwb.acquisition:
        return nwb.acquisition[name]
    if "behavior" in nwb.processing and name in nwb.processing["behavior"].data_interfaces:
        return nwb.processing["behavior"][name]
    return None


def read_nwb(path: str | Path, opts: NWBOptions | None = None) -> TrialData:
    """Bin the NWB file ``path`` (see the module docstring). Errors name the file: not
    found, not NWB, no units table, NaN spike times, spikes outside trials (with
    ``outside_trials="error"``), no trial long enough."""
    opts = opts or NWBOptions()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: NWB file not found")
    pynwb = _pynwb()
    bin_s, t_total = opts.bin_ms / 1000.0, opts.bins + opts.fp_bins
    try:
        io = pynwb.NWBHDF5IO(str(path), "r")
        nwb = io.read()
    except Exception as e:  # h5py / hdmf errors for non-NWB or corrupt files
        raise ValueError(f"{path}: not a readable NWB file ({type(e).__name__}: {e})") from None
    try:
        units = nwb.units
        if units is None or len(units) == 0:
            raise ValueError(f"{path}: the NWB file has no units table (expected nwb.units with spike_times)")
        spike_times = [np.asarray(units["spike_times"][i], dtype=np.float64) for i in range(len(units))]
        colnames = set(units.colnames)
        heldout = np.asarray(units["heldout"][:], dtype=bool) if "heldout" in colnames else None
        window = t_total * bin_s
        if nwb.trials is not None and len(nwb.trials) > 0:
            starts = np.asarray(nwb.trials["start_time"][:], dtype=np.float64) + opts.offset_s
            stops = np.asarray(nwb.trials["stop_time"][:], dtype=np.float64)
            cond_raw = nwb.trials["condition"][:] if "condition" in nwb.trials.colnames else None
        else:
            end = max((float(t.max()) for t in spike_times if t.size), default=0.0)
            starts = np.arange(int(end // window) + 1) * window
            stops, cond_raw = starts + window, None
        counts = bin_spike_times(spike_times, starts, bin_s, t_total, opts.outside_trials, stops=stops, where=str(path))
        long_enough = stops - starts >= window - 1e-9
        if not long_enough.any():
            raise ValueError(f"{path}: no trial is at least {window:g} s long ({t_total} bins of {opts.bin_ms:g} ms)")
        behavior = None
        series = _find_series(nwb, opts.behavior) if opts.behavior else None
        if series is not None:
            data = np.asarray(series.data[:], dtype=np.float64)
            data = data[:, None] if data.ndim == 1 else data
            ts = np.asarray(series.timestamps[:]) if series.timestamps is not None else (
                series.starting_time + np.arange(len(data)) / series.rate)
            centres = starts[:, None] + (np.arange(t_total) + 0.5) * bin_s  # (N, T)
            behavior = np.stack([np.interp(centres, ts, data[:, j], left=np.nan, right=np.nan)
                                 for j in range(data.shape[1])], axis=-1)
            behavior = torch.from_numpy(behavior.astype(np.float32))
    finally:
        io.close()
    keep = np.flatnonzero(long_enough)
    n_units = counts.shape[2]
    if heldout is None:
        n_out = min(n_units - 1, max(1, int(round(opts.heldout_fraction * n_units))))
        heldout = np.arange(n_units) >= n_units - n_out
    if heldout.all() or not heldout.any():
        raise ValueError(f"{path}: need at least one held-in and one held-out unit; got {int(heldout.sum())} held out of {n_units}")
    order = np.concatenate([np.flatnonzero(~heldout), np.flatnonzero(heldout)])
    condition = None
    if cond_raw is not None:
        _, codes = np.unique(np.asarray(cond_raw)[keep].astype(str), return_inverse=True)
        condition = torch.from_numpy(codes.astype(np.int64))
    return TrialData(
        x=counts[keep][:, :, order],
        n_heldin=int((~heldout).sum()),
        t_obs=opts.bins,
        bin_s=bin_s,
        likelihood="poisson",
        behavior=None if behavior is None else behavior[keep],
        condition=condition,
        channel_names=tuple(f"unit{i}" for i in order),
        source=str(path),
    )


def write_nwb(
    path: str | Path,
    spike_times: list[np.ndarray],
    trials: list[tuple[float, float]] | None = None,
    behavior: tuple[np.ndarray, np.ndarray] | None = None,
    heldout: list[bool] | None = None,
    conditions: list[str] | None = None,
    behavior_name: str = "hand_vel",
) -> Path:
    """Write an NWB file with a units table (``spike_times`` per unit, optional
    ``heldout`` column), a trials table (``(start, stop)`` rows, optional ``condition``) and
    behaviour ``(timestamps (M,), data (M, B))`` as an acquisition TimeSeries."""
    pynwb = _pynwb()
    nwb = pynwb.NWBFile(session_description="modaflow ephys test file", identifier=Path(path).stem,
                        session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc))
    if heldout is not None:
        nwb.add_unit_column(name="heldout", description="held out for co-smoothing")
    for u, times in enumerate(spike_times):
        row = {"spike_times": np.asarray(times, dtype=np.float64)}
        if heldout is not None:
            row["heldout"] = bool(heldout[u])
        nwb.add_unit(**row)
    if trials is not None:
        if conditions is not None:
            nwb.add_trial_column(name="condition", description="trial condition")
        for i, (a, b) in enumerate(trials):
            row = {"start_time": float(a), "stop_time": float(b)}
            if conditions is not None:
                row["condition"] = conditions[i]
            nwb.add_trial(**row)
    if behavior is not None:
        ts, data = behavior
        nwb.add_acquisition(pynwb.TimeSeries(name=behavior_name, data=np.asarray(data), unit="m/s",
                                             timestamps=np.asarray(ts, dtype=np.float64)))
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return Path(path)
