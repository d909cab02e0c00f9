"""Datasets of 3-D T1 volumes ``(1, X, Y, Z)`` float32 in [-1, 1]: the embedded synthetic
cohort (:mod:`.cohort`) or NIfTI files (a folder or a BIDS dataset) through the MONAI
pipeline of :mod:`.transforms`, cached with :class:`monai.data.CacheDataset`.

Splits of a file source: files sorted by path; every 5th file (index 4, 9, ...) is ``test``
(at least one when there are two or more files), the rest ``train``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .cohort import cohort_affine, make_cohort
from .nifti import NiftiError, ObliquePolicy, find_source, parse_source
from .transforms import KEY, ToTensor, Transform, augment_transforms, canonical_affine, preprocess_transforms

__all__ = ["SourceSpec", "EMBEDDED_SIZES", "split_files", "voxel_sizes", "VolumeSet", "load_volumes", "build_dataset",
           "MRIDataModule", "embedded_dataset"]

EMBEDDED_SIZES = {"train": 48, "test": 16}
"""Default subjects per split of the embedded cohort (its data card)."""


@dataclass(frozen=True)
class SourceSpec:
    """Where volumes come from and how they are shaped.

    Attributes:
        data: ``"embedded"``, ``"bids:/path"`` or ``"folder:/path"``.
        size: cube side of the embedded cohort (voxels).
        n_train: subjects of the embedded train split.
        n_test: subjects of the embedded test split.
        seed: seed of the embedded cohort.
        spacing: target voxel size (mm) of file sources.
        fov: field of view (voxels) of file sources.
        oblique: oblique affines: reject or resample.
        max_anisotropy: largest voxel-side ratio accepted from files.
    """

    data: str = "embedded"
    size: int = 32
    n_train: int = 48
    n_test: int = 16
    seed: int = 0
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    fov: tuple[int, int, int] = (192, 224, 192)
    oblique: ObliquePolicy = "reject"
    max_anisotropy: float = 4.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape of one volume."""
        return (self.size,) * 3 if self.data == "embedded" else tuple(self.fov)

    @property
    def affine(self) -> np.ndarray:
        """RAS affine of the volumes' grid (generated volumes are written with it)."""
        if self.data == "embedded":
            return cohort_affine(self.size)
        return canonical_affine(self.spacing, self.fov)


def voxel_sizes(spec: SourceSpec) -> tuple[float, float, float]:
    """Voxel sizes (mm) of the source's grid (the column norms of its affine)."""
    return tuple(float(v) for v in np.linalg.norm(spec.affine[:3, :3], axis=0))


def split_files(files: Sequence[Path], split: str) -> list[Path]:
    """The ``split`` (train/test) of a sorted file list (module docstring)."""
    files = sorted(files)
    test = [f for i, f in enumerate(files) if i % 5 == 4]
    if not test and len(files) >= 2:
        test = [files[-1]]
    if split == "test":
        return test
    if split == "train":
        return [f for f in files if f not in test]
    raise ValueError(f"split must be 'train' or 'test'; got {split!r}")


