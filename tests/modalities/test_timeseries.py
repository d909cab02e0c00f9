"""Time-series modality: data (protocol generators, windows, time splits, scaling, user
files and their bad-input errors) and metrics against slow obvious references and known
cases."""

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.signal
import torch

from modaflow.modalities.timeseries import data as D
from modaflow.modalities.timeseries import metrics as M
from modaflow.modalities.timeseries import sources as S
from modaflow.modalities.timeseries import ts2vec as T


# ---------------------------------------------------------------- data


def test_sines_follow_the_protocol_formula_exactly() -> None:
    src = S.sines(n=50, length=24, channels=5, seed=3)
    rng = np.random.default_rng(3)
    f, phi = rng.uniform(0, 0.1, (50, 1, 5)), rng.uniform(0, 0.1, (50, 1, 5))
    for i, k in [(0, 0), (7, 3), (49, 4)]:
        want = [(math.sin(f[i, 0, k] * j + phi[i, 0, k]) + 1) / 2 for j in range(24)]
        np.testing.assert_allclose(src.values[i, :, k], want, rtol=0, atol=1e-15)
    assert src.values.shape == (50, 24, 5) and src.kind == "samples"
    assert 0.5 <= src.values.min() and src.values.max() <= 1.0


def test_mujoco_hopper_initial_states_and_determinism() -> None:
    a = S.mujoco_hopper(n=3, length=5, seed=1)
    assert a.values.shape == (3, 5, 14) and len(a.channels) == 14
    first = a.values[:, 0]
    assert ((0 <= first[:, :2]) & (first[:, :2] <= 0.5)).all()
    assert ((-2 <= first[:, 2:7]) & (first[:, 2:7] <= 2)).all()
    assert ((-5 <= first[:, 7:]) & (first[:, 7:] <= 5)).all()
    np.testing.assert_array_equal(a.values, S.mujoco_hopper(n=3, length=5, seed=1).values)
    assert not np.array_equal(a.values[:, 1:], a.values[:, :-1])  # the simulator moves


