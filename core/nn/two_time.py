"""A residual MLP taking two times, ``u_theta(x, s, t)``: the average-velocity network of a flow
map ``X(s, t, x) = x + (t - s) u_theta(x, s, t)`` (see :mod:`modaflow.core.flow_maps`).

Same trunk as :class:`~modaflow.core.nn.mlp.ResidualMLP` (adaLN-Zero residual blocks, Peebles &
Xie 2023, arXiv 2212.09748, sec. 3.2); the conditioning vector is
``c = MLP([emb(t), emb(t - s)])`` (+ a class embedding), i.e. the end time and the signed
gap, as in MeanFlow (Geng et al. 2025, arXiv 2505.13447, its "(t, t - r)" conditioning).

The flow-map losses differentiate the network in ``s`` and ``t`` (forward-mode JVPs), so the
time embedding's frequency range matters: ``time_scale`` multiplies the times before the
sinusoids. The default 10 is far below the DDPM convention of 1000 (that of
:class:`~modaflow.core.nn.mlp.ResidualMLP`): with 1000 the one-step map learnt by Lagrangian
self-distillation on 2-D Gaussian data in 300 steps was about 4x less accurate (relative error
0.30 against 0.08), as the network's time derivatives start large and rough.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..tensors import as_time
from .embeddings import SinusoidalTimeEmbedding
from .mlp import ResidualMLPConfig, _Block, _zero_linear, add_class_embedding

__all__ = ["TwoTimeMLPConfig", "TwoTimeMLP"]


@dataclass
class TwoTimeMLPConfig(ResidualMLPConfig):
    """Shape of a :class:`TwoTimeMLP` (the fields of ``ResidualMLPConfig`` plus the time scale)."""

    time_scale: float = 10.0
    """Times are multiplied by this before the sinusoidal embedding (its highest angular
    frequency in t); lower it for smoother maps in (s, t)."""

    def validate(self) -> None:
        super().validate()
        self._require(self.time_scale > 0, "time_scale", "a number > 0")


class TwoTimeMLP(nn.Module):
    """``forward(x, s, t, cond=None) -> u`` for vector data: ``x`` ``(B, D)``, ``s, t`` ``(B,)``
    (or scalars) in [0, 1], ``cond`` ``(B,)`` class ids or None -> ``(B, D)``. Outputs 0 at
    initialisation (zero-initialised output layer), i.e. the flow map starts as the identity."""

    def __init__(self, cfg: TwoTimeMLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, e = cfg.hidden, cfg.time_embed_dim
        self.embed = SinusoidalTimeEmbedding(e, time_scale=cfg.time_scale)
        self.time_mlp = nn.Sequential(nn.Linear(2 * e, h), nn.SiLU(), nn.Linear(h, h))
        self.class_embed = nn.Embedding(cfg.num_classes + 1, h) if cfg.num_classes else None
        self.inp = nn.Linear(cfg.dim, h)
        self.blocks = nn.ModuleList(_Block(h) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.out = _zero_linear(h, cfg.dim)

    def condition(self, s: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """The conditioning vector ``(B, hidden)`` from ``(t, t - s)`` and class ids."""
        c = self.time_mlp(torch.cat([self.embed(t), self.embed(t - s)], dim=-1))
        return add_class_embedding(c, cond, self.class_embed, self.cfg.num_classes, type(self).__name__)

    def forward(self, x: Tensor, s: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.cfg.dim:
            raise ValueError(f"x must have shape (B, {self.cfg.dim}); got {tuple(x.shape)}")
        s, t = as_time(s, x.shape[0], x), as_time(t, x.shape[0], x)
        c = self.condition(s, t, cond)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, c)
        return self.out(self.norm(h))
