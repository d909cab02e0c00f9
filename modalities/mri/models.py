"""3-D networks: MONAI's ``DiffusionModelUNet`` in our call convention.

:class:`UNet3D` wraps the MONAI UNet as ``forward(x (B, 1, X, Y, Z), t (B,)) -> (B, 1, X, Y, Z)``,
converting our time ``t`` (t = 1 data) into MONAI's timestep at the boundary
(:mod:`modaflow.core.conventions`: DDPM index ``i = (1 - t) T - 1`` for the DDPM path, the
RFlow timestep ``(1 - t) T`` for the linear path). :class:`TwoTimeUNet3D` is the
average-velocity network ``u(x, s, t)`` of a flow map: the same UNet, its time embedding
taking ``s`` and a second, zero-initialised embedding of the gap ``t - s`` added to it
(through MONAI's class-embedding slot).

``UNetConfig.medforj()`` is MedForj's configuration (arXiv 2510.26834): channels
(16, 32, 64, 128, 256), attention at the deepest level only, 2 residual blocks, 8 head
channels. GPU options (:func:`apply_gpu_options`): ``channels_last_3d`` memory format,
activation checkpointing of each residual block, flash attention (PyTorch SDPA inside MONAI).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from modaflow.core.config import Config
from modaflow.core.conventions import time_to_ddpm_index, time_to_rflow_timestep

__all__ = ["UNetConfig", "UNet3D", "TwoTimeUNet3D", "Checkpointed", "checkpointed", "apply_gpu_options", "resnet_levels",
           "count_parameters"]


@dataclass
class UNetConfig(Config):
    """A MONAI ``DiffusionModelUNet`` (3-D, one channel in and out)."""

    channels: tuple[int, ...] = (8, 16, 32)
    """Feature channels per level (MedForj: 16, 32, 64, 128, 256)."""
    attention_levels: tuple[bool, ...] = (False, False, True)
    """Self-attention per level (MedForj: deepest level only)."""
    num_res_blocks: int = 1
    """Residual blocks per level (MedForj: 2)."""
    num_head_channels: int = 8
    """Channels per attention head (MedForj: 8)."""
    norm_num_groups: int = 8
    """GroupNorm groups (must divide every channel count)."""
    timestep_scale: str = "ddpm"
    """How t becomes MONAI's timestep: ddpm (index (1 - t) T - 1) or rflow ((1 - t) T)."""
    num_train_timesteps: int = 1000
    """T of that conversion."""
    use_flash_attention: bool = False
    """MONAI's SDPA (flash) attention."""

    def validate(self) -> None:
        self._require(len(self.channels) >= 2, "channels", "at least two levels")
        self._require(len(self.attention_levels) == len(self.channels), "attention_levels",
                      f"one flag per level ({len(self.channels)})")
        self._require(all(c % self.norm_num_groups == 0 for c in self.channels), "norm_num_groups",
                      f"a divisor of every channel count {list(self.channels)}")
        self._require(self.num_res_blocks >= 1, "num_res_blocks", "an integer >= 1")
        self._require(self.timestep_scale in ("ddpm", "rflow"), "timestep_scale", "ddpm or rflow")

    @classmethod
    def medforj(cls, timestep_scale: str = "ddpm", use_flash_attention: bool = True) -> "UNetConfig":
        """MedForj's full-size configuration (REFERENCE section 4)."""
        return cls(channels=(16, 32, 64, 128, 256), attention_levels=(False, False, False, False, True),
                   num_res_blocks=2, num_head_channels=8, norm_num_groups=16, timestep_scale=timestep_scale,
                   use_flash_attention=use_flash_attention)

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this (one halving per level below the top)."""
        return 2 ** (len(self.channels) - 1)


def _monai_unet(cfg: UNetConfig, num_class_embeds: int | None = None) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(cfg.channels),
        attention_levels=tuple(cfg.attention_levels), num_res_blocks=cfg.num_res_blocks,
        num_head_channels=cfg.num_head_channels, norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=num_class_embeds, use_flash_attention=cfg.use_flash_attention,
    )


def _timesteps(cfg: UNetConfig, t: Tensor) -> Tensor:
    if cfg.timestep_scale == "ddpm":
        return time_to_ddpm_index(t.float(), cfg.num_train_timesteps)
    return time_to_rflow_timestep(t.float(), cfg.num_train_timesteps)


class UNet3D(nn.Module):
    """``forward(x (B, 1, X, Y, Z), t (B,)) -> (B, 1, X, Y, Z)`` around MONAI's UNet."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.unet = _monai_unet(cfg)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, _timesteps(self.cfg, t))


class _GapEmbedding(nn.Module):
    """Sinusoidal features of ``t - s`` -> MLP -> time-embedding width; last layer zero, so
    the two-time net starts as the one-time net of ``s``."""

    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.width = width
        self.mlp = nn.Sequential(nn.Linear(width, out), nn.SiLU(), nn.Linear(out, out))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, gap: Tensor) -> Tensor:
        half = self.width // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=gap.device, dtype=torch.float32) / half)
        ang = 1000.0 * gap.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(ang), torch.sin(ang)], dim=1))


