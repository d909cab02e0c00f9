"""The denoising transformer of FLM, FMLM and the MDLM baseline: a DiT (adaLN-Zero blocks of
:class:`modaflow.core.nn.AdaLNBlock`, Peebles & Xie 2023, arXiv 2212.09748) with rotary
positions (Su et al. 2021, arXiv 2104.09864, eq. 34) on queries and keys.

Inputs (``cfg.input``):

* ``"onehot"`` (FLM / FMLM): the noisy one-hot ``x_gamma`` ``(B, L, K)`` is multiplied into a
  ``K x d`` embedding ``W``: ``h = x_gamma W + b``. Training may instead pass token ids and the
  noise draw (:meth:`DiT.embed_noisy`): ``x_gamma W = gamma W[x] + (1 - gamma) eps W`` and
  ``eps W`` ``(L, d)`` has rows ``N(0, W^T W)``, drawn as ``n F`` with ``F^T F = W^T W``
  (``F = chol(W^T W)^T`` when ``K > d``, else ``F = W``), ``n ~ N(0, I)``: the same law
  without the ``L x K`` noise (REFERENCE §3).
* ``"tokens"`` (MDLM): ids in ``[0, K]`` with ``K`` the mask token, embedded by lookup.

Time: FLM's model takes the path time ``gamma`` (B,) and embeds the reparameterized time
``t(gamma)`` (:class:`~.reparam.TimeReparam`; ``cfg.time_table``: the paper's one-hot table,
or one built for the ratio ``min(d, K)/K`` of its signal-to-noise ratio that ``x_gamma W``
keeps); a two-time model (FMLM) takes ``(s, t)``
path times and adds an embedding of ``t(t) - t(s)`` through a zero-initialised MLP, so a
copy of an FLM's weights is, at ``s = t`` and at initialisation, that FLM.
Output: logits ``(B, L, K)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modaflow.core.config import Config
from modaflow.core.nn import AdaLNBlock, SinusoidalTimeEmbedding, modulate

from .reparam import TimeReparam

__all__ = ["DiTConfig", "DiT", "RotaryAdaLNBlock", "rotary_tables", "apply_rotary", "noise_factor"]


@dataclass
class DiTConfig(Config):
    """Shape of a :class:`DiT`."""

    vocab_size: int = 256
    """K, the tokenizer's vocabulary (logits are over K tokens)."""
    block_len: int = 128
    """Longest sequence L the rotary tables cover; longer inputs are an error."""
    dim: int = 128
    """Token width d."""
    depth: int = 4
    """Number of adaLN transformer blocks."""
    heads: int = 4
    """Attention heads (dim must be divisible by heads; head width even for rotary)."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of dim."""
    input: Literal["onehot", "tokens"] = "onehot"
    """onehot: FLM's continuous x_gamma (B, L, K); tokens: ids with a mask token K (MDLM)."""
    two_time: bool = False
    """Take (x, s, t) and condition on both times (FMLM's flow map)."""
    reparam: bool = True
    """Embed FLM's reparameterized time t(gamma) (False: embed the given time as is)."""
    time_table: Literal["onehot", "embedded"] = "onehot"
    """FLM's time table (:class:`~.reparam.TimeReparam`): onehot (the paper's, for x_gamma itself)
    or embedded (for the signal-to-noise ratio the K x d projection x_gamma W keeps, min(d, K)/K
    of the one-hot's). Validation, quick text (K = 512, d = 64): embedded was worse, see
    LanguageConfig.time_table."""

    def validate(self) -> None:
        for name in ("vocab_size", "block_len", "dim", "depth", "heads"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.vocab_size >= 2, "vocab_size", "an integer >= 2")
        self._require(self.dim % self.heads == 0 and (self.dim // self.heads) % 2 == 0, "heads",
                      f"a divisor of dim = {self.dim} leaving an even head width")
        self._require(self.mlp_ratio > 0, "mlp_ratio", "a number > 0")


def rotary_tables(length: int, head_dim: int, base: float = 10_000.0) -> tuple[Tensor, Tensor]:
    """``cos, sin`` ``(length, head_dim/2)`` of rotary angles ``l * base^(-2i/head_dim)``
    (Su et al. 2021, arXiv 2104.09864, eq. 34)."""
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ang = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return ang.cos(), ang.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs ``(x_{2i}, x_{2i+1})`` of ``x`` ``(B, H, L, Dh)`` by position angles."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[: x.shape[-2]].to(x.dtype), sin[: x.shape[-2]].to(x.dtype)
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class RotaryAdaLNBlock(AdaLNBlock):
    """:class:`~modaflow.core.nn.AdaLNBlock` whose attention rotates queries and keys by
    position (rotary embeddings, arXiv 2104.09864) and may be causal."""

    def __init__(self, dim: int, heads: int, cond_dim: int, mlp_ratio: float, max_len: int, causal: bool = False) -> None:
        super().__init__(dim, heads, cond_dim, mlp_ratio)
        cos, sin = rotary_tables(max_len, dim // heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.causal = causal

    def attention(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, self.cos, self.sin), apply_rotary(k, self.cos, self.sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, L, D/H)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


def noise_factor(W: Tensor) -> Tensor:
    """``F`` with ``F^T F = W^T W`` for ``W`` ``(K, d)``: ``W`` itself when ``K <= d``, else
    ``chol(W^T W)^T`` ``(d, d)`` (computed in float32; a tiny diagonal jitter keeps it defined)."""
    K, d = W.shape
    if K <= d:
        return W
    with torch.autocast(W.device.type, enabled=False):  # the Gram matrix in fp32 even under bf16 autocast
        W32 = W.float()
        gram = W32.T @ W32
        jitter = 1e-6 * gram.diagonal().mean().detach()
        # cholesky_ex: no host sync for the error check (DESIGN: no syncs in training steps)
        return torch.linalg.cholesky_ex(gram + jitter * torch.eye(d, device=W.device))[0].T


class DiT(nn.Module):
    """``forward(x, t)`` (or ``forward(x, s, t)`` when ``cfg.two_time``) -> logits ``(B, L, K)``.

    ``x``: ``(B, L, K)`` float (onehot input) or ``(B, L)`` ids (tokens input); times ``(B,)``."""

    fsdp_forward_methods = ("apply_parts",)
    """Under FSDP, :meth:`apply_parts` gathers the parameters outside the blocks as ``forward``
    does (:data:`~modaflow.core.training.sharding.FORWARD_METHODS_ATTR`)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        K, d = cfg.vocab_size, cfg.dim
        if cfg.input == "onehot":
            self.W = nn.Parameter(torch.randn(K, d) / K**0.5)  # x_gamma W: eps W has unit variance at init
            self.b = nn.Parameter(torch.zeros(d))
        else:
            self.embed = nn.Embedding(K + 1, d)  # id K is the mask token
        # the table for the ratio x_gamma W carries: min(d, K)/K of the one-hot's (reparam.py docstring)
        snr = min(d, K) / K if cfg.time_table == "embedded" else 1.0
        self.reparam = TimeReparam(K, snr_scale=snr) if cfg.reparam and cfg.input == "onehot" else None
        self.time_embed = SinusoidalTimeEmbedding(d, time_scale=1000.0)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        if cfg.two_time:
            self.gap_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
            nn.init.zeros_(self.gap_mlp[2].weight)
            nn.init.zeros_(self.gap_mlp[2].bias)
        self.blocks = nn.ModuleList(RotaryAdaLNBlock(d, cfg.heads, d, cfg.mlp_ratio, cfg.block_len) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_mod = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        nn.init.zeros_(self.final_mod[1].weight)
        nn.init.zeros_(self.final_mod[1].bias)
        self.out = nn.Linear(d, K)
        # default init, not DiT's zero output layer: on validation (benchmarks/language_flm_probe.py, quick text)
        # zero init gained FLM 0.02-0.11 nats of clean-token CE; MDLM inconclusive (seed spread 0.5 nats)

    def _time(self, gamma: Tensor) -> Tensor:
        t = self.reparam.t_of_gamma(gamma) if self.reparam is not None else gamma
        return self.time_embed(t.float())

    def condition(self, s: Tensor, t: Tensor | None) -> Tensor:
        """Conditioning vector ``(B, d)`` from the time ``s`` (and the end time ``t``)."""
        c = self.time_mlp(self._time(s))
        if self.cfg.two_time:
            ts = self.reparam.t_of_gamma(s) if self.reparam is not None else s
            tt = self.reparam.t_of_gamma(t) if self.reparam is not None else t
            c = c + self.gap_mlp(self.time_embed((tt - ts).float()))
        return c

    def embed_input(self, x: Tensor) -> Tensor:
        """``(B, L, d)`` from the input (dense ``x W + b`` or a lookup)."""
        if self.cfg.input == "onehot":
            if x.ndim != 3 or x.shape[-1] != self.cfg.vocab_size:
                raise ValueError(f"x must be (B, L, {self.cfg.vocab_size}) noisy one-hot; got {tuple(x.shape)}")
            return x.to(self.W.dtype) @ self.W + self.b
        if x.ndim != 2:
            raise ValueError(f"x must be (B, L) token ids; got {tuple(x.shape)}")
        return self.embed(x)

    def embed_noisy(self, tokens: Tensor, gamma: Tensor, n: Tensor) -> Tensor:
        """``x_gamma W + b`` without the ``(B, L, K)`` noise: ``gamma W[tokens] + (1 - gamma) n F + b``
        with ``n`` ``(B, L, r)`` standard normal, ``r = min(K, d)`` (:func:`noise_factor`)."""
        Fm = noise_factor(self.W)
        g = gamma.to(self.W.dtype)[:, None, None]
        return g * self.W[tokens] + (1 - g) * (n.to(Fm.dtype) @ Fm).to(self.W.dtype) + self.b

    @property
    def noise_rank(self) -> int:
        """``r = min(K, d)``: width of the normal draw ``n`` of :meth:`embed_noisy`."""
        return min(self.cfg.vocab_size, self.cfg.dim)

    def trunk(self, h: Tensor, c: Tensor) -> Tensor:
        """Blocks and the adaLN output norm: ``(B, L, d), (B, d) -> (B, L, d)``; ``self.out``
        maps it to logits (kept apart so the loss can be chunked)."""
        if h.shape[1] > self.cfg.block_len:
            raise ValueError(f"sequence length {h.shape[1]} is longer than the model's block_len = {self.cfg.block_len}")
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_mod(c).chunk(2, dim=-1)
        return modulate(self.norm(h), shift, scale)

    def apply_parts(self, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
        """``fn(self, *args)``: training code that calls the model's parts (:meth:`embed_noisy`,
        :meth:`trunk`, ``out``) instead of ``forward`` runs through here, so that FSDP hooks it
        like ``forward``; without FSDP it is a plain call."""
        return fn(self, *args)

    def forward(self, x: Tensor, s: Tensor, t: Tensor | None = None) -> Tensor:
        if self.cfg.two_time and t is None:
            raise ValueError("a two-time DiT needs forward(x, s, t)")
        return self.out(self.trunk(self.embed_input(x), self.condition(s, t)))