def test_sliding_windows_known_case_and_short_series() -> None:
    x = np.arange(10.0)[:, None]
    w = D.sliding_windows(x, 4, 3, "s")
    np.testing.assert_array_equal(w[:, :, 0], [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
    with pytest.raises(ValueError, match="short.csv: the series has 3 time steps, shorter than the window length 4"):
        D.sliding_windows(x[:3], 4, 1, "short.csv")


def test_series_split_is_contiguous_in_time_and_never_overlaps() -> None:
    x = np.arange(100.0)[:, None] * np.ones((1, 2))
    w = D.split_windows(S.Source(x, ("a", "b"), "series"), length=8, stride=1, test_fraction=0.2)
    assert w.train[:, -1, 0].max() < w.test[:, 0, 0].min()  # every train step precedes every test step
    assert w.train[-1, -1, 0] == 79 and w.test[0, 0, 0] == 80 and w.test[-1, -1, 0] == 99
    assert len(w.train) == 80 - 8 + 1 and len(w.test) == 20 - 8 + 1
    with pytest.raises(ValueError, match="test part .* shorter than the window length 24"):
        D.split_windows(S.Source(x, ("a", "b"), "series"), length=24, test_fraction=0.1, where="f.csv")


def test_scaler_is_fitted_on_train_only_and_round_trips_in_float64(tmp_path) -> None:
    rng = np.random.default_rng(0)
    train, test = rng.normal(5, 2, (30, 8, 3)), rng.normal(50, 2, (10, 8, 3))
    sc = D.Scaler.fit(train, "minmax", ("a", "b", "c"))
    np.testing.assert_allclose(sc.shift, train.reshape(-1, 3).min(0))
    u = sc.transform(train)
    assert u.min() == 0.0 and u.max() == 1.0 and sc.transform(test).min() > 1.0  # test not seen by the fit
    np.testing.assert_allclose(sc.inverse(sc.transform(test)), test, rtol=1e-13)
    np.testing.assert_allclose(sc.from_model(sc.to_model(u).double()), u, atol=1e-6)
    st = D.Scaler.fit(train, "standard", ("a", "b", "c"))
    np.testing.assert_allclose(st.transform(train).reshape(-1, 3).std(0), 1.0, rtol=1e-12)
    loaded = D.Scaler.load(sc.save(tmp_path / "scaler.json"))
    assert loaded == sc
    with pytest.raises(ValueError, match="2 channels, but the model was trained on 3"):
        sc.transform(train[..., :2])



def test_identity_scaler_maps_the_training_range_onto_the_network_range(tmp_path) -> None:
    """Sines keep the protocol's metric space ([0.5, 1]) while the network sees [-1, 1]
    (the training split's per-channel range, fitted on train only); a scaler saved
    without the range keeps the old ``2u - 1``."""
    train = S.sines(200, 24, seed=0).values
    sc = D.Scaler.fit(train, "identity", tuple("abcde"))
    np.testing.assert_array_equal(sc.transform(train), train)  # the metric space is unchanged
    z = sc.to_model(train).double().numpy()
    np.testing.assert_allclose(z.reshape(-1, 5).min(0), -1.0, atol=1e-6)
    np.testing.assert_allclose(z.reshape(-1, 5).max(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(sc.from_model(torch.as_tensor(z)), train, atol=1e-6)  # float32 network space
    assert D.Scaler.load(sc.save(tmp_path / "s.json")) == sc
    old = D.Scaler("identity", sc.shift, sc.scale, sc.channels)  # as written before the range was saved
    np.testing.assert_allclose(old.to_model(train).double().numpy(), 2 * train - 1, atol=1e-6)
    mm = D.Scaler.fit(train, "minmax", tuple("abcde"))  # minmax: still exactly 2u - 1
    np.testing.assert_allclose(mm.to_model(mm.transform(train)).double().numpy(), 2 * mm.transform(train) - 1, atol=1e-6)

def _write_csv(path, rows: str) -> str:
    path.write_text(rows)
    return str(path)


def test_csv_and_parquet_tables_sorted_by_time(tmp_path) -> None:
    import pandas as pd

    csv = _write_csv(tmp_path / "s.csv", "date,a,b\n2020-01-03,3,30\n2020-01-01,1,10\n2020-01-02,2,20\n")
    src = S.read_table(csv)
    np.testing.assert_array_equal(src.values, [[1, 10], [2, 20], [3, 30]])
    assert src.channels == ("a", "b") and src.mask is None
    df = pd.DataFrame({"t": np.arange(40), "x": np.sin(np.arange(40.0)), "y": np.arange(40.0) ** 2})
    df.iloc[::-1].to_parquet(tmp_path / "s.parquet")
    src = S.read_table(tmp_path / "s.parquet", time_column="t")
    np.testing.assert_array_equal(src.values, df[["x", "y"]].to_numpy())


def test_dates_sort_as_dates_not_strings_and_a_text_channel_is_never_time(tmp_path) -> None:
    import pandas as pd

    days = pd.date_range("2020-12-30", periods=4, freq="D")  # across a year boundary: string order differs
    for fmt in ("%m/%d/%Y", "%d.%m.%Y"):
        rows = "".join(f"{d.strftime(fmt)},{i}\n" for i, d in enumerate(days))
        src = S.read_table(_write_csv(tmp_path / "d.csv", "date," + "a\n" + rows))
        np.testing.assert_array_equal(src.values[:, 0], [0, 1, 2, 3])  # already in time order: kept so
    # day first, the first day <= 12: pandas guessed month first from '01/01/2021' and failed at the first day > 12
    jan = pd.date_range("2021-01-01", periods=15, freq="D")
    rows = "".join(f"{jan[i].strftime('%d/%m/%Y')},{i}\n" for i in [0, *range(14, 0, -1)])  # first row 01/01, then unsorted
    np.testing.assert_array_equal(S.read_table(_write_csv(tmp_path / "eu.csv", "date,a\n" + rows)).values[:, 0], np.arange(15))
    rows = "".join(f"{d.strftime('%m/%d/%Y')},{i}\n" for i, d in reversed(list(enumerate(days))))
    np.testing.assert_array_equal(S.read_table(_write_csv(tmp_path / "r.csv", "when,a\n" + rows)).values[:, 0], [0, 1, 2, 3])
    # no time column, one bad cell in channel b: an error naming it, not b taken as time
    with pytest.raises(ValueError, match=r"dirty.csv: channel columns must be numeric; column\(s\) \['b'\].*'oops' in row 1"):
        S.read_table(_write_csv(tmp_path / "dirty.csv", "a,b,c\n1,2,3\n4,oops,6\n7,8,9\n"))
    with pytest.raises(ValueError, match=r"t.csv: time column 'time' holds values that are neither numbers nor dates"):
        S.read_table(_write_csv(tmp_path / "t.csv", "time,a\nfirst,1\nsecond,2\n"))
    # a Parquet file written from a time-indexed frame, rows out of order
    df = pd.DataFrame({"x": np.arange(6.0)}, index=pd.date_range("2021-01-01", periods=6, freq="h"))
    df.iloc[[3, 0, 5, 1, 4, 2]].to_parquet(tmp_path / "idx.parquet")
    np.testing.assert_array_equal(S.read_table(tmp_path / "idx.parquet").values[:, 0], np.arange(6.0))
    pd.DataFrame({"a": np.arange(4.0), "b": np.ones(4)}).to_csv(tmp_path / "pandas.csv")  # its index too
    assert S.read_table(tmp_path / "pandas.csv").channels == ("a", "b")


@pytest.mark.parametrize(
    "text,allow,message",
    [
        ("", False, "bad.csv: the file is empty"),
        ("time,a,b\n", False, "bad.csv: the table has a header but no rows"),
        ("time,a,b\n1,1,2\n2,,3\n", False, r"bad.csv: 1 missing value\(s\)/NaN, the first in row 1 .*column 'a'.*--task impute"),
        ("time,a,b\n1,1,2\n2,inf,3\n", True, "bad.csv: Inf in row 1"),
        ("time,a,b\n1,1,x\n2,2,y\n", False, r"bad.csv: channel columns must be numeric; column\(s\) \['b'\]"),
        ("time,a\n3,1\n1,2\n3,3\n", False, r"bad.csv: time column 'time' holds 1 repeated value\(s\); the first, 3, in "
                                             r"rows 0 and 2: one row per time step"),
        ("date,a\n2020-01-02,1\n2020-01-01,2\n2020-01-02,3\n", False, r"bad.csv: time column 'date' holds 1 repeated "
                                                                      r"value\(s\); the first, '2020-01-02', in rows 0 and 2"),
        # a row without its time: was sorted to the end silently (one) or an IndexError (two, as "repeats")
        ("date,a\n2020-01-01,1\n,2\n2020-01-03,3\n", False, r"bad.csv: time column 'date' has 1 empty value\(s\), the "
                                                           r"first in row 1; every row needs its time"),
        ("time,a\n1,1\n,2\n,3\n4,4\n", False, r"bad.csv: time column 'time' has 2 empty value\(s\), the first in row 1"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, text, allow, message) -> None:
    with pytest.raises(ValueError, match=message):
        S.read_table(_write_csv(tmp_path / "bad.csv", text), allow_missing=allow)


def test_pandas_row_index_beside_a_date_column_is_not_a_channel(tmp_path) -> None:
    import pandas as pd

    df = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=5, freq="D").strftime("%Y-%m-%d"),
                       "a": np.arange(5.0), "b": 10 + np.arange(5.0)})
    df.iloc[::-1].to_csv(tmp_path / "indexed.csv")  # pandas' default: its row index (4..0) as a nameless first column
    src = S.read_table(tmp_path / "indexed.csv")
    assert src.channels == ("a", "b")
    np.testing.assert_array_equal(src.values, [[0, 10], [1, 11], [2, 12], [3, 13], [4, 14]])


def test_missing_values_become_a_mask_when_imputing(tmp_path) -> None:
    src = S.read_table(_write_csv(tmp_path / "m.csv", "time,a,b\n1,1,2\n2,,3\n3,4,nan\n"), allow_missing=True)
    np.testing.assert_array_equal(src.mask, [[1, 1], [0, 1], [1, 0]])
    np.testing.assert_array_equal(src.values, [[1, 2], [0, 3], [4, 0]])


def test_package_datasets_load_offline() -> None:
    st = S.stocks()
    assert st.values.shape == (2148, 6) and st.kind == "series" and np.isfinite(st.values).all()
    ipd = S.sktime_set("italypowerdemand")
    assert ipd.values.shape == (67, 24, 1) and ipd.test_values.shape == (1029, 24, 1)
    with pytest.raises(ValueError, match="unknown sktime dataset 'nope'"):
        S.sktime_set("nope")
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        D.load_source("nope")


def test_saved_samples_round_trip(tmp_path) -> None:
    x = np.random.default_rng(0).normal(size=(3, 4, 2))
    np.testing.assert_array_equal(np.load(D.save_samples(tmp_path / "s.npy", x, ("a", "b"))), x)
    table = np.loadtxt(D.save_samples(tmp_path / "s.csv", x, ("a", "b")), delimiter=",", skiprows=1)
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "sample,step,a,b"
    np.testing.assert_allclose(table[:, 2:].reshape(3, 4, 2), x, rtol=1e-9)
    np.testing.assert_array_equal(table[:5, :2], [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0]])


# ---------------------------------------------------------------- metrics


def test_correlational_score_matches_a_slow_loop_and_is_zero_for_identical_sets() -> None:
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(40, 10, 3)), rng.normal(size=(30, 10, 3)) @ rng.normal(size=(3, 3))

    def slow(x):
        z = (x - x.mean(axis=(0, 1))) / x.reshape(-1, x.shape[2]).std(axis=0, ddof=1)
        return {(i, j): np.mean([np.mean(z[n, :, i] * z[n, :, j]) for n in range(len(x))])
                for i in range(3) for j in range(i + 1)}

    a, b = slow(real), slow(fake)
    want = sum(abs(a[k] - b[k]) for k in a) / 10
    assert M.correlational_score(real, fake) == pytest.approx(want, rel=1e-12)
    assert M.correlational_score(real, real) == 0.0
    # the protocol's estimator: subset windows of each set drawn with replacement (Diffusion-TS's random_choice)
    rng = np.random.default_rng(7)
    ri, fi = rng.integers(0, len(real), 8), rng.integers(0, len(fake), 8)
    a, b = slow(real[ri]), slow(fake[fi])
    assert M.correlational_score(real, fake, subset=8, seed=7) == pytest.approx(sum(abs(a[k] - b[k]) for k in a) / 10,
                                                                                rel=1e-12)
    # its sampling noise raises the score of two draws of one law, the reason published numbers need it
    x, y = rng.normal(size=(2000, 24, 3)), rng.normal(size=(2000, 24, 3))
    whole = M.correlational_score(x, y)
    assert np.mean([M.correlational_score(x, y, subset=400, seed=k) for k in range(5)]) > 1.5 * whole


def test_roughness_matches_a_slow_loop_and_sees_added_white_noise() -> None:
    rng = np.random.default_rng(0)
    j = np.arange(24)
    real = np.stack([np.stack([a * (j / 23) ** 2, np.sin(f * j)], axis=1) for a, f in rng.uniform(0.05, 0.5, (4000, 2))])
    assert M.roughness(real, real) == 1.0
    noisy = real + rng.normal(0.0, 0.01, real.shape)
    d2 = lambda x, c: np.array([x[n, k + 1, c] - 2 * x[n, k, c] + x[n, k - 1, c] for n in range(len(x)) for k in range(1, 23)])
    slow = max(d2(noisy, c).std() / d2(real, c).std() for c in range(2))
    assert M.roughness(real, noisy) == pytest.approx(slow, rel=1e-10)
    # independent white noise of std s adds (1 + 4 + 1) s^2 to the second difference's variance
    want = max(np.sqrt(1 + 6 * 0.01 ** 2 / d2(real, c).var()) for c in range(2))
    assert M.roughness(real, noisy) == pytest.approx(want, rel=0.02)
    lines = np.stack([a * j / 23 for a in rng.uniform(0.05, 0.5, 100)])[:, :, None]  # straight: rounding only
    assert M.roughness(np.concatenate([lines, real[:100, :, 1:]], 2), np.concatenate([lines + 1, noisy[:100, :, 1:]], 2)) \
        == pytest.approx(M.roughness(real[:100, :, 1:], noisy[:100, :, 1:]))  # the straight channel is left out
    with pytest.raises(ValueError, match="every real channel is a straight line"):
        M.roughness(lines, lines + rng.normal(0.0, 0.01, lines.shape))
    with pytest.raises(ValueError, match="windows"):
        M.roughness(real, noisy[:, :10])


def test_closest_distances_skip_exactly_the_overlapping_windows_and_match_a_slow_loop() -> None:
    rng = np.random.default_rng(0)
    # two series cut with stride 2 into windows of 5 (each window overlaps the next two of its series), then windows
    # of independent samples (no overlap)
    series = [rng.normal(size=(17, 2)).cumsum(0), rng.normal(size=(13, 2)).cumsum(0)]
    windows = np.concatenate([D.sliding_windows(x, 5, 2) for x in series] + [rng.normal(size=(6, 5, 2))])
    n_a, n_b = len(D.sliding_windows(series[0], 5, 2)), len(D.sliding_windows(series[1], 5, 2))
    series_of = [0] * n_a + [1] * n_b + [2 + k for k in range(6)]
    start = list(range(0, 2 * n_a, 2)) + list(range(0, 2 * n_b, 2)) + [0] * 6

    def overlaps(i: int, j: int) -> bool:  # the truth, from how the windows were cut
        return series_of[i] == series_of[j] and series_of[i] < 2 and abs(start[i] - start[j]) < 5

    ov = M.overlapping_neighbours(windows, 2)
    assert ov.shape == (len(windows), 2)
    assert [[bool(ov[i, k - 1]) for k in (1, 2)] for i in range(len(windows))] == \
        [[i + k < len(windows) and overlaps(i, i + k) for k in (1, 2)] for i in range(len(windows))]
    flat = windows.reshape(len(windows), -1)
    slow = [min(np.linalg.norm(flat[i] - flat[j]) for j in range(len(windows)) if j != i and not overlaps(i, j))
            for i in range(len(windows))]
    np.testing.assert_allclose(M.closest_distances(windows, windows, stride=2, chunk=4), slow, rtol=1e-12)
    fake = rng.normal(size=(9, 5, 2))
    slow = [min(np.linalg.norm(f.ravel() - r) for r in flat) for f in fake]
    np.testing.assert_allclose(M.closest_distances(fake, windows, chunk=4), slow, rtol=1e-12)
    with pytest.raises(ValueError, match="query must be the reference itself"):
        M.closest_distances(fake, windows, stride=2)
    with pytest.raises(ValueError, match="windows"):
        M.closest_distances(fake[:, :3], windows)


def test_dcr_ratio_is_zero_for_copies_and_about_one_for_new_draws() -> None:
    rng = np.random.default_rng(1)
    real = rng.normal(size=(3000, 4, 2))
    assert M.dcr_ratio(real, real[:500], stride=4) < 1e-6  # copies of training windows (cdist's matmul round-off)
    # a fresh draw: its closest of 3000 training windows lies as far as a training window's closest of the other 2999
    assert M.dcr_ratio(real, rng.normal(size=(3000, 4, 2)), stride=4) == pytest.approx(1.0, abs=0.03)
    # sliding windows of one smooth series (AR(1), coefficient 0.9): a training window's neighbour one step on is a
    # near-copy, so a fresh stretch of the process scores about 1 only when the overlapping windows are left out
    ar = lambda n: scipy.signal.lfilter([1.0], [1.0, -0.9], rng.normal(size=(n + 23, 2)), axis=0)
    train = D.sliding_windows(ar(4000), 24, 1)
    fresh = D.sliding_windows(ar(4000), 24, 1)[::24]
    own = M.closest_distances(train, train, stride=1)
    assert M.dcr_ratio(train, fresh, 1, own) == pytest.approx(M.dcr_ratio(train, fresh, 1), rel=1e-12)
    assert 0.9 < M.dcr_ratio(train, fresh, 1) < 1.1
    assert M.dcr_ratio(train, fresh, 24) > 1.2  # read as non-overlapping windows: only each window itself is left out
    with pytest.raises(ValueError, match="two training windows that do not overlap"):
        M.dcr_ratio(train[:3], fresh, 1)


def test_frechet_distance_matches_scipy_sqrtm() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 12)), rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a + s_b - 2 * np.real(scipy.linalg.sqrtm(s_a @ s_b)))
    assert M.frechet_distance(a, b) == pytest.approx(want, rel=1e-9)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # two Gaussians with known moments: |mu|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) for diagonal S
    assert M.frechet_distance(a, a + 2.0) == pytest.approx(12 * 4.0, rel=1e-9)


