"""Typed configs of a flow-matching training run, and the explicit registries that turn their
names into objects (paths, time samplers, loss weights). No ``globals()`` lookups."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..config import Config
from ..coupling import CouplingMethod
from ..losses import TimeWeight
from ..parametrizations import Parametrization
from ..paths import AffinePath, DiscreteVPPath, LinearPath, VPCosinePath
from ..time_samplers import LogitNormalTime, ModeTime, TimeSampler, UniformTime

__all__ = [
    "FlowMatchingConfig",
    "TrainerArgs",
    "make_path",
    "make_time_sampler",
    "make_loss_weight",
    "MinSNRWeight",
    "PATHS",
    "TIME_SAMPLERS",
]

PathName = Literal["linear", "vp_cosine", "ddpm_linear", "ddpm_cosine"]
TimeSamplerName = Literal["uniform", "logit_normal", "mode"]
LossWeighting = Literal["none", "min_snr"]
LRDecay = Literal["constant", "cosine"]


@dataclass
class FlowMatchingConfig(Config):
    """What to regress, on which path, with which time distribution and optimiser."""

    path: PathName = "linear"
    """Probability path: linear (rectified flow), vp_cosine, or a DDPM beta schedule
    (ddpm_linear, ddpm_cosine) as a continuous VP path."""
    ddpm_steps: int = 1000
    """Number of DDPM steps T of the ddpm_* paths."""
    parametrization: Parametrization = "velocity"
    """What the network predicts: velocity, data (x1), noise (x0) or score."""
    loss_weighting: LossWeighting = "none"
    """none: plain MSE on the chosen target. min_snr: Min-SNR-gamma weighting (Hang et al. 2023,
    arXiv 2303.09556), min(SNR, gamma) on the data error, converted to the chosen target."""
    min_snr_gamma: float = 5.0
    """gamma of the min_snr weighting."""
    time_sampler: TimeSamplerName = "uniform"
    """Training distribution of t: uniform, logit_normal or mode (Esser et al. 2024,
    arXiv 2403.03206)."""
    logit_normal_m: float = 0.0
    """Location m of the logit-normal sampler (m > 0 favours noisier times)."""
    logit_normal_s: float = 1.0
    """Scale s of the logit-normal sampler."""
    mode_scale: float = 1.29
    """Scale of the mode sampler, in [-1, 2/(pi - 2)]."""
    time_shift: float = 1.0
    """Resolution / time shift applied after sampling t (1 = none; > 1 favours the source)."""
    t_min: float = 0.0
    """Sampled times are mapped affinely onto [t_min, t_max]."""
    t_max: float = 1.0
    """Upper end of the training times; must be < 1 for the score parametrization (its
    target -eps/sigma is infinite at t = 1)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 256
    """Batch size per device, for the data loaders that recipes build."""
    max_steps: int = 1000
    """Total optimiser steps (fit() may override)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up over this many steps (0 = none)."""
    lr_decay: LRDecay = "constant"
    """Learning rate after the warm-up: constant, or cosine annealing (Loshchilov & Hutter
    2017, arXiv 1608.03983, eq. 5, one cycle without restarts) from ``lr`` down to
    ``lr * lr_final_ratio`` at step ``max_steps``. The decay always ends at ``max_steps``,
    so a run stopped early and resumed follows the schedule of one uninterrupted run."""
    lr_final_ratio: float = 0.0
    """Final learning rate of the cosine decay as a fraction of ``lr`` (in [0, 1])."""
    grad_clip: float = 1.0
    """Clip the gradient norm at this value (0 = no clipping)."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights (0 = EMA equals the weights)."""
    cond_dropout: float = 0.0
    """Probability of replacing cond by the null class (classifier-free guidance training)."""
    null_class: int = -1
    """The null class id (the network's num_classes); required when cond_dropout > 0 and
    cond holds class ids. Float conditioning is dropped to zeros instead."""
    coupling: CouplingMethod = "independent"
    """How drawn noise x0 is paired with the batch's data x1: independent (as drawn),
    exact_ot (minibatch OT permutation, Tong et al. 2024, arXiv 2302.00482; solved on the
    host with scipy, pip install modaflow[ot]) or sinkhorn (entropic OT plan on the device,
    pairs sampled from it). Re-pairs only drawn noise; (x1, cond) stay together, and source
    samples given in the batch ("x0") keep their pairing."""
    sinkhorn_epsilon: float = 0.05
    """Entropic regularisation of the sinkhorn coupling, relative to the batch's mean
    squared distance (smaller = closer to exact OT, more iterations needed)."""
    sinkhorn_iterations: int = 100
    """Sinkhorn iterations of the sinkhorn coupling (a fixed count: no host sync)."""
    seed: int = 0
    """Seed of the training noise: step k on rank r draws t, x0 and dropout from a generator
    seeded by (seed, r, k), so runs and resumed runs are reproducible."""
    log_every: int = 50
    """Record the training loss every this many steps."""
    ckpt_every: int = 500
    """Write checkpoints/last.safetensors every this many steps (and at the end)."""
    nan_check_every: int = 1
    """Check the loss for NaN/Inf every this many steps (a host sync; raise it on GPUs).
    Non-finite losses in between are remembered on the device and reported at the next check
    or before a checkpoint is written, so a NaN model is never saved."""

    def validate(self) -> None:
        positive = ("ddpm_steps", "batch_size", "max_steps", "log_every", "ckpt_every", "nan_check_every",
                    "sinkhorn_iterations")
        for name in positive:
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        for name in ("lr", "min_snr_gamma", "logit_normal_s", "time_shift", "sinkhorn_epsilon"):
            self._require(getattr(self, name) > 0, name, "a number > 0")
        for name in ("weight_decay", "warmup_steps", "grad_clip"):
            self._require(getattr(self, name) >= 0, name, "a value >= 0")
        self._require(0 <= self.lr_final_ratio <= 1, "lr_final_ratio", "a fraction in [0, 1]")
        self._require(0 <= self.t_min < self.t_max, "t_min", f"0 <= t_min < t_max = {self.t_max}")
        self._require(self.t_max <= 1, "t_max", "t_max <= 1")
        if self.parametrization == "score":
            self._require(self.t_max < 1, "t_max", "t_max < 1 for the score parametrization")
        self._require(0 <= self.ema_decay < 1, "ema_decay", "a number in [0, 1)")
        self._require(0 <= self.cond_dropout < 1, "cond_dropout", "a probability in [0, 1)")
        hi = 2.0 / (torch.pi - 2.0)
        self._require(-1 <= self.mode_scale <= hi, "mode_scale", f"a number in [-1, {hi:.4f}]")


