"""Evaluation of generated T1 volumes (all take ``(N, 1, X, Y, Z)`` tensors in [-1, 1]).

* :func:`tissue_volumes`: a 3-class Gaussian mixture on the intensities inside each
  volume's brain mask (:func:`~.transforms.brain_mask`), classes ordered by mean intensity
  as CSF < GM < WM (T1 contrast), volumes in mL; compared between sets by
  :func:`permutation_test` (two-sided, difference of means; MedForj's protocol,
  arXiv 2510.26834, compares regional tissue volumes with permutation tests).
* :func:`frechet_distance` between feature sets (Heusel et al. 2017, arXiv 1706.08500, eq. 6)
  with features of :mod:`.features`.
* :func:`ms_ssim_pairs`: mean MS-SSIM between generated pairs (diversity; lower = more
  diverse), MONAI's ``MultiScaleSSIMMetric`` with a 3-voxel kernel so that 32^3 volumes take
  three scales.
* :func:`histogram_distance`: 1-D Wasserstein-1 distance between the pooled voxel
  intensities of two sets, from their quantile functions.
* :func:`high_frequency_ratio`: RMS of the 3-D Laplacian of one set over another's (texture:
  < 1 over-smoothed, > 1 noisier than real), what the Fréchet distance's features see least.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .transforms import brain_mask

__all__ = [
    "TISSUES",
    "gmm_segment",
    "tissue_volumes",
    "permutation_test",
    "ms_ssim_min_side",
    "frechet_distance",
    "ms_ssim_pairs",
    "histogram_distance",
    "laplacian_rms",
    "high_frequency_ratio",
]

TISSUES = ("csf", "gm", "wm")


def gmm_segment(volume: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, mask)`` of one volume ``(X, Y, Z)``: labels 0/1/2 = CSF/GM/WM inside the
    brain mask (-1 outside), from a 3-component 1-D Gaussian mixture (sklearn, means
    initialised at the 10th/50th/90th intensity percentiles); voxels darker than the CSF
    mean are CSF and brighter than the WM mean are WM (monotone in intensity)."""
    from sklearn.mixture import GaussianMixture

    mask = brain_mask(volume)
    labels = np.full(volume.shape, -1, dtype=np.int64)
    vals = volume[mask].reshape(-1, 1).astype(np.float64)
    if vals.shape[0] < 3:
        return labels, mask
    init = np.percentile(vals, [10, 50, 90]).reshape(-1, 1)
    gmm = GaussianMixture(3, means_init=init, random_state=seed, max_iter=200).fit(vals)
    order = np.argsort(gmm.means_[:, 0])
    rank = np.empty(3, dtype=np.int64)
    rank[order] = np.arange(3)
    lab = rank[gmm.predict(vals)]
    means = np.sort(gmm.means_[:, 0])
    lab[vals[:, 0] <= means[0]] = 0  # far tails follow the intensity order, not the widest component
    lab[vals[:, 0] >= means[2]] = 2
    labels[mask] = lab
    return labels, mask


