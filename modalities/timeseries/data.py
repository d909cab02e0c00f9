"""Windows, splits and scaling of multivariate series; datasets and the LightningDataModule.

* :func:`load_source` resolves a name (``sines``, ``mujoco``, ``stocks``, a sktime set by
  its name or ``sktime:NAME``) or a ``.csv``/``.parquet`` path to a :class:`~.sources.Source`.
* :func:`split_windows` cuts it into windows ``(N, L, C)``: a long series is split **by
  time first** (the first ``1 - test_fraction`` of the steps train, the rest test; no
  window straddles the cut) and then windowed with ``stride``; independent samples are
  split by index (or by the source's own test split). Overlapping windows are never
  shuffled across the split (the leak Diffusion-TS's tracker warns about).
* :class:`Scaler` is fitted on the training windows only and saved with the model
  (``scaler.json``): ``minmax`` maps each channel to [0, 1] (the protocol's metric space),
  ``standard`` to zero mean and unit variance, ``identity`` keeps data already in [0, 1]
  (Sines). The network sees ``u`` for standard; for minmax/identity it sees the training
  split's per-channel range of ``u`` mapped onto [-1, 1] (``2 (u - lo) / (hi - lo) - 1``;
  for minmax that is ``2u - 1``). Sines stay in the protocol's metric space (TimeGAN's
  ``(sin + 1) / 2``, which only fills [0.5, 1]) while the network sees the whole of
  [-1, 1] (Diffusion-TS feeds it ``2x - 1``, half of that range).

Shapes: windows ``(N, L, C)``, batch first, time, channels.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from modaflow.core.io import atomic_write, atomic_write_text

from . import sources as S

__all__ = [
    "GENERATED",
    "NAMED",
    "ScalingName",
    "Scaler",
    "Windows",
    "sliding_windows",
    "load_source",
    "split_windows",
    "check_finite_windows",
    "save_samples",
    "save_series",
    "SeriesDataModule",
    "WindowDataset",
    "default_test_fraction",
]

GENERATED: tuple[str, ...] = ("sines", "mujoco")
NAMED: tuple[str, ...] = GENERATED + ("stocks",) + S.SKTIME_SETS
"""Dataset names ``--data`` accepts (besides ``sktime:NAME`` and file paths)."""
ScalingName = Literal["minmax", "standard", "identity"]
DEFAULT_TEST_FRACTION: dict[str, float] = {"solar": 0.2, "uschange": 0.2}
"""Held-out fraction of short series whose last 10% is shorter than a window (else 0.1)."""


def default_test_fraction(data: str) -> float:
    """The held-out fraction used when the config leaves it to the dataset."""
    key = data.lower().removeprefix("sktime:")
    return DEFAULT_TEST_FRACTION.get(key, 0.1)


def load_source(data: str, n_samples: int = 10_000, length: int = 24, seed: int = 0,
                time_column: str | None = None, allow_missing: bool = False, columns: tuple[str, ...] = ()) -> S.Source:
    """The raw :class:`~.sources.Source` named by ``data`` (generated sets use ``n_samples``,
    ``length`` and ``seed``), with only the channels ``columns`` in that order when given."""
    key = data.lower()
    if Path(data).suffix.lower() in (".csv", ".parquet", ".pq") or (key not in NAMED and not key.startswith("sktime:")
                                                                     and Path(data).exists()):
        return S.read_table(data, time_column, allow_missing, columns)
    if key.startswith("sktime:"):
        src = S.sktime_set(key.split(":", 1)[1])
    elif key == "sines":
        src = S.sines(n_samples, length, seed=seed)
    elif key == "mujoco":
        src = S.mujoco_hopper(n_samples, length, seed=seed)
    elif key == "stocks":
        src = S.stocks()
    elif key in S.SKTIME_SETS:
        src = S.sktime_set(key)
    else:
        raise ValueError(f"unknown dataset {data!r}; expected one of {list(NAMED)}, 'sktime:NAME' or a .csv/.parquet file")
    return S.select_channels(src, columns, data)


def channel_order(found: tuple[str, ...], expected: tuple[str, ...], where: str) -> np.ndarray:
    """Column indices that put the ``found`` channels in the ``expected`` (trained) order: by
    name when both name the same channels, else by position with a warning naming both. A
    different channel count is an error naming ``where``."""
    if len(found) != len(expected):
        raise ValueError(f"{where}: {len(found)} channels ({list(found)}), but the model was trained on "
                         f"{len(expected)} ({list(expected)}); train and finetune take --columns NAME NAME ... (separated by "
                         f"spaces) to choose a file's channels by name")
    if tuple(found) == tuple(expected):
        return np.arange(len(found))
    if sorted(found) == sorted(expected) and len(set(found)) == len(found):
        return np.array([list(found).index(c) for c in expected])
    warnings.warn(f"{where}: channels {list(found)} do not match the model's {list(expected)} by name; "
                  f"they are taken in file order", UserWarning, stacklevel=3)
    return np.arange(len(found))


def sliding_windows(x: np.ndarray, length: int, stride: int, where: str = "series") -> np.ndarray:
    """All windows ``x[s : s + length]``, ``s = 0, stride, 2 stride, ...`` of ``x`` ``(T, C)``
    -> ``(N, length, C)`` (a copy). A series shorter than ``length`` is an error naming it."""
    if length < 1 or stride < 1:
        raise ValueError(f"window length and stride must be >= 1; got {length}, {stride}")
    T = x.shape[0]
    if T < length:
        raise ValueError(f"{where}: the series has {T} time steps, shorter than the window length {length}")
    starts = np.arange(0, T - length + 1, stride)
    return np.stack([x[s : s + length] for s in starts])


@dataclass(frozen=True)
class Windows:
    """Raw (unscaled) train and test windows ``(N, L, C)`` float64 and the channel names;
    ``train_mask``/``test_mask`` mark observed entries (None: all observed)."""

    train: np.ndarray
    test: np.ndarray
    channels: tuple[str, ...]
    train_mask: np.ndarray | None = None
    test_mask: np.ndarray | None = None


def _windows_of_samples(x: np.ndarray, length: int, stride: int, where: str) -> np.ndarray:
    if x.shape[1] == length:
        return x
    return np.concatenate([sliding_windows(s, length, stride, f"{where}, item {i}") for i, s in enumerate(x)])


def split_windows(src: S.Source, length: int, stride: int = 1, test_fraction: float = 0.1,
                  where: str = "data") -> Windows:
    """Train/test windows of ``src`` (see the module docstring); ``where`` names the data
    in errors."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1); got {test_fraction}")
    if src.kind == "samples":
        if src.test_values is not None:
            train, test = src.values, src.test_values
        else:
            n_test = int(round(src.values.shape[0] * test_fraction))
            cut = src.values.shape[0] - n_test
            train, test = src.values[:cut], src.values[cut:]
        if train.shape[1] < length:
            raise ValueError(f"{where}: items have {train.shape[1]} time steps, shorter than the window length {length}")
        tr = _windows_of_samples(train, length, stride, where)
        te = _windows_of_samples(test, length, stride, where) if len(test) else tr[:0]
        return Windows(tr, te, src.channels)
    x, m = src.values, src.mask
    T = x.shape[0]
    if T < length:
        raise ValueError(f"{where}: the series has {T} time steps, shorter than the window length {length}")
    cut = T - int(round(T * test_fraction))
    if test_fraction > 0 and T - cut < length:
        raise ValueError(f"{where}: the test part ({T - cut} of {T} steps, test_fraction={test_fraction}) is shorter "
                         f"than the window length {length}; use a longer series or a larger test_fraction")
    if cut < length:
        raise ValueError(f"{where}: the training part ({cut} of {T} steps) is shorter than the window length {length}")
    tr = sliding_windows(x[:cut], length, stride, where)
    te = sliding_windows(x[cut:], length, stride, where) if T - cut >= length else tr[:0]
    trm = tem = None
    if m is not None:
        trm = sliding_windows(m[:cut], length, stride, where)
        tem = sliding_windows(m[cut:], length, stride, where) if T - cut >= length else trm[:0]
    return Windows(tr, te, src.channels, trm, tem)


