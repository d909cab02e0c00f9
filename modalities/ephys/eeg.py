"""EEG/MEG through mne: read (FIF, EDF/BDF, BrainVision, EEGLAB via ``mne.io.read_raw``),
pick channels, band-pass filter, resample, cut epochs around events (or fixed-length
windows), standardise, and return :class:`~.spikes.TrialData` with a Gaussian likelihood.

Also the real recordings that ship inside packages: spkit's 14-channel Emotiv EEG
(``spkit.data.eeg_sample_14ch``, 2048 x 14 at 128 Hz) and pyedflib's EDF test file
(``pyedflib.data.get_generator_filename()``, 11 generator channels at 200 Hz, 600 s).

Channels: the last ``heldout_fraction`` of the picked channels are held out (predicted from
the others); the last ``fp_s`` seconds of each epoch are the forecast window. Signals are
z-scored per channel with the mean and standard deviation of the whole picked recording.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modaflow.core.config import Config

from .spikes import TrialData

__all__ = ["EEGOptions", "read_raw", "raw_to_trials", "load_eeg_file", "spkit_raw", "pyedflib_raw", "pyedflib_path"]


@dataclass
class EEGOptions(Config):
    """Preprocessing of an EEG/MEG recording into epochs."""

    picks: str = "data"
    """Channels: an mne picks string (data, eeg, meg, all) or comma-separated channel names."""
    l_freq: float = 1.0
    """High-pass edge in Hz (0 for none)."""
    h_freq: float = 40.0
    """Low-pass edge in Hz (0 for none); must lie below the new Nyquist frequency."""
    sfreq: float = 0.0
    """Resample to this rate in Hz (0 keeps the file's rate)."""
    event: str = ""
    """Epoch around annotations with this description (or stim-channel events with this integer id); '' cuts fixed-length windows."""
    tmin: float = 0.0
    """Epoch start relative to each event, seconds."""
    epoch_s: float = 0.5
    """Epoch length in seconds."""
    overlap_s: float = 0.375
    """Overlap of consecutive fixed-length windows in seconds (ignored with events)."""
    fp_s: float = 0.125
    """Forecast window at the end of each epoch, seconds."""
    heldout_fraction: float = 0.25
    """Fraction of channels held out (the last ones)."""

    def validate(self) -> None:
        for name in ("l_freq", "h_freq", "sfreq", "overlap_s", "fp_s"):
            self._require(getattr(self, name) >= 0, name, "a number >= 0")
        self._require(self.epoch_s > 0, "epoch_s", "a number > 0")
        self._require(self.overlap_s < self.epoch_s, "overlap_s", f"a number < epoch_s = {self.epoch_s}")
        self._require(self.fp_s < self.epoch_s, "fp_s", f"a number < epoch_s = {self.epoch_s}")
        self._require(0 < self.heldout_fraction < 1, "heldout_fraction", "a fraction in (0, 1)")


def _mne():
    try:
        import mne
    except ImportError as e:  # pragma: no cover - in the ephys extra
        raise ImportError("EEG/MEG files need mne: pip install modaflow[ephys]") from e
    return mne


def _check_edf_rates(path: Path) -> None:
    """EDF/BDF files whose signals have different sampling rates: a clear error (mne would
    silently resample them to the highest rate)."""
    try:
        import pyedflib
    except ImportError:  # pragma: no cover - in the ephys extra
        return
    try:
        reader = pyedflib.EdfReader(str(path))
    except OSError as e:
        raise ValueError(f"{path}: not a readable EDF/BDF file ({e})") from None
    try:
        rates = np.asarray(reader.getSampleFrequencies(), dtype=np.float64)
        labels = reader.getSignalLabels()
    finally:
        reader.close()
    annot = np.array(["annotation" in lab.lower() for lab in labels], dtype=bool)
    rates = rates[~annot] if annot.size == rates.size else rates
    if rates.size and not np.allclose(rates, rates[0]):
        found = sorted({f"{r:g}" for r in rates})
        raise ValueError(f"{path}: EDF signals have inconsistent sampling rates ({', '.join(found)} Hz); "
                         "expected one rate for every channel (resample them or pick channels of one rate)")


def read_raw(path: str | Path):
    """``mne.io.Raw`` of ``path`` (FIF, EDF/BDF, BrainVision .vhdr, EEGLAB .set, ...),
    preloaded. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: EEG/MEG file not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty")
    if path.suffix.lower() in (".edf", ".bdf"):
        _check_edf_rates(path)
    mne = _mne()
    try:
        return mne.io.read_raw(path, preload=True, verbose="error")
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        raise ValueError(f"{path}: mne cannot read it as EEG/MEG ({type(e).__name__}: {e})") from None


def _events(raw, opts: EEGOptions, where: str) -> np.ndarray:
    """Event sample indices (absolute, including ``raw.first_samp``) for ``opts.event``."""
    mne = _mne()
    descriptions = set(raw.annotations.description) if len(raw.annotations) else set()
    if opts.event in descriptions:
        events, ids = mne.events_from_annotations(raw, event_id={opts.event: 1}, verbose="error")
        return events[events[:, 2] == 1, 0]
    stim = mne.pick_types(raw.info, stim=True)
    if len(stim) and opts.event.lstrip("-").isdigit():
        events = mne.find_events(raw, verbose="error")
        return events[events[:, 2] == int(opts.event), 0]
    raise ValueError(f"{where}: no event {opts.event!r}; annotations: {sorted(descriptions)}"
                     f"{' (and a stim channel: pass an integer id)' if len(stim) else ''}")


def raw_to_trials(raw, opts: EEGOptions | None = None, where: str = "raw") -> TrialData:
    """Preprocess ``raw`` (picks, filter, resample) and cut it into epochs ``(N, T, C)``."""
    mne = _mne()
    opts = opts or EEGOptions()
    # events first, on the recording as read: picking drops the stim channel and filtering would change its codes
    event_s = (_events(raw, opts, where) - raw.first_samp) / raw.info["sfreq"] if opts.event else None
    raw = raw.copy()
    names = [c.strip() for c in opts.picks.split(",")] if "," in opts.picks or opts.picks in raw.ch_names else None
    try:
        if names is not None:
            missing = [c for c in names if c not in raw.ch_names]
            if missing:
                raise ValueError(f"channels {missing} not in the recording; it has {raw.ch_names}")
            raw.pick(names)
        else:
            raw.pick(opts.picks, exclude="bads")
    except ValueError as e:
        raise ValueError(f"{where}: cannot pick channels {opts.picks!r} ({e})") from None
    stim = [raw.ch_names[i] for i in mne.pick_types(raw.info, stim=True)]
    if stim:  # event codes, not signal
        raw.drop_channels(stim)
    if len(raw.ch_names) < 2:
        raise ValueError(f"{where}: need >= 2 channels after picking {opts.picks!r} (stim channels excluded); "
                         f"got {raw.ch_names}")
    sfreq = opts.sfreq or raw.info["sfreq"]
    nyq = min(sfreq, raw.info["sfreq"]) / 2
    if opts.h_freq and opts.h_freq >= nyq:
        raise ValueError(f"{where}: h_freq = {opts.h_freq} Hz must lie below the Nyquist frequency {nyq:g} Hz")
    if opts.l_freq or opts.h_freq:
        raw.filter(opts.l_freq or None, opts.h_freq or None, picks="all", verbose="error")
    if opts.sfreq and opts.sfreq != raw.info["sfreq"]:
        raw.resample(opts.sfreq, verbose="error")
    sfreq = raw.info["sfreq"]
    n_bins = int(round(opts.epoch_s * sfreq))
    fp_bins = int(round(opts.fp_s * sfreq))
    data = raw.get_data()  # (C, S) in volts / teslas
    mean, std = data.mean(axis=1, keepdims=True), data.std(axis=1, keepdims=True)
    if (std == 0).any():
        flat = [raw.ch_names[i] for i in np.flatnonzero(std[:, 0] == 0)]
        raise ValueError(f"{where}: channel(s) {flat} are flat (zero variance)")
    z = (data - mean) / std
    n_samples = z.shape[1]
    if opts.event:
        onsets = np.round(event_s * sfreq).astype(np.int64) + int(round(opts.tmin * sfreq))
        beyond = (onsets < 0) | (onsets + n_bins > n_samples)
        if beyond.any():
            raise ValueError(f"{where}: {int(beyond.sum())} event epoch(s) of {opts.event!r} reach beyond the recording "
                             f"({n_samples / sfreq:g} s; first bad onset {onsets[beyond][0] / sfreq:g} s, "
                             f"epoch {opts.tmin:g}..{opts.tmin + opts.epoch_s:g} s)")
    else:
        step = max(1, int(round((opts.epoch_s - opts.overlap_s) * sfreq)))
        onsets = np.arange(0, n_samples - n_bins + 1, step)
    if onsets.size == 0:
        raise ValueError(f"{where}: no epoch of {opts.epoch_s:g} s fits the recording ({n_samples / sfreq:g} s)")
    x = np.stack([z[:, o : o + n_bins].T for o in onsets]).astype(np.float32)  # (N, T, C)
    c = x.shape[2]
    n_out = min(c - 1, max(1, int(round(opts.heldout_fraction * c))))
    return TrialData(x=torch.from_numpy(x), n_heldin=c - n_out, t_obs=n_bins - fp_bins, bin_s=1.0 / sfreq,
                     likelihood="gaussian", channel_names=tuple(raw.ch_names), source=where)


def load_eeg_file(path: str | Path, opts: EEGOptions | None = None) -> TrialData:
    """Read and epoch an EEG/MEG file (see :func:`read_raw`, :func:`raw_to_trials`)."""
    return raw_to_trials(read_raw(path), opts, str(path))


def spkit_raw():
    """spkit's 14-channel Emotiv EEG (16 s at 128 Hz, µV in the package) as an mne RawArray
    in volts."""
    mne = _mne()
    try:
        import spkit.data
    except ImportError as e:  # pragma: no cover - in the ephys extra
        raise ImportError("the spkit EEG sample needs spkit: pip install modaflow[ephys]") from e
    x, fs, names = spkit.data.eeg_sample_14ch()
    info = mne.create_info(list(names), float(fs), ch_types="eeg")
    return mne.io.RawArray(np.asarray(x, dtype=np.float64).T * 1e-6, info, verbose="error")


def pyedflib_path() -> Path:
    """pyedflib's bundled EDF test file."""
    try:
        import pyedflib.data
    except ImportError as e:  # pragma: no cover - in the ephys extra
        raise ImportError("the pyedflib EDF sample needs pyedflib: pip install modaflow[ephys]") from e
    return Path(pyedflib.data.get_generator_filename())


def pyedflib_raw():
    """pyedflib's EDF test file through mne (11 channels at 200 Hz, 600 s)."""
    return read_raw(pyedflib_path())
