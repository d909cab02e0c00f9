"""Plots of the ephys benchmark (matplotlib, Agg): true vs inferred rates, 3-D latent
trajectories, spike rasters, loss curves and EEG held-out channel predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import report as R

__all__ = ["make_plots"]


def _pca3(x: np.ndarray) -> np.ndarray:
    """First three principal components of ``x`` ``(N, T, K)``: ``(N, T, 3)``."""
    flat = x.reshape(-1, x.shape[-1])
    flat = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    return (flat @ vt[:3].T).reshape(x.shape[0], x.shape[1], -1)


def _rates_plot(path: Path, test, keep: dict) -> Path:
    plt = R._pyplot()
    neurons = [test.n_heldin, test.n_heldin + 1, 0, 1][:4]
    fig, axes = plt.subplots(len(neurons), 1, figsize=(7, 1.8 * len(neurons)), sharex=True)
    t = np.arange(test.n_bins) * test.bin_s * 1000
    for ax, n in zip(np.atleast_1d(axes), neurons):
        ax.plot(t, test.rates[0, :, n], "k", lw=2, label="true")
        for name, style in (("langevin", "C0"), ("lfads", "C1"), ("smoothing_glm", "C2")):
            ax.plot(t, keep[name]["rates"][0, :, n], style, lw=1, label=name)
        ax.axvline(test.t_obs * test.bin_s * 1000, color="grey", ls=":")
        ax.set_ylabel(f"{'held-out' if n >= test.n_heldin else 'held-in'} {n}")
    np.atleast_1d(axes)[0].legend(fontsize=7, ncol=4)
    np.atleast_1d(axes)[-1].set_xlabel("time (ms); dotted: forward window starts")
    fig.suptitle("Lorenz: true vs inferred rates (expected counts per bin), test trial 0")
    return R._save(fig, path)


def _latents_plot(path: Path, test, keep: dict) -> Path:
    plt = R._pyplot()
    lat = keep["langevin"]["latents"].numpy()
    z = _pca3(lat[..., : lat.shape[-1] // 2])
    fig = plt.figure(figsize=(9, 4.2))
    for i, (arr, title) in enumerate(((test.latents.numpy(), "true Lorenz state (normalised)"),
                                      (z, "LangevinFlow z (PCA, 3 components)"))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        for j in range(min(8, arr.shape[0])):
            ax.plot(arr[j, :, 0], arr[j, :, 1], arr[j, :, 2], lw=1, color=f"C{j % 10}")
        ax.set_title(title, fontsize=9)
    return R._save(fig, path)


def _raster_plot(path: Path, test, keep: dict) -> Path:
    plt = R._pyplot()
    g = torch.Generator().manual_seed(0)
    sampled = torch.poisson(keep["langevin"]["rates"][0], generator=g).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for ax, counts, title in ((axes[0], test.x[0].numpy(), "observed spikes"), (axes[1], sampled, "LangevinFlow sample")):
        tt, nn_ = np.nonzero(counts)
        ax.scatter(tt * test.bin_s * 1000, nn_, s=2, c="k", marker="|")
        ax.axhline(test.n_heldin - 0.5, color="C3", lw=0.8)
        ax.set(title=title, xlabel="time (ms)")
    axes[0].set_ylabel("neuron (above red line: held out)")
    return R._save(fig, path)


def _eeg_plot(path: Path, eeg: dict) -> Path:
    plt = R._pyplot()
    test = eeg["test"]
    chans = list(range(test.n_heldin, test.n_channels))[:3]
    fig, axes = plt.subplots(len(chans), 1, figsize=(7, 1.9 * len(chans)), sharex=True)
    t = np.arange(test.n_bins) * test.bin_s
    for ax, c in zip(np.atleast_1d(axes), chans):
        ax.plot(t, test.x[0, :, c], "k", lw=1.5, label="recorded")
        for name, style in (("langevin", "C0"), ("lfads", "C1"), ("smoothing_ridge", "C2")):
            ax.plot(t, eeg["keep"][name][0, :, c], style, lw=1, label=name)
        ax.axvline(test.t_obs * test.bin_s, color="grey", ls=":")
        ax.set_ylabel(test.channel_names[c] if test.channel_names else str(c))
    np.atleast_1d(axes)[0].legend(fontsize=7, ncol=4)
    np.atleast_1d(axes)[-1].set_xlabel("time (s); dotted: forecast window starts")
    fig.suptitle("EEG held-out channels (z-scored), test window 0")
    return R._save(fig, path)


def make_plots(out: Path, lorenz: dict, eeg: dict | None) -> list[str]:
    """Write the PNGs into ``out``; returns their file names."""
    keep, test = lorenz["keep"], lorenz["test"]
    paths = [
        _rates_plot(out / "lorenz_rates.png", test, keep),
        _latents_plot(out / "lorenz_latents_3d.png", test, keep),
        _raster_plot(out / "lorenz_raster.png", test, keep),
        R.plot_loss(out / "lorenz_loss.png", {m: tuple(zip(*keep[m]["history"])) for m in ("langevin", "lfads")
                                              if keep[m]["history"]}, "Lorenz training loss"),
    ]
    if eeg is not None:
        paths.append(_eeg_plot(out / "eeg_heldout.png", eeg))
    return [p.name for p in paths]
