"""Training: one Lightning module for any (network, path, parametrization, loss weight, time
sampler), EMA, safetensors checkpoints and ``fit`` with resume. Devices, nodes, strategy and
precision go straight to ``lightning.Trainer`` (:class:`TrainerArgs`)."""

from .checkpoint import Checkpoint, CheckpointError, apply_checkpoint, load_checkpoint, read_checkpoint, save_checkpoint
from .config import (
    PATHS,
    TIME_SAMPLERS,
    FlowMatchingConfig,
    MinSNRWeight,
    TrainerArgs,
    make_loss_weight,
    make_path,
    make_time_sampler,
)
from .ema import EMA
from .fit import FitResult, TrainingInterrupted, checkpoint_path, fit
from .flow_map_module import FlowMapConfig, FlowMapModule
from .module import Batch, FlowMatchingModule, NonFiniteLossError, cosine_factor
from .quiet import quiet_lightning

__all__ = [
    "FlowMatchingConfig",
    "TrainerArgs",
    "make_path",
    "make_time_sampler",
    "make_loss_weight",
    "MinSNRWeight",
    "PATHS",
    "TIME_SAMPLERS",
    "EMA",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "read_checkpoint",
    "apply_checkpoint",
    "load_checkpoint",
    "FlowMatchingModule",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "cosine_factor",
    "Batch",
    "fit",
    "FitResult",
    "checkpoint_path",
    "FlowMapConfig",
    "FlowMapModule",
    "quiet_lightning",
]
