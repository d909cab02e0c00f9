"""Toy datasets in 2 to 64 dimensions: a correlated Gaussian with known mean and
covariance (so :class:`~modaflow.core.gaussian.GaussianOracle` gives the exact flow), an
8-component Gaussian mixture, two moons and a checkerboard.

Higher dimensions (documented on the data cards):

* ``gaussian``: natively D-dimensional, ``N(mu, Sigma)`` with ``mu = linspace(-0.5, 0.5, D)``
  and ``Sigma = Q diag(lambda) Q^T``, ``lambda`` geometric from 0.2 to 2.0, ``Q`` a fixed
  random orthogonal matrix (:func:`gaussian_params`).
* ``gmm``: natively D-dimensional; 8 equal-weight components with isotropic std 0.35 whose
  means lie on a circle of radius 3 in the plane spanned by a fixed random orthonormal
  frame ``F`` (D x 2; the coordinate plane for D = 2): ``mu_k = 3 F (cos, sin)(2 pi k / 8)``.
* ``moons``, ``checkerboard``: 2-D shapes **tiled**: ``ceil(D / 2)`` independent 2-D draws
  are concatenated and the last coordinate dropped when D is odd, so the law is a product
  of independent copies of the 2-D shape (full-dimensional, no degenerate subspace).

Every draw is deterministic given ``(seed, split)``; the train and test splits use
independent streams. Fixed frames use their own seed, so they never change with ``seed``.
Shapes: samples ``(N, D)`` float32.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from modaflow.core.io import atomic_write

__all__ = [
    "ToyName",
    "TOY_DATASETS",
    "SPLITS",
    "DEFAULT_SIZES",
    "MIN_DIM",
    "MAX_DIM",
    "gaussian_params",
    "orthonormal_frame",
    "sample_toy",
    "make_split",
    "load_array",
    "save_array",
    "ToyDataset",
    "ToyDataModule",
]

ToyName = Literal["gaussian", "gmm", "moons", "checkerboard"]
TOY_DATASETS: tuple[str, ...] = get_args(ToyName)
SPLITS: tuple[str, ...] = ("train", "test")
DEFAULT_SIZES: dict[str, int] = {"train": 8192, "test": 2048}
"""Split sizes the registry loaders (and the data cards) use."""
MIN_DIM, MAX_DIM = 2, 64
_FRAME_SEED = 20240607  # fixed frames and covariances: independent of the sampling seed


def _check_dim(dim: int) -> None:
    if not MIN_DIM <= dim <= MAX_DIM:
        raise ValueError(f"dim must lie in [{MIN_DIM}, {MAX_DIM}]; got {dim}")


def _orthogonal(dim: int, seed: int) -> Tensor:
    """A fixed random orthogonal matrix ``(dim, dim)``, float64 (QR of a Gaussian matrix
    with the sign convention diag(R) > 0, i.e. Haar-distributed)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def orthonormal_frame(dim: int) -> Tensor:
    """The fixed frame ``F`` (``(dim, 2)``, orthonormal columns, float64) that places the
    GMM's circle of means; the first two coordinate axes when ``dim == 2``."""
    _check_dim(dim)
    if dim == 2:
        return torch.eye(2, dtype=torch.float64)
    return _orthogonal(dim, _FRAME_SEED + dim)[:, :2]


def gaussian_params(dim: int) -> tuple[Tensor, Tensor]:
    """Mean ``(dim,)`` and covariance ``(dim, dim)`` (float64) of the ``gaussian`` dataset."""
    _check_dim(dim)
    mean = torch.linspace(-0.5, 0.5, dim, dtype=torch.float64)
    lam = torch.logspace(math.log10(0.2), math.log10(2.0), dim, dtype=torch.float64)
    q = _orthogonal(dim, _FRAME_SEED + 1000 + dim)
    cov = (q * lam) @ q.T
    return mean, 0.5 * (cov + cov.T)


def _moons2(n: int, g: torch.Generator) -> Tensor:
    """Two interleaved half circles plus N(0, 0.1^2) noise, centred: ``(n, 2)``."""
    theta = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    lower = torch.rand(n, generator=g, dtype=torch.float64) < 0.5
    upper_xy = torch.stack([torch.cos(theta), torch.sin(theta)], -1)
    lower_xy = torch.stack([1.0 - torch.cos(theta), 0.5 - torch.sin(theta)], -1)
    xy = torch.where(lower[:, None], lower_xy, upper_xy)
    noise = 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return xy + noise - torch.tensor([0.5, 0.25], dtype=torch.float64)


