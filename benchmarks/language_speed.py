"""FLM training throughput: the low-rank noisy input (``eps W`` drawn as ``n F`` from its law
N(0, W^T W), REFERENCE §3), chunked cross-entropy and, on CUDA, ``torch.compile`` and bf16,
against the dense-input eager reference step (``x_gamma`` ``(B, L, K)`` materialised, all
logits at once), measured in the same run on the same batches. Runs on CPU at tiny sizes
(the smoke profile exercises it) and at GPT-2-small size on a GPU (the gpu profile).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from modaflow.modalities.language.flm import FLMConfig, FLMModule
from modaflow.modalities.language.models import DiT, DiTConfig

__all__ = ["SpeedSettings", "training_throughput"]


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


def _variants(s: SpeedSettings) -> dict[str, tuple[bool, int, bool]]:
    """name -> (fast_input, ce_chunk, compile)."""
    v = {"dense_eager": (False, 0, False), "lowrank_eager": (True, 0, False), "lowrank_chunked_eager": (True, s.ce_chunk, False)}
    if s.device == "cuda":
        v["lowrank_chunked_compiled"] = (True, s.ce_chunk, True)
    return v


def training_throughput(s: SpeedSettings, seed: int) -> dict:
    """``{"timings": {<variant>_tokens_per_s, <variant>_ratio (vs dense_eager), ...}, "notes": [...]}``."""
    device = torch.device(s.device)
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, s.vocab, (s.batch, s.block_len), generator=g).to(device) for _ in range(s.warmup + s.steps)]
    cuda = device.type == "cuda"
    timings, notes = {}, []
    for name, (fast, chunk, compiled) in _variants(s).items():
        torch.manual_seed(seed)
        model = DiT(DiTConfig(vocab_size=s.vocab, block_len=s.block_len, dim=s.dim, depth=s.depth, heads=s.heads)).to(device)
        module = FLMModule(model, FLMConfig(fast_input=fast, ce_chunk=chunk, seed=seed))
        if compiled:
            model.trunk = torch.compile(model.trunk)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        def step(k: int) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = module.compute_loss(batches[k], k)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for k in range(s.warmup):
            step(k)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for k in range(s.warmup, s.warmup + s.steps):
            step(k)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        timings[f"train.{name}_s_per_step"] = dt / s.steps
        timings[f"train.{name}_tokens_per_s"] = s.batch * s.block_len * s.steps / dt
        if cuda:
            timings[f"train.{name}_peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    base = timings["train.dense_eager_tokens_per_s"]
    for name in _variants(s):
        if name != "dense_eager":
            timings[f"train.{name}_speedup_ratio"] = timings[f"train.{name}_tokens_per_s"] / base
    notes.append(f"throughput: K={s.vocab}, L={s.block_len}, d={s.dim}, depth={s.depth}, batch={s.batch}, {s.steps} timed steps "
                 f"after {s.warmup} warm-up on {s.device}{' (bf16 autocast, fused AdamW)' if cuda else ' (fp32)'}; ratios vs the "
                 f"dense-input eager reference step of the same run")
    return {"timings": timings, "notes": notes}
