"""Encoding and decoding metrics (float64 numpy; inputs are arrays or tensors).

Encoding (stimulus -> brain):

* :func:`voxel_r` — per-voxel Pearson r over held-out stimuli ``(V,)``;
* :func:`sample_r` — per-sample Pearson r across voxels ``(N,)``;
* :func:`sample_cosine` — per-sample cosine similarity across voxels ``(N,)`` (NeuroFlow's
  encoding table also reports it and the MSE, in the z-scored units of the responses);
* :func:`noise_ceiling` — the r a perfect model reaches on averages of ``R`` repeats, from
  the NSD noise-ceiling SNR (Allen et al. 2022, Nat. Neurosci. 25, 116, Methods:
  ``ncsnr = sigma_signal / sigma_noise``, ``NC = ncsnr^2 / (ncsnr^2 + 1/R)``, as r:
  ``sqrt(NC)``).

Decoding (brain -> stimulus): :func:`pixcorr` (mean per-image Pearson r of pixels),
:func:`ssim` (mean structural similarity, Wang et al. 2004, IEEE TIP 13, 600, eq. 13,
through ``skimage.metrics.structural_similarity``), :func:`two_way_identification`
(fraction of distractors j != i with ``r(pred_i, true_i) > r(pred_i, true_j)``; chance 0.5;
Kay et al. 2008 / MindEye, arXiv 2305.18274) and :func:`top1_retrieval` (the true item is
the most correlated among ``n_candidates``; chance ``1 / n_candidates``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_numpy", "voxel_r", "sample_r", "sample_cosine", "noise_ceiling", "pixcorr", "ssim", "corr_matrix",
           "two_way_identification", "top1_retrieval"]


def as_numpy(x) -> np.ndarray:
    """float64 numpy copy of an array or tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _standardise(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.mean(axis=axis, keepdims=True)
    norm = np.sqrt((x**2).sum(axis=axis, keepdims=True))
    return x / np.where(norm > 0, norm, np.inf)  # a constant vector has r = 0 with anything


def voxel_r(pred, true) -> np.ndarray:
    """Pearson r of every column (voxel) over rows (stimuli): ``(V,)`` for ``(N, V)`` inputs."""
    p, t = as_numpy(pred), as_numpy(true)
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"pred and true must be (N, V) of one shape; got {p.shape} and {t.shape}")
    return (_standardise(p, 0) * _standardise(t, 0)).sum(0)


def sample_r(pred, true) -> np.ndarray:
    """Pearson r of every row (sample) over the flattened features: ``(N,)``."""
    p, t = as_numpy(pred), as_numpy(true)
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have one shape; got {p.shape} and {t.shape}")
    p, t = p.reshape(len(p), -1), t.reshape(len(t), -1)
    return (_standardise(p, 1) * _standardise(t, 1)).sum(1)


def sample_cosine(pred, true) -> np.ndarray:
    """Cosine similarity of every row (sample) over the flattened features: ``(N,)``; 0 for a zero row."""
    p, t = as_numpy(pred), as_numpy(true)
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have one shape; got {p.shape} and {t.shape}")
    p, t = p.reshape(len(p), -1), t.reshape(len(t), -1)
    norms = np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1)
    return (p * t).sum(1) / np.where(norms > 0, norms, np.inf)


