"""Networks for toy vector data ``(B, D)``: the recipe's :class:`ResidualMLP` (from
:mod:`modaflow.core.nn`) and a plain time-concatenated MLP, the small baseline network of
the solver-overhead benchmark."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modaflow.core.nn import ResidualMLP, ResidualMLPConfig

__all__ = ["build_model", "PlainMLP"]


def build_model(dim: int, hidden: int, depth: int, time_embed_dim: int) -> ResidualMLP:
    """The toy recipe's velocity / data network for ``(B, dim)`` data."""
    return ResidualMLP(ResidualMLPConfig(dim=dim, hidden=hidden, depth=depth, time_embed_dim=time_embed_dim))


class PlainMLP(nn.Module):
    """``MLP([x, t])``: ``layers`` linear layers of width ``width`` with SiLU between them.
    ``forward(x (B, D), t (B,)) -> (B, D)``."""

    def __init__(self, dim: int, width: int = 256, layers: int = 3) -> None:
        super().__init__()
        if layers < 2:
            raise ValueError(f"layers must be >= 2; got {layers}")
        sizes = [dim + 1] + [width] * (layers - 1) + [dim]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            mods += [nn.Linear(a, b)] + ([nn.SiLU()] if i < layers - 1 else [])
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], dim=1))
