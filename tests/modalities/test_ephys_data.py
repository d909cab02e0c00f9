"""ephys data: the Lorenz generator, spike binning against a slow loop, NWB files written
with pynwb and read back, nitime's spike trains, EEG files written with mne (FIF, EDF,
EEGLAB, BrainVision via mne.export) / pyedflib / the BrainVision spec and read back through
mne.io.read_raw, and every bad-input case of the issue."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from modaflow.modalities.ephys import data as D
from modaflow.modalities.ephys import eeg as E
from modaflow.modalities.ephys.lorenz import LorenzConfig, lorenz_states, make_lorenz
from modaflow.modalities.ephys.nwb import NWBOptions, read_nwb, write_nwb
from modaflow.modalities.ephys.spikes import NITIME_FILES, TrialData, bin_spike_times, load_nitime_spikes, nitime_data_dir

mne = pytest.importorskip("mne")

# ---------------------------------------------------------------- Lorenz


def test_lorenz_shapes_split_and_determinism() -> None:
    cfg = LorenzConfig(n_conditions=5, trials_per_condition=3, n_neurons=20, bins=30, fp_bins=6)
    d = make_lorenz(cfg, seed=3)
    assert d.x.shape == (15, 36, 20) and d.rates.shape == (15, 36, 20) and d.latents.shape == (15, 36, 3)
    assert (d.n_heldin, d.t_obs, d.bin_s) == (15, 30, 0.02)
    assert torch.equal(d.x, make_lorenz(cfg, seed=3).x) and not torch.equal(d.x, make_lorenz(cfg, seed=4).x)
    assert d.latents.min() == -1.0 and d.latents.max() == 1.0  # per-trial min-max to [-1, 1]
    assert torch.equal(d.rates[0], d.rates[2]) and not torch.equal(d.rates[0], d.rates[3])  # same condition
    assert torch.equal(d.condition, torch.arange(5).repeat_interleave(3))
    assert (d.x == d.x.round()).all() and (d.x >= 0).all()


def test_lorenz_poisson_counts_match_rates() -> None:
    d = make_lorenz(LorenzConfig(n_conditions=20, trials_per_condition=20), seed=0)
    assert abs(d.x.mean().item() - d.rates.mean().item()) < 0.01
    assert d.rates.min() > 0


def test_lorenz_euler_step_is_the_lorenz_field() -> None:
    x0 = np.array([[1.0, 2.0, 3.0]])
    s = lorenz_states(x0, 1, 0.01)[0, 1]
    expected = x0[0] + 0.01 * np.array([10 * (2 - 1), 1 * (28 - 3) - 2, 1 * 2 - 8 / 3 * 3])
    np.testing.assert_allclose(s, expected, rtol=0, atol=1e-12)


def test_lorenz_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="heldout_fraction"):
        LorenzConfig(heldout_fraction=1.0)


# ---------------------------------------------------------------- binning


def _slow_bin(times, starts, bin_s, n_bins):
    out = np.zeros((len(starts), n_bins, len(times)))
    for u, ts in enumerate(times):
        for t in ts:
            for i, a in enumerate(starts):
                k = math.floor((t - a) / bin_s)
                if a <= t and 0 <= k < n_bins:
                    out[i, k, u] += 1
    return out


def test_binning_matches_a_slow_loop() -> None:
    rng = np.random.default_rng(0)
    starts = np.array([0.0, 1.3, 2.9, 5.0])
    times = [np.sort(rng.uniform(0, 6.0, 200)) for _ in range(3)]
    fast = bin_spike_times(times, starts, 0.05, 20, outside="drop").numpy()
    np.testing.assert_array_equal(fast, _slow_bin(times, starts, 0.05, 20))


def test_nan_spikes_and_spikes_outside_trials_are_errors() -> None:
    starts = np.array([0.0, 2.0])
    with pytest.raises(ValueError, match="unit 1 has 1 NaN spike time"):
        bin_spike_times([np.array([0.1]), np.array([0.2, np.nan])], starts, 0.1, 10)
    with pytest.raises(ValueError, match=r"unit 0 has 2 spike\(s\) outside every trial \(first at 1.5 s"):
        bin_spike_times([np.array([0.1, 1.5, 9.0])], starts, 0.1, 10)
    counts = bin_spike_times([np.array([0.1, 1.5, 9.0])], starts, 0.1, 10, outside="drop")
    assert counts.sum() == 1


# ---------------------------------------------------------------- NWB


def _nwb_fixture(tmp_path: Path, **kw) -> tuple[Path, list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(1)
    starts = np.arange(6) * 1.5
    trials = [(a, a + 1.2) for a in starts]
    times = [np.sort(np.concatenate([rng.uniform(a, b, 15) for a, b in trials])) for _ in range(5)]
    ts = np.linspace(0, 9, 901)
    vel = np.stack([2 * ts, -ts + 1], 1)
    path = write_nwb(tmp_path / "s.nwb", times, trials, (ts, vel), heldout=[False, True, False, False, True],
                     conditions=["a", "b", "a", "b", "a", "c"], **kw)
    return path, times, starts


def test_nwb_round_trip_bins_units_trials_and_behaviour(tmp_path: Path) -> None:
    path, times, starts = _nwb_fixture(tmp_path)
    d = read_nwb(path, NWBOptions(bin_ms=20, bins=50, fp_bins=10))
    assert d.x.shape == (6, 60, 5) and (d.n_heldin, d.t_obs) == (3, 50)
    order = [0, 2, 3, 1, 4]  # held-in units first, then the 'heldout' ones
    expected = _slow_bin([times[u] for u in order], starts, 0.02, 60)
    np.testing.assert_array_equal(d.x.numpy(), expected)
    centres = starts[:, None] + (np.arange(60) + 0.5) * 0.02
    np.testing.assert_allclose(d.behavior[..., 0].numpy(), 2 * centres, rtol=1e-5)
    np.testing.assert_allclose(d.behavior[..., 1].numpy(), 1 - centres, rtol=1e-5, atol=1e-5)
    assert d.condition.tolist() == [0, 1, 0, 1, 0, 2]
    spec = D.load_trials(f"nwb:{path}", D.DataOptions())
    assert torch.equal(spec.x, d.x)


def test_nwb_bad_inputs(tmp_path: Path) -> None:
    empty = write_nwb(tmp_path / "nounits.nwb", [], [(0.0, 1.0)])
    with pytest.raises(ValueError, match="nounits.nwb: the NWB file has no units table"):
        read_nwb(empty)
    path = write_nwb(tmp_path / "outside.nwb", [np.array([0.5, 7.0])], [(0.0, 1.2), (2.0, 3.2)])
    with pytest.raises(ValueError, match="outside.nwb: unit 0 has 1 spike.*outside every trial"):
        read_nwb(path)
    nan = write_nwb(tmp_path / "nan.nwb", [np.array([0.5, np.nan]), np.array([0.1])], [(0.0, 1.2)])
    with pytest.raises(ValueError, match="nan.nwb: unit 0 has 1 NaN spike time"):
        read_nwb(nan)
    (tmp_path / "junk.nwb").write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="junk.nwb: not a readable NWB file"):
        read_nwb(tmp_path / "junk.nwb")
    with pytest.raises(FileNotFoundError, match="missing.nwb"):
        read_nwb(tmp_path / "missing.nwb")


# ---------------------------------------------------------------- nitime


def test_nitime_spikes_are_the_package_files() -> None:
    d = load_nitime_spikes(bin_s=0.02, n_bins=60, fp_bins=10)
    assert d.x.shape == (8, 60, 2) and d.n_heldin == 1
    for u, name in enumerate(NITIME_FILES):
        t = np.loadtxt(Path(nitime_data_dir()) / name) * 1e-6
        assert d.x[..., u].sum() == (t < 8 * 1.2).sum()


# ---------------------------------------------------------------- EEG / MEG


def _raw(sfreq=100.0, seconds=20.0, n_ch=6):
    t = np.arange(int(sfreq * seconds)) / sfreq
    rng = np.random.default_rng(0)
    data = np.stack([np.sin(2 * np.pi * (3 + i) * t) + 0.1 * rng.standard_normal(t.size) for i in range(n_ch)]) * 1e-5
    info = mne.create_info([f"EEG{i}" for i in range(n_ch)], sfreq, "eeg")
    raw = mne.io.RawArray(data, info, verbose="error")
    raw.set_annotations(mne.Annotations([2.0, 6.0, 12.5], [0.1, 0.1, 0.1], ["go", "go", "stop"]))
    return raw


def test_fif_round_trip_epochs_by_event_and_picks(tmp_path: Path) -> None:
    raw = _raw()
    path = tmp_path / "rec_raw.fif"
    raw.save(path, verbose="error")
    opts = E.EEGOptions(event="go", epoch_s=1.0, fp_s=0.2, l_freq=0, h_freq=0, picks="EEG0,EEG2,EEG5")
    d = E.load_eeg_file(path, opts)
    assert d.x.shape == (2, 100, 3) and d.channel_names == ("EEG0", "EEG2", "EEG5") and d.t_obs == 80
    data = raw.get_data(picks=["EEG0", "EEG2", "EEG5"])
    z = (data - data.mean(1, keepdims=True)) / data.std(1, keepdims=True)
    np.testing.assert_allclose(d.x[1].numpy(), z[:, 600:700].T, rtol=1e-5, atol=1e-5)  # 'go' at 6.0 s
    windows = E.load_eeg_file(path, E.EEGOptions(epoch_s=1.0, overlap_s=0.5, sfreq=50.0, h_freq=20.0))
    assert windows.x.shape == (39, 50, 6) and windows.bin_s == 1 / 50


def test_eeg_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "rec_raw.fif"
    _raw(seconds=13.0).save(path, verbose="error")
    with pytest.raises(ValueError, match=r"rec_raw.fif: 1 event epoch\(s\) of 'stop' reach beyond the recording"):
        E.load_eeg_file(path, E.EEGOptions(event="stop", epoch_s=1.0, fp_s=0.2))
    with pytest.raises(ValueError, match="no event 'nope'"):
        E.load_eeg_file(path, E.EEGOptions(event="nope"))
    with pytest.raises(ValueError, match=r"channels \['XYZ'\] not in the recording"):
        E.load_eeg_file(path, E.EEGOptions(picks="EEG0,XYZ"))
    with pytest.raises(ValueError, match="below the Nyquist"):
        E.load_eeg_file(path, E.EEGOptions(sfreq=50.0, h_freq=30.0))
    (tmp_path / "empty.edf").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.edf: the file is empty"):
        E.load_eeg_file(tmp_path / "empty.edf")


def _write_edf(path: Path, rates: list[int], seconds: int = 10) -> None:
    pyedflib = pytest.importorskip("pyedflib")
    headers = [{"label": f"EEG{i}", "dimension": "uV", "sample_frequency": r, "physical_max": 500,
                "physical_min": -500, "digital_max": 32767, "digital_min": -32768} for i, r in enumerate(rates)]
    rng = np.random.default_rng(0)
    signals = [100 * np.sin(2 * np.pi * 5 * np.arange(r * seconds) / r) + rng.normal(0, 10, r * seconds) for r in rates]
    with pyedflib.EdfWriter(str(path), len(rates), file_type=pyedflib.FILETYPE_EDFPLUS) as w:
        w.setSignalHeaders(headers)
        w.writeSamples(signals)


def test_edf_written_and_read_back_through_mne(tmp_path: Path) -> None:
    path = tmp_path / "rec.edf"
    _write_edf(path, [128, 128, 128, 128])
    d = D.load_trials(f"eeg:{path}", D.DataOptions(epoch_s=1.0, overlap_s=0.0, fp_s=0.25))
    assert d.x.shape == (10, 128, 4) and d.likelihood == "gaussian" and d.n_heldin == 3
    raw = E.read_raw(path)
    assert raw.info["sfreq"] == 128 and raw.ch_names == ["EEG0", "EEG1", "EEG2", "EEG3"]


@pytest.mark.parametrize("fmt,suffix,module,event,atol", [
    ("edf", ".edf", "edfio", "go", 2e-9),  # 16-bit EDF quantisation
    ("eeglab", ".set", "eeglabio", "go", 1e-10),
    ("brainvision", ".vhdr", "pybv", "Comment/go", 1e-10),
])
def test_files_exported_by_mne_read_back_and_epoch_on_their_events(tmp_path: Path, fmt, suffix, module, event, atol) -> None:
    pytest.importorskip(module)  # mne's writer for this format
    raw = _raw(sfreq=100.0, seconds=10.0, n_ch=3)
    path = tmp_path / f"rec{suffix}"
    mne.export.export_raw(path, raw, fmt=fmt, verbose="error")
    back = E.read_raw(path)
    assert back.n_times == raw.n_times and back.ch_names == raw.ch_names
    np.testing.assert_allclose(back.get_data(), raw.get_data(), rtol=0, atol=atol)
    d = D.load_trials(f"eeg:{path}", D.DataOptions(event=event, epoch_s=1.0, fp_s=0.2, l_freq=0, h_freq=0))
    assert d.x.shape == (2, 100, 3) and d.t_obs == 80  # the two 'go' annotations at 2 s and 6 s


def test_edf_with_inconsistent_sampling_rates_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "mixed.edf"
    _write_edf(path, [128, 256])
    with pytest.raises(ValueError, match=r"mixed.edf: EDF signals have inconsistent sampling rates \(128, 256 Hz\)"):
        E.read_raw(path)


def test_brainvision_file_reads_through_mne_and_epochs_on_its_marker(tmp_path: Path) -> None:
    """A BrainVision triplet (.vhdr text header, .vmrk markers, multiplexed float32 .eeg),
    written to the format's specification, read by mne.io.read_raw."""
    sfreq, n, chans = 100, 1000, ["Fz", "Cz", "Pz"]
    rng = np.random.default_rng(0)
    data = rng.normal(0, 20, size=(n, 3)).astype("<f4")  # µV
    data.tofile(tmp_path / "rec.eeg")
    (tmp_path / "rec.vhdr").write_text(
        "Brain Vision Data Exchange Header File Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\nDataFile=rec.eeg\n"
        "MarkerFile=rec.vmrk\nDataFormat=BINARY\nDataOrientation=MULTIPLEXED\nNumberOfChannels=3\n"
        f"SamplingInterval={1_000_000 // sfreq}\n\n[Binary Infos]\nBinaryFormat=IEEE_FLOAT_32\n\n[Channel Infos]\n"
        + "".join(f"Ch{i + 1}={c},,1,µV\n" for i, c in enumerate(chans)), encoding="utf-8")
    (tmp_path / "rec.vmrk").write_text(
        "Brain Vision Data Exchange Marker File, Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\nDataFile=rec.eeg\n\n"
        "[Marker Infos]\nMk1=New Segment,,1,1,0\nMk2=Stimulus,S  1,201,1,0\nMk3=Stimulus,S  1,601,1,0\n", encoding="utf-8")
    raw = E.read_raw(tmp_path / "rec.vhdr")
    assert raw.ch_names == chans and raw.info["sfreq"] == sfreq
    np.testing.assert_allclose(raw.get_data().T, data * 1e-6, rtol=1e-6)
    d = E.load_eeg_file(tmp_path / "rec.vhdr", E.EEGOptions(event="Stimulus/S  1", epoch_s=1.0, fp_s=0.2, l_freq=0, h_freq=0))
    z = (data - data.mean(0)) / data.std(0)
    assert d.x.shape == (2, 100, 3)
    np.testing.assert_allclose(d.x[1].numpy(), z[600:700], rtol=1e-4, atol=1e-4)  # marker at sample 601 (1-based)