def test_crps_matches_the_pairwise_formula_and_the_gaussian_closed_form() -> None:
    rng = np.random.default_rng(2)
    s, y = rng.normal(size=(7, 3, 4)), rng.normal(size=(3, 4))
    slow = np.mean(np.abs(s - y).mean(0) - 0.5 * np.mean(np.abs(s[:, None] - s[None, :]), axis=(0, 1)))
    assert M.crps_samples(s, y) == pytest.approx(slow, rel=1e-12)
    assert M.crps_samples(s[:1], y) == pytest.approx(np.abs(s[0] - y).mean(), rel=1e-12)  # one sample: MAE
    draws = rng.normal(size=(20000, 1))
    closed = 2 * math.exp(0) / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi)  # CRPS(N(0,1), 0)
    assert M.crps_samples(draws, np.zeros(1)) == pytest.approx(closed, abs=0.01)
    mask = np.zeros((3, 4))
    mask[0, 0] = 1
    assert M.crps_samples(s, y, mask) == pytest.approx(
        np.abs(s[:, 0, 0] - y[0, 0]).mean() - 0.5 * np.abs(s[:, None, 0, 0] - s[None, :, 0, 0]).mean(), rel=1e-12)
    assert M.point_errors(s, y, mask)["mae"] == pytest.approx(abs(s[:, 0, 0].mean() - y[0, 0]), rel=1e-12)


