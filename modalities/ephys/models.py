"""LangevinFlow (Song et al. 2025, arXiv 2507.11531): a sequential VAE whose latent state
follows underdamped Langevin dynamics under a coupled-oscillator potential.

Shapes: input ``x`` ``(B, T, C_in)`` (held-in channels; zeros in the forward window),
latent position ``z`` and velocity ``v`` ``(B, K)`` with ``K = channels * length``,
outputs ``(B, T, C)`` log-rates (Poisson) or ``(B, T, 2C)`` mean and log-variance (Gaussian).

1. **Encoder**: a bidirectional GRU over ``x`` gives per-bin states ``h_t`` ``(B, T, 2E)``;
   its two final states give the Gaussian posterior ``q(z_0, v_0 | x)`` (arXiv 2507.11531,
   sec. 3.2); the prior is ``N(0, I)``.
2. **Dynamics**: per bin one symplectic Euler step ``z += h v; v -= h grad U(z)`` then a damped
   velocity refresh (the core's :func:`~modaflow.core.langevin.symplectic_euler_step` and
   :func:`~modaflow.core.langevin.ou_refresh`, the exact form of the paper's
   ``v ~ N((1 - gamma) v, 2 gamma)``), with learned friction and temperature.
3. **Potential** :class:`CoupledOscillatorPotential`: ``z`` is laid out as ``channels``
   oscillator chains of ``length`` sites; ``U(z) = 1/2 sum_c omega_c^2 |z_c|^2 +
   1/2 sum_c kappa_c z_c^T (I - N) z_c`` with ``N`` a symmetric normalised 3-tap
   convolution (nearest-neighbour coupling), so ``grad U = omega^2 z + kappa (z - N z)``
   is an exact gradient.
4. **Decoder**: one transformer layer over tokens ``W [z_t, v_t, h_t] + pos_t``, then a
   linear readout (arXiv 2507.11531, sec. 3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modaflow.core.config import Config
from modaflow.core.langevin import ou_refresh, symplectic_euler_step

__all__ = ["LangevinFlowConfig", "CoupledOscillatorPotential", "LangevinFlow", "VAEOutput", "GRUEncoder",
           "sinusoidal_positions", "gaussian_kl"]


@dataclass
class LangevinFlowConfig(Config):
    """Sizes of a LangevinFlow network."""

    latent_channels: int = 4
    """Oscillator chains of the potential."""
    latent_length: int = 4
    """Sites per chain; latent size K = latent_channels * latent_length."""
    encoder_hidden: int = 64
    """Hidden size E of each direction of the GRU encoder."""
    d_model: int = 64
    """Token width of the transformer decoder layer."""
    heads: int = 4
    """Attention heads of the decoder layer."""
    dt: float = 0.1
    """Langevin step h per time bin (the paper uses 0.01 with its own time scale)."""
    gamma_init: float = 0.1
    """Initial friction gamma (learned, kept positive)."""
    temperature_init: float = 0.1
    """Initial temperature of the velocity refresh (learned, kept positive)."""
    dropout: float = 0.1
    """Dropout in the encoder output and decoder layer."""

    def validate(self) -> None:
        for name in ("latent_channels", "latent_length", "encoder_hidden", "heads"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.d_model >= 2 and self.d_model % self.heads == 0, "d_model", f"an even multiple of heads = {self.heads}")
        for name in ("dt", "gamma_init", "temperature_init"):
            self._require(getattr(self, name) > 0, name, "a number > 0")
        self._require(0 <= self.dropout < 1, "dropout", "a probability in [0, 1)")


@dataclass
class VAEOutput:
    """Forward pass of a sequential VAE.

    Attributes:
        params: ``(B, T, C)`` log-rates, or ``(B, T, 2C)`` Gaussian mean then log-variance.
        kl: ``(B,)`` KL(q || prior) of the initial conditions, in nats.
        latents: ``(B, T, L)`` latent trajectory (LangevinFlow: ``[z, v]``; LFADS: factors).
    """

    params: Tensor
    kl: Tensor
    latents: Tensor


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, e^logvar) || N(0, I))`` summed over the last dim: ``(B, D) -> (B,)``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def sinusoidal_positions(t: int, dim: int, device=None) -> Tensor:
    """Fixed sinusoidal position codes ``(t, dim)`` (Vaswani et al. 2017, arXiv 1706.03762,
    sec. 3.5), so a model trained on one trial length runs on another."""
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    out = torch.zeros(t, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out


class GRUEncoder(nn.Module):
    """Bidirectional GRU: ``x (B, T, C_in) -> (h (B, T, 2E), final (B, 2E))``."""

    def __init__(self, c_in: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(c_in, hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, last = self.gru(x)  # last: (2, B, E), forward then backward direction
        return self.drop(h), self.drop(torch.cat([last[0], last[1]], dim=-1))


class CoupledOscillatorPotential(nn.Module):
    """``U(z) = 1/2 sum omega^2 z^2 + 1/2 sum kappa z^T (I - N) z`` over ``channels`` chains
    of ``length`` sites (see the module docstring); :meth:`grad` is its exact gradient."""

    def __init__(self, channels: int, length: int) -> None:
        super().__init__()
        self.channels, self.length = channels, length
        self.log_omega2 = nn.Parameter(torch.linspace(-1.0, 1.0, channels))
        self.log_kappa = nn.Parameter(torch.zeros(channels))
        self.tap_logits = nn.Parameter(torch.zeros(2))  # (side, centre) weights of N

    def kernel(self) -> Tensor:
        """The symmetric normalised 3-tap kernel ``(w, 1 - 2w, w)`` of ``N``."""
        side, centre = self.tap_logits.exp()
        total = 2 * side + centre
        return torch.stack([side, centre, side]) / total

    def _coupling(self, z: Tensor) -> Tensor:
        zc = z.reshape(-1, self.channels, self.length)
        k = self.kernel().to(z.dtype).expand(self.channels, 1, 3)
        nz = F.conv1d(zc, k, padding=1, groups=self.channels)  # N z, zero boundary: N symmetric
        return zc, nz

    def energy(self, z: Tensor) -> Tensor:
        """``U(z)`` ``(B,)`` for ``z`` ``(B, K)``."""
        zc, nz = self._coupling(z)
        w2, kap = self.log_omega2.exp()[:, None], self.log_kappa.exp()[:, None]
        return 0.5 * (w2 * zc.pow(2)).sum((1, 2)) + 0.5 * (kap * zc * (zc - nz)).sum((1, 2))

    def grad(self, z: Tensor) -> Tensor:
        """``grad U(z) = omega^2 z + kappa (z - N z)``, ``(B, K)``."""
        zc, nz = self._coupling(z)
        w2, kap = self.log_omega2.exp()[:, None], self.log_kappa.exp()[:, None]
        return (w2 * zc + kap * (zc - nz)).reshape(z.shape)


class LangevinFlow(nn.Module):
    """The LangevinFlow sequential VAE (see the module docstring)."""

    def __init__(self, cfg: LangevinFlowConfig, c_in: int, c_out: int, likelihood: Literal["poisson", "gaussian"]) -> None:
        super().__init__()
        self.cfg, self.c_in, self.c_out, self.likelihood = cfg, c_in, c_out, likelihood
        k, e = cfg.latent_channels * cfg.latent_length, cfg.encoder_hidden
        self.k = k
        self.encoder = GRUEncoder(c_in, e, cfg.dropout)
        self.to_posterior = nn.Linear(2 * e, 4 * k)  # mean and log-variance of (z0, v0)
        self.potential = CoupledOscillatorPotential(cfg.latent_channels, cfg.latent_length)
        self.log_gamma = nn.Parameter(torch.tensor(math.log(cfg.gamma_init)))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.temperature_init)))
        self.tokens = nn.Linear(2 * k + 2 * e, cfg.d_model)
        self.decoder = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, 2 * cfg.d_model, cfg.dropout,
                                                  batch_first=True, norm_first=True)
        self.readout = nn.Linear(cfg.d_model, c_out * (2 if likelihood == "gaussian" else 1))

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(h (B, T, 2E), mu (B, 2K), logvar (B, 2K))``."""
        h, last = self.encoder(x)
        mu, logvar = self.to_posterior(last).chunk(2, dim=-1)
        return h, mu, logvar.clamp(-10.0, 5.0)

    def dynamics(self, z: Tensor, v: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Roll ``(z_0, v_0)`` ``(B, K)`` over ``T`` bins: ``Z, V`` ``(B, T, K)``, with the
        refresh noise ``(T - 1, B, K)`` (arXiv 2507.11531, eq. 5-6: symplectic step, then
        damped velocity refresh)."""
        gamma, temp, h = self.log_gamma.exp(), self.log_temperature.exp(), self.cfg.dt
        zs, vs = [z], [v]
        for xi in noise.unbind(0):
            z, v = symplectic_euler_step(z, v, self.potential.grad, h)
            v = ou_refresh(v, gamma, h, temp, xi)
            zs.append(z)
            vs.append(v)
        return torch.stack(zs, 1), torch.stack(vs, 1)

    def forward(self, x: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> VAEOutput:
        """``x`` ``(B, T, C_in)`` -> :class:`VAEOutput`. ``sample=False`` uses the posterior
        mean and zero refresh noise (the mean-field trajectory)."""
        b, t, _ = x.shape
        h, mu, logvar = self.posterior(x)
        if sample:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            noise = torch.randn((t - 1, b, self.k), generator=generator, device=mu.device, dtype=mu.dtype)
        else:
            eps, noise = torch.zeros_like(mu), torch.zeros((t - 1, b, self.k), device=mu.device, dtype=mu.dtype)
        zv0 = mu + (0.5 * logvar).exp() * eps
        z, v = self.dynamics(zv0[:, : self.k], zv0[:, self.k :], noise)
        tokens = self.tokens(torch.cat([z, v, h], dim=-1)) + sinusoidal_positions(t, self.cfg.d_model, x.device)
        params = self.readout(self.decoder(tokens))
        return VAEOutput(params=params, kl=gaussian_kl(mu, logvar), latents=torch.cat([z, v], dim=-1))
