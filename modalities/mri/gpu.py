"""The GPU path against the stock MONAI configuration, measured in one process on the same
inputs: one training step (forward, MSE on MedForj's velocity target, backward, Adam) and
one sampling step (one forward without gradients), time per volume and peak memory.

Variants (:data:`VARIANTS`):

* ``stock``: MONAI ``DiffusionModelUNet`` at MedForj's configuration, bf16 autocast and
  MONAI's flash attention (REFERENCE section 4: 0.430 s and 29.6 GB per step on an H200 at
  192x224x192, batch 1);
* ``compile_cl``: + ``channels_last_3d`` + ``torch.compile`` (REFERENCE: 0.38x time, 0.43x memory)
  + cuDNN's autotuner (``torch.backends.cudnn.benchmark``: each 3-D convolution shape times
  the available algorithms once and keeps the fastest);
* ``compile_cl_ckpt``: + activation checkpointing of every residual block (less memory,
  one extra forward). Checkpointing whole down/up blocks saved nothing on an H100 (13.1 vs
  12.8 GB): the peak is inside the full-resolution blocks, so the unit is the residual block.

Not yet measured on a GPU (:data:`CANDIDATES`, the ``mri_candidates`` part of gpu_speed):

* ``compile_cl_ckpt_l01``: checkpointing only the residual blocks of the two finest levels
  (192x224x192 and its half), where the activations are largest: most of the memory saving
  for less recomputation;
* ``compile_cl_b2`` / ``compile_cl_ckpt_b2``: two volumes per step (time and memory per volume;
  the stock reference stays at batch 1, as REFERENCE section 4 measures it).

Runs on CPU at tiny sizes too (peak memory is then not measured) so that the code path is
exercised by the tests; ``compile`` is skipped on CPU unless asked for.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .models import UNet3D, UNetConfig, apply_gpu_options

__all__ = ["Variant", "VARIANTS", "CANDIDATES", "StepTiming", "build_variant", "make_steps", "time_steps", "compare_variants"]


@dataclass(frozen=True)
class Variant:
    """How the UNet is built and run.

    Attributes:
        name: row name.
        channels_last: ``channels_last_3d`` weights and inputs.
        compile: ``torch.compile`` the UNet.
        activation_checkpointing: recompute each residual block's activations in the backward pass
            (:func:`~.models.apply_gpu_options`).
        cudnn_benchmark: let cuDNN time its convolution algorithms per shape and keep the fastest.
        bf16: bf16 autocast.
        flash_attention: MONAI's SDPA attention.
        batch: volumes per step (times and memory are reported per volume).
        checkpoint_levels: with ``activation_checkpointing``, only the residual blocks at these
            resolution levels (0 = full resolution; :func:`~.models.resnet_levels`); None = all.
    """

    name: str
    channels_last: bool
    compile: bool
    activation_checkpointing: bool
    cudnn_benchmark: bool = False
    bf16: bool = True
    flash_attention: bool = True
    batch: int = 1
    checkpoint_levels: tuple[int, ...] | None = None


VARIANTS = (
    Variant("stock", channels_last=False, compile=False, activation_checkpointing=False),
    Variant("compile_cl", channels_last=True, compile=True, activation_checkpointing=False, cudnn_benchmark=True),
    Variant("compile_cl_ckpt", channels_last=True, compile=True, activation_checkpointing=True, cudnn_benchmark=True),
)
"""The measured path (benchmarks/RESULTS.md, GPU sections)."""

CANDIDATES = (
    VARIANTS[0],
    Variant("compile_cl_ckpt_l01", channels_last=True, compile=True, activation_checkpointing=True,
            checkpoint_levels=(0, 1)),
    Variant("compile_cl_b2", channels_last=True, compile=True, activation_checkpointing=False, batch=2),
    Variant("compile_cl_ckpt_b2", channels_last=True, compile=True, activation_checkpointing=True, batch=2),
)
"""Variants for the next GPU run (stock first, as :func:`compare_variants` requires)."""


@dataclass(frozen=True)
class StepTiming:
    """Median seconds per volume and peak memory of one variant.

    Attributes:
        train_s_per_volume: training step time / batch.
        sample_s_per_volume: one forward (a sampling step) / batch.
        train_peak_gb: peak CUDA memory of the training step (None on CPU).
        sample_peak_gb: peak CUDA memory of the sampling step (None on CPU).
        first_step_s: the first training step (includes compilation).
    """

    train_s_per_volume: float
    sample_s_per_volume: float
    train_peak_gb: float | None
    sample_peak_gb: float | None
    first_step_s: float


def build_variant(v: Variant, unet: UNetConfig, device: torch.device, allow_compile: bool = True) -> nn.Module:
    """A fresh :class:`UNet3D` (seed 0) set up as ``v``."""
    torch.manual_seed(0)
    net = UNet3D(unet.replace(use_flash_attention=v.flash_attention)).to(device)
    apply_gpu_options(net, v.channels_last, v.activation_checkpointing, v.checkpoint_levels)
    if v.compile and allow_compile:
        torch._dynamo.reset()  # a fresh cache: no guard failures or recompile limit from an earlier variant
        net.unet.compile()
    return net


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_steps(v: Variant, unet: UNetConfig, shape: tuple[int, int, int], batch: int, repeats: int,
               device: torch.device, allow_compile: bool = True, seed: int = 0,
               progress: Callable[[str], None] | None = None) -> StepTiming:
    """Time ``v``'s training and sampling steps on ``batch`` volumes of ``shape`` (same
    inputs for every variant: drawn from ``seed``). ``progress(message)`` hears of the
    training step before the sampling step is compiled and timed."""
    benchmark_before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = v.cudnn_benchmark
    try:
        return _time_steps(v, unet, shape, batch, repeats, device, allow_compile, seed, progress)
    finally:
        torch.backends.cudnn.benchmark = benchmark_before


def make_steps(v: Variant, unet: UNetConfig, shape: tuple[int, int, int], batch: int, device: torch.device,
               allow_compile: bool = True, seed: int = 0) -> tuple[Callable[[], None], Callable[[], None], nn.Module]:
    """``(train_step, sample_step, net)`` of ``v`` on ``batch`` volumes of ``shape`` drawn from
    ``seed`` (the same inputs for every variant): a training step is a forward, the MSE on
    MedForj's velocity target, a backward and an Adam step; a sampling step one forward without
    gradients. Each call runs one step (the first compiles)."""
    net = build_variant(v, unet, device, allow_compile)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(batch, 1, *shape, generator=g).mul(2).sub(1).to(device)
    eps = torch.randn(batch, 1, *shape, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    a, s = t.sqrt().view(-1, 1, 1, 1, 1), (1 - t).sqrt().view(-1, 1, 1, 1, 1)
    x_t, target = a * x1 + s * eps, a * eps - s * x1
    if v.channels_last:
        x_t = x_t.contiguous(memory_format=torch.channels_last_3d)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if v.bf16 else contextlib.nullcontext

    def train_step() -> None:
        with ctx():
            loss = torch.mean((net(x_t, t).float() - target) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample_step() -> None:
        with torch.no_grad(), ctx():
            net(x_t, t)

    return train_step, sample_step, net


def _time_steps(v: Variant, unet: UNetConfig, shape: tuple[int, int, int], batch: int, repeats: int,
                device: torch.device, allow_compile: bool, seed: int, progress: Callable[[str], None] | None
                ) -> StepTiming:
    train_step, sample_step, net = make_steps(v, unet, shape, batch, device, allow_compile, seed)

    def timed(fn) -> tuple[float, float | None]:
        times = []
        _reset_peak(device)
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times), _peak(device)

    net.train()
    _sync(device)
    start = time.perf_counter()
    train_step()  # warm-up (compiles)
    _sync(device)
    first = time.perf_counter() - start
    train_s, train_peak = timed(train_step)
    if progress is not None:
        progress(f"{v.name} train: first step {first:.1f} s, {train_s / batch:.4f} s/volume, peak {train_peak} GB")
    net.eval()
    sample_step()
    sample_s, sample_peak = timed(sample_step)
    return StepTiming(train_s / batch, sample_s / batch, train_peak, sample_peak, first)


def compare_variants(unet: UNetConfig, shape: tuple[int, int, int], repeats: int, device: torch.device,
                     allow_compile: bool = True, variants: tuple[Variant, ...] = VARIANTS,
                     report: Callable[[str, StepTiming], None] | None = None,
                     progress: Callable[[str], None] | None = None
                     ) -> tuple[dict[str, StepTiming], dict[str, float], dict[str, float], list[str]]:
    """Time each of ``variants`` (``stock`` first, which must succeed) at its batch and compare
    with stock MONAI per volume. Returns ``(timings per variant, metrics, stock baseline, notes)``:
    metrics ``gpu_path.<variant>.{train_s_per_volume, train_time_ratio, sample_time_ratio,
    volume_s_4_nfe, train_memory_ratio, sample_memory_ratio}`` (memory only on CUDA); the
    baseline ``{train_s_per_volume, sample_s_per_volume, volume_s_ddim64[, peaks]}``. A failing
    fast variant is named in the notes; ``report(name, timing)`` runs as each one finishes and
    ``progress`` (:func:`time_steps`) after each training step's timing."""
    if variants[0].name != "stock":
        raise ValueError(f"the first variant must be the stock reference; got {variants[0].name!r}")
    res: dict[str, StepTiming] = {}
    notes: list[str] = []
    for v in variants:
        try:
            res[v.name] = time_steps(v, unet, shape, batch=v.batch, repeats=repeats, device=device,
                                     allow_compile=allow_compile, progress=progress)
        except Exception as e:  # an optional fast path; the stock reference re-raises
            if v.name == "stock":
                raise
            notes.append(f"variant {v.name} failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if report is not None:
            report(v.name, res[v.name])
    stock = res["stock"]
    baseline = {"train_s_per_volume": stock.train_s_per_volume, "sample_s_per_volume": stock.sample_s_per_volume,
                "volume_s_ddim64": 64 * stock.sample_s_per_volume}  # REFERENCE §4: 64 DDIM steps
    if stock.train_peak_gb is not None:
        baseline.update(train_peak_gb=stock.train_peak_gb, sample_peak_gb=stock.sample_peak_gb)
    metrics: dict[str, float] = {}
    for name, r in res.items():
        if name == "stock":
            continue
        metrics[f"gpu_path.{name}.train_s_per_volume"] = r.train_s_per_volume
        metrics[f"gpu_path.{name}.train_time_ratio"] = r.train_s_per_volume / stock.train_s_per_volume
        metrics[f"gpu_path.{name}.sample_time_ratio"] = r.sample_s_per_volume / stock.sample_s_per_volume
        metrics[f"gpu_path.{name}.volume_s_4_nfe"] = 4 * r.sample_s_per_volume  # a flow map's 4 steps
        if r.train_peak_gb is not None:
            metrics[f"gpu_path.{name}.train_memory_ratio"] = r.train_peak_gb / stock.train_peak_gb
            metrics[f"gpu_path.{name}.sample_memory_ratio"] = r.sample_peak_gb / stock.sample_peak_gb
    return res, metrics, baseline, notes
