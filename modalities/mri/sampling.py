"""Generating volumes with the core samplers, and writing them as NIfTI.

* ``ddim``: :func:`modaflow.core.discrete.solve_ddim` (eta = 0; Song et al. 2021, arXiv
  2010.02502, eq. 12) on the DDPM sub-sequence :func:`~modaflow.core.discrete.ddpm_grid`
  (``steps`` network calls); on the linear path (``rflow``) on a uniform grid.
* ``euler``: :func:`modaflow.core.ode.solve_ode` on the probability-flow velocity.
* ``ddpm``: ancestral DDPM over all T steps (:func:`~modaflow.core.discrete.solve_ddpm`).
* ``flowmap``: a distilled flow map (:mod:`.distill`) along ``time_grid(steps)``
  (:func:`~modaflow.core.flow_maps.sample_flow_map`).

Noise ``x0 ~ N(0, I)`` is drawn on the CPU from ``seed``, so every device starts alike.

``sample`` and ``evaluate`` run the network where :class:`SampleOptions` say: on the GPU when
there is one, under bf16 autocast in ``channels_last_3d`` (the training path's settings, as the
benchmark's GPU timing measures them), optionally compiled.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from modaflow.core.config import Config
from modaflow.core.devices import DeviceName, pick_device
from modaflow.core.discrete import ddpm_grid, solve_ddim, solve_ddpm
from modaflow.core.flow_maps import sample_flow_map
from modaflow.core.ode import solve_ode, time_grid
from modaflow.core.parametrizations import as_velocity_field
from modaflow.core.paths import AffinePath, DiscreteVPPath

from .nifti import write_volume

__all__ = ["SOLVERS", "SampleOptions", "on_device", "draw_noise", "generate", "write_volumes"]

SOLVERS: tuple[str, ...] = ("ddim", "euler", "ddpm", "flowmap")


@dataclass
class SampleOptions(Config):
    """Where and how ``modaflow sample mri`` / ``evaluate mri`` run the network."""

    device: DeviceName = "auto"
    """Where the network runs: auto = cuda when a GPU is visible, else cpu."""
    bf16: bool = True
    """On cuda: the network under bf16 autocast (the sampler's state stays float32). Ignored on the CPU."""
    channels_last: bool = True
    """On cuda: weights and inputs in channels_last_3d memory format. Ignored on the CPU."""
    compile: bool = False
    """torch.compile the network first (pays off over many network calls: large --n or --steps)."""


def on_device(model: nn.Module, opts: SampleOptions) -> tuple[nn.Module, torch.dtype | None, bool]:
    """``(model, autocast dtype, channels_last)`` ready to sample as ``opts`` say: moved to the
    device; on cuda in channels_last_3d (weights; :func:`generate` converts the inputs) with bf16
    autocast where asked; compiled where asked."""
    device = pick_device(opts.device)
    model = model.to(device).eval()
    cuda = device.type == "cuda"
    if cuda and opts.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    if opts.compile:
        model = torch.compile(model)
    return model, (torch.bfloat16 if cuda and opts.bf16 else None), cuda and opts.channels_last


def draw_noise(n: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """``(n, 1, *shape)`` standard normal noise from a CPU generator seeded by ``seed``."""
    return torch.randn(n, 1, *shape, generator=torch.Generator().manual_seed(seed))


def _grid(path: AffinePath, steps: int, device) -> Tensor:
    if isinstance(path, DiscreteVPPath):
        return ddpm_grid(path, steps, device=device)
    return time_grid(steps, device=device)


@torch.no_grad()
def generate(
    model: nn.Module,
    kind: str,
    path: AffinePath,
    x0: Tensor,
    steps: int,
    solver: str,
    batch_size: int = 4,
    autocast: torch.dtype | None = None,
    generator_seed: int = 0,
    channels_last: bool = False,
) -> Tensor:
    """Volumes ``(n, 1, X, Y, Z)`` float32 on the CPU from noise ``x0`` ``(n, 1, X, Y, Z)``.

    Args:
        model: a predictor of the core parametrization ``kind`` (``model(x, t)``), or a flow
            map ``model(x, s, t)`` for ``solver="flowmap"``.
        kind: its core parametrization (ignored for flow maps).
        path: the path it was trained on.
        x0: the starting noise.
        steps: network calls per volume (ancestral DDPM always takes T).
        solver: one of :data:`SOLVERS`.
        batch_size: volumes per batch.
        autocast: run the network under ``torch.autocast`` with this dtype (e.g. bf16).
        generator_seed: seed of the ancestral-DDPM noise.
        channels_last: give the network its inputs in channels_last_3d memory format.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVERS)}; got {solver!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    device = next(model.parameters()).device
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    ctx = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    out = []
    for i, x in enumerate(x0.split(batch_size)):
        x = x.to(device).contiguous(memory_format=fmt)
        with ctx:
            if solver == "flowmap":
                y = sample_flow_map(model, x, time_grid(steps, device=device)).x
            elif solver == "ddim":
                y = solve_ddim(_float_out(model), kind, path, x, _grid(path, steps, device)).x
            elif solver == "euler":
                y = solve_ode(as_velocity_field(_float_out(model), kind, path), x, _grid(path, steps, device)).x
            else:
                g = torch.Generator(device).manual_seed(generator_seed + i)
                y = solve_ddpm(_float_out(model), kind, path, x, generator=g).x
        out.append(y.float().cpu())
    return torch.cat(out)


def _float_out(model: nn.Module):
    """The model with float32 outputs (under autocast the UNet returns bf16; the sampler's
    state stays float32)."""
    return lambda x, t: model(x, t).float()


def write_volumes(x: Tensor, affine: np.ndarray, out: str | Path, prefix: str = "sample") -> list[Path]:
    """Write volumes ``(n, 1, X, Y, Z)``: into the folder ``out`` as ``<prefix>_000.nii.gz``, ...,
    or, for one volume and ``out`` ending in ``.nii[.gz]``, to that file. Returns the paths."""
    out = Path(out)
    if out.name.endswith((".nii", ".nii.gz")):
        if x.shape[0] != 1:
            raise ValueError(f"{out}: a single NIfTI file holds one volume; got {x.shape[0]} (pass a folder)")
        return [write_volume(out, x[0, 0].numpy(), affine)]
    out.mkdir(parents=True, exist_ok=True)
    return [write_volume(out / f"{prefix}_{i:03d}.nii.gz", v[0].numpy(), affine) for i, v in enumerate(x)]