class VolumeSet(Dataset):
    """Preprocessed volumes ``(N, 1, X, Y, Z)`` in memory, optionally augmented per item."""

    def __init__(self, volumes: torch.Tensor, augment: bool = False, seed: int = 0,
                 spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        if volumes.ndim != 5 or volumes.shape[1] != 1:
            raise ValueError(f"volumes must have shape (N, 1, X, Y, Z); got {tuple(volumes.shape)}")
        self.volumes = volumes.float()
        self.aug = augment_transforms(spacing=spacing) if augment else None  # shifts in mm (augment_transforms)
        if self.aug is not None:
            self.aug.set_random_state(seed)

    def __len__(self) -> int:
        return int(self.volumes.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.volumes[i]
        return x if self.aug is None else self.aug({KEY: x})


class _Checked(Transform):
    """The deterministic preprocessing of one file for MONAI's caching threads. A bad file must
    not raise there: the pool is torn down while other workers still run and the process aborts
    (exit 134) after the message. Its error is kept in ``bad`` (path -> message) and a blank
    volume cached instead; :func:`_cache_dataset` raises after the pool has finished."""

    def __init__(self, pre, blank: np.ndarray) -> None:
        self.pre, self.blank, self.bad = pre, blank, {}

    def __call__(self, item: dict) -> dict:
        try:
            return self.pre(item)
        except RuntimeError as e:  # MONAI's Compose wraps a transform's error in RuntimeError
            cause = _nifti_cause(e)
            if cause is None:
                raise
            self.bad[item[KEY]] = str(cause)
            return {KEY: self.blank}


def _nifti_cause(e: BaseException) -> NiftiError | None:
    """Our error (which names the file) inside MONAI's wrapping of a transform's error."""
    while e is not None and not isinstance(e, NiftiError):
        e = e.__cause__ or e.__context__
    return e


def _cache_dataset(files: list[Path], spec: SourceSpec, augment: bool, num_workers: int):
    from monai.data import CacheDataset
    from monai.transforms import Compose

    pre = preprocess_transforms(spec.spacing, spec.fov, oblique=spec.oblique, max_anisotropy=spec.max_anisotropy)
    post = augment_transforms(spacing=spec.spacing) if augment else Compose([ToTensor()])
    checked = _Checked(pre, np.zeros((1, *spec.fov), np.float32))
    try:
        ds = CacheDataset([{KEY: str(f)} for f in files], Compose([checked, *post.transforms]),
                          cache_rate=1.0, num_workers=num_workers, progress=False)
    except RuntimeError as e:  # MONAI wraps a transform's error: surface ours, which names the file
        cause = _nifti_cause(e)
        if cause is not None:
            raise NiftiError(str(cause)) from None
        raise
    bad = checked.bad
    if bad:
        order = {str(f): i for i, f in enumerate(files)}
        first = min(bad, key=order.__getitem__)
        others = sorted(Path(f).name for f in bad if f != first)
        raise NiftiError(bad[first] + (f" (and {len(others)} more file(s) rejected: {others})" if others else ""))
    return ds


def build_dataset(spec: SourceSpec, split: str, augment: bool = False, num_workers: int = 0) -> Dataset:
    """The ``split`` of ``spec`` as a dataset of ``(1, *spec.shape)`` tensors; file sources
    are preprocessed once and cached (:class:`monai.data.CacheDataset`)."""
    kind, _ = parse_source(spec.data)
    if kind == "embedded":
        n = spec.n_train if split == "train" else spec.n_test
        return VolumeSet(torch.from_numpy(make_cohort(n, spec.size, split, spec.seed)), augment, spec.seed,
                         spacing=voxel_sizes(spec))
    files = split_files(find_source(spec.data), split)
    if not files:
        raise NiftiError(f"{spec.data}: the {split} split is empty (found too few NIfTI files)")
    return _cache_dataset(files, spec, augment, num_workers)


def load_volumes(spec: SourceSpec, split: str) -> torch.Tensor:
    """Every preprocessed volume of ``split`` (no augmentation), ``(N, 1, X, Y, Z)``."""
    ds = build_dataset(spec, split, augment=False)
    if isinstance(ds, VolumeSet):
        return ds.volumes.clone()
    return torch.stack([ds[i] for i in range(len(ds))])


def embedded_dataset(split: str, seed: int) -> VolumeSet:
    """The registry loader: the embedded cohort at the card's default size (32^3)."""
    return VolumeSet(torch.from_numpy(make_cohort(EMBEDDED_SIZES[split], 32, split, seed)))


class MRIDataModule(L.LightningDataModule):
    """Shuffled training batches ``(B, 1, X, Y, Z)`` of a dataset (cycled by ``fit``)."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.seed, self.num_workers = dataset, batch_size, seed, num_workers

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=len(self.dataset) >= self.batch_size,
                          generator=g, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
