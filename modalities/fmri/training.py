"""Training of the two autoencoders through Lightning (their objectives are not flow
matching, so they have their own small module), with safetensors checkpoints from the core.

:class:`AutoencoderModule` wraps any network with a ``loss(batch)`` method (the visual AE:
pixel MSE; the NeuroVAE: MSE + beta KL, optionally plus an alignment term to fixed target
latents for a new subject's head, see :func:`align_loss`). :func:`fit_autoencoder` runs
``max_steps`` AdamW steps and writes ``path`` (weights + the network's config); given
validation tensors it keeps the weights of the step with the lowest validation loss
(:func:`validation_loss`; early stopping, Prechelt 1998, "Early stopping - but when?").
With ``partners`` (:func:`repeat_partners`: the other trials of each row's stimulus) the
NeuroVAE reconstructs a random other trial of the same stimulus, not its input
(:class:`CrossTrialDataset`; Noise2Noise, Lehtinen et al. 2018, ICML).
With ``ema_decay > 0`` the weights it validates and keeps are an exponential moving average
of the iterates (Polyak & Juditsky 1992, SIAM J. Control Optim. 30, 838; the core's
:class:`~modaflow.core.training.EMA`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from modaflow.core.training import EMA, TrainerArgs, cosine_factor, quiet_lightning, save_checkpoint

from .models import NeuroVAE

__all__ = ["AutoencoderModule", "fit_autoencoder", "align_loss", "validation_loss", "LRSchedule", "lr_factor",
           "repeat_partners", "CrossTrialDataset"]

LRSchedule = Literal["constant", "cosine", "linear"]


def lr_factor(schedule: LRSchedule, step: int, total: int) -> float:
    """Multiplier of the base learning rate after ``step`` of ``total`` optimiser steps.

    * ``constant``: 1;
    * ``cosine``: ``(1 + cos(pi * s / T)) / 2``, annealed to 0 at ``T`` without restarts
      (Loshchilov & Hutter 2017, "SGDR", ICLR, eq. 5 with ``eta_min = 0``);
    * ``linear``: ``1 - s / T``.

    ``s`` is clamped to ``[0, T]`` (steps past the budget keep the final factor 0)."""
    if schedule == "constant" or total <= 0:
        return 1.0
    s = min(max(step, 0), total) / total
    if schedule == "cosine":
        return cosine_factor(s)  # SGDR eq. 5, eta_min = 0
    if schedule == "linear":
        return 1.0 - s
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected constant, cosine or linear")


def repeat_partners(stim: np.ndarray) -> np.ndarray:
    """For trials showing stimuli ``stim`` ``(N,)``, the rows of the *other* trials of the
    same stimulus: ``(N, R - 1)`` int64 (``R``: the most repeats of a stimulus), padded with
    -1; a stimulus shown once has no partner (its row is all -1)."""
    stim = np.asarray(stim).reshape(-1)
    order = np.argsort(stim, kind="stable")
    _, starts, counts = np.unique(stim[order], return_index=True, return_counts=True)
    out = np.full((len(stim), max(int(counts.max()) - 1, 0) if len(stim) else 0), -1, np.int64)
    for start, count in zip(starts, counts):
        rows = order[start:start + count]
        for k, r in enumerate(rows):
            others = np.delete(rows, k)
            out[r, :len(others)] = others
    return out


class CrossTrialDataset(Dataset):
    """Items ``(*tensors[i], y_i)`` where ``y_i`` is ``tensors[0][j]`` for a ``j`` drawn
    uniformly, anew at every access, from ``partners[i]`` (the other trials of row ``i``'s
    stimulus, :func:`repeat_partners`), or ``tensors[0][i]`` when row ``i`` has none. As
    the reconstruction target of a NeuroVAE fed ``tensors[0][i]`` this is Noise2Noise
    (Lehtinen et al. 2018, ICML): the trials' noise is independent given the stimulus, so
    ``E[y_i | stimulus]`` is the noise-free response and the decoder gains nothing by
    reproducing its input's noise; with no repeats it falls back to the plain VAE."""

    def __init__(self, tensors: tuple[Tensor, ...], partners: np.ndarray, seed: int) -> None:
        if partners.ndim != 2 or len(partners) != len(tensors[0]):
            raise ValueError(f"partners must be (N, R-1) for the {len(tensors[0])} rows; got {partners.shape}")
        self.tensors = tensors
        self.partners = torch.as_tensor(partners, dtype=torch.long)
        self.n_partners = (self.partners >= 0).sum(1)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.tensors[0])

    def partner(self, i: int) -> int:
        """A uniformly drawn other trial of row ``i``'s stimulus, or ``i`` itself without one."""
        n = int(self.n_partners[i])
        if n == 0:
            return i
        return int(self.partners[i, int(torch.randint(n, (1,), generator=self.generator))])

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        return (*(t[i] for t in self.tensors), self.tensors[0][self.partner(i)])


