"""Visual stimuli and the image features simulated voxels are tuned to.

Stimuli are real images that ship offline: scikit-learn's handwritten ``digits`` (1797
images, 8 x 8, 17 grey levels), scikit-image's ``lfw_subset`` faces (200 images,
25 x 25) and ``scenes``: 32 x 32 patches of the twelve photographs of objects, people,
animals and textures that scikit-image and scikit-learn bundle (:data:`SCENE_PHOTOS`),
cut on a non-overlapping grid and converted to grey (ITU-R 601 luma,
``skimage.color.rgb2gray``); patches whose standard deviation is below
:data:`SCENE_MIN_STD` (flat sky, blank wall) are dropped. All are resized (bilinear,
anti-aliased; ``skimage.transform.resize``) to ``size x size`` in [0, 1].

Feature maps (``(S, C, size, size)``, all >= 0), the channels a voxel can be tuned to:

* ``luminance``: the image itself;
* ``contrast``: local RMS contrast, ``sqrt(G_s * (I - G_s * I)^2)`` with a Gaussian
  ``G_s`` of width ``contrast_sigma`` pixels;
* ``gabor_<k>``: Gabor energy at orientation ``theta_k = k pi / n_orient``,
  ``sqrt((g_even * I)^2 + (g_odd * I)^2)`` (the quadrature-pair energy model, Adelson &
  Bergen 1985, JOSA A 2(2) eq. 1; Kay et al. 2008, Nature 452, 352), kernels from
  ``skimage.filters.gabor_kernel``.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

__all__ = ["StimulusSet", "STIMULUS_SETS", "SOURCES", "SCENE_PHOTOS", "SCENE_PATCH", "SCENE_MIN_STD", "scene_patches",
           "load_stimuli", "feature_names", "feature_maps"]

StimulusSet = Literal["digits", "faces", "scenes", "both", "all"]
STIMULUS_SETS: tuple[str, ...] = get_args(StimulusSet)
SOURCES: tuple[str, ...] = ("digit", "face", "scene")
"""Name of each ``source`` code of :func:`load_stimuli`."""
_PARTS: dict[str, tuple[str, ...]] = {"digits": ("digit",), "faces": ("face",), "scenes": ("scene",),
                                      "both": ("digit", "face"), "all": ("digit", "face", "scene")}
SCENE_PHOTOS: tuple[str, ...] = ("skimage:astronaut", "skimage:camera", "skimage:chelsea", "skimage:coffee",
                                 "skimage:coins", "skimage:rocket", "skimage:moon", "skimage:grass", "skimage:gravel",
                                 "skimage:brick", "sklearn:china.jpg", "sklearn:flower.jpg")
"""The photographs the ``scenes`` patches are cut from, in this order."""
SCENE_PATCH: int = 32
"""Edge of a scene patch in the photograph's pixels, before resizing."""
SCENE_MIN_STD: float = 0.03
"""Patches whose grey-level standard deviation is below this are dropped (nearly flat)."""


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    if images.shape[1:] == (size, size):
        return images.astype(np.float32)
    out = resize(images, (images.shape[0], size, size), order=1, anti_aliasing=True, preserve_range=True)
    return out.astype(np.float32)


def _photo(name: str) -> np.ndarray:
    """One of :data:`SCENE_PHOTOS` as grey levels ``(H, W)`` float64 in [0, 1]."""
    from skimage.color import rgb2gray

    library, key = name.split(":")
    if library == "skimage":
        import skimage.data

        image = getattr(skimage.data, key)()
    else:
        from sklearn.datasets import load_sample_image

        image = load_sample_image(key)
    grey = rgb2gray(image) if image.ndim == 3 else image / 255.0  # rgb2gray returns [0, 1] from uint8
    return np.asarray(grey, np.float64)


def scene_patches() -> np.ndarray:
    """Every non-flat ``SCENE_PATCH`` x ``SCENE_PATCH`` patch of :data:`SCENE_PHOTOS` on a
    non-overlapping grid (row-major, photographs in order), ``(P, 32, 32)`` float64 in [0, 1]."""
    k = SCENE_PATCH
    patches = []
    for name in SCENE_PHOTOS:
        grey = _photo(name)
        rows, cols = grey.shape[0] // k, grey.shape[1] // k
        grid = grey[: rows * k, : cols * k].reshape(rows, k, cols, k).transpose(0, 2, 1, 3).reshape(-1, k, k)
        patches.append(grid[grid.std(axis=(1, 2)) >= SCENE_MIN_STD])
    return np.concatenate(patches)


def load_stimuli(kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images (S, size, size) float32 in [0, 1], source (S,) int64)`` where source
    indexes :data:`SOURCES` (0 digit, 1 face, 2 scene). ``kind``: digits, faces, scenes,
    both (digits then faces) or all (digits, faces, scenes)."""
    if kind not in STIMULUS_SETS:
        raise ValueError(f"stimuli must be one of {list(STIMULUS_SETS)}; got {kind!r}")
    if size < 4:
        raise ValueError(f"image size must be >= 4; got {size}")
    parts, sources = [], []
    for part in _PARTS[kind]:
        if part == "digit":
            from sklearn.datasets import load_digits

            images = load_digits().images / 16.0  # (1797, 8, 8), 0..16 -> [0, 1]
        elif part == "face":
            from skimage.data import lfw_subset

            images = lfw_subset()  # (200, 25, 25) in [0, 1]
        else:
            images = scene_patches()
        parts.append(_resize(images, size))
        sources.append(np.full(len(images), SOURCES.index(part), np.int64))
    images = np.clip(np.concatenate(parts), 0.0, 1.0)
    return images, np.concatenate(sources)


def feature_names(n_orient: int) -> tuple[str, ...]:
    """Channel names of :func:`feature_maps`: luminance, contrast, gabor_0 .. gabor_{n-1}."""
    return ("luminance", "contrast") + tuple(f"gabor_{k}" for k in range(n_orient))


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(0, sigma, sigma), mode="reflect")


def feature_maps(images: np.ndarray, n_orient: int, frequency: float, contrast_sigma: float) -> np.ndarray:
    """Non-negative feature maps ``(S, 2 + n_orient, H, W)`` float32 of ``images``
    ``(S, H, W)`` (channels as in :func:`feature_names`)."""
    from scipy.signal import fftconvolve
    from skimage.filters import gabor_kernel

    x = images.astype(np.float64)
    local_mean = _gaussian_blur(x, contrast_sigma)
    contrast = np.sqrt(np.maximum(_gaussian_blur((x - local_mean) ** 2, contrast_sigma), 0.0))
    maps = [x, contrast]
    centred = x - x.mean(axis=(1, 2), keepdims=True)
    for k in range(n_orient):
        g = gabor_kernel(frequency, theta=np.pi * k / n_orient)[None]  # (1, h, w) complex
        even = fftconvolve(centred, g.real, mode="same", axes=(1, 2))
        odd = fftconvolve(centred, g.imag, mode="same", axes=(1, 2))
        maps.append(np.sqrt(even**2 + odd**2))  # quadrature energy, Adelson & Bergen 1985 eq. 1
    return np.stack(maps, axis=1).astype(np.float32)