def test_discriminative_score_separable_is_one_half_and_identical_is_near_zero() -> None:
    rng = np.random.default_rng(3)
    real = rng.uniform(0.0, 0.3, (200, 8, 4))
    assert M.discriminative_score(real, real + 0.6, iterations=200, seed=0) == 0.5
    same = M.discriminative_score(real, rng.uniform(0.0, 0.3, (200, 8, 4)), iterations=200, seed=0)
    assert same < 0.15


@pytest.mark.parametrize("n_real, n_fake", [(1, 1), (2, 3), (10, 10), (37, 50), (256, 256), (9000, 9000)])
def test_discriminative_chance_is_the_binomial_mean_absolute_deviation(n_real, n_fake) -> None:
    from scipy.stats import binom

    # the held-out 20% of each set, as discriminative_score splits them
    N = (n_real - int(0.8 * n_real)) + (n_fake - int(0.8 * n_fake))
    k = np.arange(N + 1)
    exact = float(np.sum(binom.pmf(k, N, 0.5) * np.abs(k / N - 0.5)))  # slow: the sum over every count
    assert M.discriminative_chance(n_real, n_fake) == pytest.approx(exact, rel=1e-9)
    if N >= 1000:  # the normal approximation sqrt(2 / pi) / (2 sqrt(N))
        assert M.discriminative_chance(n_real, n_fake) == pytest.approx(math.sqrt(2 / math.pi) / (2 * math.sqrt(N)), rel=1e-3)


