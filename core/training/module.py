"""One Lightning module that trains any (network, path, parametrization, loss weight, time
sampler) by conditional flow matching.

Per step (Lipman et al. 2023, arXiv 2210.02747, eq. 9 / Algorithm 1 of Tong et al. 2024,
arXiv 2302.00482): draw ``t`` from the time sampler, ``x0 ~ N(0, I)`` (or take the batch's
source samples for bridges), form ``x_t`` and its conditional target through the path, and
regress the network's prediction on it with :func:`~modaflow.core.losses.weighted_mse`.
With ``cfg.coupling`` other than ``"independent"``, the drawn noise is re-paired with the
batch's data by minibatch optimal transport (:mod:`modaflow.core.coupling`; Tong et al. 2024,
arXiv 2302.00482, OT-CFM) before ``x_t`` is formed.

Randomness: step ``k`` on rank ``r`` draws ``t``, ``x0``, ``z`` and the conditioning dropout
from a generator seeded by ``(seed, r, k)``, so a resumed run draws what an uninterrupted run
would, and ranks draw independently.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from ..coupling import couple
from ..losses import weighted_mse
from ..parametrizations import as_velocity_field, regression_target
from ..paths import AffinePath, StochasticInterpolant
from ..tensors import expand_t
from .config import FlowMatchingConfig, make_loss_weight, make_path, make_time_sampler
from .ema import EMA

__all__ = ["FlowMatchingModule", "NonFiniteLossError", "Batch", "cosine_factor"]

Batch = Tensor | dict[str, Tensor] | tuple[Tensor, ...] | list[Tensor]
"""A tensor ``x1`` ``(B, *D)``; a dict with ``"x1"`` and optional ``"x0"`` (source samples,
``(B, *D)``) and ``"cond"``; or a ``(x1,)`` / ``(x1, cond)`` sequence (``TensorDataset``)."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf. ``step`` and ``loss`` say where and what
    (``loss`` is None when it happened on another rank)."""

    def __init__(self, step: int, loss: float | None, detail: str = "") -> None:
        self.step, self.loss = step, loss
        what = f"is {loss} (not finite)" if loss is not None else "became non-finite on another rank"
        super().__init__(
            f"training loss {what} at step {step}; lower the learning rate, "
            f"check the data for NaN/Inf, or clip gradients{detail}"
        )


_NO_STEP = 2**62  # "no non-finite loss seen yet"


def cosine_factor(done: float, final_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate after the fraction ``done`` in [0, 1] of a cosine
    annealing: 1 at 0, ``final_ratio`` at 1."""
    # eta_t = eta_min + (eta_max - eta_min) (1 + cos(pi T_cur / T_i)) / 2   (Loshchilov & Hutter 2017, eq. 5)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * done))


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class FlowMatchingModule(L.LightningModule):
    """Conditional flow matching for ``model(x, t, cond=None)`` on ``path``.

    Args:
        model: network predicting ``cfg.parametrization`` with ``forward(x, t, cond=None)``.
        path: the probability path; None builds ``cfg.path`` with :func:`make_path`. Pass
            one explicitly for stochastic interpolants and bridges.
        cfg: the training config.
    """

    def __init__(self, model: nn.Module, path: AffinePath | None, cfg: FlowMatchingConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg
        self.path = make_path(cfg) if path is None else path
        as_velocity_field(model, cfg.parametrization, self.path)  # raises if the path cannot express it
        self.time_sampler = make_time_sampler(cfg)
        self.loss_weight = make_loss_weight(cfg, self.path)
        self.ema = EMA(model, cfg.ema_decay)
        self.step_offset = 0
        """Steps completed before this Lightning run (set by ``fit`` when resuming)."""
        self.last_loss: Tensor | None = None
        self._generators: dict[torch.device, torch.Generator] = {}
        self._nonfinite: tuple[Tensor, Tensor] | None = None  # (first non-finite step, its loss)

    @property
    def steps_done(self) -> int:
        """Optimiser steps completed, counting those before a resume."""
        return self.step_offset + self.global_step

    def learning_rate(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based): linear warm-up over
        ``cfg.warmup_steps``, then constant or cosine-annealed to ``lr * lr_final_ratio`` at
        ``cfg.max_steps`` (and held there by any later step)."""
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.lr_decay == "constant":
            return cfg.lr
        # the fraction of the decay done: 0 at the first step after warm-up, 1 at the last step (max_steps - 1)
        span = cfg.max_steps - 1 - cfg.warmup_steps
        done = min(1.0, (step - cfg.warmup_steps) / span) if span > 0 else 1.0
        return cfg.lr * cosine_factor(done, cfg.lr_final_ratio)

    def _generator(self, device: torch.device, step: int) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        return gen.manual_seed(_seed(self.cfg.seed, self.global_rank, step))

    @staticmethod
    def unpack(batch: Batch) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(x1, x0 or None, cond or None)`` from any accepted batch form (see :data:`Batch`)."""
        if isinstance(batch, Tensor):
            return batch, None, None
        if isinstance(batch, dict):
            unknown = sorted(set(batch) - {"x1", "x0", "cond"})
            if "x1" not in batch or unknown:
                raise ValueError(f"a batch dict needs 'x1' and may have 'x0', 'cond'; got keys {sorted(batch)}")
            return batch["x1"], batch.get("x0"), batch.get("cond")
        if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
            return batch[0], None, batch[1] if len(batch) == 2 else None
        raise TypeError(f"batch must be a tensor, a dict or an (x1,) / (x1, cond) sequence; got {type(batch).__name__}")

    def drop_cond(self, cond: Tensor | None, generator: torch.Generator) -> Tensor | None:
        """Replace each sample's ``cond`` with the null class (integer ids) or zeros (float
        conditioning) with probability ``cfg.cond_dropout`` (Ho & Salimans 2022,
        arXiv 2207.12598, Algorithm 1)."""
        p = self.cfg.cond_dropout
        if cond is None or p == 0:
            return cond
        drop = expand_t(torch.rand(cond.shape[0], generator=generator, device=cond.device) < p, cond)
        if cond.is_floating_point():
            return torch.where(drop, torch.zeros_like(cond), cond)
        if self.cfg.null_class < 0:
            raise ValueError("FlowMatchingConfig.null_class: expected the null class id (>= 0) when cond_dropout > 0")
        return torch.where(drop, torch.full_like(cond, self.cfg.null_class), cond)

    def draw_source(self, x1: Tensor, generator: torch.Generator) -> Tensor:
        """Noise ``x0 ~ N(0, I)`` shaped like ``x1`` ``(B, *D)``, re-ordered to pair with
        ``x1`` by ``cfg.coupling`` (``x1``, and any ``cond`` with it, keeps its order)."""
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        if self.cfg.coupling == "independent":
            return x0
        return couple(x0, x1, self.cfg.coupling, self.cfg.sinkhorn_epsilon, self.cfg.sinkhorn_iterations, generator).x0

    def compute_loss(self, batch: Batch, step: int) -> Tensor:
        """The flow-matching loss of one batch, with the noise of step ``step``."""
        x1, x0, cond = self.unpack(batch)
        gen = self._generator(x1.device, step)
        t = self.time_sampler(x1.shape[0], device=x1.device, dtype=x1.dtype, generator=gen)
        t = self.cfg.t_min + (self.cfg.t_max - self.cfg.t_min) * t
        if x0 is None:
            if not self.path.gaussian_source:
                raise ValueError(f"{self.path!r} has a data source: the batch must be a dict with 'x0'")
            x0 = self.draw_source(x1, gen)
        if isinstance(self.path, StochasticInterpolant):
            z = torch.randn(x1.shape, generator=gen, device=x1.device, dtype=x1.dtype)
            sample = self.path.sample(x0, x1, t, z=z)
        else:
            sample = self.path.sample(x0, x1, t)
        cond = self.drop_cond(cond, gen)
        sigma = expand_t(self.path.sigma(t), x1)
        target = regression_target(self.cfg.parametrization, x1, sample.eps, sample.dx_t, sigma)
        pred = self.model(sample.x_t, t) if cond is None else self.model(sample.x_t, t, cond)
        return weighted_mse(pred, target, t, self.loss_weight)

    def _tracker(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._nonfinite is None or self._nonfinite[0].device != device:
            self._nonfinite = (torch.full((), _NO_STEP, dtype=torch.long, device=device),
                               torch.zeros((), dtype=torch.float32, device=device))
        return self._nonfinite

    def _track_nonfinite(self, loss: Tensor, step: int) -> None:
        """Remember the first step with a non-finite loss, on the device (no host sync)."""
        loss = loss.detach().float()
        first_step, first_loss = self._tracker(loss.device)
        new = ~torch.isfinite(loss) & (first_step == _NO_STEP)
        self._nonfinite = (torch.where(new, step, first_step), torch.where(new, loss, first_loss))

    def check_finite_loss(self) -> None:
        """Raise :class:`NonFiniteLossError` if any loss so far was NaN/Inf, on any rank (a
        host sync; under DDP a scalar all-reduce, so every rank raises together instead of
        the others waiting forever in the next gradient all-reduce). All ranks call it at
        the same steps."""
        first_step, first_loss = self._tracker(self.device)
        step = first_step
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            step = first_step.clone()
            torch.distributed.all_reduce(step, op=torch.distributed.ReduceOp.MIN)
        step = int(step)
        if step != _NO_STEP:
            raise NonFiniteLossError(step, float(first_loss) if int(first_step) == step else None)

    def on_fit_start(self) -> None:
        self._nonfinite = None  # a new fit (e.g. a resume after a NaN) starts clean

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        step = self.steps_done
        loss = self.compute_loss(batch, step)
        self._track_nonfinite(loss, step)
        if step % self.cfg.nan_check_every == 0:
            self.check_finite_loss()
        self.last_loss = loss.detach()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=self.unpack(batch)[0].shape[0])
        return loss

    def configure_model(self) -> None:
        """Under ``TrainerArgs(strategy="fsdp")`` shard the network (once) over the data-parallel
        mesh (:func:`~modaflow.core.training.sharding.apply_fsdp`); nothing otherwise."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        from .sharding import apply_fsdp, is_sharded

        if isinstance(self.trainer.strategy, ModelParallelStrategy) and not is_sharded(self.model):
            apply_fsdp(self.model, self.device_mesh["data_parallel"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable | None = None) -> None:
        """Set the warm-up learning rate, step, then update the EMA."""
        lr = self.learning_rate(self.steps_done)
        for group in optimizer.param_groups:
            group["lr"] = lr
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.ema.update(self.model)

    def network(self, use_ema: bool = True) -> nn.Module:
        """A frozen copy of the network in eval mode, with the EMA weights if ``use_ema``."""
        net = copy.deepcopy(self.model).eval().requires_grad_(False)
        if use_ema:
            self.ema.copy_to(net)
        return net

    def velocity_field(self, use_ema: bool = True, cond: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """A velocity field ``(x, t) -> v`` for the solvers (``x`` ``(B, *D)``, ``t`` ``(B,)``),
        from a frozen copy of the network (EMA weights if ``use_ema``) converted from
        ``cfg.parametrization`` through the path. ``cond`` (``(B, ...)``) is passed to every
        call; its batch must match ``x``."""
        net = self.network(use_ema)

        def predict(x: Tensor, t: Tensor) -> Tensor:
            return net(x, t) if cond is None else net(x, t, cond)

        return as_velocity_field(predict, self.cfg.parametrization, self.path)