def noise_ceiling(trials) -> np.ndarray:
    """Per-voxel r ceiling ``(V,)`` for predicting each stimulus's average over its repeats
    from single trials ``(n_stimuli, R, V)``; a stimulus shown ``n_s < R`` times holds NaN in
    its other ``R - n_s`` rows. NSD's formula (Allen et al. 2022) for mixed repeat counts:
    noise variance pooled within stimuli, signal variance = total variance of the single
    trials minus the noise, ncsnr² = signal / noise, and
    ``NC = sqrt(ncsnr² / (ncsnr² + mean_s 1/n_s))`` (``1/R`` when every stimulus is shown
    ``R`` times); 0 where no signal variance is left."""
    x = as_numpy(trials).astype(np.float64)
    if x.ndim != 3:
        raise ValueError(f"trials must be (n_stimuli, R >= 2 repeats, V); got shape {x.shape}")
    shown = np.isfinite(x).all(axis=2)  # (n_stimuli, R): which repeats exist
    n_s = shown.sum(1)
    dof = int((n_s - 1).clip(min=0).sum())
    if dof == 0:
        raise ValueError(f"trials must be (n_stimuli, R >= 2 repeats, V) with some stimulus shown at least twice; "
                         f"got shape {x.shape} with at most {int(n_s.max(initial=0))} repeat(s) per stimulus")
    x, n_s = x[n_s > 0], n_s[n_s > 0]
    shown = np.isfinite(x).all(axis=2)
    means = np.nansum(x, axis=1) / n_s[:, None]
    noise_var = np.nansum((x - means[:, None]) ** 2, axis=(0, 1)) / dof  # within-stimulus variance, pooled
    total_var = x[shown].var(0, ddof=1)  # every single trial
    signal_var = np.maximum(total_var - noise_var, 0.0)
    ncsnr2 = signal_var / np.maximum(noise_var, 1e-12)
    return np.sqrt(ncsnr2 / (ncsnr2 + np.mean(1.0 / n_s)))


def pixcorr(pred, true) -> float:
    """Mean over images of the Pearson r between flattened pixels."""
    return float(sample_r(pred, true).mean())


def ssim(pred, true) -> float:
    """Mean SSIM of greyscale images ``(N, H, W)`` in [0, 1] (Gaussian window, sigma 1.5,
    as in Wang et al. 2004)."""
    from skimage.metrics import structural_similarity

    p, t = as_numpy(pred), as_numpy(true)
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"pred and true must be (N, H, W) of one shape; got {p.shape} and {t.shape}")
    win = min(7, p.shape[1], p.shape[2])
    win -= 1 - win % 2  # odd
    vals = [structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, win_size=win,
                                  use_sample_covariance=False) for a, b in zip(np.clip(p, 0, 1), t)]
    return float(np.mean(vals))


def corr_matrix(pred, true) -> np.ndarray:
    """``C[i, j] = r(pred_i, true_j)`` over flattened features: ``(N, M)``."""
    p, t = as_numpy(pred), as_numpy(true)
    p, t = p.reshape(len(p), -1), t.reshape(len(t), -1)
    return _standardise(p, 1) @ _standardise(t, 1).T


def two_way_identification(pred, true) -> float:
    """Mean over ``i`` of the fraction of ``j != i`` with ``r(pred_i, true_i) > r(pred_i,
    true_j)`` (ties count one half). 1 for perfect predictions, 0.5 at chance."""
    C = corr_matrix(pred, true)
    n = len(C)
    if n < 2:
        raise ValueError("two-way identification needs at least 2 samples")
    diag = np.diag(C)[:, None]
    wins = (diag > C).sum(1) + 0.5 * ((diag == C).sum(1) - 1)
    return float((wins / (n - 1)).mean())


def top1_retrieval(query, candidates, n_candidates: int = 300, seed: int = 0) -> float:
    """Fraction of queries ``i`` whose own candidate ``i`` is the most correlated among
    ``n_candidates`` (itself plus ``n_candidates - 1`` others drawn without replacement
    from ``seed``; all others when fewer exist). Chance is ``1 / n_candidates``."""
    C = corr_matrix(query, candidates)
    n = len(C)
    if n < 2:
        raise ValueError("top-1 retrieval needs at least 2 samples")
    k = min(n_candidates, n)
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(n):
        others = np.delete(np.arange(n), i)
        pool = others if k - 1 >= len(others) else rng.choice(others, k - 1, replace=False)
        hits += bool(C[i, i] > C[i, pool].max())
    return hits / n
