"""Training of the sequential VAEs (LangevinFlow and the LFADS baseline) with Lightning.

Loss per trial (the negative ELBO with ramps, arXiv 2507.11531, sec. 3.4; LFADS,
arXiv 1608.06315):

    L = sum_{(t, c) scored} -log p(x_tc | params_tc) + beta(step) KL(q(init | x) || N(0, I))
        + lambda(step) sum_W |W|^2,

``beta`` and ``lambda`` rise linearly from 0 to ``kl_weight`` / ``l2_weight`` over
``kl_ramp_steps`` / ``l2_ramp_steps`` (the KL and weight-decay ramps). **Coordinated
dropout** (Keshtkaran & Pandarinath 2019, NeurIPS, sec. 3.1): each held-in input entry is
zeroed with probability ``cd_rate`` (kept ones scaled by ``1 / (1 - cd_rate)``) and
held-in entries are scored only where they were dropped, so the network cannot learn the
identity. Held-out channels and the forward window are always scored. Poisson:
``-log p = e^l - x l`` (+ lgamma, a constant); Gaussian: ``1/2 (logvar + (x - mu)^2 e^-logvar)``.

Early stopping by selection: the last ``val_fraction`` of the training trials (in their
order: time order for sliding EEG windows) are held back; every ``val_every`` steps their
negative ELBO (no dropout, posterior mean) is computed and the best weights are the ones
saved. :func:`fit_vae` runs ``lightning.Trainer`` and writes ``out_dir/checkpoints/last.safetensors``
(the core's safetensors checkpoints, with the optimiser) and ``metrics.csv``; it resumes
from that checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from modaflow.core.config import Config
from modaflow.core.io import atomic_write_text
from modaflow.core.training import TrainerArgs, apply_checkpoint, checkpoint_path, read_checkpoint, save_checkpoint

from .spikes import TrialData

__all__ = ["VAETrainConfig", "SeqVAEModule", "fit_vae", "observation_nll", "ramp", "predict", "coordinated_dropout"]


@dataclass
class VAETrainConfig(Config):
    """Optimiser, ramps and coordinated dropout of a sequential VAE."""

    lr: float = 5e-3
    """Adam learning rate."""
    batch_size: int = 32
    """Trials per batch."""
    max_steps: int = 1000
    """Optimiser steps."""
    kl_weight: float = 1.0
    """Final KL weight beta."""
    kl_ramp_steps: int = 300
    """Steps over which beta rises linearly from 0 (0 = no ramp)."""
    l2_weight: float = 1e-4
    """Final L2 weight-decay coefficient lambda on the weight matrices."""
    l2_ramp_steps: int = 300
    """Steps over which lambda rises linearly from 0 (0 = no ramp)."""
    cd_rate: float = 0.3
    """Coordinated-dropout probability of each held-in input entry (0 = off)."""
    grad_clip: float = 200.0
    """Clip the gradient norm at this value (0 = off)."""
    seed: int = 0
    """Seed of initialisation, batches, dropout masks and posterior noise."""
    log_every: int = 25
    """Record the loss every this many steps."""
    val_fraction: float = 0.1
    """Fraction of the training trials held back for validation (0 = none); the weights with
    the lowest validation loss are kept (early stopping by selection)."""
    val_every: int = 50
    """Evaluate the validation loss every this many steps."""

    def validate(self) -> None:
        for name in ("batch_size", "max_steps", "log_every", "val_every"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.lr > 0, "lr", "a number > 0")
        for name in ("kl_weight", "l2_weight", "kl_ramp_steps", "l2_ramp_steps", "grad_clip"):
            self._require(getattr(self, name) >= 0, name, "a value >= 0")
        self._require(0 <= self.cd_rate < 1, "cd_rate", "a probability in [0, 1)")
        self._require(0 <= self.val_fraction < 1, "val_fraction", "a fraction in [0, 1)")


def ramp(step: int, steps: int, final: float) -> float:
    """Linear ramp ``final * min(1, step / steps)`` (``final`` at once when ``steps = 0``)."""
    return final if steps <= 0 else final * min(1.0, step / steps)


def observation_nll(params: Tensor, x: Tensor, likelihood: str) -> Tensor:
    """Elementwise negative log-likelihood ``(B, T, C)`` without constants: Poisson
    ``e^l - x l`` for log-rates ``l``; Gaussian ``1/2 (logvar + (x - mu)^2 e^-logvar)`` for
    ``params = [mu, logvar]``."""
    if likelihood == "poisson":
        return params.exp() - x * params
    mu, logvar = params.chunk(2, dim=-1)
    logvar = logvar.clamp(-8.0, 8.0)
    return 0.5 * (logvar + (x - mu).pow(2) * torch.exp(-logvar))


def coordinated_dropout(x: Tensor, n_heldin: int, t_obs: int, rate: float,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Coordinated dropout (Keshtkaran & Pandarinath 2019, sec. 3.1) of trials ``x``
    ``(B, T, C)``: returns the model input ``(B, T, n_heldin)`` (held-in channels, observed
    bins, each entry zeroed with probability ``rate`` and the kept ones scaled by
    ``1 / (1 - rate)``; zeros in the forward window) and the bool mask ``(B, T, C)`` of
    entries scored by the loss (held-in observed entries only where dropped; every held-out
    channel and forward bin). ``rate = 0``: plain input, everything scored."""
    inp = x[:, :, :n_heldin].clone()
    inp[:, t_obs:] = 0.0
    scored = torch.ones_like(x, dtype=torch.bool)
    if rate > 0:
        keep = torch.rand(inp[:, :t_obs].shape, generator=generator, device=x.device) >= rate
        inp[:, :t_obs] = inp[:, :t_obs] * keep / (1.0 - rate)
        scored[:, :t_obs, :n_heldin] = ~keep
    return inp, scored


