"""The masked (absorbing-state) discrete diffusion baseline, MDLM-style (Sahoo et al. 2024,
"Simple and Effective Masked Diffusion Language Models", arXiv 2406.07524), with the same
DiT (``input="tokens"``, mask token id ``K``) and data as FLM.

Forward process with the linear schedule ``alpha_t = 1 - t``: each token is masked with
probability ``t``. Loss, the continuous-time NELBO (ibid., eq. 10 with ``alpha_t = 1 - t``,
``-alpha'_t / (1 - alpha_t) = 1 / t``): ``E_t [ (1/t) sum_{masked l} -log p(x_l | z_t) ] / L``.
Sampler (ibid., sec. 3.2.2, carry-over unmasking): from ``t`` to ``s < t`` every masked
token is revealed with probability ``(t - s) / t``, drawn from the model's distribution;
revealed tokens stay. At ``s = 0`` everything left is revealed. NFE = steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modaflow.core.losses import token_cross_entropy
from modaflow.core.training import FlowMatchingConfig, FlowMatchingModule

from .flm import pick_tokens
from .models import DiT

__all__ = ["MDLMModule", "mask_tokens", "generate_mdlm", "T_MIN"]

T_MIN = 1e-3
"""Smallest training time (the 1/t weight is unbounded at 0)."""


def mask_tokens(tokens: Tensor, t: Tensor, u: Tensor, mask_id: int) -> tuple[Tensor, Tensor]:
    """``(z_t, masked)``: ``tokens`` ``(B, L)`` with positions where ``u < t`` (``u`` uniform
    ``(B, L)``, ``t`` ``(B,)``) replaced by ``mask_id``."""
    masked = u < t[:, None]
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked


class MDLMModule(FlowMatchingModule):
    """Trains a token-input :class:`~.models.DiT` by MDLM's NELBO (module docstring)."""

    def __init__(self, model: DiT, cfg: FlowMatchingConfig) -> None:
        if model.cfg.input != "tokens":
            raise ValueError("MDLM trains a DiT with input='tokens'")
        super().__init__(model, None, cfg)

    def compute_loss(self, batch, step: int) -> Tensor:
        tokens = self.unpack(batch)[0]
        B, L = tokens.shape
        gen = self._generator(tokens.device, step)
        # t ~ U[0, 1] whatever cfg.time_sampler says: eq. 10's expectation is over uniform t
        # (FLM's default logit-normal time would reweight the NELBO)
        t = T_MIN + (1 - T_MIN) * torch.rand(B, device=tokens.device, dtype=torch.float32, generator=gen)
        z, masked = mask_tokens(tokens, t, torch.rand(B, L, device=tokens.device, generator=gen), self.model.cfg.vocab_size)
        nll = token_cross_entropy(self.model(z, t).float(), tokens)  # (B, L)
        return (nll * masked / t[:, None]).sum() / (B * L)  # NELBO, arXiv 2406.07524 eq. 10


@torch.no_grad()
def generate_mdlm(model: DiT, n: int, length: int, steps: int, seed: int, temperature: float = 1.0, top_p: float = 1.0) -> Tensor:
    """``n`` blocks ``(n, length)`` from all-mask in ``steps`` uniform steps of ``t`` from 1 to 0."""
    if steps < 1 or n < 1:
        raise ValueError(f"steps and n must be >= 1; got steps={steps}, n={n}")
    device = next(model.parameters()).device
    K = model.cfg.vocab_size
    gen = torch.Generator(device).manual_seed(seed)
    x = torch.full((n, length), K, dtype=torch.long, device=device)
    times = torch.linspace(1, 0, steps + 1, device=device)
    for k in range(steps):
        t, s = times[k], times[k + 1]
        draw = pick_tokens(model(x, t.expand(n)), temperature, top_p, gen)
        reveal = (x == K) & (torch.rand(n, length, generator=gen, device=device) < (t - s) / t)
        x = torch.where(reveal, draw, x)
    return x
