"""The encoding path's voxel readout, refit by ridge regression.

NeuroFlow encodes an image by integrating the XFM from its visual latent to a neural latent ``z`` and decoding
``z`` with the NeuroVAE decoder, whose last layer is a linear readout ``y_v = w_v^T phi(z) + b_v`` of the hidden
features ``phi``. Trained by SGD on single noisy trials, that readout shares one implicit regularisation across
voxels. :func:`refit_readout` keeps ``phi`` and fits the readout again on the path the encoder takes at test time:
``phi(XFM(z_vis))`` of every training stimulus against its mean response, with a ridge penalty per voxel chosen by
efficient leave-one-stimulus-out (:func:`~.baselines.ridge_weights`; the voxel-wise regularisation of encoding
models, Naselaris et al. 2011, NeuroImage 56, 400). The encoder half of the NeuroVAE, and so decoding, is unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from modaflow.core.training import save_checkpoint

from .baselines import ridge_weights, stimulus_means
from .models import NeuroVAE

__all__ = ["READOUT_FILE", "refit_readout", "save_readout"]

READOUT_FILE = "neurovae_readout.safetensors"
"""The NeuroVAE whose decoder readout was refit (:func:`refit_readout`), beside the trained ``neurovae.safetensors``."""


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


def save_readout(path: str | Path, vae: NeuroVAE, summary: dict) -> None:
    """Write the refit NeuroVAE (atomically, with ``summary`` as its saved ``extra``)."""
    save_checkpoint(Path(path), vae, step=0, config=vae.cfg, extra=summary)