class SeqVAEModule(L.LightningModule):
    """Lightning module of a sequential VAE on :class:`TrialData` batches ``(B, T, C)``."""

    def __init__(self, model: nn.Module, cfg: VAETrainConfig, n_heldin: int, t_obs: int, likelihood: str) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg
        self.n_heldin, self.t_obs, self.likelihood = n_heldin, t_obs, likelihood
        self.step_offset, self.last_loss = 0, None
        self.history: list[tuple[int, float]] = []

    @property
    def steps_done(self) -> int:
        return self.step_offset + int(self.global_step)

    def loss(self, x: Tensor, step: int, generator: torch.Generator | None = None) -> Tensor:
        """Mean over the batch of the per-trial loss ``L`` (module docstring)."""
        cfg = self.cfg
        inp, scored = coordinated_dropout(x, self.n_heldin, self.t_obs, cfg.cd_rate, generator)
        out = self.model(inp, generator=generator)
        nll = (observation_nll(out.params, x, self.likelihood) * scored).sum((1, 2))
        # rescale so the expected scored count matches scoring every entry
        frac = scored.float().mean().clamp_min(1e-6)
        loss = nll.mean() / frac + ramp(step, cfg.kl_ramp_steps, cfg.kl_weight) * out.kl.mean()
        lam = ramp(step, cfg.l2_ramp_steps, cfg.l2_weight)
        if lam > 0:
            loss = loss + lam * sum(p.pow(2).sum() for n, p in self.model.named_parameters() if p.ndim >= 2)
        return loss

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> float:
        """Negative ELBO per trial of ``x`` without coordinated dropout, with the posterior
        mean trajectory and the final KL weight (the early-stopping criterion)."""
        was = self.model.training
        self.model.eval()
        inp, _ = coordinated_dropout(x, self.n_heldin, self.t_obs, 0.0)
        out = self.model(inp, sample=False)
        nll = observation_nll(out.params, x, self.likelihood).sum((1, 2))
        self.model.train(was)
        return float((nll + self.cfg.kl_weight * out.kl).mean())

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> Tensor:
        step = self.steps_done
        g = torch.Generator(device=batch[0].device).manual_seed(self.cfg.seed * 1_000_003 + step)
        loss = self.loss(batch[0], step, g)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {float(loss)} at step {step}")
        self.last_loss = loss.detach()
        if (step + 1) % self.cfg.log_every == 0:
            self.history.append((step + 1, float(loss.detach())))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)


class _Checkpoint(Callback):
    """Restores the optimiser on resume; tracks the validation loss every ``val_every``
    steps and keeps the best weights; writes the checkpoint (best weights) at the end."""

    def __init__(self, out_dir: Path, extra: dict, resume, val: Tensor | None) -> None:
        self.out_dir, self.extra, self.resume, self.val = out_dir, extra, resume, val
        self.best: tuple[float, int, dict] | None = None
        self.val_history: list[tuple[int, float]] = list(extra.get("val_history", []))

    def _validate(self, module: SeqVAEModule) -> None:
        loss = module.validation_loss(self.val.to(module.device))
        step = module.steps_done
        self.val_history.append((step, loss))
        if self.best is None or loss < self.best[0]:
            self.best = (loss, step, {k: v.detach().clone() for k, v in module.model.state_dict().items()})

    def on_train_batch_end(self, trainer, module: SeqVAEModule, outputs, batch, batch_idx: int) -> None:
        if self.val is not None and module.steps_done % module.cfg.val_every == 0:
            self._validate(module)

    def on_fit_start(self, trainer: L.Trainer, module: SeqVAEModule) -> None:
        if self.resume is not None and self.resume.optimizer is not None:
            apply_checkpoint(self.resume, optimizer=trainer.optimizers[0])

    def on_train_end(self, trainer: L.Trainer, module: SeqVAEModule) -> None:
        if module.last_loss is not None and (not module.history or module.history[-1][0] != module.steps_done):
            module.history.append((module.steps_done, float(module.last_loss)))
        extra = {**self.extra, "history": module.history}
        if self.val is not None:
            self._validate(module)
            loss, step, state = self.best
            module.model.load_state_dict(state)
            extra.update(val_history=self.val_history, best_step=step, best_val_loss=loss)
        save_checkpoint(checkpoint_path(self.out_dir), module.model, step=module.steps_done,
                        optimizer=trainer.optimizers[0], config=module.cfg, extra=extra)
        rows = "".join(f"{s},{v!r}\n" for s, v in module.history)
        atomic_write_text(self.out_dir / "metrics.csv", "step,loss\n" + rows)


