"""The encoding path's voxel readout, refit by ridge regression.

NeuroFlow encodes an image by integrating the XFM from its visual latent to a neural latent ``z`` and decoding
``z`` with the NeuroVAE decoder, whose last layer is a linear readout ``y_v = w_v^T phi(z) + b_v`` of the hidden
features ``phi``. Trained by SGD on single noisy trials, that readout shares one implicit regularisation across
voxels. :func:`refit_readout` keeps ``phi`` and fits the readout again on the path the encoder takes at test time:
``phi(XFM(z_vis))`` of every training stimulus against its mean response, with a ridge penalty per voxel chosen by
efficient leave-one-stimulus-out (:func:`~.baselines.ridge_weights`; the voxel-wise regularisation of encoding
models, Naselaris et al. 2011, NeuroImage 56, 400). The encoder half of the NeuroVAE, and so decoding, is unchanged.

The readout file holds only that layer, with a fingerprint of what it was fitted on (the XFM, the NeuroVAE, the
latent statistics, the sampler): :func:`apply_readout` refuses it for any other, and training refits a stale one.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from modaflow.core.training import CheckpointError, read_checkpoint, save_checkpoint

from .baselines import ridge_weights, stimulus_means
from .models import NeuroVAE

__all__ = ["READOUT_FILE", "fingerprint", "refit_readout", "save_readout", "current_readout", "apply_readout"]

READOUT_FILE = "neurovae_readout.safetensors"
"""The refit last layer of the NeuroVAE decoder (``weight`` ``(V, hidden)``, ``bias`` ``(V,)``), beside the trained
``neurovae.safetensors``."""


def fingerprint(xfm: nn.Module, vae: NeuroVAE, stats: Mapping[str, Tensor], stat_keys: tuple[str, ...], steps: int,
                solver: str) -> str:
    """SHA-256 of everything a readout's fit depends on: the XFM's and the trained NeuroVAE's weights, the latent
    and voxel statistics ``stat_keys`` of ``stats``, and the encoding path's ``steps`` and ``solver``."""
    h = hashlib.sha256(f"{steps}|{solver}".encode())
    for prefix, tensors in (("xfm", xfm.state_dict()), ("vae", vae.state_dict()), ("stats", {k: stats[k] for k in stat_keys})):
        for name in sorted(tensors):
            h.update(f"{prefix}.{name}".encode())
            h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def refit_readout(vae: NeuroVAE, latent_of: Callable[[Tensor], Tensor], train_img: np.ndarray,
                  train_x: np.ndarray) -> tuple[NeuroVAE, dict]:
    """A copy of ``vae`` whose decoder's last linear layer is the per-voxel ridge fit of the training stimuli's mean
    responses (``train_x`` z-scored trials, ``train_img`` their stimuli) on ``phi(latent_of(image))``, where
    ``latent_of`` maps images ``(B, H, W)`` to the raw neural latents the encoder decodes (the XFM's output);
    and a summary (the stimuli fitted, the chosen penalties' median and range)."""
    img_u, y_u = stimulus_means(train_img, train_x)
    features = vae.decoder[:-1](latent_of(torch.as_tensor(img_u))).double().cpu().numpy()  # phi(z), (S, hidden)
    w, b, alpha = ridge_weights(features, y_u)
    out = copy.deepcopy(vae).eval()
    readout = out.decoder[-1]
    readout.weight.copy_(torch.as_tensor(w.T, dtype=readout.weight.dtype))  # (V, hidden): y = phi W + b
    readout.bias.copy_(torch.as_tensor(b, dtype=readout.bias.dtype))
    return out, {"stimuli": int(len(img_u)), "alpha_median": float(np.median(alpha)), "alpha_min": float(alpha.min()),
                 "alpha_max": float(alpha.max())}


def save_readout(path: str | Path, vae: NeuroVAE, summary: dict, fitted_on: str) -> None:
    """Write the refit last layer of ``vae`` atomically, with ``summary`` and the :func:`fingerprint` ``fitted_on``."""
    layer = vae.decoder[-1]
    save_checkpoint(Path(path), {"weight": layer.weight, "bias": layer.bias}, step=0,
                    extra={**summary, "fitted_on": fitted_on})


def current_readout(path: str | Path, fitted_on: str) -> dict | None:
    """The saved summary of the readout at ``path`` when it was fitted on what :func:`fingerprint` ``fitted_on``
    describes; None when there is none or it is stale."""
    path = Path(path)
    extra = read_checkpoint(path).extra if path.is_file() else {}
    return {k: v for k, v in extra.items() if k != "fitted_on"} if extra.get("fitted_on") == fitted_on else None


def apply_readout(path: str | Path, vae: NeuroVAE, fitted_on: str) -> tuple[NeuroVAE, dict]:
    """``vae`` with the readout of ``path`` as its decoder's last layer (in place) and the readout's summary;
    ``CheckpointError`` when the file does not fit ``vae`` or was fitted on another XFM, NeuroVAE, statistics or
    sampler than ``fitted_on`` describes."""
    ckpt = read_checkpoint(path)
    layer = vae.decoder[-1]
    shapes = {k: tuple(v.shape) for k, v in ckpt.model.items()}
    if shapes != {"weight": tuple(layer.weight.shape), "bias": tuple(layer.bias.shape)}:
        raise CheckpointError(f"{path}: holds {shapes}, not the readout of this run's NeuroVAE "
                              f"({tuple(layer.weight.shape)} weight)")
    if ckpt.extra.get("fitted_on") != fitted_on:
        raise CheckpointError(f"{path}: fitted on another XFM, NeuroVAE, latent statistics or sampler than this run "
                              f"holds (they were retrained or changed since); rerun the command that made the run to "
                              f"refit it")
    with torch.no_grad():
        layer.weight.copy_(ckpt.model["weight"])
        layer.bias.copy_(ckpt.model["bias"])
    return vae, {k: v for k, v in ckpt.extra.items() if k != "fitted_on"}
