"""Dataset names and file specs of the ephys modality, train/test splits, and the
PyTorch datasets the registry loaders return.

``--data`` accepts:

* ``lorenz``: generated Lorenz spiking populations (:mod:`.lorenz`);
* ``nitime``: nitime's real locust receptor spike trains (:func:`~.spikes.load_nitime_spikes`);
* ``spkit``: spkit's real 14-channel Emotiv EEG (:func:`~.eeg.spkit_raw`);
* ``pyedflib``: pyedflib's EDF test recording (:func:`~.eeg.pyedflib_raw`);
* ``nwb:/path/file.nwb``: a user's NWB file (:func:`~.nwb.read_nwb`);
* ``eeg:/path/file.{fif,edf,bdf,vhdr,set}``: a user's EEG/MEG file (:func:`~.eeg.load_eeg_file`).

Splits: a seeded random 80/20 split of trials (:func:`~.spikes.split_trials`), except for
the fixed-window EEG sets, whose overlapping windows would leak across a random split:
there the first 80% of windows (in time) train and the windows that start after the last
training window ends test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from modaflow.core.config import Config

from .eeg import EEGOptions, load_eeg_file, pyedflib_raw, raw_to_trials, spkit_raw
from .lorenz import LorenzConfig, make_lorenz
from .nwb import NWBOptions, read_nwb
from .spikes import TrialData, load_nitime_spikes, split_trials

__all__ = ["NAMED", "SPLITS", "TEST_FRACTION", "EEG_SUFFIXES", "DataOptions", "load_trials", "load_split", "split_data", "TrialDataset"]

NAMED: tuple[str, ...] = ("lorenz", "nitime", "spkit", "pyedflib")
"""Datasets reachable by name (the others are ``nwb:PATH`` and ``eeg:PATH``)."""
SPLITS: tuple[str, ...] = ("train", "test")
TEST_FRACTION = 0.2
EEG_SUFFIXES: tuple[str, ...] = (".fif", ".edf", ".bdf", ".vhdr", ".set", ".gz")
"""File suffixes read as EEG/MEG recordings through mne (``.gz``: ``.fif.gz``)."""


@dataclass
class DataOptions(Config):
    """Options of every data source, flat so each becomes one CLI option (each source
    reads its own part; see :meth:`lorenz`, :meth:`nwb`, :meth:`eeg`)."""

    heldout_fraction: float = 0.25
    """Fraction of neurons / channels held out (the last ones, or the NWB 'heldout' column)."""
    bin_ms: float = 20.0
    """Spike bin width in milliseconds (lorenz, nwb)."""
    bins: int = 50
    """Observed bins per spike trial (lorenz, nwb, nitime)."""
    fp_bins: int = 10
    """Forward-prediction bins after the observed ones (lorenz, nwb, nitime)."""
    n_conditions: int = 40
    """Lorenz: distinct initial states."""
    trials_per_condition: int = 10
    """Lorenz: trials per condition (independent Poisson spikes)."""
    n_neurons: int = 96
    """Lorenz: neurons."""
    lorenz_dt: float = 0.01
    """Lorenz: Euler step per bin."""
    burn_in: int = 500
    """Lorenz: Euler steps onto the attractor."""
    base_rate_hz: float = 15.0
    """Lorenz: firing rate at the centre of the normalised state."""
    gain: float = 1.5
    """Lorenz: scale of the random log-rate readout."""
    offset_s: float = 0.0
    """NWB: trial windows start this long after each trial's start_time."""
    behavior: str = "hand_vel"
    """NWB: name of the behaviour TimeSeries ('' for none)."""
    outside_trials: Literal["error", "drop"] = "error"
    """NWB: spikes outside every trial window raise an error, or are dropped."""
    picks: str = "data"
    """EEG: mne picks (data, eeg, meg, all) or comma-separated channel names."""
    l_freq: float = 1.0
    """EEG: high-pass edge, Hz (0: none)."""
    h_freq: float = 40.0
    """EEG: low-pass edge, Hz (0: none)."""
    sfreq: float = 0.0
    """EEG: resample to this rate, Hz (0: keep; pyedflib: 100 when every EEG option is at its default)."""
    event: str = ""
    """EEG: epoch around annotations with this description, or stim events with this integer id ('' = sliding windows)."""
    tmin: float = 0.0
    """EEG: epoch start relative to each event, s."""
    epoch_s: float = 0.5
    """EEG: epoch length, s (pyedflib default 1.0)."""
    overlap_s: float = 0.375
    """EEG: overlap of sliding windows, s (pyedflib default 0)."""
    fp_s: float = 0.125
    """EEG: forecast window at the end of each epoch, s (pyedflib default 0.2)."""

    def lorenz(self) -> LorenzConfig:
        return LorenzConfig(n_conditions=self.n_conditions, trials_per_condition=self.trials_per_condition,
                            n_neurons=self.n_neurons, heldout_fraction=self.heldout_fraction, bins=self.bins,
                            fp_bins=self.fp_bins, bin_ms=self.bin_ms, lorenz_dt=self.lorenz_dt, burn_in=self.burn_in,
                            base_rate_hz=self.base_rate_hz, gain=self.gain)

    def nwb(self) -> NWBOptions:
        return NWBOptions(bin_ms=self.bin_ms, bins=self.bins, fp_bins=self.fp_bins, offset_s=self.offset_s,
                          heldout_fraction=self.heldout_fraction, behavior=self.behavior, outside_trials=self.outside_trials)

    def eeg(self, spec: str = "") -> EEGOptions:
        opts = EEGOptions(picks=self.picks, l_freq=self.l_freq, h_freq=self.h_freq, sfreq=self.sfreq, event=self.event,
                          tmin=self.tmin, epoch_s=self.epoch_s, overlap_s=self.overlap_s, fp_s=self.fp_s,
                          heldout_fraction=self.heldout_fraction)
        if spec == "pyedflib" and opts == EEGOptions(heldout_fraction=self.heldout_fraction):
            return opts.replace(sfreq=100.0, epoch_s=1.0, overlap_s=0.0, fp_s=0.2)
        return opts


