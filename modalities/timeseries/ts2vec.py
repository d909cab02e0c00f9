"""A small TS2Vec-style contrastive encoder for the context-FID metric.

TS2Vec (Yue et al. 2022, AAAI, arXiv 2106.10466): a linear input projection, timestamp
masking (sec. 3.2, binomial p = 0.5 on the projected features, training only) and a stack
of residual dilated convolutions (kernel 3, dilation 2^i) give a representation per time
step ``(B, T, 320)``. Training draws two overlapping random crops of each series (sec.
3.2, "contextual consistency"), encodes both and applies the hierarchical contrastive loss
on the overlap (sec. 3.3, Algorithm 1): at every scale the instance-wise (eq. 2) and
temporal (eq. 1) contrastive losses, then max-pooling by 2 along time, until one step is
left. A series' embedding is the max over time of its per-step representation
("full_series" encoding, as the context-FID of Jeha et al. 2022 uses).

Defaults follow TS2Vec's: hidden 64, output 320, batch 8, lr 1e-3, 600 iterations for data
larger than 100 000 values, 200 otherwise. Where this encoder departs from TS2Vec's released
code (context-FID's scale depends on such settings, REFERENCE §2, so compare our numbers
with each other first and with published ones second):

* 10 residual blocks, the last one widening to 320; TS2Vec's ``depth=10`` stacks 10 hidden
  blocks and one more to the output (11; dilations up to 2^10). On windows of 24 steps the
  dilations from 2^5 on reach only the zero padding, so the missing block is one more
  pointwise residual map;
* the last weights embed, not a stochastic-weight-averaged copy;
* the two crops are placed at the same offsets for every series of a batch, not shifted
  per series.

Shapes: series ``(N, T, C)``; representations ``(N, T, D)``; embeddings ``(N, D)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TS2VecConfig", "TS2VecEncoder", "hierarchical_contrastive_loss", "train_ts2vec", "embed"]


@dataclass(frozen=True)
class TS2VecConfig:
    """Sizes and training of the encoder."""

    hidden: int = 64
    """Width of the dilated convolutions."""
    depth: int = 10
    """Residual dilated blocks (dilation 2^i, i < depth)."""
    output: int = 320
    """Representation width (context-FID uses 320)."""
    batch_size: int = 8
    """Series per training batch."""
    lr: float = 1e-3
    """AdamW learning rate."""
    iterations: int = 0
    """Training iterations; 0 = TS2Vec's default (600 above 100 000 values, else 200)."""


