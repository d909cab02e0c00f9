"""Transformer block with adaptive layer norm conditioning (DiT adaLN-Zero).

Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", arXiv 2212.09748,
sec. 3.2 ("adaLN-Zero block"): a conditioning vector ``c`` (time embedding, plus class or
other conditioning) regresses a shift ``beta``, scale ``gamma`` and gate ``alpha`` for each
of the two residual branches; the regression layer is zero-initialised, so every gate is 0
and the block starts as the identity.

Shapes: tokens ``x`` ``(B, L, D)``, conditioning ``c`` ``(B, cond_dim)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AdaLNBlock", "modulate"]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x * (1 + scale) + shift`` with ``shift, scale`` ``(B, D)`` broadcast over the middle
    dimensions of ``x`` ``(B, ..., D)`` (Peebles & Xie 2023, arXiv 2212.09748, sec. 3.2)."""
    view = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    return x * (1 + scale.reshape(view)) + shift.reshape(view)


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block (self-attention + MLP) with adaLN-Zero modulation.

    ``h = x + alpha_1 * Attn(modulate(LN(x), beta_1, gamma_1))``,
    ``out = h + alpha_2 * MLP(modulate(LN(h), beta_2, gamma_2))``, where
    ``(beta_1, gamma_1, alpha_1, beta_2, gamma_2, alpha_2) = Linear(SiLU(c))`` and that
    Linear starts at zero (Peebles & Xie 2023, arXiv 2212.09748, sec. 3.2, fig. 3).

    Args:
        dim: token width ``D``; must be divisible by ``heads``.
        heads: attention heads.
        cond_dim: width of the conditioning vector ``c``.
        mlp_ratio: hidden width of the MLP as a multiple of ``dim``.
    """

    def __init__(self, dim: int, heads: int, cond_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads = dim, heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
        nn.init.zeros_(self.modulation[1].weight)  # adaLN-Zero: gates start at 0
        nn.init.zeros_(self.modulation[1].bias)

    def attention(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Multi-head self-attention, ``(B, L, D) -> (B, L, D)``. ``mask`` ``(B, L)`` bool,
        True for tokens that may be attended to (padding is False)."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, L, D/H)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))

    def forward(self, x: Tensor, c: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` ``(B, L, D)``, ``c`` ``(B, cond_dim)``, optional key ``mask`` ``(B, L)``
        -> ``(B, L, D)``."""
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (B, L, {self.dim}); got {tuple(x.shape)}")
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)  # (B, D) each
        x = x + gate1[:, None] * self.attention(modulate(self.norm1(x), shift1, scale1), mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}"
