"""Visual stimuli and the image features simulated voxels are tuned to.

Stimuli are real images that ship offline: scikit-learn's handwritten ``digits`` (1797
images, 8 x 8, 17 grey levels) and scikit-image's ``lfw_subset`` faces (200 images,
25 x 25). Both are resized (bilinear, anti-aliased; ``skimage.transform.resize``) to
``size x size`` and scaled to [0, 1].

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

__all__ = ["StimulusSet", "STIMULUS_SETS", "load_stimuli", "feature_names", "feature_maps"]

StimulusSet = Literal["digits", "faces", "both"]
STIMULUS_SETS: tuple[str, ...] = get_args(StimulusSet)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    if images.shape[1:] == (size, size):
        return images.astype(np.float32)
    out = resize(images, (images.shape[0], size, size), order=1, anti_aliasing=True, preserve_range=True)
    return out.astype(np.float32)


def load_stimuli(kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images (S, size, size) float32 in [0, 1], source (S,) int64)`` where source is 0
    for a digit and 1 for a face. ``kind``: digits, faces or both (digits first)."""
    if kind not in STIMULUS_SETS:
        raise ValueError(f"stimuli must be one of {list(STIMULUS_SETS)}; got {kind!r}")
    if size < 4:
        raise ValueError(f"image size must be >= 4; got {size}")
    parts, sources = [], []
    if kind in ("digits", "both"):
        from sklearn.datasets import load_digits

        digits = load_digits().images / 16.0  # (1797, 8, 8), 0..16 -> [0, 1]
        parts.append(_resize(digits, size))
        sources.append(np.zeros(len(digits), np.int64))
    if kind in ("faces", "both"):
        from skimage.data import lfw_subset

        faces = lfw_subset()  # (200, 25, 25) in [0, 1]
        parts.append(_resize(faces, size))
        sources.append(np.ones(len(faces), np.int64))
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
