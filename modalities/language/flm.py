"""FLM ("One-step Language Modeling via Continuous Denoising", 2026; REFERENCE §3): a flow on
the noisy one-hot ``x_gamma = (1 - gamma) eps + gamma onehot(x)`` (the core's linear path with
its time read as ``gamma``), trained by cross-entropy of the denoiser's logits against the
clean tokens, sampled by Euler in ``gamma`` with the velocity ``v = (p - x) / (1 - gamma)``,
``p = softmax(logits)``, and a final argmax (or temperature / top-p draw).

Training time: ``t`` from the core's time sampler (the language recipe's default: logit-normal
(0, 1), Esser et al. 2024, arXiv 2403.03206, eq. 19; uniform before), ``gamma = gamma(t)``
from the reparameterization table of the model's vocabulary (:mod:`.reparam`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from modaflow.core.losses import one_hot_cross_entropy
from modaflow.core.ode import solve_ode
from modaflow.core.training import FlowMatchingConfig, FlowMatchingModule

from .models import DiT

__all__ = ["FLMConfig", "FLMModule", "chunked_cross_entropy", "noisy_onehot", "pick_tokens", "flm_velocity",
           "flm_gamma_grid", "generate_flm", "final_logits_flm"]


@dataclass
class FLMConfig(FlowMatchingConfig):
    """A flow-matching run config plus FLM's training-speed switches."""

    fast_input: bool = True
    """Draw eps W from its law N(0, W^T W) as n F (no (B, L, K) noise); False: dense x_gamma W."""
    ce_chunk: int = 4096
    """Tokens per chunk of the cross-entropy (logits of one chunk at a time, recomputed in the
    backward pass); 0 = all logits at once."""
    compile: bool = False
    """torch.compile the whole training loss (:meth:`FLMModule.loss_from_draws`: noisy input
    projection, blocks, head and cross-entropy). On an H100 at GPT-2-small size, K = 50 257, this
    step ran at 3.14x the dense eager step's tokens/s, against 1.29x without compiling
    (benchmarks/RESULTS.md); the first steps compile (about 30 s there). On a CPU it needs a
    C++ compiler."""

    def validate(self) -> None:
        super().validate()
        self._require(self.ce_chunk >= 0, "ce_chunk", "an integer >= 0")


def noisy_onehot(tokens: Tensor, gamma: Tensor, eps: Tensor) -> Tensor:
    """``x_gamma = (1 - gamma) eps + gamma onehot(tokens)``: ``tokens`` ``(B, L)``, ``gamma``
    ``(B,)``, ``eps`` ``(B, L, K)`` -> ``(B, L, K)`` (FLM's path, REFERENCE §3)."""
    g = gamma.to(eps.dtype)[:, None, None]
    return (1 - g) * eps + g * F.one_hot(tokens, eps.shape[-1]).to(eps.dtype)


def chunked_cross_entropy(hidden: Tensor, head: nn.Linear, tokens: Tensor, chunk: int) -> Tensor:
    """Token-mean cross-entropy of ``head(hidden)`` against ``tokens`` without holding all
    logits: ``hidden`` ``(B, L, d)``, ``tokens`` ``(B, L)``. Each chunk of ``chunk`` tokens is
    scored by :func:`~modaflow.core.losses.one_hot_cross_entropy` under activation
    checkpointing, so its fp32 logits are rebuilt in the backward pass, not stored."""
    h, y = hidden.reshape(-1, hidden.shape[-1]), tokens.reshape(-1)
    if chunk <= 0 or chunk >= y.numel():
        return one_hot_cross_entropy(head(h).float()[None], y[None])

    def part(hc: Tensor, yc: Tensor) -> Tensor:
        return one_hot_cross_entropy(head(hc).float()[None], yc[None]) * yc.numel()

    total = sum(checkpoint(part, h[i:i + chunk], y[i:i + chunk], use_reentrant=False) for i in range(0, y.numel(), chunk))
    return total / y.numel()


