"""The trained NeuroFlow model: visual AE + NeuroVAE + XFM, and its two directions.

XFM is a velocity field ``v(x, t)`` on a bridge between the standardised neural latent
(``t = 0``) and the standardised visual latent (``t = 1``) (NeuroFlow, arXiv 2604.09817;
bridge: ``x_t = alpha(t) z_vis + sigma(t) z_neu (+ gamma(t) eps)``, Albergo et al. 2023,
arXiv 2303.08797, eq. 2.1). One model serves both directions:

* decoding (brain -> image): ``z_neu = mu_NeuroVAE(x)``, integrate ``dz/dt = v`` from
  ``t = 0`` to ``1``, decode the image with the visual AE;
* encoding (image -> brain): ``z_vis = E_AE(img)``, integrate the same ODE backwards from
  ``t = 1`` to ``0`` (a decreasing time grid), decode voxels with the NeuroVAE.

Run-folder files: ``visual_ae.safetensors``, ``neurovae.safetensors``, ``stats.safetensors``
(voxel mean/std; latent mean/std), ``checkpoints/last.safetensors`` (XFM, core ``fit``), and
``features.safetensors`` (the decoding metrics' feature network, not part of the model), and
``neurovae_readout.safetensors`` (the encoding path's ridge readout, :mod:`.readout`, when the recipe's
``readout`` is ridge).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from modaflow.core.io import atomic_write
from modaflow.core.ode import solve_ode, time_grid
from modaflow.core.training import CheckpointError, read_checkpoint, apply_checkpoint

from .models import AEConfig, FeatureNet, FeatureNetConfig, NeuroVAE, NeuroVAEConfig, VisualAE

__all__ = ["STAT_KEYS", "NeuroFlow", "check_stimulus_size", "save_stats", "load_stats", "load_ae", "load_vae", "read_ae", "read_vae", "read_features", "load_features", "AE_FILE", "VAE_FILE", "STATS_FILE", "FEATURES_FILE"]

AE_FILE, VAE_FILE, STATS_FILE = "visual_ae.safetensors", "neurovae.safetensors", "stats.safetensors"
FEATURES_FILE = "features.safetensors"
STAT_KEYS = ("vox_mean", "vox_std", "zv_mean", "zv_std", "zn_mean", "zn_std")


def save_stats(path: str | Path, stats: dict[str, Tensor]) -> Path:
    """Write the normalisation statistics (:data:`STAT_KEYS`) atomically."""
    from safetensors.torch import save_file

    missing = [k for k in STAT_KEYS if k not in stats]
    if missing:
        raise ValueError(f"stats lack {missing}")
    tensors = {k: stats[k].detach().cpu().float().contiguous() for k in STAT_KEYS}
    atomic_write(Path(path), lambda p: save_file(tensors, str(p)))
    return Path(path)


def load_stats(path: str | Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: normalisation statistics not found; is this a 'modaflow train fmri' run?")
    stats = load_file(str(path))
    missing = [k for k in STAT_KEYS if k not in stats]
    if missing:
        raise CheckpointError(f"{path}: missing {missing}")
    return stats


def _read(path: str | Path, config_cls, model_cls) -> tuple[nn.Module, dict]:
    """A stage's network (eval mode) from its checkpoint, and what was saved with it."""
    ckpt = read_checkpoint(path, config_cls)
    model = model_cls(ckpt.config)
    apply_checkpoint(ckpt, model)
    return model.eval(), ckpt.extra


def read_ae(path: str | Path) -> tuple[VisualAE, dict]:
    """The visual AE of ``path`` and its saved ``extra`` (loss history)."""
    return _read(path, AEConfig, VisualAE)


def read_vae(path: str | Path) -> tuple[NeuroVAE, dict]:
    """The NeuroVAE of ``path`` and its saved ``extra`` (loss history, best validation step)."""
    return _read(path, NeuroVAEConfig, NeuroVAE)


def read_features(path: str | Path) -> tuple[FeatureNet, dict]:
    """The decoding metrics' feature network of ``path`` and its saved ``extra`` (loss history)."""
    return _read(path, FeatureNetConfig, FeatureNet)


def load_features(path: str | Path) -> FeatureNet:
    return read_features(path)[0]


def load_ae(path: str | Path) -> VisualAE:
    return read_ae(path)[0]


def load_vae(path: str | Path) -> NeuroVAE:
    return read_vae(path)[0]


