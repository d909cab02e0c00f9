"""MONAI dictionary transforms of the T1 pipeline (key ``"image"``, channel first).

Preprocessing (deterministic, cached by :class:`monai.data.CacheDataset`):
``LoadChecked`` (our checked NIfTI reader) -> ``Orientationd`` (one axis code, RAS) ->
``Spacingd`` (target voxel size, trilinear) -> ``ScaleIntensityRangePercentilesd``
(clip to the 0.1-99.9th percentiles, map to [0, 1]) -> ``BrainMaskd`` (intensity +
morphology) -> ``CropToBraind`` (crop/pad to the field of view, centred on the mask's
bounding box) -> ``ScaleIntensityRanged`` ([0, 1] -> [-1, 1]).

Augmentation (random, after the cache; MedForj, arXiv 2510.26834: left-right flip, +-5 degree
rotations, +-5 voxel shifts at 1 mm, i.e. +-5 mm, converted to voxels of the data's spacing):
``RandFlipd`` on the left-right axis and ``RandAffined``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    BorderPad,
    Compose,
    MapTransform,
    Orientationd,
    RandAffined,
    RandFlipd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    SpatialCrop,
    Transform,
)
from scipy import ndimage

from .nifti import NanPolicy, ObliquePolicy, read_volume

__all__ = [
    "KEY",
    "otsu_threshold",
    "brain_mask",
    "LoadChecked",
    "BrainMaskd",
    "CropToBraind",
    "ToTensor",
    "preprocess_transforms",
    "augment_transforms",
    "canonical_affine",
]

KEY = "image"
MASK = "brain_mask"


def otsu_threshold(x: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold (Otsu 1979): the cut maximising the between-class variance of the
    intensity histogram of ``x``."""
    hist, edges = np.histogram(x, bins=bins)
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centres)
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def brain_mask(x: np.ndarray, closing: int = 2, fraction: float = 0.5) -> np.ndarray:
    """A brain (head, for un-stripped scans) mask from intensity and morphology: threshold
    ``lo + fraction (otsu - lo)`` (``lo`` the 1st percentile, so the darker CSF stays inside),
    opening, largest connected component, closing, hole filling. ``x`` ``(X, Y, Z)``."""
    lo = float(np.percentile(x, 1.0))
    fg = x > lo + fraction * (otsu_threshold(x) - lo)
    fg = ndimage.binary_opening(fg, iterations=1)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros_like(fg)
    sizes = ndimage.sum(fg, labels, index=np.arange(1, n + 1))
    fg = labels == (1 + int(np.argmax(sizes)))
    fg = ndimage.binary_closing(fg, iterations=closing, border_value=0)
    return ndimage.binary_fill_holes(fg)


class LoadChecked(MapTransform):
    """Read ``d[key]`` (a path) with :func:`~.nifti.read_volume` into a channel-first
    :class:`MetaTensor` ``(1, X, Y, Z)`` carrying the affine."""

    def __init__(self, keys: Sequence[Hashable], oblique: ObliquePolicy = "reject", max_anisotropy: float = 4.0,
                 nan: NanPolicy = "reject") -> None:
        super().__init__(keys)
        self.oblique, self.max_anisotropy, self.nan = oblique, max_anisotropy, nan

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            vol = read_volume(d[key], oblique=self.oblique, max_anisotropy=self.max_anisotropy, nan=self.nan)
            meta = {"filename_or_obj": str(vol.path)}
            d[key] = MetaTensor(torch.from_numpy(vol.data[None].copy()), affine=torch.from_numpy(vol.affine), meta=meta)
        return d


class BrainMaskd(MapTransform):
    """Add ``d["brain_mask"]`` ``(1, X, Y, Z)`` bool, from :func:`brain_mask` of ``d[key]``."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = np.asarray(d[key][0].detach().cpu())
            d[MASK] = torch.from_numpy(brain_mask(x)[None])
        return d


TOP_MARGIN = 2
"""Voxels kept above the head mask's top when the crop is anchored there (:class:`CropToBraind`)."""