def test_stim_channel_events_epoch_on_the_unfiltered_codes_and_stay_out_of_the_data(tmp_path: Path) -> None:
    import mne

    raw = _raw()
    stim = np.zeros((1, raw.n_times))
    stim[0, [300, 900, 1500]] = [3, 3, 5]  # id 3 at 3 s and 9 s, id 5 at 15 s (100 Hz)
    raw.add_channels([mne.io.RawArray(stim, mne.create_info(["STI"], raw.info["sfreq"], "stim"), verbose="error")])
    path = tmp_path / "stim_raw.fif"
    raw.save(path, verbose="error")
    for picks in ("data", "all"):  # "all": the stim channel is still excluded from the signal
        d = E.load_eeg_file(path, E.EEGOptions(event="3", epoch_s=1.0, fp_s=0.2, picks=picks, sfreq=50.0, h_freq=20.0))  # filtered, resampled
        assert d.x.shape == (2, 50, 6) and "STI" not in d.channel_names
    plain = E.load_eeg_file(path, E.EEGOptions(event="3", epoch_s=1.0, fp_s=0.2, l_freq=0, h_freq=0))
    data = raw.get_data(picks="eeg")
    z = (data - data.mean(1, keepdims=True)) / data.std(1, keepdims=True)
    np.testing.assert_allclose(plain.x[1].numpy(), z[:, 900:1000].T, rtol=1e-5, atol=1e-5)  # the event at 9 s


