"""Datasets of 3-D T1 volumes ``(1, X, Y, Z)`` float32 in [-1, 1]: the embedded synthetic
cohort (:mod:`.cohort`) or NIfTI files (a folder or a BIDS dataset) through the MONAI
pipeline of :mod:`.transforms`, cached with :class:`monai.data.CacheDataset`.

Splits of a file source (:func:`split_files`) are by subject, so no subject has scans on both
sides: files sorted by path are grouped by their subject, the ``sub-<label>`` entity of the
file name (BIDS) or, failing that, the ``sub-<label>`` folder of a BIDS
``sub-<label>/[ses-<label>/]anat/`` layout; a file without a subject is a group of its own. The
groups, in the order of their first file, are indexed 0, 1, 2, ...; every 5th group (index 4,
9, ...) is ``test`` (the last group when that leaves none and there are two or more groups),
the rest ``train``. A plain folder without subjects is thus split every 5th file, and the
sessions of one subject always land on the same side.

Augmentation is random per item and per data-loader worker: the loader of
:class:`MRIDataModule` (:func:`train_loader`) seeds the dataset's random transforms in each
worker (and, without workers, in the main process) from the loader's seed, the worker and the
global rank (:func:`augmentation_seed`), so workers and DDP ranks draw different flips,
rotations and shifts and a run is reproducible for a given seed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .cohort import cohort_affine, make_cohort
from .nifti import NanPolicy, NiftiError, ObliquePolicy, find_source, parse_source
from .transforms import KEY, ToTensor, Transform, augment_transforms, canonical_affine, preprocess_transforms

__all__ = ["SourceSpec", "EMBEDDED_SIZES", "subject_of", "split_files", "voxel_sizes", "VolumeSet", "load_volumes",
           "build_dataset", "augmentation_seed", "seed_augmentation", "train_loader", "MRIDataModule", "embedded_dataset"]

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
        nan: NaN voxels of files: reject, or read as background (the smallest intensity).
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
    nan: NanPolicy = "reject"

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


_SUBJECT = re.compile(r"sub-([A-Za-z0-9]+)")


def subject_of(path: Path) -> str | None:
    """The BIDS subject label of a file (``"01"`` for ``sub-01_ses-2_T1w.nii.gz``): the
    ``sub-<label>`` entity that starts the file name, else the ``sub-<label>`` folder of a
    ``sub-<label>/[ses-<label>/]anat/<file>`` layout; None for a file outside any subject."""
    path = Path(path)
    m = re.match(r"sub-([A-Za-z0-9]+)[_.]", path.name)
    if m:
        return m.group(1)
    if path.parent.name == "anat":
        up = path.parent.parent
        if up.name.startswith("ses-"):
            up = up.parent
        m = _SUBJECT.fullmatch(up.name)
        if m:
            return m.group(1)
    return None


def split_files(files: Sequence[Path], split: str) -> list[Path]:
    """The ``split`` (train/test) of a file list, by subject (module docstring): every 5th
    subject (every 5th file where files have no subject) is ``test``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    files = sorted(files)
    groups: dict[object, list[Path]] = {}
    for f in files:
        sub = subject_of(f)
        groups.setdefault(("sub", sub) if sub is not None else ("file", f), []).append(f)
    keys = list(groups)  # in the order of each group's first file
    test_keys = {k for i, k in enumerate(keys) if i % 5 == 4}
    if not test_keys and len(keys) >= 2:
        test_keys = {keys[-1]}
    return [f for k in keys if (k in test_keys) == (split == "test") for f in groups[k]]


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

    pre = preprocess_transforms(spec.spacing, spec.fov, oblique=spec.oblique, max_anisotropy=spec.max_anisotropy,
                                nan=spec.nan)
    post = augment_transforms(spacing=spec.spacing) if augment else Compose([ToTensor()])
    post.set_random_state(spec.seed)  # reproducible outside a loader too (train_loader re-seeds per worker and rank)
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
        raise NiftiError(f"{spec.data}: the {split} split is empty (too few NIfTI files, or all of one subject: "
                         f"every 5th subject is held out)")
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


MAX_SEED = 2**32
"""Seeds of MONAI's random transforms (numpy ``RandomState``) are below this."""


def augmentation_seed(seed: int, rank: int, worker: int | None = None) -> int:
    """The seed of the random transforms of global rank ``rank`` and data-loader worker ``worker``
    (None: the main process, no workers); ``seed`` is torch's per-worker seed (the loader's base
    seed plus the worker id, drawn from the loader's generator) or, without workers, the
    loader's seed. Hashed (BLAKE2b), so nearby inputs give unrelated seeds."""
    text = f"{seed}/{rank}/{'main' if worker is None else worker}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % MAX_SEED


def seed_augmentation(dataset: Dataset, seed: int) -> None:
    """Seed every random MONAI transform reachable from ``dataset`` (:class:`VolumeSet`'s
    augmentation, a :class:`monai.data.CacheDataset`'s transform chain, through wrappers such
    as ``Subset``) with :func:`monai.data.utils.set_rnd` (each transform gets its own seed
    drawn from ``seed``)."""
    from monai.data.utils import set_rnd

    set_rnd(dataset, seed)


class _SeedWorker:
    """``worker_init_fn`` of :func:`train_loader`: seeds the worker's copy of the dataset's random
    transforms from torch's per-worker seed and the global rank (a class, so it pickles)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        info = torch.utils.data.get_worker_info()
        seed_augmentation(info.dataset, augmentation_seed(info.seed, self.rank, worker_id))


def train_loader(dataset: Dataset, batch_size: int, seed: int = 0, num_workers: int = 0, rank: int = 0) -> DataLoader:
    """Shuffled training batches ``(B, 1, X, Y, Z)`` of ``dataset``, the order drawn from ``seed``;
    augmentations differ between workers and between global ranks and repeat for the same
    ``(seed, rank, num_workers)`` (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    if num_workers == 0:
        seed_augmentation(dataset, augmentation_seed(seed, rank))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) >= batch_size,
                      generator=g, num_workers=num_workers, persistent_workers=num_workers > 0,
                      worker_init_fn=_SeedWorker(rank) if num_workers > 0 else None)


class MRIDataModule(L.LightningDataModule):
    """Shuffled training batches ``(B, 1, X, Y, Z)`` of a dataset (cycled by ``fit``), through
    :func:`train_loader` with the trainer's global rank."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.seed, self.num_workers = dataset, batch_size, seed, num_workers

    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank()
        return 0

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.dataset, self.batch_size, self.seed, self.num_workers, self._rank())
