"""Time embeddings: map ``t`` in [0, 1], shape ``(B,)``, to feature vectors ``(B, dim)``.

Two standard choices:

* :class:`SinusoidalTimeEmbedding`: fixed sinusoids of geometrically spaced frequencies
  (Vaswani et al. 2017, arXiv 1706.03762, sec. 3.5, as used for diffusion times by Ho et al.
  2020, arXiv 2006.11239, app. B).
* :class:`FourierTimeEmbedding`: random Fourier features with Gaussian frequencies
  (Tancik et al. 2020, arXiv 2006.10739, sec. 5; the "Gaussian Fourier projection" of Song
  et al. 2021, arXiv 2011.13456, app. C.1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalTimeEmbedding", "FourierTimeEmbedding"]


def _check_time(t: Tensor) -> None:
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,); got {tuple(t.shape)}")


def _finish(emb: Tensor, dim: int, t: Tensor) -> Tensor:
    """Pad an odd ``dim`` with one zero column; return in ``t``'s float dtype."""
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb.to(t.dtype) if t.is_floating_point() else emb


class SinusoidalTimeEmbedding(nn.Module):
    """``[cos(w_k s), sin(w_k s)]`` with ``s = time_scale * t`` and
    ``w_k = max_period^(-k / half)``, ``k = 0..half-1``, ``half = dim // 2``
    (Vaswani et al. 2017, arXiv 1706.03762, sec. 3.5).

    Frequency range: ``t`` in [0, 1] is first scaled by ``time_scale`` (1000 by default, the
    DDPM step range), so the angular frequencies in ``t`` span ``time_scale`` (period
    ``2 pi / 1000`` in t) down to ``time_scale / max_period`` (= 0.1, period ``~63``: a slow,
    nearly linear feature). Both ends separate nearby and distant times. An odd ``dim`` gets
    one zero column.

    Shapes: ``t`` ``(B,)`` -> ``(B, dim)``.
    """

    def __init__(self, dim: int, max_period: float = 10_000.0, time_scale: float = 1000.0) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"dim must be >= 2; got {dim}")
        if max_period <= 1:
            raise ValueError(f"max_period must be > 1; got {max_period}")
        self.dim, self.max_period, self.time_scale = dim, float(max_period), float(time_scale)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        _check_time(t)
        args = (self.time_scale * t.to(self.freqs.dtype))[:, None] * self.freqs[None, :]
        return _finish(torch.cat([torch.cos(args), torch.sin(args)], dim=-1), self.dim, t)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}, time_scale={self.time_scale}"


class FourierTimeEmbedding(nn.Module):
    """``[sin(2 pi W t), cos(2 pi W t)]`` with ``W ~ N(0, scale^2)`` drawn once, ``dim // 2``
    frequencies (Tancik et al. 2020, arXiv 2006.10739, eq. 5 with Gaussian B).

    ``W`` is a persistent buffer, so it is saved in checkpoints and a reloaded model embeds
    times identically. ``scale`` sets the bandwidth: about ``scale`` periods per unit of t.
    An odd ``dim`` gets one zero column. ``generator`` makes the draw reproducible.

    Shapes: ``t`` ``(B,)`` -> ``(B, dim)``.
    """

    def __init__(self, dim: int, scale: float = 16.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"dim must be >= 2; got {dim}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0; got {scale}")
        self.dim, self.scale = dim, float(scale)
        self.register_buffer("W", scale * torch.randn(dim // 2, generator=generator))

    def forward(self, t: Tensor) -> Tensor:
        _check_time(t)
        args = 2 * math.pi * t.to(self.W.dtype)[:, None] * self.W[None, :]
        return _finish(torch.cat([torch.sin(args), torch.cos(args)], dim=-1), self.dim, t)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"