class TwoTimeUNet3D(nn.Module):
    """Average velocity ``u(x, s, t)`` of a flow map: ``forward(x, s, t) -> (B, 1, X, Y, Z)``
    (:class:`modaflow.core.flow_maps.FlowMap` calls it as ``net(x, s, t)``)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.unet = _monai_unet(cfg, num_class_embeds=1)
        width = cfg.channels[0]
        self.unet.class_embedding = _GapEmbedding(width, self.unet.time_embed[-1].out_features)

    def forward(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        return self.with_gap(x, s, t - s)

    def with_gap(self, x: Tensor, time: Tensor, gap: Tensor) -> Tensor:
        """The UNet at ``time`` (converted by ``cfg.timestep_scale``) with the gap embedding of
        ``gap`` (``forward(x, s, t) = with_gap(x, s, t - s)``)."""
        return self.unet(x, _timesteps(self.cfg, time), class_labels=gap)

    def load_one_time(self, net: UNet3D) -> None:
        """Start from a trained one-time UNet's weights (the gap embedding stays zero)."""
        missing, unexpected = self.unet.load_state_dict(net.unet.state_dict(), strict=False)
        if unexpected or any(not k.startswith("class_embedding") for k in missing):
            raise ValueError(f"UNet shapes differ: missing {missing}, unexpected {unexpected}")


class Checkpointed(nn.Module):
    """Mixin that runs a module's own ``forward`` under activation checkpointing while training
    (recomputed in the backward pass; Chen et al. 2016, arXiv 1604.06174). Applied by changing
    an instance's class (:func:`checkpointed`), not by wrapping it, so the module tree and the
    state-dict keys stay those of the plain network: a run trained with checkpointing restores
    into one built without it, and a deep copy (the EMA / frozen copies) keeps its own weights."""

    def forward(self, *args, **kwargs):  # the MONAI block's own signature
        inner = super().forward
        if self.training and torch.is_grad_enabled():
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)


_CHECKPOINTED: dict[type, type] = {}


def checkpointed(module: nn.Module) -> nn.Module:
    """In place: ``module`` becomes an instance of ``Checkpointed<its class>`` (idempotent)."""
    cls = type(module)
    if not isinstance(module, Checkpointed):
        if cls not in _CHECKPOINTED:
            _CHECKPOINTED[cls] = type(f"Checkpointed{cls.__name__}", (Checkpointed, cls), {})
        module.__class__ = _CHECKPOINTED[cls]
    return module


def resnet_levels(model: nn.Module) -> dict[nn.Module, int]:
    """Every MONAI residual block (``DiffusionUNetResnetBlock``) inside ``model`` -> its
    resolution level: ``i`` in down block ``i``, ``n - 1 - j`` in up block ``j`` of ``n``, the
    lowest level (``n - 1``) in the middle block; level 0 is full resolution."""
    levels: dict[nn.Module, int] = {}
    for unet in (m for m in model.modules() if hasattr(m, "down_blocks") and hasattr(m, "up_blocks")):
        n = len(unet.down_blocks)
        parts = [(b, i) for i, b in enumerate(unet.down_blocks)] + [(b, n - 1 - j) for j, b in enumerate(unet.up_blocks)]
        parts.append((unet.middle_block, n - 1))
        for block, level in parts:
            for m in block.modules():
                if type(m).__name__ == "DiffusionUNetResnetBlock" or isinstance(m, Checkpointed):
                    levels[m] = level
    return levels


def apply_gpu_options(model: nn.Module, channels_last: bool, activation_checkpointing: bool,
                      checkpoint_levels: tuple[int, ...] | None = None) -> nn.Module:
    """In place: ``channels_last_3d`` weights and every MONAI residual block
    (``DiffusionUNetResnetBlock``) inside ``model`` made :func:`checkpointed` (only those at the
    resolution levels ``checkpoint_levels`` of :func:`resnet_levels` when given, 0 = full
    resolution), so only block inputs are kept for the backward pass and each block's norms,
    SiLUs and convolutions are recomputed (Chen et al. 2016, arXiv 1604.06174). The residual
    block is the unit because the peak sits inside the full-resolution levels: on an H100 at
    192x224x192 (compiled, channels-last), checkpointing whole down/up blocks left the peak at
    13.1 GB, checkpointing each residual block cut it to 9.2 GB (benchmarks/RESULTS.md).
    Returns ``model``."""
    if activation_checkpointing:
        levels = resnet_levels(model)
        for m in list(model.modules()):
            if type(m).__name__ == "DiffusionUNetResnetBlock" and (checkpoint_levels is None
                                                                   or levels.get(m) in checkpoint_levels):
                checkpointed(m)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
