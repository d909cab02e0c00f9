"""Plots of the fmri benchmark: stimulus vs decoded grids, the voxel r map on the mask
(nilearn plotting, Agg), the noise-ceiling scatter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import report as R

__all__ = ["plot_decoded_grid", "plot_voxel_r_map", "plot_ceiling_scatter"]


def plot_decoded_grid(path: Path, rows: dict[str, np.ndarray], n: int = 12) -> Path:
    """One row per method (first: the stimuli), ``n`` columns of images ``(N, H, W)``."""
    plt = R._pyplot()
    names = list(rows)
    n = min(n, min(len(v) for v in rows.values()))
    fig, axes = plt.subplots(len(names), n, figsize=(1.0 * n, 1.05 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(np.clip(rows[name][j], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[i][0].set_ylabel(name, fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle("test stimuli vs decoded images", fontsize=8)
    return R._save(fig, path)


def plot_voxel_r_map(path: Path, r: np.ndarray, mask: np.ndarray, affine: np.ndarray, title: str) -> Path:
    """Per-voxel r placed on the mask, every axial slice (``nilearn.plotting.plot_stat_map``)."""
    R._pyplot()
    import nibabel as nib
    from nilearn import plotting

    vol = np.zeros(mask.shape, np.float32)
    vol[mask] = r
    img = nib.Nifti1Image(vol, affine)
    zs = [float(affine[2, 2] * k + affine[2, 3]) for k in range(mask.shape[2])]
    display = plotting.plot_stat_map(img, bg_img=None, display_mode="z", cut_coords=zs, cmap="cold_hot", vmax=1.0,
                                     colorbar=True, title=title, annotate=False, draw_cross=False, black_bg=False)
    display.savefig(str(path), dpi=110)
    display.close()
    return path


def plot_ceiling_scatter(path: Path, ceiling: np.ndarray, rs: dict[str, np.ndarray]) -> Path:
    """Voxel r against the voxel's noise ceiling, with the identity line."""
    plt = R._pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, r in rs.items():
        ax.scatter(ceiling, r, s=5, alpha=0.6, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="noise ceiling")
    ax.set(xlabel="noise ceiling (r)", ylabel="held-out voxel r", xlim=(0, 1), ylim=(min(0, ax.get_ylim()[0]), 1),
           title="encoding vs noise ceiling")
    ax.legend(fontsize=7)
    return R._save(fig, path)
