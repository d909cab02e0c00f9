"""Three policies with one interface: an observation history ``cond`` ``(B, T_o * O)`` (raw
observations; each policy normalises them with its stored statistics) -> an action chunk
``(B, H, A)`` in [-1, 1], through :meth:`Policy.act`. Each names the layers whose outputs
can be recorded or gated (``hook_layers``; every one returns a channel-last ``(B, L, d)``
tensor, so a conceptor ``(d, d)`` acts on its last axis).

- :class:`FlowPolicy`: a transformer action expert (tokens: T_o observations, one time
  token, H noisy actions) predicting the velocity on the linear path; sampled with ``steps``
  Euler steps through :func:`modaflow.core.ode.solve_ode` (π0-style action expert,
  Black et al. 2024, arXiv 2410.24164).
- :class:`DiffusionPolicy`: a 1-D conditional UNet over the chunk with FiLM conditioning
  on time and observations (Chi et al. 2023, arXiv 2303.04137, §3.2), predicting noise on
  a DDPM path; sampled by DDIM through :func:`modaflow.core.discrete.solve_ddim`.
- :class:`ARPolicy`: each action dimension cut into ``bins`` uniform bins in [-1, 1];
  the chunk's H·A tokens decoded one by one by a causal transformer after the observation
  tokens (RT-1-style binning, Brohan et al. 2022, arXiv 2212.06817).

Hidden states at "every denoising step": one forward per Euler / DDIM step, or per
decoded token for the autoregressive policy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modaflow.core.discrete import ddpm_grid, solve_ddim
from modaflow.core.nn.embeddings import SinusoidalTimeEmbedding
from modaflow.core.ode import solve_ode, time_grid
from modaflow.core.paths import DiscreteVPPath

__all__ = ["POLICY_NAMES", "Policy", "FlowPolicy", "DiffusionPolicy", "ARPolicy", "build_policy", "UnknownPolicyError"]

POLICY_NAMES: tuple[str, ...] = ("flow", "diffusion", "ar")


class UnknownPolicyError(KeyError):
    """A policy name that is not one of :data:`POLICY_NAMES`."""

    def __str__(self) -> str:
        return str(self.args[0])


class Policy(nn.Module):
    """Shared parts: sizes, observation normalisation (buffers saved with the weights)."""

    hook_layers: tuple[str, ...] = ()

    def __init__(self, obs_dim: int, act_dim: int, n_obs: int, horizon: int) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.n_obs, self.horizon = obs_dim, act_dim, n_obs, horizon
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

    def set_normalizer(self, cond: Tensor) -> None:
        """Per-dimension mean and std of observations from training ``cond`` ``(N, T_o * O)``."""
        o = cond.reshape(-1, self.obs_dim)
        self.obs_mean.copy_(o.mean(0))
        self.obs_std.copy_(o.std(0).clamp_min(1e-3))

    def obs_tokens(self, cond: Tensor) -> Tensor:
        """``(B, T_o, O)`` normalised observations."""
        if cond.ndim != 2 or cond.shape[1] != self.n_obs * self.obs_dim:
            raise ValueError(f"cond must be (B, {self.n_obs * self.obs_dim}) = (B, T_o * O); got {tuple(cond.shape)}")
        o = cond.reshape(cond.shape[0], self.n_obs, self.obs_dim)
        return (o - self.obs_mean) / self.obs_std

    def act(self, cond: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """An action chunk ``(B, H, A)`` for observations ``cond`` ``(B, T_o * O)`` in ``steps``
        sampler steps. Each policy class (flow, diffusion, autoregressive) defines it; this
        shared base only normalises observations."""
        raise NotImplementedError(f"{type(self).__name__} must define act(); use a flow, diffusion or ar policy")


def _noise(cond: Tensor, horizon: int, act_dim: int, generator: torch.Generator | None) -> Tensor:
    """``N(0, I)`` ``(B, H, A)`` drawn on the generator's device (CPU generators give the same
    noise whatever device the policy runs on), then moved to ``cond``'s device."""
    dev = generator.device if generator is not None else cond.device
    return torch.randn(cond.shape[0], horizon, act_dim, generator=generator, device=dev).to(cond.device)


def _blocks(d: int, heads: int, depth: int) -> nn.ModuleList:
    return nn.ModuleList(
        nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        for _ in range(depth)
    )