def _checkerboard2(n: int, g: torch.Generator) -> Tensor:
    """Uniform on the 8 black squares of a 4 x 4 board covering [-2, 2]^2: ``(n, 2)``."""
    x = 4.0 * torch.rand(n, generator=g, dtype=torch.float64) - 2.0
    row = 2.0 * torch.randint(0, 2, (n,), generator=g).to(torch.float64)  # 0 or 2
    y = torch.rand(n, generator=g, dtype=torch.float64) - row + torch.remainder(torch.floor(x), 2.0)
    return torch.stack([x, y], -1)


def _tile(shape2d, n: int, dim: int, g: torch.Generator) -> Tensor:
    copies = [shape2d(n, g) for _ in range((dim + 1) // 2)]
    return torch.cat(copies, dim=1)[:, :dim]


def sample_toy(name: str, n: int, dim: int, generator: torch.Generator) -> Tensor:
    """``n`` draws of dataset ``name`` in ``dim`` dimensions, ``(n, dim)`` float32."""
    _check_dim(dim)
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    g = generator
    if name == "gaussian":
        mean, cov = gaussian_params(dim)
        chol = torch.linalg.cholesky(cov)
        x = mean + torch.randn(n, dim, generator=g, dtype=torch.float64) @ chol.T
    elif name == "gmm":
        k = torch.randint(0, 8, (n,), generator=g).to(torch.float64)
        angle = 2.0 * math.pi * k / 8
        means = 3.0 * torch.stack([torch.cos(angle), torch.sin(angle)], -1) @ orthonormal_frame(dim).T
        x = means + 0.35 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    elif name == "moons":
        x = _tile(_moons2, n, dim, g)
    elif name == "checkerboard":
        x = _tile(_checkerboard2, n, dim, g)
    else:
        raise ValueError(f"unknown toy dataset {name!r}; known: {list(TOY_DATASETS)}")
    return x.to(torch.float32)


def _split_generator(seed: int, split: str) -> torch.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}; got {split!r}")
    state = np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def make_split(name: str, dim: int, n: int, split: str, seed: int) -> Tensor:
    """The ``split`` ("train" or "test") of dataset ``name``: ``(n, dim)`` float32,
    a function of ``(name, dim, n, split, seed)`` only."""
    return sample_toy(name, n, dim, _split_generator(seed, split))


def load_array(path: str | Path) -> Tensor:
    """Read user data ``(N, D)`` from ``.npy`` or ``.csv`` (comma-separated, an optional
    header line). Errors name the file and say what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found (expected a .npy or .csv file, or a toy dataset name {list(TOY_DATASETS)})")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty; expected an (N, D) array")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            try:
                arr = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
            except ValueError:
                arr = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64, skiprows=1)
        else:
            raise ValueError(f"expected a .npy or .csv file, got suffix {suffix!r}")
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read data ({e})") from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{path}: expected a non-empty 2-D array (N, D); got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise ValueError(f"{path}: expected finite numbers")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def save_array(path: str | Path, x: Tensor) -> Path:
    """Write ``x`` ``(N, D)`` as ``.npy`` or ``.csv`` (by suffix), atomically."""
    path = Path(path)
    arr = x.detach().cpu().numpy()
    suffix = path.suffix.lower()
    if suffix == ".npy":
        def write(p: Path) -> None:
            with open(p, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
    elif suffix == ".csv":
        def write(p: Path) -> None:
            np.savetxt(p, arr, delimiter=",", fmt="%.8g")
    else:
        raise ValueError(f"{path}: output must end in .npy or .csv; got suffix {suffix!r}")
    atomic_write(path, write)
    return path


class ToyDataset(Dataset):
    """Rows of a ``(N, D)`` tensor; an item is ``(D,)``."""

    def __init__(self, x: Tensor) -> None:
        if x.ndim != 2:
            raise ValueError(f"x must have shape (N, D); got {tuple(x.shape)}")
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.x[i]


class ToyDataModule(LightningDataModule):
    """Shuffled mini-batches ``(batch_size, D)`` of ``train``; the shuffle order is a
    function of ``seed``."""

    def __init__(self, train: Tensor, batch_size: int = 256, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.train, self.batch_size, self.seed = ToyDataset(train), batch_size, seed

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        drop = len(self.train) >= self.batch_size
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=drop, generator=g)