class _Block(nn.Module):
    """``x + conv2(gelu(conv1(gelu(x))))`` with dilated convolutions of kernel 3."""

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=dilation, dilation=dilation)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class TS2VecEncoder(nn.Module):
    """``forward(x (B, T, C), mask: bool) -> (B, T, output)``; ``mask`` applies the random
    timestamp masking (training)."""

    def __init__(self, channels: int, cfg: TS2VecConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(channels, cfg.hidden)
        widths = [cfg.hidden] * cfg.depth + [cfg.output]
        self.blocks = nn.Sequential(*[_Block(widths[i], widths[i + 1], 2**i) for i in range(cfg.depth)])
        self.drop = nn.Dropout(0.1)

    def forward(self, x: Tensor, mask: bool = False, generator: torch.Generator | None = None) -> Tensor:
        h = self.proj(x)  # (B, T, hidden)
        if mask:  # timestamp masking (Yue et al. 2022, sec. 3.2), Bernoulli(0.5) per step
            keep = torch.rand(h.shape[:2], generator=generator, device=h.device) < 0.5
            h = h * keep[..., None]
        return self.drop(self.blocks(h.transpose(1, 2))).transpose(1, 2)


def _contrast(z1: Tensor, z2: Tensor) -> Tensor:
    """Cross-entropy of each row's positive (its counterpart in the other view) against all
    other rows, for ``z1, z2`` ``(S, K, D)``: ``K`` items contrasted within each of ``S``
    groups. Instance loss: groups = time steps, items = series; temporal: the reverse."""
    K = z1.shape[1]
    z = torch.cat([z1, z2], dim=1)  # (S, 2K, D)
    sim = z @ z.transpose(1, 2)  # (S, 2K, 2K)
    logits = torch.tril(sim, diagonal=-1)[:, :, :-1] + torch.triu(sim, diagonal=1)[:, :, 1:]  # drop self-similarity
    logp = -F.log_softmax(logits, dim=-1)
    i = torch.arange(K, device=z.device)
    return 0.5 * (logp[:, i, K + i - 1].mean() + logp[:, K + i, i].mean())


def hierarchical_contrastive_loss(z1: Tensor, z2: Tensor, alpha: float = 0.5) -> Tensor:
    """Hierarchical contrastive loss of two views ``(B, T, D)`` (Yue et al. 2022, Algorithm
    1): ``alpha`` x instance (eq. 2) + ``(1 - alpha)`` x temporal (eq. 1) at every scale,
    max-pooling time by 2 between scales, averaged over scales."""
    loss, depth = z1.new_zeros(()), 0
    while z1.shape[1] > 1:
        if alpha and z1.shape[0] > 1:  # one series has no other instance to contrast with
            loss = loss + alpha * _contrast(z1.transpose(0, 1), z2.transpose(0, 1))
        if 1 - alpha:
            loss = loss + (1 - alpha) * _contrast(z1, z2)
        depth += 1
        z1 = F.max_pool1d(z1.transpose(1, 2), kernel_size=2).transpose(1, 2)
        z2 = F.max_pool1d(z2.transpose(1, 2), kernel_size=2).transpose(1, 2)
    if z1.shape[1] == 1 and alpha and z1.shape[0] > 1:
        loss = loss + alpha * _contrast(z1.transpose(0, 1), z2.transpose(0, 1))
        depth += 1
    return loss / max(depth, 1)


def train_ts2vec(x: Tensor, cfg: TS2VecConfig = TS2VecConfig(), seed: int = 0) -> TS2VecEncoder:
    """Fit the encoder on real series ``x`` ``(N, T, C)`` (float32) with random overlapping
    crops (Yue et al. 2022, sec. 3.2); returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # weight init and dropout
    enc = TS2VecEncoder(x.shape[-1], cfg)
    opt = torch.optim.AdamW(enc.parameters(), lr=cfg.lr)
    iters = cfg.iterations or (600 if x.numel() > 100_000 else 200)
    N, T = x.shape[0], x.shape[1]
    rng = np.random.default_rng(seed)
    enc.train()
    for _ in range(iters):
        idx = torch.randint(0, N, (min(cfg.batch_size, N),), generator=g)
        batch = x[idx]
        # two crops [a1, b1) and [a2, b2) that overlap on [a2, b1): Yue et al. 2022, sec. 3.2
        crop = int(rng.integers(2, T + 1)) if T > 1 else 1
        a2 = int(rng.integers(0, T - crop + 1))
        b1 = a2 + crop
        a1 = int(rng.integers(0, a2 + 1))
        b2 = int(rng.integers(b1, T + 1))
        z1 = enc(batch[:, a1:b1], mask=True, generator=g)[:, -crop:]
        z2 = enc(batch[:, a2:b2], mask=True, generator=g)[:, :crop]
        loss = hierarchical_contrastive_loss(z1, z2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return enc.eval()


@torch.no_grad()
def embed(enc: TS2VecEncoder, x: Tensor, batch: int = 512) -> Tensor:
    """Per-series embeddings ``(N, D)``: max over time of the representation of the whole
    series (TS2Vec ``encoding_window="full_series"``)."""
    return torch.cat([enc(x[i : i + batch]).amax(dim=1) for i in range(0, x.shape[0], batch)])