def fit_vae(module: SeqVAEModule, data: TrialData, out_dir: str | Path, trainer_args: TrainerArgs | None = None,
            progress: bool = True, extra: dict | None = None, resume: bool = True) -> dict:
    """Train ``module`` on the trials of ``data`` for ``cfg.max_steps`` steps in total
    (resuming from ``out_dir/checkpoints/last.safetensors``); returns ``{"steps",
    "final_loss", "history", "seconds"}``."""
    import time
    import warnings

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = module.cfg
    ckpt = None
    if resume and checkpoint_path(out).exists():
        ckpt = read_checkpoint(checkpoint_path(out))
        apply_checkpoint(ckpt, model=module.model)
        module.history = [(int(s), float(v)) for s, v in ckpt.extra.get("history", [])]
        module.step_offset = ckpt.step
    remaining = cfg.max_steps - module.step_offset
    t0 = time.perf_counter()
    val = None
    if remaining > 0:
        n = data.x.shape[0]
        n_val = int(round(cfg.val_fraction * n)) if n >= 10 else 0
        train_x, val = (data.x[: n - n_val], data.x[n - n_val :]) if n_val else (data.x, None)
        g = torch.Generator().manual_seed(cfg.seed)
        ds = TensorDataset(train_x)
        loader = DataLoader(ds, batch_size=min(cfg.batch_size, len(ds)), shuffle=True, drop_last=True, generator=g)
        trainer = L.Trainer(**(trainer_args or TrainerArgs()).trainer_kwargs(), max_steps=remaining,
                            enable_checkpointing=False, logger=False, enable_progress_bar=progress,
                            enable_model_summary=False, gradient_clip_val=cfg.grad_clip or None,
                            num_sanity_val_steps=0, default_root_dir=out,
                            callbacks=[_Checkpoint(out, extra or {}, ckpt, val)])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*GPU available but not used.*")
            trainer.fit(module, loader)
    final = module.history[-1][1] if module.history else math.nan
    saved = read_checkpoint(checkpoint_path(out)).extra if checkpoint_path(out).exists() else {}
    return {"steps": module.steps_done, "final_loss": final, "history": module.history,
            "seconds": time.perf_counter() - t0, "best_step": saved.get("best_step"),
            "val_history": saved.get("val_history", [])}


@torch.no_grad()
def predict(model: nn.Module, data: TrialData, samples: int, seed: int, batch: int = 256) -> tuple[Tensor, Tensor]:
    """Posterior-averaged predictions for every trial of ``data``: ``(params, latents)``.
    Poisson: ``params`` are rates (expected counts per bin, the average of ``e^l`` over
    ``samples`` posterior draws); Gaussian: ``[mean, logvar]`` of the moment-matched
    mixture. ``samples = 0`` uses the posterior mean trajectory (no noise)."""
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    x_in = data.model_input()
    outs, lats = [], []
    for i in range(0, x_in.shape[0], batch):
        xb = x_in[i : i + batch].to(device)
        draws = [model(xb, sample=False)] if samples == 0 else [model(xb, generator=g) for _ in range(samples)]
        if data.likelihood == "poisson":
            outs.append(torch.stack([d.params.exp() for d in draws]).mean(0).cpu())
        else:
            mus, lvs = zip(*(d.params.chunk(2, -1) for d in draws))
            mu = torch.stack(mus).mean(0)
            var = (torch.stack(lvs).exp() + torch.stack(mus).pow(2)).mean(0) - mu.pow(2)
            outs.append(torch.cat([mu, var.clamp_min(1e-6).log()], -1).cpu())
        lats.append(draws[0].latents.cpu())
    return torch.cat(outs), torch.cat(lats)