def test_a_bare_eeg_path_is_split_in_time_and_a_short_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rec_raw.fif"
    _raw().save(path, verbose="error")
    opts = D.DataOptions()
    for spec in (str(path), f"eeg:{path}"):
        d = D.load_trials(spec, opts)
        split = D.split_data(d, spec, opts, 0)
        first_test = d.x.shape[0] - split["test"].x.shape[0]
        assert torch.equal(split["train"].x, d.x[: split["train"].x.shape[0]])  # contiguous, not shuffled
        assert torch.equal(split["test"].x[0], d.x[first_test])
    short = tmp_path / "short_raw.fif"
    raw = _raw()
    raw.crop(0, 1.99).save(short, verbose="error")  # 2 s: 13 windows of 0.5 s every 0.125 s
    d = D.load_trials(str(short), opts)
    with pytest.raises(ValueError, match=r"short_raw.fif: too few windows \(13\) for a train/test split in time"):
        D.split_data(d, str(short), opts, 0)


def test_non_finite_samples_are_located(tmp_path: Path) -> None:
    x = torch.zeros(2, 4, 3)
    x[1, 2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"rec.fif: the recording holds NaN or Inf values \(first: trial 1, bin 2, "
                                         r"channel 'Cz'\)"):
        TrialData(x=x, n_heldin=2, t_obs=3, bin_s=0.01, likelihood="gaussian", channel_names=("Fz", "Cz", "Pz"),
                    source="rec.fif")


def test_packaged_eeg_recordings() -> None:
    raw = E.spkit_raw()
    assert raw.info["sfreq"] == 128 and len(raw.ch_names) == 14 and raw.n_times == 2048
    assert E.pyedflib_path().suffix == ".edf"


def test_time_split_of_sliding_windows_does_not_overlap() -> None:
    opts = D.DataOptions()
    d = D.load_trials("spkit", opts)
    split = D.split_data(d, "spkit", opts, 0)
    n_train, step = split["train"].x.shape[0], 16
    first_test = d.x.shape[0] - split["test"].x.shape[0]
    assert first_test * step >= (n_train - 1) * step + 64  # test windows start after the last training window
    assert torch.equal(split["test"].x[0], d.x[first_test])


def test_unknown_data_spec_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown ephys data 'mnist'; expected one of \['lorenz'"):
        D.load_trials("mnist")
