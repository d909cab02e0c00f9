"""FMLM: FLM distilled into a flow map ``X(s, t, x)`` for 1-8 step generation.

The map lives on FLM's path (the core's linear path, time read as ``gamma``) and is
parametrised by a two-time denoiser (:class:`~.models.DiT` with ``two_time``)::

    X(s, t, x) = x + (t - s) u(x, s, t),    u(x, s, t) = (softmax(logits(x, s, t)) - x) / (1 - s)

i.e. a DDIM-like jump to the denoiser's estimate (the exact map of the linear path has this
form with the "average denoiser" in place of ``softmax``), so ``X(s, 1, x)`` is a distribution
over tokens and one step is ``argmax softmax(logits(eps, 0, 1))`` (REFERENCE §3).

Training (:class:`FMLMModule`, a core :class:`~modaflow.core.training.FlowMapModule`): the
student starts as a copy of the trained FLM (the two-time branch is zero-initialised). Per step:

* diagonal: FLM's clean-token cross-entropy at ``s = t = gamma``;
* off-diagonal, ``(s, t)`` uniform in the reparameterized time (a ``grid_fraction`` of them on
  the 1-8 step samplers' grids instead), ``x_s`` on the path: the core's
  flow-map residual (:func:`modaflow.core.flow_map_losses.flow_map_residual`) of
  ``cfg.loss``. With ``objective="ce"`` (``progressive`` and ``teacher`` only) its detached
  target ``u*`` becomes the distribution ``D* = x + (1 - s) u*`` (for the two-hop target of
  progressive self-distillation, ``D*`` is the convex combination of the two hops' denoisers)
  and the student's logits at ``(s, t)`` are fitted by ``KL(D* || softmax)``. With
  ``objective="mse"`` the residual itself is regressed in denoiser units,
  ``(1 - s)^2 |u - u*|^2`` summed over the vocabulary (any core loss, incl. lagrangian/eulerian).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from modaflow.core.flow_map_losses import flow_map_residual
from modaflow.core.flow_maps import FlowMap, sample_flow_map
from modaflow.core.losses import one_hot_cross_entropy
from modaflow.core.training.flow_map_module import FlowMapConfig, FlowMapModule

from .flm import flm_gamma_grid, flm_velocity, noisy_onehot, pick_tokens
from .models import DiT

__all__ = ["FMLMConfig", "DenoiserAverageVelocity", "FMLMModule", "student_from_flm", "generate_fmlm", "final_logits_fmlm"]


@dataclass
class FMLMConfig(FlowMapConfig):
    """The core flow-map config plus how the residual is turned into a loss."""

    objective: Literal["ce", "mse"] = "ce"
    """ce: KL from the detached target distribution D* = x + (1-s) u* (progressive, teacher);
    mse: (1-s)^2 |u - u*|^2 summed over the vocabulary (any loss)."""
    grid_fraction: float = 0.0
    """Share of the off-diagonal pairs drawn on the samplers' grids instead of uniformly: ``n``
    from ``grid_steps``, ``(s, t) = (k/n, (k+1)/n)`` in the reparameterized time, ``r`` their
    midpoint (the shortcut models' dyadic self-consistency, Frans et al. 2024, arXiv 2410.12557,
    eq. 5). Uniform pairs rarely have the gap of a 1- or 2-step sampler's jumps."""
    grid_steps: tuple[int, ...] = (1, 2, 4, 8)
    """Step counts of the sampler grids used by ``grid_fraction`` (drawn uniformly from the tuple,
    so a repeated count is drawn more often)."""
    hard_final: bool = False
    """ce objective: on pairs that end at ``t = 1`` (the samplers' last jump) fit the student to the
    target's argmax token instead of the distribution ``D*`` (sequence-level distillation, Kim and
    Rush 2016, arXiv 1606.07947, eq. 9): the argmax samplers output ``argmax D*``, so the student
    matches the distribution of the multi-step sampler's tokens rather than their mean ``D*``."""

    def validate(self) -> None:
        super().validate()
        self._require(0.0 <= self.grid_fraction <= 1.0, "grid_fraction", "a number in [0, 1]")
        self._require(len(self.grid_steps) > 0 and all(n >= 1 for n in self.grid_steps), "grid_steps",
                      "a non-empty tuple of integers >= 1")
        if self.objective == "ce":
            self._require(self.loss in ("progressive", "teacher"), "objective",
                          "'mse' for the lagrangian and eulerian losses (their targets are not distributions)")