def load_trials(spec: str, opts: DataOptions | None = None, seed: int = 0) -> TrialData:
    """Every trial of the data ``spec`` (a name of :data:`NAMED`, ``nwb:PATH`` or ``eeg:PATH``)."""
    opts = opts or DataOptions()
    if spec == "lorenz":
        return make_lorenz(opts.lorenz(), seed)
    if spec == "nitime":
        return load_nitime_spikes(bin_s=opts.bin_ms / 1000.0, n_bins=opts.bins + opts.fp_bins, fp_bins=opts.fp_bins)
    if spec == "spkit":
        return raw_to_trials(spkit_raw(), opts.eeg(spec), "spkit eeg_sample_14ch")
    if spec == "pyedflib":
        return raw_to_trials(pyedflib_raw(), opts.eeg(spec), "pyedflib test_generator.edf")
    if spec.startswith("nwb:"):
        return read_nwb(spec[4:], opts.nwb())
    if spec.startswith("eeg:"):
        return load_eeg_file(spec[4:], opts.eeg(spec))
    path = Path(spec)
    if path.suffix.lower() == ".nwb":
        return read_nwb(path, opts.nwb())
    if path.suffix.lower() in EEG_SUFFIXES:
        return load_eeg_file(path, opts.eeg(spec))
    raise ValueError(f"unknown ephys data {spec!r}; expected one of {list(NAMED)}, nwb:/path/file.nwb "
                     f"or eeg:/path/file.(fif|edf|bdf|vhdr|set)")


def _is_sliding(spec: str, opts: DataOptions) -> bool:
    """Continuous recordings cut into overlapping windows (split in time unless epoched on events)."""
    if spec in ("spkit",) or spec.startswith("eeg:") or Path(spec).suffix.lower() in EEG_SUFFIXES:
        return not opts.event
    return False


def split_data(data: TrialData, spec: str, opts: DataOptions, seed: int) -> dict[str, TrialData]:
    """``{"train", "test"}`` trials of ``data`` (see the module docstring)."""
    n = data.x.shape[0]
    if _is_sliding(spec, opts):
        n_train = max(1, int(round((1 - TEST_FRACTION) * n)))
        step = max(1, int(round((opts.epoch_s - opts.overlap_s) / data.bin_s)))
        gap = -(-data.n_bins // step)  # windows overlapping the last training window
        first = n_train - 1 + gap  # the first window that shares no sample with the training ones
        if n_train >= n or first >= n:
            raise ValueError(f"{spec}: too few windows ({n}) for a train/test split in time: the last "
                             f"{n - n_train} overlap the training windows; give a longer recording or a shorter epoch")
        test = np.arange(first, n)
        return {"train": data.subset(np.arange(n_train)), "test": data.subset(test)}
    idx = split_trials(n, TEST_FRACTION, seed)
    return {k: data.subset(v) for k, v in idx.items()}


def load_split(spec: str, split: str, opts: DataOptions | None = None, seed: int = 0) -> TrialData:
    """The ``split`` (train or test) of ``spec``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}; got {split!r}")
    opts = opts or DataOptions()
    return split_data(load_trials(spec, opts, seed), spec, opts, seed)[split]


class TrialDataset(Dataset):
    """Trials of a :class:`TrialData`; an item is ``x[i]`` ``(T, C)`` float32."""

    def __init__(self, data: TrialData) -> None:
        self.data = data

    def __len__(self) -> int:
        return int(self.data.x.shape[0])

    def __getitem__(self, i: int) -> Tensor:
        return self.data.x[i]