def check_finite_windows(x: np.ndarray, where: str) -> None:
    """Raise a ``ValueError`` naming ``where`` if ``x`` holds NaN or Inf."""
    bad = ~np.isfinite(x)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{where}: {int(bad.sum())} NaN/Inf value(s), the first at window/step/channel {idx}; "
                         "expected finite numbers")


@dataclass(frozen=True)
class Scaler:
    """Per-channel affine scaling fitted on training data: ``u = (x - shift) / scale``.

    Attributes:
        method: minmax (``shift = min``, ``scale = max - min``), standard (mean, std) or
            identity (0, 1).
        shift: per channel, length ``C``.
        scale: per channel, length ``C`` (a constant channel gets scale 1).
        channels: channel names.
        model_lo, model_hi: per channel, the range of ``u`` that the network sees as
            [-1, 1] (minmax/identity; empty: ``[0, 1]``, the behaviour of scalers saved
            before these fields existed). Unused by standard scaling.
    """

    method: str
    shift: tuple[float, ...]
    scale: tuple[float, ...]
    channels: tuple[str, ...]
    model_lo: tuple[float, ...] = ()
    model_hi: tuple[float, ...] = ()

    @classmethod
    def fit(cls, x: np.ndarray, method: str, channels: tuple[str, ...]) -> "Scaler":
        """Fit on training windows ``(N, L, C)`` (or a series ``(T, C)``), over all but the
        channel axis."""
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
        if method == "minmax":
            lo, hi = flat.min(0), flat.max(0)
            shift, scale = lo, hi - lo
        elif method == "standard":
            shift, scale = flat.mean(0), flat.std(0)
        elif method == "identity":
            shift, scale = np.zeros(flat.shape[1]), np.ones(flat.shape[1])
        else:
            raise ValueError(f"scaling must be minmax, standard or identity; got {method!r}")
        scale = np.where(scale > 0, scale, 1.0)
        u = (flat - shift) / scale
        lo, hi = u.min(0), u.max(0)
        ok = np.isfinite(lo) & np.isfinite(hi) & (hi > lo)
        lo, hi = np.where(ok, lo, 0.0), np.where(ok, hi, 1.0)  # a constant channel: [0, 1]
        return cls(method, tuple(map(float, shift)), tuple(map(float, scale)), tuple(channels),
                   tuple(map(float, lo)), tuple(map(float, hi)))

    @property
    def n_channels(self) -> int:
        return len(self.scale)

    def _check(self, x, where: str) -> None:
        if x.shape[-1] != self.n_channels:
            raise ValueError(f"{where}: {x.shape[-1]} channels, but the model was trained on {self.n_channels} "
                             f"({list(self.channels)})")

    def transform(self, x: np.ndarray, where: str = "data") -> np.ndarray:
        """Raw -> normalised ``u`` (the metric space), float64."""
        self._check(x, where)
        return (np.asarray(x, np.float64) - np.asarray(self.shift)) / np.asarray(self.scale)

    def inverse(self, u: np.ndarray) -> np.ndarray:
        """Normalised ``u`` -> raw units, float64."""
        self._check(u, "samples")
        return np.asarray(u, np.float64) * np.asarray(self.scale) + np.asarray(self.shift)

    def _model_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(a, b)`` with network input ``a u + b`` (module doc)."""
        C = self.n_channels
        if self.method == "standard":
            return np.ones(C), np.zeros(C)
        lo = np.asarray(self.model_lo or (0.0,) * C)
        hi = np.asarray(self.model_hi or (1.0,) * C)
        a = 2.0 / (hi - lo)
        return a, -1.0 - a * lo  # [lo, hi] -> [-1, 1]

    def to_model(self, u: np.ndarray | Tensor) -> Tensor:
        """Normalised ``u`` -> what the network sees (``u`` for standard, else the training
        range mapped onto [-1, 1]), float32 tensor."""
        a, b = self._model_affine()
        return (torch.as_tensor(np.asarray(u), dtype=torch.float32) * torch.as_tensor(a, dtype=torch.float32)
                + torch.as_tensor(b, dtype=torch.float32))

    def from_model(self, x: Tensor) -> np.ndarray:
        """Network space -> normalised ``u``, float64 array."""
        a, b = self._model_affine()
        return (x.detach().cpu().double().numpy() - b) / a

    def save(self, path: str | Path) -> Path:
        """Write the scaler as JSON, atomically."""
        text = json.dumps({"method": self.method, "shift": self.shift, "scale": self.scale,
                           "channels": list(self.channels), "model_lo": self.model_lo, "model_hi": self.model_hi},
                          indent=2)
        atomic_write_text(Path(path), text + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Scaler":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: scaler not found; is this a run folder written by 'modaflow train timeseries'?")
        try:
            d = json.loads(path.read_text())
            scaler = cls(d["method"], tuple(d["shift"]), tuple(d["scale"]), tuple(d["channels"]),
                         tuple(d.get("model_lo", ())), tuple(d.get("model_hi", ())))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); the run folder's scaler is damaged") from None
        except KeyError as e:
            raise ValueError(f"{path}: the scaler lacks the field {e.args[0]!r} (expected method, shift, scale, "
                             f"channels)") from None
        except TypeError as e:
            raise ValueError(f"{path}: a scaler field has the wrong type ({e})") from None
        n = len(scaler.channels)
        if len(scaler.shift) != n or len(scaler.scale) != n:
            raise ValueError(f"{path}: shift ({len(scaler.shift)}) and scale ({len(scaler.scale)}) need one value per "
                             f"channel ({n})")
        return scaler


def save_samples(path: str | Path, x: np.ndarray, channels: tuple[str, ...]) -> Path:
    """Write raw-unit samples ``(N, L, C)`` (or ``(W, S, L, C)`` for conditional tasks:
    windows x samples) to ``.npy`` or to a long-format ``.csv`` (index columns, then one
    column per channel), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        def write(p: Path) -> None:
            with open(p, "wb") as fh:
                np.save(fh, np.ascontiguousarray(x), allow_pickle=False)
    elif suffix == ".csv":
        idx_names = ["sample", "step"] if x.ndim == 3 else ["window", "sample", "step"]
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in x.shape[:-1]], indexing="ij"), -1).reshape(-1, x.ndim - 1)
        table = np.concatenate([idx.astype(np.float64), x.reshape(-1, x.shape[-1])], axis=1)
        header = ",".join(idx_names + [c.replace(",", "_") for c in channels])
        fmt = ["%d"] * len(idx_names) + ["%.10g"] * x.shape[-1]

        def write(p: Path) -> None:
            np.savetxt(p, table, delimiter=",", header=header, comments="", fmt=fmt)
    else:
        raise ValueError(f"{path}: output must end in .npy or .csv; got suffix {suffix!r}")
    atomic_write(path, write)
    return path


