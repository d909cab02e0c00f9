"""Neural-network building blocks: time embeddings, adaLN transformer blocks, a residual MLP
(and its two-time variant for flow maps).

Every network follows ``forward(x, t, cond=None)`` with ``x`` ``(B, *D)``, ``t`` ``(B,)`` in
[0, 1] and an optional ``cond`` (class ids ``(B,)`` long, where ``num_classes`` is the null
token for classifier-free guidance).
"""

from .embeddings import FourierTimeEmbedding, SinusoidalTimeEmbedding
from .mlp import ResidualMLP, ResidualMLPConfig
from .transformer import AdaLNBlock, modulate
from .two_time import TwoTimeMLP, TwoTimeMLPConfig

__all__ = [
    "SinusoidalTimeEmbedding",
    "FourierTimeEmbedding",
    "AdaLNBlock",
    "modulate",
    "ResidualMLP",
    "ResidualMLPConfig",
    "TwoTimeMLP",
    "TwoTimeMLPConfig",
]
