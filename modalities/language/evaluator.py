"""The in-suite evaluator: a small causal transformer LM trained on the same training split
and tokenizer as the generative models; it scores samples (generative perplexity) and gives
its own held-out perplexity as a reference line.

Blocks are scored with a ``<bos>`` prepended: input ``[<bos>, x_0 .. x_{L-2}]`` predicts
``x_0 .. x_{L-1}``, so every token of a sample has an NLL. Blocks are ``(B, L)`` int64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from modaflow.core.config import Config
from modaflow.core.losses import one_hot_cross_entropy, token_cross_entropy
from modaflow.core.training import FlowMatchingConfig, FlowMatchingModule

from .models import RotaryAdaLNBlock
from .tokenizer import BOS

__all__ = ["CausalLMConfig", "CausalLM", "ARModule", "token_nll"]


@dataclass
class CausalLMConfig(Config):
    """Shape of the evaluator."""

    vocab_size: int = 256
    """K, the tokenizer's vocabulary."""
    block_len: int = 128
    """Longest block scored (the <bos> takes one extra position)."""
    dim: int = 128
    """Token width."""
    depth: int = 4
    """Transformer blocks."""
    heads: int = 4
    """Attention heads."""

    def validate(self) -> None:
        for name in ("vocab_size", "block_len", "dim", "depth", "heads"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")


class CausalLM(nn.Module):
    """Decoder-only LM: ``forward(ids (B, L)) -> logits (B, L, K)``, causal rotary attention.
    Its blocks are the adaLN blocks of the DiT with one learnt conditioning vector (no time)."""

    def __init__(self, cfg: CausalLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.c = nn.Parameter(0.02 * torch.randn(d))
        self.blocks = nn.ModuleList(RotaryAdaLNBlock(d, cfg.heads, d, 4.0, cfg.block_len, causal=True) for _ in range(cfg.depth))
        for b in self.blocks:  # gates open at 1 from the start: a plain pre-norm transformer
            nn.init.constant_(b.modulation[1].bias[2 * d:3 * d], 1.0)
            nn.init.constant_(b.modulation[1].bias[5 * d:], 1.0)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.vocab_size)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.shape[1] > self.cfg.block_len:
            raise ValueError(f"sequence length {ids.shape[1]} is longer than the evaluator's block_len = {self.cfg.block_len}")
        h = self.embed(ids)
        c = self.c.expand(ids.shape[0], -1)
        for block in self.blocks:
            h = block(h, c)
        return self.out(self.norm(h))


def _shifted(tokens: Tensor) -> Tensor:
    return torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)


@torch.no_grad()
def token_nll(model: CausalLM, tokens: Tensor, batch: int = 64) -> Tensor:
    """Per-token NLL in nats ``(B, L)`` of blocks ``tokens`` ``(B, L)`` under ``model``."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, tokens.shape[0], batch):
        x = tokens[i:i + batch].to(device)
        logits = model(_shifted(x)).float()
        out.append(token_cross_entropy(logits, x).cpu())
    return torch.cat(out)


class ARModule(FlowMatchingModule):
    """Next-token cross-entropy training of :class:`CausalLM` (reuses the core's fit, EMA and
    checkpoints; the path is unused)."""

    def __init__(self, model: CausalLM, cfg: FlowMatchingConfig) -> None:
        super().__init__(model, None, cfg)

    def compute_loss(self, batch, step: int) -> Tensor:
        tokens = self.unpack(batch)[0]
        return one_hot_cross_entropy(self.model(_shifted(tokens)).float(), tokens)