def save_series(path: str | Path, x: np.ndarray, channels: tuple[str, ...], times: np.ndarray | None = None,
                time_name: str | None = None) -> Path:
    """Write whole filled series ``(S, T, C)`` (samples x time steps, raw units) to ``.npy`` or
    to a long-format ``.csv``: ``sample``, the time column (``times`` as the input file wrote
    them, under ``time_name``; else ``step`` = 0..T-1), then one column per channel; atomically."""
    path = Path(path)
    S, T, _ = x.shape
    if path.suffix.lower() == ".npy":
        return save_samples(path, x, channels)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{path}: output must end in .npy or .csv; got suffix {path.suffix.lower()!r}")
    import pandas as pd

    name = "step" if times is None or not time_name or time_name.startswith("Unnamed:") else time_name
    when = np.arange(T) if times is None else np.asarray(times)
    if len(when) != T:
        raise ValueError(f"{path}: {len(when)} time values for {T} steps")
    table = pd.DataFrame({"sample": np.repeat(np.arange(S), T), name: np.tile(when, S)})
    for c, ch in enumerate(channels):
        table[ch] = x[:, :, c].reshape(-1)
    atomic_write(path, lambda p: table.to_csv(p, index=False, float_format="%.10g"))
    return path


class WindowDataset(Dataset):
    """Windows ``(N, L, C)``; an item is one window ``(L, C)`` float32."""

    def __init__(self, x: Tensor) -> None:
        if x.ndim != 3:
            raise ValueError(f"x must have shape (N, L, C); got {tuple(x.shape)}")
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.x[i]


class SeriesDataModule(LightningDataModule):
    """Shuffled mini-batches ``(batch_size, L, C)`` of training windows in network space; the
    order is a function of ``seed``."""

    def __init__(self, train: Tensor, batch_size: int = 128, seed: int = 0) -> None:
        super().__init__()
        if train.ndim != 3 or train.shape[0] < 1:
            raise ValueError(f"train must have shape (N, L, C) with N >= 1; got {tuple(train.shape)}")
        self.train, self.batch_size, self.seed = TensorDataset(train), batch_size, seed

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        drop = len(self.train) >= self.batch_size
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=drop, generator=g)