def test_discriminative_chance_is_what_random_guesses_score() -> None:
    rng = np.random.default_rng(5)
    N = 2 * (100 - int(0.8 * 100))
    guesses = rng.integers(0, 2, (200_000, N), dtype=np.int8)  # 1 = "real"; the first N / 2 windows are real
    acc = (guesses[:, : N // 2].sum(1) + (1 - guesses[:, N // 2 :]).sum(1)) / N
    mc = np.abs(acc - 0.5)
    assert M.discriminative_chance(100, 100) == pytest.approx(mc.mean(), abs=4 * mc.std() / math.sqrt(len(mc)))
    with pytest.raises(ValueError, match="at least one window"):
        M.discriminative_chance(0, 5)


def test_predictive_score_learns_a_deterministic_relation() -> None:
    rng = np.random.default_rng(4)
    x = rng.uniform(0.1, 0.9, (256, 10, 4))
    x[:, 1:, 3] = x[:, :-1, 0]  # the last channel at j+1 = channel 0 at j
    noise = rng.uniform(0.1, 0.9, (256, 10, 4))
    good = M.predictive_score(x, x, iterations=100, seed=0, lr=0.02)
    bad = M.predictive_score(x, noise, iterations=100, seed=0, lr=0.02)
    assert good < 0.05 and bad > 0.15  # independent uniforms: MAE of the best constant is 0.2


def test_contrastive_loss_matches_a_slow_softmax_loop() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 4, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    total = 0.0
    for s in range(3):
        z = torch.cat([z1[s], z2[s]])  # (2K, D)
        K = 4
        for i, j in itertools.chain(((i, K + i) for i in range(K)), ((K + i, i) for i in range(K))):
            others = [k for k in range(2 * K) if k != i]
            logits = torch.stack([z[i] @ z[k] for k in others])
            total += -(torch.log_softmax(logits, 0)[others.index(j)]) / (2 * K)
    assert float(T._contrast(z1, z2)) == pytest.approx(float(total) / 3, rel=1e-10)


def test_ts2vec_embeds_series_and_context_fid_of_identical_sets_is_zero() -> None:
    x = torch.rand(32, 12, 2)
    enc = T.train_ts2vec(x, T.TS2VecConfig(hidden=8, depth=2, output=16, iterations=3), seed=0)
    assert T.embed(enc, x).shape == (32, 16)
    assert M.context_fid(enc, x, x) == pytest.approx(0.0, abs=1e-6)
    assert M.context_fid(enc, x, x + 1.0) > 0.0


def test_semicolon_separated_files_with_decimal_commas_read_as_numbers(tmp_path) -> None:
    from modaflow.modalities.timeseries.sources import read_table

    (tmp_path / "eu.csv").write_text("date;load;temp\n02.01.2020;1,5;-3,25\n01.01.2020;2;4,0\n03.01.2020;3,75;0,5\n")
    src = read_table(tmp_path / "eu.csv")
    assert src.channels == ("load", "temp") and src.time_name == "date"
    np.testing.assert_array_equal(src.values, [[2.0, 4.0], [1.5, -3.25], [3.75, 0.5]])  # sorted by date
    assert list(src.times) == ["01.01.2020", "02.01.2020", "03.01.2020"]
    (tmp_path / "pt.csv").write_text("time;a;b\n0;1.5;2\n1;2.5;3\n")  # semicolons with decimal points
    np.testing.assert_array_equal(read_table(tmp_path / "pt.csv").values, [[1.5, 2.0], [2.5, 3.0]])
