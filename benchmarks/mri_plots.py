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
    against its severity rank (1 = mildest), one solid line per family with its Spearman correlation,
    and the reference values (real vs real, pure noise, blank, generators) as dashed flat lines
    labelled on the right."""
    plt = R._pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = plt.get_cmap("tab10")
    top = max((len(g["fd"]) for g in graded.values()), default=1)
    for i, (name, g) in enumerate(graded.items()):
        ax.plot(range(1, len(g["fd"]) + 1), g["fd"], marker="o", color=colours(i % 10),
                label=f"{name} {g['levels'][0]:g}..{g['levels'][-1]:g} (rho {g['spearman']:+.2f})")
    label_at = -np.inf  # log10 of the last label's height: labels of close values are pushed apart
    for name, value in sorted(((n, v) for n, v in references.items() if v > 0), key=lambda nv: nv[1]):
        ax.axhline(value, color="0.35", linestyle="--", linewidth=0.8)
        label_at = max(np.log10(value), label_at + 0.09)
        ax.text(top + 0.1, 10**label_at, f"{name} ({value:.3g})", fontsize=7, va="center")
    ax.set_yscale("log")
    ax.set_xlim(0.8, top + 1.6)
    ax.set_xticks(range(1, top + 1))
    ax.set_xlabel("severity rank (1 = mildest)")
    ax.set_ylabel("3-D FD to the training volumes")
    ax.set_title("3-D FD vs severity of known degradations of held-out volumes", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return R._save(fig, path)