SHARDED_STRATEGIES: tuple[str, ...] = ("fsdp", "deepspeed")
"""Prefixes of Lightning strategy names that shard parameters. Only ``"fsdp"`` itself is
accepted, and it means modaflow's FSDP2 path (:mod:`~modaflow.core.training.sharding`), which
gives the EMA and the checkpoints whole parameters. Lightning's own FSDP (version 1) and
DeepSpeed strategies are refused: under them the EMA update and rank 0's checkpoint would see
parameter shards."""


@dataclass
class TrainerArgs(Config):
    """Hardware and distribution settings, passed straight to ``lightning.Trainer``."""

    devices: int | str = 1
    """Devices per node: a count, or "auto"."""
    num_nodes: int = 1
    """Number of nodes (multi-node DDP / FSDP)."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, ddp_spawn, ..., or fsdp (modaflow's FSDP2 path; other
    sharded strategies are refused, see :data:`SHARDED_STRATEGIES`)."""
    precision: str = "32-true"
    """Lightning precision: 32-true, 16-mixed, bf16-mixed, 64-true, ..."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, ..."""

    def validate(self) -> None:
        self._require(self.num_nodes >= 1, "num_nodes", "an integer >= 1")
        name = self.strategy.lower()
        self._require(name == "fsdp" or not name.startswith(SHARDED_STRATEGIES), "strategy",
                      "'ddp', 'fsdp' or another replicating Lightning strategy: Lightning's own sharded strategies "
                      "(fsdp_*, deepspeed*) hand the EMA and the checkpoints parameter shards; 'fsdp' is modaflow's "
                      "FSDP2 path, which gathers them")
        if name == "fsdp":
            self._require(isinstance(self.devices, int), "devices", "an integer count of devices per node with strategy 'fsdp'")
        if isinstance(self.devices, int):
            self._require(self.devices >= 1, "devices", "an integer >= 1 or 'auto'")

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``lightning.Trainer`` (``strategy="fsdp"`` becomes
        :func:`~modaflow.core.training.sharding.fsdp_strategy` over every rank)."""
        kwargs = self.to_dict()
        if self.strategy.lower() == "fsdp":
            from .sharding import fsdp_strategy

            kwargs["strategy"] = fsdp_strategy(int(self.devices) * self.num_nodes)
        return kwargs


PATHS: dict[str, Callable[[FlowMatchingConfig], AffinePath]] = {
    "linear": lambda cfg: LinearPath(),
    "vp_cosine": lambda cfg: VPCosinePath(),
    "ddpm_linear": lambda cfg: DiscreteVPPath.linear(cfg.ddpm_steps),
    "ddpm_cosine": lambda cfg: DiscreteVPPath.cosine(cfg.ddpm_steps),
}
"""Path name -> builder."""

TIME_SAMPLERS: dict[str, Callable[[FlowMatchingConfig], TimeSampler]] = {
    "uniform": lambda cfg: UniformTime(shift=cfg.time_shift),
    "logit_normal": lambda cfg: LogitNormalTime(m=cfg.logit_normal_m, s=cfg.logit_normal_s, shift=cfg.time_shift),
    "mode": lambda cfg: ModeTime(scale=cfg.mode_scale, shift=cfg.time_shift),
}
"""Time-sampler name -> builder."""


def make_path(cfg: FlowMatchingConfig) -> AffinePath:
    """The path named by ``cfg.path``."""
    return PATHS[cfg.path](cfg)


def make_time_sampler(cfg: FlowMatchingConfig) -> TimeSampler:
    """The time sampler named by ``cfg.time_sampler`` with its parameters and shift."""
    return TIME_SAMPLERS[cfg.time_sampler](cfg)


def _data_error_factor(kind: Parametrization, path: AffinePath, t: Tensor) -> Tensor:
    """``c_k(t)``: the squared error of a kind-``kind`` prediction is ``c_k`` times the
    squared error of the implied data prediction, for ``x_t = alpha x1 + sigma x0`` fixed
    (errors in x0 are ``-alpha / sigma`` times those in x1)."""
    a, s = path.alpha(t), path.sigma(t)
    snr = (a / s) ** 2
    factors = {
        "data": lambda: torch.ones_like(t),
        "noise": lambda: snr,
        "score": lambda: snr / s**2,  # score = -x0 / sigma
        "velocity": lambda: (path.d_alpha(t) - path.d_sigma(t) * a / s) ** 2,  # v = a' x1 + s' x0
    }
    return factors[kind]()


@dataclass(frozen=True)
class MinSNRWeight:
    """Min-SNR-gamma weight ``w(t)`` for a target of kind ``kind`` (see :func:`make_loss_weight`);
    a small picklable callable ``(B,) -> (B,)``."""

    path: AffinePath
    kind: Parametrization
    gamma: float

    def __call__(self, t: Tensor) -> Tensor:
        snr = (self.path.alpha(t) / self.path.sigma(t)) ** 2
        return torch.clamp(snr, max=self.gamma) / _data_error_factor(self.kind, self.path, t)


def make_loss_weight(cfg: FlowMatchingConfig, path: AffinePath) -> TimeWeight | None:
    """``w(t)`` for :func:`modaflow.core.losses.weighted_mse`, or None for ``"none"``.

    ``"min_snr"``: Min-SNR-gamma (Hang et al. 2023, arXiv 2303.09556, eq. 9) weights the
    *data* error by ``min(SNR(t), gamma)``; for another target we divide by the factor that
    turns data errors into that target's errors, so every parametrization minimises the same
    weighted data loss. At t = 1 (sigma = 0) the weight of noise/velocity/score targets is 0.
    """
    if cfg.loss_weighting == "none":
        return None
    return MinSNRWeight(path, cfg.parametrization, cfg.min_snr_gamma)