def align_loss(vae: NeuroVAE, x: Tensor, target: Tensor, weight: float, generator: torch.Generator | None = None,
               recon_target: Tensor | None = None) -> Tensor:
    """NeuroVAE loss (reconstructing ``recon_target``, default ``x``) plus ``weight *
    ||mu(x) - target||^2`` (mean over latent dims): a new subject's head learns to land on
    the latents the shared XFM produces for the same stimuli, so the frozen XFM serves it
    unchanged."""
    mu, _ = vae.encode(x)
    return vae.loss(x, generator, recon_target) + weight * ((mu - target) ** 2).mean()


@torch.no_grad()
def validation_loss(model: nn.Module, batch: tuple[Tensor, ...], align_weight: float = 0.0) -> float:
    """The deterministic validation objective of held-out rows (the network in eval mode).

    * NeuroVAE with targets ``(x, z_vis)``: ``MSE(decode(z_vis), x) + align_weight *
      mean ||mu(x) - z_vis||^2`` -- the voxels predicted from the stimulus's latent (the
      encoding path) plus the decoding path's alignment;
    * NeuroVAE without targets: ``MSE(decode(mu(x)), x)``;
    * any other network: ``model.loss(x)`` (the visual AE: pixel MSE).
    """
    was_training = model.training
    model.eval()
    try:
        if isinstance(model, NeuroVAE):
            x = batch[0]
            mu, _ = model.encode(x)
            if len(batch) == 2:
                t = batch[1]
                return float(((model.decode(t) - x) ** 2).mean() + align_weight * ((mu - t) ** 2).mean())
            return float(((model.decode(mu) - x) ** 2).mean())
        return float(model.loss(batch[0]))
    finally:
        model.train(was_training)