class FlowPolicy(Policy):
    """Transformer action expert; ``forward(x (B, H, A), t (B,), cond) -> velocity (B, H, A)``."""

    def __init__(self, obs_dim: int, act_dim: int, n_obs: int, horizon: int, width: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__(obs_dim, act_dim, n_obs, horizon)
        self.obs_in = nn.Linear(obs_dim, width)
        self.act_in = nn.Linear(act_dim, width)
        self.time_in = nn.Sequential(SinusoidalTimeEmbedding(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.pos = nn.Parameter(0.02 * torch.randn(n_obs + 1 + horizon, width))
        self.blocks = _blocks(width, heads, depth)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, act_dim)
        self.hook_layers = tuple(f"blocks.{i}" for i in range(depth))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        h = torch.cat([self.obs_in(self.obs_tokens(cond)), self.time_in(t)[:, None], self.act_in(x)], 1) + self.pos
        for block in self.blocks:
            h = block(h)  # (B, T_o + 1 + H, width)
        return self.out(self.norm(h[:, -self.horizon:]))

    @torch.no_grad()
    def act(self, cond: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        x0 = _noise(cond, self.horizon, self.act_dim, generator)
        grid = time_grid(steps, device=cond.device)
        return solve_ode(lambda x, t: self(x, t, cond), x0, grid, method="euler").x.clamp(-1, 1)


class _FiLMBlock(nn.Module):
    """Conv-GroupNorm-Mish twice; FiLM (scale, shift) from the condition after the first
    (Perez et al. 2018, arXiv 1709.07871)."""

    def __init__(self, c_in: int, c_out: int, c_cond: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.Mish())
        self.conv2 = nn.Sequential(nn.Conv1d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.Mish())
        self.film = nn.Linear(c_cond, 2 * c_out)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        scale, shift = self.film(c)[:, :, None].chunk(2, dim=1)
        h = self.conv1(x) * (1 + scale) + shift
        return self.conv2(h) + self.skip(x)


class DiffusionPolicy(Policy):
    """1-D conditional UNet; ``forward(x (B, H, A), t (B,), cond) -> noise (B, H, A)``.
    ``H`` must be even (one down/up-sampling). Hookable: ``down_mix`` and ``mid_mix``,
    channel-mixing residual layers applied channel-last."""

    def __init__(self, obs_dim: int, act_dim: int, n_obs: int, horizon: int, width: int = 64, ddpm_steps: int = 100) -> None:
        super().__init__(obs_dim, act_dim, n_obs, horizon)
        if horizon % 2:
            raise ValueError(f"the diffusion policy's UNet needs an even horizon; got {horizon}")
        c1, c2, cc = width, 2 * width, width
        self.path = DiscreteVPPath.linear(ddpm_steps)
        self.cond_in = nn.Sequential(nn.Linear(width + n_obs * obs_dim, cc), nn.Mish(), nn.Linear(cc, cc))
        self.time_emb = SinusoidalTimeEmbedding(width)
        self.down = _FiLMBlock(act_dim, c1, cc)
        self.down_mix = nn.Linear(c1, c1)
        self.pool = nn.Conv1d(c1, c1, 3, stride=2, padding=1)
        self.mid = _FiLMBlock(c1, c2, cc)
        self.mid_mix = nn.Linear(c2, c2)
        self.upsample = nn.ConvTranspose1d(c2, c2, 4, stride=2, padding=1)
        self.up = _FiLMBlock(c2 + c1, c1, cc)
        self.out = nn.Conv1d(c1, act_dim, 1)
        self.hook_layers = ("down_mix", "mid_mix")
        self.eta = 0.0
        """DDIM noise: 0 deterministic DDIM, 1 DDPM-like ancestral steps (Song et al. 2021, arXiv 2010.02502, eq. 16)."""

    @staticmethod
    def _mix(layer: nn.Linear, h: Tensor) -> Tensor:
        return h + layer(h.transpose(1, 2)).transpose(1, 2)  # channel-last (B, L, C) output is hookable

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        c = self.cond_in(torch.cat([self.time_emb(t), self.obs_tokens(cond).flatten(1)], 1))
        h1 = self._mix(self.down_mix, self.down(x.transpose(1, 2), c))  # (B, c1, H)
        h2 = self._mix(self.mid_mix, self.mid(self.pool(h1), c))  # (B, c2, H/2)
        h = self.up(torch.cat([self.upsample(h2), h1], 1), c)
        return self.out(h).transpose(1, 2)

    @torch.no_grad()
    def act(self, cond: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        x0 = _noise(cond, self.horizon, self.act_dim, generator)
        grid = ddpm_grid(self.path, steps, device=cond.device)
        field = lambda x, t: self(x, t, cond)  # noqa: E731
        if self.eta == 0:
            return solve_ddim(field, "noise", self.path, x0, grid).x.clamp(-1, 1)
        if generator is not None and generator.device != cond.device:
            raise ValueError("DDPM-like sampling (eta > 0) needs a generator on the policy's device")
        return solve_ddim(field, "noise", self.path, x0, grid, eta=self.eta, generator=generator).x.clamp(-1, 1)


class ARPolicy(Policy):
    """Binned action tokens, causal transformer. ``logits(tokens (B, H*A), cond) -> (B, H*A, bins)``
    (position ``i`` predicts token ``i`` from the observations and tokens ``< i``)."""

    def __init__(self, obs_dim: int, act_dim: int, n_obs: int, horizon: int, width: int = 64, depth: int = 2,
                 heads: int = 4, bins: int = 32) -> None:
        super().__init__(obs_dim, act_dim, n_obs, horizon)
        self.bins, self.length = bins, horizon * act_dim
        self.obs_in = nn.Linear(obs_dim, width)
        self.tok = nn.Embedding(bins + 1, width)  # id `bins` = begin-of-chunk
        self.pos = nn.Parameter(0.02 * torch.randn(n_obs + self.length, width))
        self.blocks = _blocks(width, heads, depth)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, bins)
        self.hook_layers = tuple(f"blocks.{i}" for i in range(depth))
        L = n_obs + self.length
        self.register_buffer("mask", torch.triu(torch.full((L, L), float("-inf")), 1), persistent=False)

    def tokenize(self, x: Tensor) -> Tensor:
        """Actions ``(B, H, A)`` in [-1, 1] -> bin ids ``(B, H*A)`` (time-major)."""
        return ((x.clamp(-1, 1) + 1) / 2 * self.bins).long().clamp(0, self.bins - 1).flatten(1)

    def detokenize(self, ids: Tensor) -> Tensor:
        """Bin ids -> bin centres ``(B, H, A)``."""
        return ((ids.float() + 0.5) / self.bins * 2 - 1).reshape(ids.shape[0], self.horizon, self.act_dim)

    def logits(self, tokens: Tensor, cond: Tensor) -> Tensor:
        B, n = tokens.shape
        bos = torch.full((B, 1), self.bins, dtype=torch.long, device=tokens.device)
        inp = torch.cat([bos, tokens[:, : self.length - 1]], 1)
        h = torch.cat([self.obs_in(self.obs_tokens(cond)), self.tok(inp)], 1) + self.pos
        for block in self.blocks:
            h = block(h, src_mask=self.mask)  # (B, T_o + H*A, width)
        return self.out(self.norm(h[:, self.n_obs:]))

    def loss(self, x: Tensor, cond: Tensor) -> Tensor:
        ids = self.tokenize(x)
        return F.cross_entropy(self.logits(ids, cond).reshape(-1, self.bins), ids.reshape(-1))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """Unused by training (see :class:`ARModule`); returns logits for API symmetry."""
        return self.logits(self.tokenize(x), cond)

    @torch.no_grad()
    def act(self, cond: Tensor, steps: int = 0, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """Decode the chunk token by token (one forward per token; ``steps`` is ignored)."""
        B = cond.shape[0]
        ids = torch.zeros(B, self.length, dtype=torch.long, device=cond.device)
        for i in range(self.length):
            p = torch.softmax(self.logits(ids, cond)[:, i] / temperature, -1)
            u = torch.rand(B, 1, generator=generator, device=generator.device if generator is not None else p.device)
            ids[:, i] = (p.cumsum(-1) < u.to(p.device)).sum(-1).clamp_max(self.bins - 1)  # inverse-CDF draw
        return self.detokenize(ids)


def build_policy(kind: str, obs_dim: int, act_dim: int, n_obs: int, horizon: int, width: int, depth: int) -> Policy:
    """The policy ``kind`` (one of :data:`POLICY_NAMES`)."""
    if kind == "flow":
        return FlowPolicy(obs_dim, act_dim, n_obs, horizon, width, depth)
    if kind == "diffusion":
        return DiffusionPolicy(obs_dim, act_dim, n_obs, horizon, width)
    if kind == "ar":
        return ARPolicy(obs_dim, act_dim, n_obs, horizon, width, depth)
    raise UnknownPolicyError(f"unknown policy {kind!r}; known: {list(POLICY_NAMES)}")
