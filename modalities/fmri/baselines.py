"""Baselines NeuroFlow is compared with, on the same split and latents.

* Voxel-wise ridge encoding (Naselaris et al. 2011, NeuroImage 56, 400): per voxel,
  ``y_v = w_v^T phi(img)`` with an L2 penalty chosen per voxel by efficient leave-one-out
  (``sklearn.linear_model.RidgeCV``, ``alpha_per_target``); ``phi`` = pixels or the visual
  AE latent; fitted on each training stimulus's mean response (:func:`stimulus_means`).
* Ridge decoding: responses -> pixels, and responses -> visual latent -> AE decoder.
* Two one-direction flows (what the unified bridge gains or loses): conditional flow
  matching from Gaussian noise (t = 0) to one latent (t = 1) given the other latent
  (decoding: ``z_vis | z_neu``; encoding: ``z_neu | z_vis``), each trained with the core's
  ``FlowMatchingModule`` on the linear path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from modaflow.core.ode import solve_ode, time_grid
from modaflow.core.training import FlowMatchingConfig, FlowMatchingModule, TrainerArgs, fit, quiet_lightning

from .models import CondVelocity

__all__ = ["ALPHAS", "ridge_weights", "ridge_fit_predict", "stimulus_means", "OneDirectionFlow", "train_one_direction"]

ALPHAS = np.logspace(-2, 5, 15)
"""Ridge penalties searched by leave-one-out."""


def ridge_weights(x_train: np.ndarray, y_train: np.ndarray, per_target: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W (F, T), b (T,), alpha (T,))``: ``RidgeCV`` (penalty per target by efficient leave-one-out, Golub, Heath &
    Wahba 1979) on the standardised inputs, folded back so that ``x @ W + b`` predicts from raw inputs ``x``."""
    from sklearn.linear_model import RidgeCV
    from threadpoolctl import threadpool_limits

    x_train = np.asarray(x_train, np.float64)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    with threadpool_limits(1):
        model = RidgeCV(alphas=ALPHAS, alpha_per_target=per_target).fit((x_train - mu) / sd, y_train)
    w = np.atleast_2d(model.coef_).T / sd[:, None]  # on standardised inputs -> on raw inputs
    alpha = np.broadcast_to(np.asarray(model.alpha_, np.float64), (w.shape[1],)).copy()
    return w, np.asarray(model.intercept_, np.float64) - mu @ w, alpha


def ridge_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, per_target: bool = True) -> np.ndarray:
    """Fit :func:`ridge_weights` and predict ``(n_test, n_targets)`` (``(n_test,)`` for a 1-D ``y_train``)."""
    w, b, _ = ridge_weights(x_train, y_train, per_target)
    pred = (np.asarray(x_test, np.float64) @ w + b).astype(np.float32)
    return pred[:, 0] if np.ndim(y_train) == 1 else pred


def stimulus_means(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per distinct input: ``(x_unique (G, F), mean of y over its rows (G, T))``.

    Encoding ridge fits on these when stimuli repeat: with ``R`` repeats of every stimulus,
    ``sum_r ||y_ir - W x_i||^2 = R ||ybar_i - W x_i||^2 + const``, so the fit is the
    single-trial fit with the penalty divided by ``R``, and leave-one-out becomes
    leave-one-stimulus-out. Leave-one-trial-out on the trials themselves keeps a left-out
    trial's repeats in the fit and picks too small a penalty (quick sizes, 3 repeats: pixel
    ridge median voxel r 0.27 on the test stimuli, 0.69 on the stimulus means, as with 1 repeat)."""
    flat = np.ascontiguousarray(x.reshape(len(x), -1))
    uniq, first, inv = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    sums = np.zeros((len(uniq), y.shape[1]), np.float64)
    np.add.at(sums, inv, y)
    means = sums / np.bincount(inv, minlength=len(uniq))[:, None]
    return x[first], means.astype(np.float32)


class OneDirectionFlow:
    """A trained conditional flow ``noise -> target latent | cond latent`` (standardised)."""

    def __init__(self, module: FlowMatchingModule) -> None:
        self.net = module.network(use_ema=True)

    @torch.no_grad()
    def sample(self, cond: Tensor, steps: int, seed: int, solver: str = "euler") -> Tensor:
        """Targets ``(B, d)`` for conditions ``(B, d_c)``, from noise drawn with ``seed``."""
        x0 = torch.randn(cond.shape[0], self.net.dim, generator=torch.Generator().manual_seed(seed))
        grid = time_grid(steps)
        return solve_ode(lambda x, t: self.net(x, t, cond), x0, grid, method=solver).x


def train_one_direction(target: Tensor, cond: Tensor, hidden: int, depth: int, fm: FlowMatchingConfig,
                        out_dir: str | Path, trainer_args: TrainerArgs) -> OneDirectionFlow:
    """Train ``CondVelocity`` by flow matching on ``(x1 = target, cond)`` pairs into ``out_dir``."""
    net = CondVelocity(target.shape[1], cond.shape[1], hidden, depth)
    module = FlowMatchingModule(net, None, fm.replace(path="linear"))
    g = torch.Generator().manual_seed(fm.seed)
    loader = DataLoader(TensorDataset(target, cond), batch_size=min(fm.batch_size, len(target)), shuffle=True,
                        drop_last=True, generator=g)
    with quiet_lightning():
        fit(module, loader, out_dir, trainer_args, progress=False)
    return OneDirectionFlow(module)