def check_stimulus_size(images: Tensor | np.ndarray, ae: VisualAE, source: str, run: str | Path) -> None:
    """Stimuli ``(S, H, W)`` must be the size the run's visual AE was trained on."""
    size = ae.cfg.image_size
    if tuple(images.shape[1:]) != (size, size):
        raise ValueError(f"{source}: stimuli are {images.shape[1]} x {images.shape[2]} images, but the run {run} was "
                         f"trained on {size} x {size}; resize them (or train a new run on them)")


@dataclass
class NeuroFlow:
    """The three networks and the statistics; all methods run without gradients.

    Attributes:
        ae: visual autoencoder; ``vae``: NeuroVAE; ``xfm``: velocity network ``(x, t)``.
        stats: :data:`STAT_KEYS` -> tensors (``(V,)`` for voxels, ``(d,)`` for latents).
        solver: default ODE method.
    """

    ae: VisualAE
    vae: NeuroVAE
    xfm: nn.Module
    stats: dict[str, Tensor]
    solver: str = "euler"

    def __post_init__(self) -> None:
        V = self.vae.cfg.voxels
        if self.stats["vox_mean"].shape != (V,):
            raise CheckpointError(f"voxel statistics have shape {tuple(self.stats['vox_mean'].shape)}, the NeuroVAE expects ({V},)")
        if self.ae.cfg.latent != self.vae.cfg.latent:
            raise CheckpointError(f"visual latent {self.ae.cfg.latent} != neural latent {self.vae.cfg.latent}")

    @property
    def device(self) -> torch.device:
        """Where the networks are (:meth:`to`); inputs are moved there, outputs stay there."""
        return next(self.xfm.parameters()).device

    def to(self, device: torch.device | str) -> "NeuroFlow":
        """The model with its three networks and statistics on ``device`` (the networks move in place,
        as ``nn.Module.to`` does)."""
        return NeuroFlow(self.ae.to(device), self.vae.to(device), self.xfm.to(device),
                         {k: v.to(device) for k, v in self.stats.items()}, self.solver)

    def _s(self, key: str, like: Tensor) -> Tensor:
        return self.stats[key].to(like)

    @torch.no_grad()
    def visual_latent(self, img: Tensor) -> Tensor:
        """Standardised visual latent ``(B, d)`` of images ``(B, H, W)`` (on any device)."""
        img = img.to(self.device)
        return (self.ae.encode(img) - self._s("zv_mean", img)) / self._s("zv_std", img)

    @torch.no_grad()
    def neural_latent(self, x: Tensor) -> Tensor:
        """Standardised neural latent ``(B, d)`` (NeuroVAE mean) of z-scored voxels ``(B, V)`` (on any device)."""
        x = x.to(self.device)
        mu, _ = self.vae.encode(x)
        return (mu - self._s("zn_mean", x)) / self._s("zn_std", x)

    @torch.no_grad()
    def image(self, zv: Tensor) -> Tensor:
        return self.ae.decode(zv * self._s("zv_std", zv) + self._s("zv_mean", zv))

    def raw_neural(self, zn: Tensor) -> Tensor:
        """A standardised neural latent ``(B, d)`` in the NeuroVAE's own units (what its decoder reads)."""
        return zn * self._s("zn_std", zn) + self._s("zn_mean", zn)

    @torch.no_grad()
    def voxels(self, zn: Tensor) -> Tensor:
        return self.vae.decode(self.raw_neural(zn))

    @torch.no_grad()
    def flow(self, z: Tensor, t0: float, t1: float, steps: int, solver: str | None = None) -> Tensor:
        """Integrate the XFM field from ``t0`` to ``t1`` (either direction) in ``steps`` steps."""
        grid = time_grid(steps, t0, t1, device=z.device)
        return solve_ode(lambda x, t: self.xfm(x, t), z, grid, method=solver or self.solver).x

    def decode(self, x: Tensor, steps: int, solver: str | None = None) -> Tensor:
        """Images ``(B, H, W)`` decoded from z-scored voxel responses ``(B, V)`` (t: 0 -> 1)."""
        return self.image(self.flow(self.neural_latent(x), 0.0, 1.0, steps, solver))

    def encode(self, img: Tensor, steps: int, solver: str | None = None) -> Tensor:
        """Predicted z-scored voxel responses ``(B, V)`` for images ``(B, H, W)`` (t: 1 -> 0)."""
        return self.voxels(self.flow(self.visual_latent(img), 1.0, 0.0, steps, solver))

    def zscore(self, raw: Tensor) -> Tensor:
        """Raw responses ``(B, V)`` -> z-scores with the training statistics."""
        return (raw - self._s("vox_mean", raw)) / self._s("vox_std", raw)

    def unzscore(self, z: Tensor) -> Tensor:
        return z * self._s("vox_std", z) + self._s("vox_mean", z)
