"""Metric bundles shared by ``evaluate`` and the benchmark: one function per direction, so
NeuroFlow and every baseline are scored by the same code on the same test set."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .metrics import (as_numpy, noise_ceiling, pixcorr, sample_cosine, sample_r, ssim, top1_retrieval,
                      two_way_identification, voxel_r)

__all__ = ["encoding_metrics", "decoding_metrics", "NeuroFlowScores", "score_neuroflow"]


CEILING_MIN_STIMULI = 20
"""Test stimuli below which the noise ceiling's estimate is clearly biased low (a simulation with 3 repeats and a
true ceiling of 0.87: 0.72 from 5 stimuli, 0.80 from 10, 0.84 from 20; review of the fifteenth session)."""


def encoding_metrics(pred_vox, test_x, test_trials, n_candidates: int = 300, seed: int = 0) -> dict[str, float]:
    """Per-voxel r (median, mean), its fraction of the noise ceiling (median over voxels of
    ``r / ceiling`` where the ceiling exceeds 0.1, and ``median r / median ceiling``),
    per-sample r and cosine across voxels (means), the MSE (z-scored units) and image -> brain
    top-1 retrieval."""
    r = voxel_r(pred_vox, test_x)
    out = {"enc.voxel_r_median": float(np.median(r)), "enc.voxel_r_mean": float(r.mean()),
           "enc.sample_r_mean": float(sample_r(pred_vox, test_x).mean()),
           "enc.sample_cosine_mean": float(sample_cosine(pred_vox, test_x).mean()),
           "enc.mse": float(np.mean((as_numpy(pred_vox) - as_numpy(test_x)) ** 2)),
           "enc.top1_retrieval": top1_retrieval(pred_vox, test_x, n_candidates, seed)}
    if test_trials is not None and np.isfinite(test_trials).all(2).sum(1).max() >= 2:  # some stimulus repeated
        nc = noise_ceiling(test_trials)
        if len(test_trials) < CEILING_MIN_STIMULI:
            warnings.warn(f"the noise ceiling comes from {len(test_trials)} test stimuli; below about "
                          f"{CEILING_MIN_STIMULI} it is biased low (r / ceiling reads high, even above 1)", UserWarning,
                          stacklevel=2)
        ok = nc > 0.1
        out["enc.noise_ceiling_median"] = float(np.median(nc))
        out["enc.frac_ceiling_median"] = float(np.median(r[ok] / nc[ok])) if ok.any() else float("nan")
        out["enc.median_r_over_median_ceiling"] = float(np.median(r) / max(np.median(nc), 1e-12))
    return out


def decoding_metrics(pred_img, test_img, features: Callable[[Tensor], Tensor], n_candidates: int = 300,
                     seed: int = 0, prefix: str = "dec") -> dict[str, float]:
    """PixCorr, SSIM, two-way identification in pixels and in ``features`` (a feature
    space trained here, :class:`~.models.FeatureNet`, apart from the decoders), and brain -> image top-1
    retrieval in that feature space."""
    pred = torch.as_tensor(np.asarray(pred_img), dtype=torch.float32).clamp(0, 1)
    true = torch.as_tensor(np.asarray(test_img), dtype=torch.float32)
    with torch.no_grad():
        fp, ft = features(pred), features(true)
    return {f"{prefix}.pixcorr": pixcorr(pred, true), f"{prefix}.ssim": ssim(pred, true),
            f"{prefix}.twoway_pixels": two_way_identification(pred, true),
            f"{prefix}.twoway_features": two_way_identification(fp, ft),
            f"{prefix}.top1_retrieval": top1_retrieval(fp, ft, n_candidates, seed)}


class NeuroFlowScores(dict):
    """Metrics plus the arrays behind them (``pred_img``, ``pred_vox``, ``voxel_r``)."""


def score_neuroflow(model, test_x: np.ndarray, test_img: np.ndarray, test_trials, steps: int, solver: str,
                    features: Callable[[Tensor], Tensor], n_candidates: int = 300, seed: int = 0) -> NeuroFlowScores:
    """Encoding, decoding and cycle metrics of a :class:`~.neuroflow.NeuroFlow` at ``steps``
    (the model on any device; the metrics and ``features`` on the CPU)."""
    x = torch.as_tensor(test_x, dtype=torch.float32)
    img = torch.as_tensor(test_img, dtype=torch.float32)
    pred_vox = model.encode(img, steps, solver).cpu()
    pred_img = model.decode(x, steps, solver).cpu()
    out = NeuroFlowScores(encoding_metrics(pred_vox, test_x, test_trials, n_candidates, seed))
    out.update(decoding_metrics(pred_img, test_img, features, n_candidates, seed))
    cyc = model.decode(pred_vox, steps, solver).cpu()  # image -> brain -> image
    out.update({k.replace("dec.", "cycle."): v for k, v in
                decoding_metrics(cyc, test_img, features, n_candidates, seed).items() if "retrieval" not in k})
    zv = model.visual_latent(img)
    back = model.flow(model.flow(zv, 1.0, 0.0, steps, solver), 0.0, 1.0, steps, solver)
    out["cycle.latent_rmse"] = float(((back - zv) ** 2).mean().sqrt())
    out.pred_img, out.pred_vox, out.voxel_r = pred_img.numpy(), pred_vox.numpy(), voxel_r(pred_vox, test_x)
    return out