class FLMModule(FlowMatchingModule):
    """Trains a :class:`~.models.DiT` (onehot input) by FLM's clean-token cross-entropy.
    Batches are token blocks ``(B, L)`` int64 (or ``(x1,)`` from a TensorDataset)."""

    def __init__(self, model: DiT, cfg: FLMConfig) -> None:
        if model.cfg.input != "onehot" or model.reparam is None:
            raise ValueError("FLM trains a DiT with input='onehot' and reparam=True")
        super().__init__(model, None, cfg)
        # what each training step calls: loss_from_draws, compiled when cfg.compile
        self.step_loss = torch.compile(self.loss_from_draws) if cfg.compile else self.loss_from_draws

    def draw_gamma(self, B: int, device: torch.device, gen: torch.Generator) -> Tensor:
        """``gamma(t)`` for ``t`` from the time sampler on ``[t_min, t_max]``, ``(B,)``."""
        t = self.time_sampler(B, device=device, dtype=torch.float32, generator=gen)
        t = self.cfg.t_min + (self.cfg.t_max - self.cfg.t_min) * t
        return self.model.reparam.gamma_of_t(t)

    def compute_loss(self, batch, step: int) -> Tensor:
        tokens = self.unpack(batch)[0]
        gamma, noise = self.draw(tokens, self._generator(tokens.device, step))
        return self.step_loss(tokens, gamma, noise)

    def draw(self, tokens: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """The step's random draws for ``tokens`` ``(B, L)``: ``gamma`` ``(B,)`` and the noise,
        ``n`` ``(B, L, r)`` when ``cfg.fast_input`` (:meth:`~.models.DiT.embed_noisy`), else
        ``eps`` ``(B, L, K)``."""
        B, L = tokens.shape
        model: DiT = self.model
        width = model.noise_rank if self.cfg.fast_input else model.cfg.vocab_size
        gamma = self.draw_gamma(B, tokens.device, gen)
        return gamma, torch.randn(B, L, width, generator=gen, device=tokens.device)

    def loss_from_draws(self, tokens: Tensor, gamma: Tensor, noise: Tensor) -> Tensor:
        """The loss given the draws of :meth:`draw`; a pure function of its inputs and the
        weights, so it can be ``torch.compile``d whole (no generator inside). It uses the DiT's
        parts, so it runs through :meth:`~.models.DiT.apply_parts` (FSDP-ready)."""
        return self.model.apply_parts(self._clean_token_loss, tokens, gamma, noise)

    def _clean_token_loss(self, model: DiT, tokens: Tensor, gamma: Tensor, noise: Tensor) -> Tensor:
        if self.cfg.fast_input:  # x_gamma W = gamma W[x] + (1 - gamma) eps W, eps W ~ n F (REFERENCE §3)
            h = model.embed_noisy(tokens, gamma, noise)
        else:
            h = model.embed_input(noisy_onehot(tokens, gamma, noise))
        hidden = model.trunk(h, model.condition(gamma, None))
        return chunked_cross_entropy(hidden, model.out, tokens, self.cfg.ce_chunk)


def pick_tokens(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Tokens ``(B, L)`` from logits ``(B, L, K)``: argmax when ``temperature == 0``, else a
    draw from ``softmax(logits / temperature)`` restricted to the smallest set of tokens whose
    probability reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020, arXiv 1904.09751,
    eq. 2), by the Gumbel-max trick with ``generator``."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1]; got {temperature}, {top_p}")
    if temperature == 0:
        return logits.argmax(-1)
    logp = torch.log_softmax(logits.float() / temperature, -1)
    if top_p < 1:
        sorted_lp, idx = logp.sort(-1, descending=True)
        before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()  # mass of the tokens ranked above
        drop = torch.zeros_like(logp, dtype=torch.bool).scatter(-1, idx, before >= top_p)
        logp = logp.masked_fill(drop, float("-inf"))
    u = torch.rand(logp.shape, generator=generator, device=logp.device).clamp_(1e-12, 1 - 1e-7)
    return (logp - torch.log(-torch.log(u))).argmax(-1)


def flm_velocity(model: DiT):
    """FLM's field ``v(x, gamma) = (softmax(logits(x, gamma)) - x) / (1 - gamma)`` (REFERENCE §3)."""

    def field(x: Tensor, gamma: Tensor) -> Tensor:
        p = torch.softmax(model(x, gamma).float(), -1).to(x.dtype)
        return (p - x) / (1 - gamma).clamp_min(1e-6)[:, None, None]

    return field


def flm_gamma_grid(model: DiT, steps: int, device: torch.device) -> Tensor:
    """``gamma(t_k)`` on the uniform grid ``t_k = k / steps``, ``(steps + 1,)``."""
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64, device=device)
    return model.reparam.gamma_of_t(t).float()


@torch.no_grad()
def generate_flm(model: DiT, n: int, length: int, steps: int, seed: int, temperature: float = 0.0,
                 top_p: float = 1.0) -> Tensor:
    """``n`` token blocks ``(n, length)`` by Euler in ``gamma`` over ``steps`` steps: ``steps - 1``
    Euler steps of :func:`modaflow.core.ode.solve_ode` on the grid ``gamma(k / steps)``, then the
    denoiser at the last grid time gives the tokens (argmax, or :func:`pick_tokens`). NFE = steps."""
    logits = final_logits_flm(model, n, length, steps, seed)
    return pick_tokens(logits, temperature, top_p, torch.Generator(logits.device).manual_seed(seed + 1))


@torch.no_grad()
def final_logits_flm(model: DiT, n: int, length: int, steps: int, seed: int) -> Tensor:
    """The logits ``(n, length, K)`` of the last of :func:`generate_flm`'s ``steps`` network calls
    (its tokens are their argmax or a :func:`pick_tokens` draw), from the noise of ``seed``."""
    if steps < 1 or n < 1:
        raise ValueError(f"steps and n must be >= 1; got steps={steps}, n={n}")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, model.cfg.vocab_size, generator=gen).to(device)
    grid = flm_gamma_grid(model, steps, device)
    if steps > 1:
        x = solve_ode(flm_velocity(model), x, grid[:-1], method="euler").x
    return model(x, grid[-2].expand(n))
