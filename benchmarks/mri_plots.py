"""Plots of the MRI benchmark: orthogonal slices of real and generated volumes, tissue-volume
distributions (real vs each generator), metric vs NFE and the FD's check on graded degradations
(matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from . import report as R

__all__ = ["plot_slices", "plot_tissue", "plot_metric_vs_nfe", "plot_graded_fd"]


def plot_slices(path: Path, volumes: Mapping[str, torch.Tensor], per_row: int = 2) -> Path:
    """Axial, coronal and sagittal centre slices of the first ``per_row`` volumes of each set
    ``name -> (N, 1, X, Y, Z)``; one row per (set, volume)."""
    plt = R._pyplot()
    rows = [(name, v[i, 0].numpy()) for name, v in volumes.items() for i in range(min(per_row, v.shape[0]))]
    fig, axes = plt.subplots(len(rows), 3, figsize=(6, 2 * len(rows)), squeeze=False)
    for r, (name, vol) in enumerate(rows):
        cx, cy, cz = (s // 2 for s in vol.shape)
        for c, (img, label) in enumerate(((vol[:, :, cz], "axial"), (vol[:, cy, :], "coronal"), (vol[cx, :, :], "sagittal"))):
            ax = axes[r, c]
            ax.imshow(np.rot90(img), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
            if r == 0:
                ax.set_title(label, fontsize=8)
    fig.tight_layout()
    return R._save(fig, path)


def plot_tissue(path: Path, tissue: Mapping[str, Mapping[str, np.ndarray]]) -> Path:
    """Box plots of tissue volumes (mL) per class, one box per set ``name -> {class: (N,)}``."""
    plt = R._pyplot()
    classes = ("csf", "gm", "wm")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    names = list(tissue)
    for ax, cls in zip(axes, classes):
        ax.boxplot([tissue[n][cls] for n in names])
        ax.set_xticks(range(1, len(names) + 1), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{cls.upper()} volume (mL)", fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return R._save(fig, path)


def plot_metric_vs_nfe(path: Path, curves: Mapping[str, tuple[list[int], list[float]]], metric: str,
                       references: Mapping[str, float]) -> Path:
    """``metric`` against NFE per generator, with each reference value (the real-vs-real floor, what pure noise
    scores, ...) as a flat line."""
    series = dict(curves)
    xs = sorted({x for xs, _ in series.values() for x in xs})
    if xs:
        series.update({name: (xs, [value] * len(xs)) for name, value in references.items()})
    return R.plot_curves(path, series, f"{metric} vs NFE", "NFE (network calls per volume)", metric, log=True)


def plot_graded_fd(path: Path, graded: Mapping[str, Mapping], references: Mapping[str, float]) -> Path:
    """The 3-D FD of each graded degradation family (:func:`~modaflow.modalities.mri.features.graded_fd`)
    against its severity rank (1 = mildest), one line per family with its Spearman correlation,
    and the reference values (real vs real, pure noise, blank, generators) as flat lines."""
    series = {f"{name} (rho {g['spearman']:+.2f})": (list(range(1, len(g["fd"]) + 1)), g["fd"])
              for name, g in graded.items()}
    top = max((len(g["fd"]) for g in graded.values()), default=1)
    series.update({name: ([1, top], [value, value]) for name, value in references.items()})
    return R.plot_curves(path, series, "3-D FD vs severity of known degradations", "severity rank (1 = mildest)",
                         "3-D FD", log=True)