def tissue_volumes(x: Tensor, voxel_ml: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-volume tissue volumes (mL) ``{"csf", "gm", "wm", "brain"}``, each ``(N,)``;
    ``voxel_ml`` is one voxel's volume in mL (mm^3 / 1000)."""
    out: dict[str, list[float]] = {k: [] for k in (*TISSUES, "brain")}
    for v in x[:, 0].detach().cpu().numpy():
        labels, mask = gmm_segment(v, seed)
        for i, name in enumerate(TISSUES):
            out[name].append(float((labels == i).sum()) * voxel_ml)
        out["brain"].append(float(mask.sum()) * voxel_ml)
    return {k: np.asarray(v) for k, v in out.items()}


def permutation_test(a: np.ndarray, b: np.ndarray, n_permutations: int = 2000, seed: int = 0) -> float:
    """Two-sided permutation p-value of ``|mean(a) - mean(b)|`` (the observed split counts as
    one permutation, so p >= 1 / (n_permutations + 1))."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 1 or b.size < 1:
        raise ValueError("permutation_test needs at least one value in each group")
    pooled = np.concatenate([a, b])
    observed = abs(a.mean() - b.mean())
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_permutations, pooled.size)), axis=1)
    sa = pooled[perms[:, : a.size]].mean(1)
    sb = pooled[perms[:, a.size :]].mean(1)
    hits = np.count_nonzero(np.abs(sa - sb) >= observed - 1e-12)
    return float((hits + 1) / (n_permutations + 1))


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})`` between the Gaussians fitted to two
    feature sets ``(N, D)`` (Heusel et al. 2017, arXiv 1706.08500, eq. 6). The matrix square
    root uses the symmetric form ``(S1^{1/2} S2 S1^{1/2})^{1/2}``, which has the same trace."""
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with one D; got {f1.shape} and {f2.shape}")
    if min(f1.shape[0], f2.shape[0]) < 2:
        raise ValueError("frechet_distance needs at least 2 samples per set")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False).reshape(f1.shape[1], -1), np.cov(f2, rowvar=False).reshape(f2.shape[1], -1)
    r1 = _psd_sqrt(s1)
    cross = _psd_sqrt(r1 @ s2 @ r1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(cross))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (s + s.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def ms_ssim_min_side(kernel_size: int = 3, n_scales: int = 3) -> int:
    """The smallest volume side :func:`ms_ssim_pairs` accepts: MONAI's ``MultiScaleSSIMMetric``
    needs ``side // max(1, n_scales - 1) ** 2 > kernel_size - 1`` (12 for the defaults)."""
    return kernel_size * max(1, n_scales - 1) ** 2


def ms_ssim_pairs(x: Tensor, kernel_size: int = 3, weights: tuple[float, ...] = (0.3, 0.3, 0.4)) -> float:
    """Mean MS-SSIM over the pairs ``(x[2i], x[2i+1])`` of volumes in [-1, 1] (MONAI
    ``MultiScaleSSIMMetric`` on ``(x + 1) / 2``, data range 1: SSIM's luminance term assumes
    non-negative intensities, and on signed values grey matter and CSF near 0 make it swing);
    ``len(weights)`` scales, each halving the volume."""
    from monai.metrics import MultiScaleSSIMMetric

    n = (x.shape[0] // 2) * 2
    if n < 2:
        raise ValueError("ms_ssim_pairs needs at least 2 volumes")
    side = ms_ssim_min_side(kernel_size, len(weights))
    if min(x.shape[2:]) < side:
        raise ValueError(f"ms_ssim_pairs: volumes {tuple(x.shape[2:])} are too small for MS-SSIM with {len(weights)} "
                         f"scales and a {kernel_size}-voxel kernel: every side must be >= {side} voxels")
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=kernel_size, weights=weights)
    a, b = (x[0:n:2].float() + 1) / 2, (x[1:n:2].float() + 1) / 2
    return float(metric(a, b).mean())


def histogram_distance(x: Tensor, y: Tensor, quantiles: int = 1000) -> float:
    """Wasserstein-1 distance between the pooled voxel intensities of ``x`` and ``y``:
    ``int_0^1 |F_x^{-1}(q) - F_y^{-1}(q)| dq`` by the midpoint rule on ``quantiles`` points."""
    q = (torch.arange(quantiles, dtype=torch.float64) + 0.5) / quantiles
    return float((_quantile_function(x, q) - _quantile_function(y, q)).abs().mean())


def _quantile_function(x: Tensor, q: Tensor) -> Tensor:
    """The empirical quantile function ``F^{-1}(q) = x_(ceil(q n))`` (a step function; exact
    W1 when ``quantiles`` is a common multiple of both set sizes)."""
    v = x.detach().reshape(-1).double().cpu().sort().values
    idx = (torch.ceil(q * v.numel()).long() - 1).clamp(0, v.numel() - 1)
    return v[idx]


def laplacian_rms(x: Tensor) -> float:
    """Root mean square over the interior voxels of the 7-point discrete Laplacian
    ``sum_d (x[i+e_d] - 2 x[i] + x[i-e_d])`` of volumes ``(N, 1, X, Y, Z)``, pooled over the set."""
    v = x.detach().double().cpu()[:, 0]
    c = v[:, 1:-1, 1:-1, 1:-1]
    lap = (v[:, 2:, 1:-1, 1:-1] + v[:, :-2, 1:-1, 1:-1] + v[:, 1:-1, 2:, 1:-1] + v[:, 1:-1, :-2, 1:-1]
           + v[:, 1:-1, 1:-1, 2:] + v[:, 1:-1, 1:-1, :-2] - 6.0 * c)
    return float(lap.pow(2).mean().sqrt())


def high_frequency_ratio(x: Tensor, y: Tensor) -> float:
    """``laplacian_rms(x) / laplacian_rms(y)``: 1 when ``x`` has the high-frequency energy (edges
    and acquisition noise) of ``y``; an over-smoothed generator scores below 1, a noisy one above."""
    return laplacian_rms(x) / laplacian_rms(y)