class CropToBraind(MapTransform):
    """Crop / zero-pad ``d[key]`` (RAS) to ``roi_size`` centred on the centre of the brain mask's
    bounding box (the volume centre if the mask is empty). Along the inferior-superior axis a
    mask taller than the crop (a head scanned with its neck: the mask is the head and neck
    when the skull is not stripped) anchors the crop's top :data:`TOP_MARGIN` voxels above the
    mask's top instead, so the neck is cut, never the top of the brain. Affines follow (MONAI
    crop/pad)."""

    def __init__(self, keys: Sequence[Hashable], roi_size: Sequence[int]) -> None:
        super().__init__(keys)
        self.roi_size = tuple(int(s) for s in roi_size)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        mask = np.asarray(d.pop(MASK)[0]) if MASK in d else None
        for key in self.key_iterator(d):
            img = d[key]
            shape = np.array(img.shape[1:])
            size = np.array(self.roi_size)
            if mask is not None and mask.any():
                idx = np.argwhere(mask)
                lo, hi = idx.min(0), idx.max(0) + 1
                centre = (lo + hi) // 2
            else:
                centre = shape // 2
            start = centre - size // 2
            if mask is not None and mask.any() and hi[2] - lo[2] > size[2]:  # taller than the crop: keep the top
                start[2] = hi[2] + TOP_MARGIN - size[2]
            before = np.maximum(0, -start)
            after = np.maximum(0, start + size - shape)
            border = [int(v) for pair in zip(before, after) for v in pair]
            if any(border):
                img = BorderPad(spatial_border=border, mode="constant")(img)
            start = start + before
            d[key] = SpatialCrop(roi_start=start.tolist(), roi_end=(start + size).tolist())(img)
        return d


class ToTensor(Transform):
    """The dictionary's ``"image"`` as a plain float32 tensor ``(1, X, Y, Z)`` (the training batch)."""

    def __call__(self, data: Mapping) -> torch.Tensor:
        x = data[KEY]
        x = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
        return x.float().contiguous()


def preprocess_transforms(
    spacing: Sequence[float],
    fov: Sequence[int],
    lower_pct: float = 0.1,
    upper_pct: float = 99.9,
    oblique: ObliquePolicy = "reject",
    max_anisotropy: float = 4.0,
    nan: NanPolicy = "reject",
) -> Compose:
    """The deterministic part of the pipeline (see the module docstring); its output is a
    dict with ``"image"`` a :class:`MetaTensor` ``(1, *fov)`` in [-1, 1] with its affine."""
    return Compose([
        LoadChecked([KEY], oblique=oblique, max_anisotropy=max_anisotropy, nan=nan),
        Orientationd(keys=[KEY], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=[KEY], pixdim=tuple(spacing), mode="bilinear"),
        ScaleIntensityRangePercentilesd(keys=[KEY], lower=lower_pct, upper=upper_pct, b_min=0.0, b_max=1.0, clip=True),
        BrainMaskd([KEY]),
        CropToBraind([KEY], roi_size=fov),
        ScaleIntensityRanged(keys=[KEY], a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0),
    ])


def augment_transforms(rotate_deg: float = 5.0, shift_mm: float = 5.0, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                       flip_prob: float = 0.5, to_tensor: bool = True) -> Compose:
    """MedForj's augmentation: left-right flip (axis 0 of RAS) with ``flip_prob``,
    rotations uniform in +-``rotate_deg`` about each axis and shifts uniform in
    +-``shift_mm`` millimetres, i.e. +-``shift_mm / spacing`` voxels per axis (trilinear,
    border padding, so the background stays -1). MedForj's +-5 voxels are at 1 mm, so the
    default is 5 mm: at 1 mm that is 5 voxels; on the 8 mm voxels of the 24^3 embedded
    cohort it is 0.6 voxel (5 voxels there would move the brain by 40 mm, a fifth of the
    field of view, and the model learns those displaced brains)."""
    if len(spacing) != 3 or any(float(v) <= 0 for v in spacing):
        raise ValueError(f"spacing must be three voxel sizes > 0 (mm); got {tuple(spacing)}")
    r = math.radians(rotate_deg)
    shift = tuple(shift_mm / float(v) for v in spacing)  # mm -> voxels per axis
    ts: list = [
        RandFlipd(keys=[KEY], prob=flip_prob, spatial_axis=0),
        RandAffined(keys=[KEY], prob=1.0, rotate_range=(r, r, r), translate_range=shift,
                    mode="bilinear", padding_mode="border"),
    ]
    if to_tensor:
        ts.append(ToTensor())
    return Compose(ts)


def canonical_affine(spacing: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """The RAS affine of a ``shape`` grid of ``spacing`` mm voxels centred on the world
    origin: the affine generated volumes are written with."""
    A = np.diag([*map(float, spacing), 1.0])
    A[:3, 3] = -0.5 * (np.asarray(shape, dtype=np.float64) - 1) * np.asarray(spacing, dtype=np.float64)
    return A
