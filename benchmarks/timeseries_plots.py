"""Plots and per-dataset tables of the time-series benchmark (matplotlib Agg, sklearn for
PCA / t-SNE), and the published numbers shown beside ours.

Published numbers (lower is better) are those of REFERENCE.md §2: Diffusion-TS (Yuan &
Qiao 2024, arXiv 2403.01742, table 1; 500-1000 sampling steps) and FM-TS
(discriminative only). They are marked "published" wherever they appear.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import report as R

__all__ = ["PUBLISHED", "METRICS", "dataset_table", "plot_embeddings", "plot_overlay", "plot_fan"]

METRICS: tuple[str, ...] = ("discriminative", "predictive", "context_fid", "correlational", "roughness")
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "Diffusion-TS (published)": {
        "sines": {"context_fid": 0.006, "correlational": 0.015, "discriminative": 0.006, "predictive": 0.093},
        "stocks": {"context_fid": 0.147, "correlational": 0.004, "discriminative": 0.067, "predictive": 0.036},
        "mujoco": {"context_fid": 0.013, "correlational": 0.193, "discriminative": 0.008, "predictive": 0.007},
    },
    "FM-TS (published)": {
        "sines": {"discriminative": 0.005}, "stocks": {"discriminative": 0.019}, "mujoco": {"discriminative": 0.005},
    },
    "real data (published predictive)": {
        "sines": {"predictive": 0.094}, "stocks": {"predictive": 0.036}, "mujoco": {"predictive": 0.007},
    },
}
"""Method -> dataset -> metric -> published value (REFERENCE.md §2)."""


def _fmt(v: Any) -> str:
    return "" if v is None else R.format_metric(v)


def dataset_table(ds: str, rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of one dataset: our rows (label -> {metric, "nfe", "dcr_ratio", "samples_per_s",
    "speed_vs_ddpm"}) then the published rows."""
    head = ["method", "NFE", *METRICS, "DCR ratio", "samples/s", "speed vs DDPM-500"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in rows.items():
        cells = [label, str(r.get("nfe", "")), *(_fmt(r.get(m)) for m in METRICS), _fmt(r.get("dcr_ratio")),
                 _fmt(r.get("samples_per_s")), (f"{r['speed_vs_ddpm']:.1f}x" if r.get("speed_vs_ddpm") else "")]
        lines.append("| " + " | ".join(cells) + " |")
    for name, table in PUBLISHED.items():
        if ds in table:
            nfe = "500-1000" if name.startswith("Diffusion") else ""
            cells = [name, nfe, *(_fmt(table[ds].get(m)) for m in METRICS), "", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _prep(x: np.ndarray) -> np.ndarray:
    """TimeGAN's visualisation input: each window averaged over channels, ``(N, L)``."""
    return np.asarray(x).mean(axis=2)


def plot_embeddings(path: Path, real: np.ndarray, fakes: Mapping[str, np.ndarray], title: str, tsne: bool) -> Path:
    """PCA (fitted on the real windows) and, if ``tsne``, t-SNE of real vs generated
    windows (channel-averaged, as TimeGAN's visualisation)."""
    plt = R._pyplot()
    from sklearn.decomposition import PCA

    n = min(len(real), *(len(f) for f in fakes.values()), 1000)
    cols = 1 + int(tsne)
    fig, axes = plt.subplots(len(fakes), cols, figsize=(4.2 * cols, 3.6 * len(fakes)), squeeze=False)
    for i, (name, fake) in enumerate(fakes.items()):
        r, f = _prep(real[:n]), _prep(fake[:n])
        pca = PCA(n_components=2).fit(r)
        for ax, (a, b), kind in [(axes[i, 0], (pca.transform(r), pca.transform(f)), "PCA")] + (
            [(axes[i, 1], _tsne(r, f), "t-SNE")] if tsne else []
        ):
            ax.scatter(a[:, 0], a[:, 1], s=3, alpha=0.4, label="real", c="tab:red")
            ax.scatter(b[:, 0], b[:, 1], s=3, alpha=0.4, label="generated", c="tab:blue")
            ax.set_title(f"{name}: {kind}", fontsize=9)
            ax.legend(fontsize=7, markerscale=3)
    fig.suptitle(title)
    return R._save(fig, path)


def _tsne(r: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.manifold import TSNE

    both = np.concatenate([r, f])
    emb = TSNE(n_components=2, perplexity=min(40, max(5, len(both) // 10)), init="pca", random_state=0).fit_transform(both)
    return emb[: len(r)], emb[len(r):]


def plot_overlay(path: Path, real: np.ndarray, fakes: Mapping[str, np.ndarray], channels: tuple[str, ...], title: str,
                 k: int = 6) -> Path:
    """``k`` real and ``k`` generated windows of the first two channels, one panel per
    method."""
    plt = R._pyplot()
    nch = min(2, real.shape[2])
    fig, axes = plt.subplots(nch, len(fakes), figsize=(3.6 * len(fakes), 2.6 * nch), squeeze=False)
    for j, (name, fake) in enumerate(fakes.items()):
        for c in range(nch):
            ax = axes[c, j]
            ax.plot(real[:k, :, c].T, color="tab:red", alpha=0.6, lw=1)
            ax.plot(fake[:k, :, c].T, color="tab:blue", alpha=0.6, lw=1)
            ax.set_title(f"{name}: {channels[c]} (red real, blue generated)", fontsize=8)
    fig.suptitle(title)
    return R._save(fig, path)


def plot_fan(path: Path, truth: np.ndarray, samples: np.ndarray, context: int, channel: str, title: str) -> Path:
    """Forecast fan of one window and channel: truth ``(L,)``, samples ``(S, L)``; the
    first ``context`` steps are observed. Bands: 5-95% and 25-75% sample quantiles."""
    plt = R._pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    steps = np.arange(len(truth))
    q = np.quantile(samples, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
    ax.fill_between(steps[context - 1:], q[0][context - 1:], q[4][context - 1:], alpha=0.2, color="tab:blue", label="5-95%")
    ax.fill_between(steps[context - 1:], q[1][context - 1:], q[3][context - 1:], alpha=0.35, color="tab:blue", label="25-75%")
    ax.plot(steps[context - 1:], q[2][context - 1:], color="tab:blue", lw=1.5, label="median")
    ax.plot(steps, truth, color="black", lw=1.2, label="truth")
    ax.axvline(context - 0.5, color="gray", ls="--", lw=1)
    ax.set(title=title, xlabel="step", ylabel=channel)
    ax.legend(fontsize=7)
    return R._save(fig, path)
