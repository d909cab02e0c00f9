"""The embedded cohort: N synthetic T1 "subjects" derived from ONE template, nilearn's
packaged MNI152 (ICBM 2009) T1 at 2 mm with its grey- and white-matter probability maps
(read from files inside the nilearn package: no download).

Subject ``i`` of a split (seeded by ``(seed, split, i)``):

1. tissue contrast: ``I = (1 - lam) T1 + lam (c_gm GM + c_wm WM + c_csf CSF)``, with
   ``CSF = mask (1 - GM - WM)+`` and random ``c_*`` and ``lam``;
2. shape: a random anisotropic scaling (+-8 %) plus a smooth random displacement field
   (Gaussian-filtered white noise), applied by trilinear resampling;
3. a smooth multiplicative bias field ``exp(sum_k a_k P_k(x))`` of low-order polynomials;
4. Rician-like noise ``sqrt((I + n1)^2 + n2^2)``;
5. the pipeline's intensity steps: percentile clip 0.1-99.9 and scaling to [-1, 1].

The template's brain box is cut to a 192 mm cube (96 voxels of 2 mm) and resampled to
``size^3`` first, so every step runs at the output size and voxels are ``192 / size`` mm:
``size`` is the recipe's (32 by default, 6 mm voxels; the benchmark profiles use 16 smoke,
24 quick (8 mm), 32 full (6 mm), 64 gpu).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
from scipy import ndimage

__all__ = ["CohortSpec", "template_maps", "make_subject", "make_cohort", "cohort_affine", "scale_intensity"]

CohortSpec = tuple[int, int, str, int]  # (n, size, split, seed)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


@functools.lru_cache(maxsize=4)
def template_maps(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """``(T1, GM, WM, mask, spacing_mm)`` of the MNI152 template on a ``size^3`` cube around
    the brain; maps ``(size, size, size)`` float32, ``spacing_mm`` the cube's voxel size."""
    try:
        from nilearn import datasets
    except ImportError as e:  # pragma: no cover
        raise ImportError("the embedded MRI cohort needs nilearn: pip install modaflow[mri]") from e
    t1 = datasets.load_mni152_template(resolution=2)
    maps = [np.asarray(t1.get_fdata(), dtype=np.float32)]
    for load in (datasets.load_mni152_gm_template, datasets.load_mni152_wm_template, datasets.load_mni152_brain_mask):
        maps.append(np.asarray(load(resolution=2).get_fdata(), dtype=np.float32))
    idx = np.argwhere(maps[3] > 0)
    lo, hi = idx.min(0), idx.max(0) + 1
    side = int((hi - lo).max()) + 6  # cube with a 3-voxel margin
    centre = (lo + hi) // 2
    out = []
    for m in maps:
        cube = np.zeros((side,) * 3, dtype=np.float32)
        start = centre - side // 2
        src = [slice(max(0, s), min(n, s + side)) for s, n in zip(start, m.shape)]
        dst = [slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start)]
        cube[tuple(dst)] = m[tuple(src)]
        out.append(ndimage.zoom(cube, size / side, order=1).astype(np.float32))
    spacing = 2.0 * side / size
    return out[0], out[1], out[2], out[3] > 0.5, spacing


def cohort_affine(size: int) -> np.ndarray:
    """RAS affine of the cohort's ``size^3`` grid (voxel size from :func:`template_maps`,
    centred on the world origin)."""
    from .transforms import canonical_affine

    spacing = template_maps(size)[4]
    return canonical_affine((spacing,) * 3, (size,) * 3)


def scale_intensity(x: np.ndarray, lower: float = 0.1, upper: float = 99.9) -> np.ndarray:
    """Clip to the ``lower``-``upper`` percentiles and map linearly onto [-1, 1]."""
    lo, hi = np.percentile(x, [lower, upper])
    return (2.0 * (np.clip(x, lo, hi) - lo) / max(hi - lo, 1e-8) - 1.0).astype(np.float32)


def make_subject(size: int, seed: int) -> np.ndarray:
    """One synthetic subject ``(size, size, size)`` float32 in [-1, 1] (module docstring)."""
    t1, gm, wm, mask, _ = template_maps(size)
    rng = np.random.default_rng(seed)
    csf = mask * np.clip(1.0 - gm - wm, 0.0, 1.0)
    c_gm, c_wm, c_csf = rng.uniform(0.50, 0.65), rng.uniform(0.80, 0.95), rng.uniform(0.10, 0.30)
    lam = rng.uniform(0.3, 0.7)
    img = (1 - lam) * t1 + lam * (c_gm * gm + c_wm * wm + c_csf * csf)
    # shape: anisotropic scaling about the centre + smooth displacement field
    grid = np.stack(np.meshgrid(*[np.arange(size, dtype=np.float32)] * 3, indexing="ij"))
    c = (size - 1) / 2.0
    scale = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    amp, smooth = 0.06 * size, size / 8.0
    disp = np.stack([ndimage.gaussian_filter(rng.standard_normal((size,) * 3).astype(np.float32), smooth) for _ in range(3)])
    disp *= amp / max(float(np.abs(disp).max()), 1e-8)
    coords = (grid - c) / scale[:, None, None, None] + c + disp
    img = ndimage.map_coordinates(img, coords, order=1, mode="constant", cval=0.0)
    # bias field: exp of a random quadratic polynomial in normalised coordinates
    u = (grid - c) / c
    terms = [u[0], u[1], u[2], u[0] * u[1], u[1] * u[2], u[0] * u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2]
    bias = np.exp(sum(a * p for a, p in zip(rng.uniform(-0.12, 0.12, len(terms)), terms)))
    img = img * bias
    sd = rng.uniform(0.01, 0.03)
    n1, n2 = rng.standard_normal((2,) + img.shape).astype(np.float32) * sd
    img = np.sqrt((img + n1) ** 2 + n2**2)
    return scale_intensity(img)


@functools.lru_cache(maxsize=8)
def _cohort(n: int, size: int, split: str, seed: int) -> np.ndarray:
    return np.stack([make_subject(size, _seed(seed, split, i)) for i in range(n)])[:, None]


def make_cohort(n: int, size: int, split: str, seed: int) -> np.ndarray:
    """``n`` subjects ``(n, 1, size, size, size)`` float32 of ``split`` (train/val/test
    draw disjoint seeds). Cached in memory; returns a copy."""
    if n < 1 or size < 8:
        raise ValueError(f"need n >= 1 and size >= 8; got n={n}, size={size}")
    return _cohort(n, size, split, seed).copy()