class DenoiserAverageVelocity(nn.Module):
    """``u(x, s, t) = (softmax(dit(x, s, t)) - x) / (1 - s)``, the network of the core
    :class:`~modaflow.core.flow_maps.FlowMap`; ``x`` ``(B, L, K)``, ``s, t`` ``(B,)``."""

    def __init__(self, dit: DiT) -> None:
        super().__init__()
        if not dit.cfg.two_time:
            raise ValueError("FMLM needs a two-time DiT (two_time=True)")
        self.dit, self.cfg = dit, dit.cfg

    def forward(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        p = torch.softmax(self.dit(x, s, t).float(), -1).to(x.dtype)
        return (p - x) / (1 - s).clamp_min(1e-6)[:, None, None]


def student_from_flm(flm: DiT) -> FlowMap:
    """A flow map whose two-time DiT copies ``flm``'s weights (the two-time branch starts at 0,
    so the map is FLM's one Euler step at initialisation)."""
    dit = DiT(flm.cfg.replace(two_time=True))
    missing, unexpected = dit.load_state_dict(flm.state_dict(), strict=False)
    if unexpected or any(not k.startswith("gap_mlp.") for k in missing):
        raise ValueError(f"FLM weights do not fit the student: missing {missing}, unexpected {unexpected}")
    return FlowMap(DenoiserAverageVelocity(dit))


class FMLMModule(FlowMapModule):
    """Distils FLM into ``flow_map`` (see the module docstring). ``teacher``: the FLM
    :class:`~.models.DiT`, used as the velocity of ``loss="teacher"`` (otherwise unused)."""

    def __init__(self, flow_map: FlowMap, cfg: FMLMConfig, teacher: DiT | None = None) -> None:
        field = flm_velocity(teacher) if (teacher is not None and cfg.loss == "teacher") else None
        super().__init__(flow_map, None, cfg, teacher=field)
        self.teacher_net = teacher.eval().requires_grad_(False) if field is not None else None

    @property
    def dit(self) -> DiT:
        return self.model.net.dit

    def compute_loss(self, batch, step: int) -> Tensor:
        cfg, dit = self.cfg, self.dit
        tokens = self.unpack(batch)[0]
        B, L = tokens.shape
        gen = self._generator(tokens.device, step)
        kw = dict(device=tokens.device, generator=gen)
        eps = torch.randn(B, L, dit.cfg.vocab_size, **kw)
        lo, width = cfg.t_min, cfg.t_max - cfg.t_min
        # diagonal: FLM's cross-entropy at s = t = gamma(t), t from the time sampler
        g = dit.reparam.gamma_of_t(lo + width * self.time_sampler(B, dtype=torch.float32, **kw))
        diag = one_hot_cross_entropy(dit(noisy_onehot(tokens, g, eps), g, g).float(), tokens)
        # off-diagonal: (s, t) uniform on s <= t in the reparameterized time, r between them
        u_s, u_t = torch.rand(2, B, **kw).sort(dim=0).values
        frac = torch.rand(B, **kw) if cfg.intermediate == "uniform" else torch.full((B,), 0.5, device=tokens.device)
        if cfg.grid_fraction > 0:  # adjacent points of an n-step sampler grid, r at their midpoint (arXiv 2410.12557, eq. 5)
            on = torch.rand(B, **kw) < cfg.grid_fraction
            n = torch.tensor(cfg.grid_steps, dtype=torch.float32, device=tokens.device)[
                torch.randint(len(cfg.grid_steps), (B,), **kw)]
            k = torch.floor(torch.rand(B, **kw) * n)
            u_s, u_t = torch.where(on, k / n, u_s), torch.where(on, (k + 1) / n, u_t)
            frac = torch.where(on, torch.full_like(frac, 0.5), frac)
        ts, tt = lo + width * u_s, lo + width * u_t
        tr = ts + frac * (tt - ts)
        s, t, r = (dit.reparam.gamma_of_t(v) for v in (ts, tt, tr))
        x_s = noisy_onehot(tokens, s, eps)
        return cfg.diagonal_weight * diag + self.off_diagonal(x_s, s, t, r)

    def off_diagonal(self, x: Tensor, s: Tensor, t: Tensor, r: Tensor) -> Tensor:
        """The off-diagonal term at states ``x`` ``(B, L, K)`` and times ``s <= r <= t``."""
        cfg = self.cfg
        kw = dict(velocity=self.teacher, r=r, stop_gradient=cfg.stop_gradient,
                  teacher_steps=cfg.teacher_steps, teacher_method=cfg.teacher_method)
        w = (1 - s)[:, None, None]
        if cfg.objective == "mse":
            with sdpa_kernel(SDPBackend.MATH):  # lagrangian/eulerian take forward-mode JVPs: the math kernel has them
                u, target = flow_map_residual(cfg.loss, self.model, x, s, t, **kw)
            return ((w * (u - target)) ** 2).sum(-1).mean()
        with torch.no_grad():
            _, target = flow_map_residual(cfg.loss, self.model, x, s, t, **kw)
            d_star = (x + w * target).float().clamp_min(0)
            d_star = d_star / d_star.sum(-1, keepdim=True)
            if cfg.hard_final:  # the last jump: the multi-step sampler's token argmax D* (arXiv 1606.07947, eq. 9)
                final = (t >= 1 - 1e-6)[:, None, None]
                hard = torch.zeros_like(d_star).scatter_(-1, d_star.argmax(-1, keepdim=True), 1.0)
                d_star = torch.where(final, hard, d_star)
        logp = torch.log_softmax(self.dit(x, s, t).float(), -1)
        return (torch.xlogy(d_star, d_star) - d_star * logp).sum(-1).mean()  # KL(D* || p)


@torch.no_grad()
def generate_fmlm(flow_map: FlowMap, n: int, length: int, steps: int, seed: int, temperature: float = 0.0,
                  top_p: float = 1.0) -> Tensor:
    """``n`` token blocks ``(n, length)`` in ``steps`` map evaluations on the grid
    ``gamma(k / steps)``: :func:`modaflow.core.flow_maps.sample_flow_map` up to the last grid time,
    then the last jump's denoiser ``softmax(logits(x, gamma_{K-1}, 1))`` gives the tokens."""
    logits = final_logits_fmlm(flow_map, n, length, steps, seed)
    return pick_tokens(logits, temperature, top_p, torch.Generator(logits.device).manual_seed(seed + 1))


@torch.no_grad()
def final_logits_fmlm(flow_map: FlowMap, n: int, length: int, steps: int, seed: int) -> Tensor:
    """The logits ``(n, length, K)`` of the last jump of :func:`generate_fmlm` (its tokens are their
    argmax or a :func:`~.flm.pick_tokens` draw), from the noise of ``seed``."""
    if steps < 1 or n < 1:
        raise ValueError(f"steps and n must be >= 1; got steps={steps}, n={n}")
    dit: DiT = flow_map.net.dit
    device = next(dit.parameters()).device
    x = torch.randn(n, length, dit.cfg.vocab_size, generator=torch.Generator().manual_seed(seed)).to(device)
    grid = flm_gamma_grid(dit, steps, device)
    if steps > 1:
        x = sample_flow_map(flow_map, x, grid[:-1]).x
    return dit(x, grid[-2].expand(n), grid[-1].expand(n))
