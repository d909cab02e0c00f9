"""Where the series come from: generated (Sines, MuJoCo hopper), shipped with packages
(stocks from ``bokeh_sampledata``, sktime's BasicMotions, ItalyPowerDemand, solar,
uschange) and the user's own CSV / Parquet files.

Every source returns a :class:`Source`: either independent samples ``(N, L, C)`` (Sines,
MuJoCo, the sktime classification sets, one item per instance) or one long series
``(T, C)`` that :mod:`.data` cuts into windows after splitting it by time. Values are raw
(unscaled) float64; the scaling happens in :mod:`.data`, fitted on the training split only.

Generation protocol (Yoon, Jarrett & van der Schaar 2019, TimeGAN, NeurIPS, sec. 5, as
used by Diffusion-TS, Yuan & Qiao 2024, arXiv 2403.01742, app. C, and TimeFlow, arXiv
2511.07968):

* Sines: for each sample and channel ``x_j = sin(f j + phi)``, ``j = 0..L-1``, with
  ``f, phi ~ U(0, 0.1)`` independently, then ``(x + 1) / 2`` so values lie in [0, 1].
* MuJoCo: dm_control ``hopper``/``stand``; before each sample the initial state is drawn
  ``qpos[:2] ~ U(0, 0.5)``, ``qpos[2:] ~ U(-2, 2)``, ``qvel ~ U(-5, 5)``; then ``L`` records
  of ``(qpos, qvel)`` (14 channels), one physics step (5 ms, zero control) apart.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

__all__ = [
    "Source",
    "SKTIME_SETS",
    "sines",
    "mujoco_hopper",
    "stocks",
    "sktime_set",
    "read_table",
    "column_indices",
    "select_channels",
]

TIME_NAMES: frozenset[str] = frozenset({"date", "time", "timestamp", "datetime"})
"""Column names (any case) taken as the time column of a file without ``time_column``."""


@dataclass(frozen=True)
class Source:
    """Raw data of one dataset.

    Attributes:
        values: ``(N, L, C)`` independent samples (``kind == "samples"``) or ``(T, C)`` one
            series in time order (``kind == "series"``), float64.
        channels: channel names, ``C`` of them.
        kind: ``"samples"`` or ``"series"``.
        test_values: a predefined test split of the same kind (sktime sets ship one), or None.
        mask: ``values``' observed entries (1) and missing ones (0, their value set to 0),
            for a user file read with missing values allowed; None when complete.
        times: a user file's time column as written there (text), in the rows' (sorted)
            order, so that a filled series can be written back beside it; None without one.
        time_name: that column's name.
    """

    values: np.ndarray
    channels: tuple[str, ...]
    kind: str
    test_values: np.ndarray | None = None
    mask: np.ndarray | None = field(default=None)
    times: np.ndarray | None = None
    time_name: str | None = None


def sines(n: int = 10_000, length: int = 24, channels: int = 5, seed: int = 0) -> Source:
    """The Sines set of the protocol (TimeGAN, sec. 5): ``(n, length, channels)`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.0, 0.1, size=(n, 1, channels))
    phi = rng.uniform(0.0, 0.1, size=(n, 1, channels))
    j = np.arange(length, dtype=np.float64)[None, :, None]
    x = (np.sin(f * j + phi) + 1.0) * 0.5  # TimeGAN sine_data_generation: (sin + 1) / 2
    return Source(x, tuple(f"sin{k}" for k in range(channels)), "samples")


def mujoco_hopper(n: int = 10_000, length: int = 24, seed: int = 0) -> Source:
    """Hopper-stand trajectories from dm_control (the protocol's MuJoCo set): ``(n, length,
    14)`` = qpos (7) and qvel (7), raw simulator units."""
    try:
        from dm_control import suite
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the mujoco dataset needs dm_control: pip install modaflow[timeseries]") from e
    rng = np.random.default_rng(seed)
    physics = suite.load("hopper", "stand", task_kwargs={"random": seed}).physics
    nq, nv = physics.model.nq, physics.model.nv
    out = np.empty((n, length, nq + nv), dtype=np.float64)
    for i in range(n):
        with physics.reset_context():
            physics.data.qpos[:2] = rng.uniform(0.0, 0.5, size=2)
            physics.data.qpos[2:] = rng.uniform(-2.0, 2.0, size=nq - 2)
            physics.data.qvel[:] = rng.uniform(-5.0, 5.0, size=nv)
        for j in range(length):
            out[i, j, :nq] = physics.data.qpos
            out[i, j, nq:] = physics.data.qvel
            physics.step()
    names = tuple(f"qpos{k}" for k in range(nq)) + tuple(f"qvel{k}" for k in range(nv))
    return Source(out, names, "samples")


STOCK_FIELDS = ("open", "high", "low", "close", "adj_close", "volume")


def stocks(ticker: str = "GOOG") -> Source:
    """Daily prices of ``ticker`` from ``bokeh_sampledata`` (the protocol's Stocks set is
    Google's daily OHLC, adjusted close and volume): one series ``(T, 6)``."""
    try:
        import bokeh_sampledata.stocks as bs
    except ImportError as e:  # pragma: no cover
        raise ImportError("the stocks dataset needs bokeh_sampledata: pip install modaflow[timeseries]") from e
    known = ("AAPL", "GOOG", "IBM", "MSFT")
    if ticker not in known:
        raise ValueError(f"unknown ticker {ticker!r}; known: {list(known)}")
    data = getattr(bs, ticker)
    x = np.stack([np.asarray(data[k], dtype=np.float64) for k in STOCK_FIELDS], axis=1)
    order = np.argsort(np.asarray(data["date"], dtype="datetime64[D]"), kind="stable")
    return Source(x[order], STOCK_FIELDS, "series")


SKTIME_SETS: tuple[str, ...] = ("basicmotions", "italypowerdemand", "solar", "uschange")


def sktime_set(name: str) -> Source:
    """A dataset shipped with sktime (offline): ``basicmotions`` (80 x 6 x 100, its own
    train/test split), ``italypowerdemand`` (1096 x 1 x 24, its own split), ``solar`` (one
    half-hourly series of 289 values; ``api_version=None`` keeps it offline) and
    ``uschange`` (187 quarters x 5: consumption and its four regressors)."""
    key = name.lower()
    if key not in SKTIME_SETS:
        raise ValueError(f"unknown sktime dataset {name!r}; the ones with a data card here: {list(SKTIME_SETS)}. For another "
                         f"sktime set, write it to a CSV (a time column, one column per channel; e.g. "
                         f"load_airline().to_frame().to_csv('airline.csv')) and pass the file")
    try:
        from sktime import datasets as skd
    except ImportError as e:  # pragma: no cover
        raise ImportError("sktime datasets need sktime: pip install modaflow[timeseries]") from e
    if key in ("basicmotions", "italypowerdemand"):
        loader = skd.load_basic_motions if key == "basicmotions" else skd.load_italy_power_demand
        tr, _ = loader(split="train", return_type="numpy3D")  # (N, C, L)
        te, _ = loader(split="test", return_type="numpy3D")
        tr, te = (np.ascontiguousarray(np.transpose(a, (0, 2, 1)), dtype=np.float64) for a in (tr, te))
        names = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z") if key == "basicmotions" else ("demand",)
        return Source(tr, names, "samples", test_values=te)
    if key == "solar":
        s = skd.load_solar(api_version=None)
        return Source(s.to_numpy(dtype=np.float64)[:, None], ("solar",), "series")
    y, X = skd.load_uschange()
    x = np.concatenate([y.to_numpy(dtype=np.float64)[:, None], X.to_numpy(dtype=np.float64)], axis=1)
    return Source(x, (str(y.name),) + tuple(str(c) for c in X.columns), "series")


def column_indices(available: tuple[str, ...], columns: tuple[str, ...], where: str) -> list[int]:
    """Positions of the channel names ``columns`` among ``available``, in the order of ``columns``;
    a name that is not there is an error naming ``where`` and the channels it has."""
    missing = [c for c in columns if c not in available]
    if missing:
        hint = "; separate --columns names by spaces, not commas" if any("," in c for c in missing) else ""
        raise ValueError(f"{where}: channel column(s) {missing} not found (the run's channels, --columns at train or "
                         f"finetune: {list(columns)}); its channels are {list(available)}{hint}")
    return [available.index(c) for c in columns]


def select_channels(src: Source, columns: tuple[str, ...], where: str) -> Source:
    """``src`` with only the channels named ``columns``, in that order (all of them when empty)."""
    if not columns:
        return src
    idx = column_indices(src.channels, columns, where)

    def pick(a: np.ndarray | None) -> np.ndarray | None:  # channels are the last axis of every array
        return None if a is None else a[..., idx]

    return replace(src, values=src.values[..., idx], channels=tuple(columns), test_values=pick(src.test_values),
                   mask=pick(src.mask))


def read_table(path: str | Path, time_column: str | None = None, allow_missing: bool = False,
               columns: tuple[str, ...] = ()) -> Source:
    """The user's series from a ``.csv`` (comma-, or semicolon-separated with decimal points or
    commas) or ``.parquet`` file: one row per time step, a time
    column (``time_column``, else one named date/time/timestamp/datetime, else a nameless
    index column that pandas' ``to_csv`` writes (dropped, never a channel, when another
    column is the time), else the first text
    column that reads as dates, else a DatetimeIndex; rows are sorted by its numbers or parsed
    dates, never as strings) and numeric channel columns. A text column that is not dates is
    an error naming its first bad value, never silently taken as time.

    A time column with an empty cell is an error (its row has no place in the order).
    Missing values (empty cells, NaN) in channels are an error unless ``allow_missing`` (imputation):
    then they come back as ``mask == 0`` with the value 0. Inf is always an error. Errors
    name the file and say what was expected. ``columns`` keeps only the channel columns of those
    names, in that order (before the checks, so a column left out may hold anything).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found (expected a .csv or .parquet file, or a dataset name)")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty; expected a table with a time column and channel columns")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path)
            if len(df.columns) == 1 and ";" in str(df.columns[0]):  # a semicolon-separated file (European locales)
                df = pd.read_csv(path, sep=";")
                if any(not pd.api.types.is_numeric_dtype(df[c]) and df[c].astype(str).str.fullmatch(r"-?\d+,\d+").any()
                       for c in df.columns):
                    df = pd.read_csv(path, sep=";", decimal=",")  # and its decimal commas
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise ValueError(f"expected a .csv or .parquet file, got suffix {suffix!r}")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty; expected a table with a time column and channel columns") from None
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: cannot read the table ({e})") from None
    if len(df) == 0:
        raise ValueError(f"{path}: the table has a header but no rows")
    if isinstance(df.index, pd.DatetimeIndex):  # a Parquet file written from a time-indexed frame
        df = df.reset_index()
    tcol = _time_column(df, time_column, path)
    if tcol is not None and df.columns[0] == "Unnamed: 0" and tcol != df.columns[0]:
        df = df.drop(columns=[df.columns[0]])  # pandas' to_csv row index beside a time column: not a channel
    if tcol is not None:
        df = df.reset_index(drop=True)  # row labels = positions, for the time order below
        times = _time_values(df[tcol], tcol, path)
        gaps = np.flatnonzero(times.isna().to_numpy())
        if gaps.size:
            raise ValueError(f"{path}: time column {tcol!r} has {gaps.size} empty value(s), the first in row {gaps[0]}; "
                             f"every row needs its time (fill or drop those rows)")
        repeated = np.flatnonzero(times.duplicated(keep="first").to_numpy())
        if repeated.size:
            first = int(np.flatnonzero((times == times.iloc[repeated[0]]).to_numpy())[0])
            value = df[tcol].iloc[repeated[0]]
            value = value.item() if isinstance(value, np.generic) else value
            raise ValueError(f"{path}: time column {tcol!r} holds {repeated.size} repeated value(s); the first, "
                             f"{value!r}, in rows {first} and {repeated[0]}: one row per time step "
                             f"expected (aggregate or drop the repeats)")
        written = df[tcol].astype(str).to_numpy()
        df = df.assign(**{tcol: times}).sort_values(tcol, kind="stable")
        written = written[df.index.to_numpy()]  # the time values as the file writes them, in time order
        df = df.drop(columns=[tcol])
    if columns:
        df = df.iloc[:, column_indices(tuple(str(c) for c in df.columns), columns, str(path))]
    bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        col = df[bad[0]]
        row = int(np.flatnonzero(pd.to_numeric(col, errors="coerce").isna() & col.notna())[0])
        raise ValueError(f"{path}: channel columns must be numeric; column(s) {bad} are not (the first bad value: "
                         f"{col.iloc[row]!r} in row {row}); if one is the time column, name it with --time-column, or leave columns out "
                         f"by naming the channels with --columns (train and finetune; sample and evaluate use the run's)")
    if df.shape[1] == 0:
        raise ValueError(f"{path}: no channel columns besides the time column {tcol!r}")
    x = df.to_numpy(dtype=np.float64)
    if np.isinf(x).any():
        r, c = np.argwhere(np.isinf(x))[0]
        raise ValueError(f"{path}: Inf in row {r} (after sorting by time), column {df.columns[c]!r}; expected finite numbers")
    missing = np.isnan(x)
    mask = None
    if missing.any():
        if not allow_missing:
            r, c = np.argwhere(missing)[0]
            raise ValueError(f"{path}: {int(missing.sum())} missing value(s)/NaN, the first in row {r} (after sorting by "
                             f"time), column {df.columns[c]!r}; training and forecasting need complete rows: fill "
                             f"them, or impute them with a model trained on complete data ('modaflow sample timeseries "
                             f"--ckpt RUN --task impute --input {path}')")
        mask = (~missing).astype(np.float64)
        x = np.where(missing, 0.0, x)
    return Source(x, tuple(str(c) for c in df.columns), "series", mask=mask,
                  times=None if tcol is None else written, time_name=tcol)


def _time_column(df, name: str | None, path: Path) -> str | None:
    import pandas as pd

    if name is not None:
        if name not in df.columns:
            raise ValueError(f"{path}: time column {name!r} not found; columns: {list(df.columns)}")
        return name
    for c in df.columns:
        if str(c).lower() in TIME_NAMES:
            return c
    for c in df.columns:  # pandas' to_csv writes its row index as a nameless first column: an index, not a channel
        if str(c).startswith("Unnamed: "):
            return c
    for c in df.columns:  # else the first text column that reads as dates; other text is a bad channel (or left out
        if not pd.api.types.is_numeric_dtype(df[c]):  # by --columns)
            try:
                _time_values(df[c], c, path)
            except ValueError:
                continue
            return c
    return None


def _time_values(col, name: str, path: Path):
    """The sort key of a time column: numbers as they are, text parsed as dates (so that
    '01/15/2020' or '15.01.2020' sort by date, not as strings; month first when every value
    reads so, else day first). Errors name the file and value."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_datetime64_any_dtype(col):
        return col
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pandas' "could not infer format" note
            try:
                return pd.to_datetime(col, errors="raise")
            except (ValueError, TypeError, OverflowError):
                # pandas takes the format from the first value, month first when it can be ('01/02/2020'); a day-first
                # file whose first day is <= 12 then fails at its first day > 12 ('13/01/2020'): read it day first
                return pd.to_datetime(col, errors="raise", dayfirst=True)
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"{path}: time column {name!r} holds values that are neither numbers nor dates ({e}); "
                         f"name the time column with --time-column (train and finetune; sample and evaluate use the "
                         f"run's)") from None
