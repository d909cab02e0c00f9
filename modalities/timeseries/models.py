"""The TimeFlow network (arXiv 2511.07968): an encoder-only transformer whose every layer
splits its output into a gated trend part (a moving average) and a seasonal part, hands
the residual on to the next layer, and whose output (the velocity, or the data estimate of
the DDPM baseline) is the sum of all the parts.

One layer ``i`` (shapes: tokens ``(B, L, d)``, output parts ``(B, L, C)``)::

    h_i      = AdaLNBlock(r_{i-1}, c)                    transformer block, adaLN on (t, ...)
    h_i^T    = MA_k(h_i),  h_i^S = h_i - h_i^T           series decomposition (Wu et al. 2021,
                                                          Autoformer, arXiv 2106.13008, eq. 1)
    T_i      = sigmoid(W_g c) * W_T h_i^T                gated trend part
    S_i      = W_S h_i^S                                 seasonal part
    r_i      = h_i - W_B (T_i + S_i)                      residual handed to layer i + 1

and ``f(x_t, t) = sum_i (T_i + S_i) + W_R LN(r_N)`` (the final residual part). ``MA_k`` is a
centred moving average of odd width ``k`` with edge replication.

Conditioning for forecasting and imputation: the network reads ``[x_t, m * y, m]`` per time
step (``m`` the observation mask, ``y`` the observed values); with ``conditional=False`` it
reads ``x_t`` only (the baselines).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modaflow.core.config import Config
from modaflow.core.nn import AdaLNBlock, SinusoidalTimeEmbedding

__all__ = ["TimeFlowNetConfig", "TimeFlowNet", "moving_average"]


@dataclass
class TimeFlowNetConfig(Config):
    """Sizes of the TimeFlow network."""

    channels: int = 5
    """Channels C of the series."""
    length: int = 24
    """Window length L (the learned positional embedding has L rows)."""
    d_model: int = 64
    """Token width d."""
    layers: int = 3
    """Number of decomposition layers."""
    heads: int = 4
    """Attention heads (d_model must be divisible by it)."""
    mlp_ratio: float = 2.0
    """Hidden width of each block's MLP as a multiple of d_model."""
    kernel: int = 5
    """Width k of the trend moving average (odd)."""
    conditional: bool = True
    """Read the observation mask and observed values beside x_t (forecasting, imputation)."""

    def validate(self) -> None:
        for name in ("channels", "length", "d_model", "layers", "heads"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.d_model % self.heads == 0, "heads", f"a divisor of d_model = {self.d_model}")
        self._require(self.kernel >= 1 and self.kernel % 2 == 1, "kernel", "an odd integer >= 1")
        self._require(self.mlp_ratio > 0, "mlp_ratio", "a number > 0")


def moving_average(x: Tensor, kernel: int) -> Tensor:
    """Centred moving average of width ``kernel`` (odd) along the time axis of ``x``
    ``(B, L, D)``, edges replicated (Autoformer's series decomposition, arXiv 2106.13008,
    eq. 1). ``kernel = 1`` is the identity."""
    if kernel == 1:
        return x
    pad = (kernel - 1) // 2
    xt = F.pad(x.transpose(1, 2), (pad, pad), mode="replicate")  # (B, D, L + 2 pad)
    return F.avg_pool1d(xt, kernel, stride=1).transpose(1, 2)


class DecompositionLayer(nn.Module):
    """One TimeFlow layer: block, trend/seasonal split, gated trend, residual (module doc)."""

    def __init__(self, cfg: TimeFlowNetConfig) -> None:
        super().__init__()
        d, c = cfg.d_model, cfg.channels
        self.kernel = cfg.kernel
        self.block = AdaLNBlock(d, cfg.heads, d, cfg.mlp_ratio)
        self.trend, self.season, self.gate = nn.Linear(d, c), nn.Linear(d, c), nn.Linear(d, c)
        self.back = nn.Linear(c, d)

    def forward(self, r: Tensor, cond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``r`` ``(B, L, d)``, ``cond`` ``(B, d)`` -> ``(trend (B, L, C), season (B, L, C),
        residual (B, L, d))``."""
        h = self.block(r, cond)
        h_trend = moving_average(h, self.kernel)
        trend = torch.sigmoid(self.gate(cond))[:, None, :] * self.trend(h_trend)
        season = self.season(h - h_trend)
        return trend, season, h - self.back(trend + season)


class TimeFlowNet(nn.Module):
    """``forward(x (B, L, C), t (B,), cond=None) -> (B, L, C)``; ``cond`` is ``(B, L, 2C)``
    = ``[m * y, m]`` for a conditional network (None: nothing observed).

    :meth:`components` returns the per-layer trend and seasonal parts and the residual part
    whose sum is the output."""

    def __init__(self, cfg: TimeFlowNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, c = cfg.d_model, cfg.channels
        self.embed = nn.Linear(c * (3 if cfg.conditional else 1), d)
        self.pos = nn.Parameter(torch.randn(cfg.length, d) * 0.02)
        self.time = nn.Sequential(SinusoidalTimeEmbedding(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.layers = nn.ModuleList(DecompositionLayer(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d)
        self.residual = nn.Linear(d, c)

    def _check(self, x: Tensor, cond: Tensor | None) -> None:
        L, C = self.cfg.length, self.cfg.channels
        if x.ndim != 3 or x.shape[1:] != (L, C):
            raise ValueError(f"x must have shape (B, {L}, {C}) (window length, channels); got {tuple(x.shape)}")
        if cond is not None and cond.shape != (x.shape[0], L, 2 * C):
            raise ValueError(f"cond must have shape (B, {L}, {2 * C}) = [m * y, m]; got {tuple(cond.shape)}")
        if cond is not None and not self.cfg.conditional:
            raise ValueError("this network is unconditional (conditional=False); cond must be None")

    def components(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> dict[str, Tensor]:
        """``{"trend": (N, B, L, C), "season": (N, B, L, C), "residual": (B, L, C)}``."""
        self._check(x, cond)
        if self.cfg.conditional:
            cond = x.new_zeros(x.shape[0], x.shape[1], 2 * x.shape[2]) if cond is None else cond
            x = torch.cat([x, cond], dim=-1)
        r = self.embed(x) + self.pos
        c = self.time(t)
        trends, seasons = [], []
        for layer in self.layers:
            trend, season, r = layer(r, c)
            trends.append(trend)
            seasons.append(season)
        return {"trend": torch.stack(trends), "season": torch.stack(seasons), "residual": self.residual(self.norm(r))}

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        parts = self.components(x, t, cond)
        return parts["trend"].sum(0) + parts["season"].sum(0) + parts["residual"]  # velocity = sum of the parts
