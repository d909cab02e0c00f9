"""FLM training throughput: the low-rank noisy input (``eps W`` drawn as ``n F`` from its law
N(0, W^T W), REFERENCE §3), chunked cross-entropy and, on CUDA, ``torch.compile`` and bf16,
against the dense-input eager reference step (``x_gamma`` ``(B, L, K)`` materialised, all
logits at once), measured in the same run on the same batches. Runs on CPU at tiny sizes
(the smoke profile exercises it) and at GPT-2-small size on a GPU (the gpu profile).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from modaflow.modalities.language.flm import FLMConfig, FLMModule
from modaflow.modalities.language.models import DiT, DiTConfig

from .harness import profile_calls

__all__ = ["SpeedSettings", "SpeedVariant", "variants", "training_throughput", "profile_step"]


@dataclass(frozen=True)
class SpeedSettings:
    """Sizes of the throughput measurement."""

    vocab: int
    """K (synthetic uniform tokens)."""
    block_len: int
    """L."""
    dim: int
    """Width d."""
    depth: int
    """Blocks."""
    heads: int
    """Attention heads."""
    batch: int
    """Sequences per step."""
    steps: int
    """Timed optimiser steps per variant (after warm-up)."""
    warmup: int = 2
    """Untimed steps first (compilation happens here)."""
    device: str = "cpu"
    """cpu or cuda."""
    ce_chunk: int = 4096
    """Tokens per cross-entropy chunk of the fast variants."""


@dataclass(frozen=True)
class SpeedVariant:
    """One way of running the FLM training step."""

    fast_input: bool
    """Low-rank noisy input (``n F``) instead of the dense ``(B, L, K)`` one."""
    ce_chunk: int
    """Tokens per cross-entropy chunk (0: all logits at once)."""
    compile: str = "none"
    """``none``; ``blocks`` (``torch.compile`` of each transformer block on its own: regional
    compilation, the blocks share one compiled code, so it compiles in a fraction of the time
    of the whole model); ``loss`` (of the whole :meth:`FLMModule.loss_from_draws`: input
    projection, blocks, head and loss)."""
    batch_scale: int = 1
    """Sequences per step as a multiple of the settings' batch (packing more tokens per step)."""


def variants(s: SpeedSettings) -> dict[str, SpeedVariant]:
    """The measured variants; ``dense_eager`` is the reference step."""
    v = {"dense_eager": SpeedVariant(False, 0), "lowrank_eager": SpeedVariant(True, 0),
         "lowrank_chunked_eager": SpeedVariant(True, s.ce_chunk)}
    if s.device == "cuda":
        # cheapest compilation first: a lease cut short keeps the finished variants
        v["lowrank_blocks_compiled"] = SpeedVariant(True, 0, "blocks")
        v["lowrank_blocks_compiled_2x_batch"] = SpeedVariant(True, 0, "blocks", 2)
        v["lowrank_loss_compiled_2x_batch"] = SpeedVariant(True, 0, "loss", 2)
        v["lowrank_loss_compiled"] = SpeedVariant(True, 0, "loss")
    return v


def _stepper(s: SpeedSettings, v: SpeedVariant, seed: int, device: torch.device, n_batches: int
             ) -> tuple[Callable[[int], None], int]:
    """``(step, B)``: ``step(k)`` runs one optimiser step of ``v`` on the ``k``-th of ``n_batches``
    fixed batches of ``B`` sequences (the same draws for every variant of a run)."""
    cuda = device.type == "cuda"
    B = s.batch * v.batch_scale
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, s.vocab, (B, s.block_len), generator=g).to(device) for _ in range(n_batches)]
    torch.manual_seed(seed)
    model = DiT(DiTConfig(vocab_size=s.vocab, block_len=s.block_len, dim=s.dim, depth=s.depth, heads=s.heads)).to(device)
    if v.compile != "none":
        torch._dynamo.reset()  # a fresh cache: static shapes, no recompile limit from an earlier variant
    module = FLMModule(model, FLMConfig(fast_input=v.fast_input, ce_chunk=v.ce_chunk, seed=seed, compile=v.compile == "loss"))
    loss_fn = module.step_loss
    if v.compile == "blocks":
        for block in model.blocks:
            block.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    gen = torch.Generator(device=device).manual_seed(seed)

    def step(k: int) -> None:
        gamma, noise = module.draw(batches[k], gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(batches[k], gamma, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, B


def _time_variant(s: SpeedSettings, v: SpeedVariant, seed: int, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    step, B = _stepper(s, v, seed, device, s.warmup + s.steps)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for k in range(s.warmup):
        step(k)
    if cuda:
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    for k in range(s.warmup, s.warmup + s.steps):
        step(k)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t1
    out = {"s_per_step": dt / s.steps, "tokens_per_s": B * s.block_len * s.steps / dt, "warmup_s": t1 - t0}
    if cuda:
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def profile_step(s: SpeedSettings, v: SpeedVariant, seed: int, rows: int = 30) -> str:
    """The operators of ``v``'s training step by device time (:func:`.harness.profile_calls`
    over two steps after ``s.warmup`` untimed ones), as a table: where the time of a step goes."""
    device = torch.device(s.device)
    step, _ = _stepper(s, v, seed, device, s.warmup + 2)
    return profile_calls(step, s.warmup, 2, device.type == "cuda", rows)


def training_throughput(s: SpeedSettings, seed: int, compiled: bool = True,
                        report: Callable[[str, dict], None] | None = None) -> dict:
    """``{"timings": {train.<variant>_tokens_per_s, train.<variant>_speedup_ratio (vs dense_eager),
    ...}, "notes": [...]}``. A variant that fails (e.g. out of memory at 2x batch) is named in
    the notes, never fails the run; the reference must succeed. ``compiled=False`` skips the
    ``torch.compile`` variants; ``report(name, result)`` is called as each variant finishes
    (so a run cut short still shows the finished ones)."""
    device = torch.device(s.device)
    timings, notes = {}, []
    todo = {n: v for n, v in variants(s).items() if compiled or v.compile == "none"}
    for name, v in todo.items():
        try:
            res = _time_variant(s, v, seed, device)
        except Exception as e:  # an optional fast path; the reference re-raises
            if name == "dense_eager":
                raise
            notes.append(f"throughput variant {name} failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for key, val in res.items():
            timings[f"train.{name}_{key}"] = val
        if report is not None:
            report(name, res)
    base = timings["train.dense_eager_tokens_per_s"]
    for name in todo:
        if name != "dense_eager" and f"train.{name}_tokens_per_s" in timings:
            timings[f"train.{name}_speedup_ratio"] = timings[f"train.{name}_tokens_per_s"] / base
    cuda = device.type == "cuda"
    notes.append(f"throughput: K={s.vocab}, L={s.block_len}, d={s.dim}, depth={s.depth}, batch={s.batch}, {s.steps} timed steps "
                 f"after {s.warmup} warm-up on {s.device}{' (bf16 autocast, fused AdamW)' if cuda else ' (fp32)'}; ratios vs the "
                 f"dense-input eager reference step of the same run")
    return {"timings": timings, "notes": notes}