class AutoencoderModule(L.LightningModule):
    """``model.loss(x)`` (or :func:`align_loss` when batches carry targets) minimised with
    AdamW (weight decay ``weight_decay``) at learning rate ``lr * lr_factor(lr_schedule,
    step, T)`` (:func:`lr_factor`; ``T = schedule_steps``, else the trainer's ``max_steps``); ``history``
    holds ``(step, loss)``.

    With ``val`` tensors (same layout as a batch), :func:`validation_loss` is computed every
    ``val_every`` steps and at the last step; ``best_state`` keeps the weights of the lowest
    one (``val_history``: ``(step, loss)``, ``best_step``).

    ``ema_decay`` ``d > 0``: after the ``n``-th optimiser step ``theta_ema <- d_n theta_ema +
    (1 - d_n) theta`` with the core's warm-up ``d_n = min(d, (1 + n) / (10 + n))`` (Polyak &
    Juditsky 1992; the warm-up keeps short runs from remembering the initialisation);
    validation, ``best_state`` and the final weights are then the average's, not the last
    iterate's.

    ``schedule_steps``: the ``T`` of the learning-rate schedule (default: the trainer's
    ``max_steps``); a refit that stops at a step chosen on validation passes the chosen
    run's ``T`` so that its first steps follow the same learning rates.

    ``cross_trial``: the last tensor of every training batch is the NeuroVAE's
    reconstruction target (:class:`CrossTrialDataset`), the others are as above; validation
    batches are unchanged."""

    def __init__(self, model: nn.Module, lr: float, align_weight: float = 0.0, seed: int = 0, log_every: int = 25,
                 val: tuple[Tensor, ...] | None = None, val_every: int = 50, ema_decay: float = 0.0,
                 lr_schedule: LRSchedule = "constant", weight_decay: float = 1e-4, cross_trial: bool = False,
                 schedule_steps: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1); got {ema_decay}")
        if lr_schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"unknown learning-rate schedule {lr_schedule!r}; expected constant, cosine or linear")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay}")
        if schedule_steps is not None and schedule_steps < 1:
            raise ValueError(f"schedule_steps must be >= 1; got {schedule_steps}")
        if cross_trial and not isinstance(model, NeuroVAE):
            raise ValueError(f"cross_trial targets need a NeuroVAE; got {type(model).__name__}")
        self.lr_schedule, self.weight_decay, self.cross_trial = lr_schedule, weight_decay, cross_trial
        self.schedule_steps = schedule_steps
        self.model, self.lr, self.align_weight, self.seed, self.log_every = model, lr, align_weight, seed, log_every
        self.ema = EMA(model, ema_decay, warmup=True) if ema_decay > 0 else None
        self.history: list[tuple[int, float]] = []
        self.val, self.val_every = val, max(1, val_every)
        self.val_history: list[tuple[int, float]] = []
        self.best_state: dict[str, Tensor] | None = None
        self.best_step, self.best_val = 0, float("inf")

    def final_weights(self) -> None:
        """Put the weights to keep into ``model``: the best validation step's, else the EMA's,
        else leave the last iterate."""
        if self.best_state is not None:  # early stopping: the weights of the best validation step
            self.model.load_state_dict(self.best_state)
        elif self.ema is not None:
            self.ema.copy_to(self.model)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model)
        if self.val is None:
            return
        step = self.global_step
        if step % self.val_every and step < (self.trainer.max_steps or 0):
            return
        with self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext():
            loss = validation_loss(self.model, tuple(v.to(self.device) for v in self.val), self.align_weight)
            self.val_history.append((step, loss))
            if loss < self.best_val:
                self.best_val, self.best_step = loss, step
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        g = torch.Generator(batch[0].device).manual_seed(self.seed * 1_000_003 + self.global_step)
        recon = None
        if self.cross_trial:  # Noise2Noise target: another trial of the same stimulus (CrossTrialDataset)
            *batch, recon = batch
        if len(batch) == 2:
            loss = align_loss(self.model, batch[0], batch[1], self.align_weight, g, recon)
        elif isinstance(self.model, NeuroVAE):
            loss = self.model.loss(batch[0], g, recon)
        else:
            loss = self.model.loss(batch[0])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{type(self.model).__name__}: non-finite loss {float(loss)} at step {self.global_step}")
        if self.global_step % self.log_every == 0:
            self.history.append((self.global_step, float(loss.detach())))
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.lr_schedule == "constant":
            return opt
        total = self.schedule_steps or int(self.trainer.max_steps or 0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(self.lr_schedule, s, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def fit_autoencoder(module: AutoencoderModule, tensors: tuple[Tensor, ...], batch_size: int, max_steps: int,
                    trainer_args: TrainerArgs, path: str | Path, seed: int, progress: bool = False,
                    partners: np.ndarray | None = None, notes: dict | None = None) -> dict:
    """Train ``module`` for ``max_steps`` on shuffled mini-batches of ``tensors`` and write
    ``path`` (``.safetensors`` + ``.json`` with the network's config). Returns a summary.

    ``partners`` (:func:`repeat_partners` of the rows of ``tensors``; needs a module built
    with ``cross_trial=True``): batches end with a random other trial of each row's stimulus
    (:class:`CrossTrialDataset`). ``notes`` (JSON values) join the saved ``extra`` and the
    summary, e.g. a refit's record of the validation run that chose its step count."""
    if (partners is not None) != bool(getattr(module, "cross_trial", False)):
        raise ValueError("partners and AutoencoderModule(cross_trial=True) go together")
    g = torch.Generator().manual_seed(seed)
    ds = TensorDataset(*tensors) if partners is None else CrossTrialDataset(tensors, partners, seed + 7)
    loader = DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=True, drop_last=len(ds) >= batch_size, generator=g)
    with quiet_lightning():
        trainer = L.Trainer(**trainer_args.trainer_kwargs(), max_steps=max_steps, enable_checkpointing=False, logger=False,
                            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                            gradient_clip_val=1.0, default_root_dir=str(Path(path).parent))
        trainer.fit(module, loader)
    module.final_weights()
    module.model.cpu().eval()
    cfg = getattr(module.model, "cfg", None)
    extra = {"history": module.history}
    if module.val_history:
        extra.update(val_history=module.val_history, best_step=module.best_step)
    extra.update(notes or {})
    save_checkpoint(path, module.model, step=max_steps, config=cfg, extra=extra)
    final = module.history[-1][1] if module.history else float("nan")
    summary = {"steps": max_steps, "final_loss": final, "history": module.history}
    if module.val_history:
        summary.update(best_step=module.best_step, best_val_loss=module.best_val, val_history=module.val_history)
    summary.update(notes or {})
    return summary
