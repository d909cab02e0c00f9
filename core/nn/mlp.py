"""A residual MLP for vector data ``(B, D)``: the small velocity / data network used by the
toy modality and by the tests (2-D Gaussians, mixtures).

Architecture: ``h = Linear(x)``; conditioning ``c = MLP(SinusoidalTimeEmbedding(t))``
(``+ Embedding(cond)`` for class-conditional models); ``depth`` residual blocks
``h = h + alpha * MLP(modulate(LN(h), beta, gamma))`` whose ``(beta, gamma, alpha)`` come from
``c`` through a zero-initialised layer (adaLN-Zero, Peebles & Xie 2023, arXiv 2212.09748,
sec. 3.2); a final ``LN`` and a zero-initialised output layer, so the network outputs 0 at
initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import Config
from ..tensors import as_time
from .embeddings import SinusoidalTimeEmbedding
from .transformer import modulate

__all__ = ["ResidualMLPConfig", "ResidualMLP"]


@dataclass
class ResidualMLPConfig(Config):
    """Shape of a :class:`ResidualMLP`."""

    dim: int
    """Data dimension D: inputs and outputs are (B, D)."""
    hidden: int = 256
    """Width of the residual stream and of the conditioning vector."""
    depth: int = 4
    """Number of residual blocks."""
    time_embed_dim: int = 128
    """Width of the sinusoidal time embedding before its MLP."""
    num_classes: int = 0
    """0: unconditional. Otherwise cond holds class ids in 0..num_classes, where the id
    num_classes is the null (unconditional) token used for classifier-free guidance."""

    def validate(self) -> None:
        for name in ("dim", "hidden", "depth"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.time_embed_dim >= 2, "time_embed_dim", "an integer >= 2")
        self._require(self.num_classes >= 0, "num_classes", "an integer >= 0 (0 = unconditional)")


def _zero_linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class _Block(nn.Module):
    """``h + alpha * MLP(modulate(LN(h), beta, gamma))`` with ``(beta, gamma, alpha)`` from ``c``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.modulation = nn.Sequential(nn.SiLU(), _zero_linear(hidden, 3 * hidden))

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)  # (B, hidden) each
        return h + gate * self.mlp(modulate(self.norm(h), shift, scale))



def add_class_embedding(c: Tensor, cond: Tensor | None, class_embed: nn.Embedding | None, num_classes: int,
                        owner: str) -> Tensor:
    """``c + class_embed(cond)`` for a conditioning vector ``c`` ``(B, H)`` and class ids
    ``cond`` ``(B,)`` (``None`` means the null id ``num_classes``, for classifier-free
    guidance). An unconditional network (``class_embed`` None) refuses a ``cond``; ``owner``
    names the network in errors."""
    if class_embed is None:
        if cond is not None:
            raise ValueError(f"cond was given but this {owner} is unconditional (num_classes = 0)")
        return c
    B = c.shape[0]
    if cond is None:
        cond = torch.full((B,), num_classes, dtype=torch.long, device=c.device)
    if cond.shape != (B,) or cond.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"cond must be integer class ids of shape ({B},) in 0..{num_classes} "
            f"({num_classes} = null); got dtype {cond.dtype}, shape {tuple(cond.shape)}"
        )
    return c + class_embed(cond)


class ResidualMLP(nn.Module):
    """Residual MLP with time (and class) conditioning for vector data.

    ``forward(x, t, cond=None)``: ``x`` ``(B, D)``, ``t`` ``(B,)`` (or a scalar) in [0, 1],
    ``cond`` ``(B,)`` long class ids or None -> ``(B, D)``. For a class-conditional model
    (``num_classes > 0``), ``cond=None`` means the null token for every sample.
    """

    def __init__(self, cfg: ResidualMLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.time_embed = nn.Sequential(
            SinusoidalTimeEmbedding(cfg.time_embed_dim), nn.Linear(cfg.time_embed_dim, h), nn.SiLU(), nn.Linear(h, h)
        )
        self.class_embed = nn.Embedding(cfg.num_classes + 1, h) if cfg.num_classes else None
        self.inp = nn.Linear(cfg.dim, h)
        self.blocks = nn.ModuleList(_Block(h) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.out = _zero_linear(h, cfg.dim)

    def condition(self, t: Tensor, cond: Tensor | None, batch: int) -> Tensor:
        """The conditioning vector ``c`` ``(B, hidden)`` from times and class ids."""
        return add_class_embedding(self.time_embed(t), cond, self.class_embed, self.cfg.num_classes, type(self).__name__)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.cfg.dim:
            raise ValueError(f"x must have shape (B, {self.cfg.dim}); got {tuple(x.shape)}")
        t = as_time(t, x.shape[0], x)
        c = self.condition(t, cond, x.shape[0])
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, c)
        return self.out(self.norm(h))
