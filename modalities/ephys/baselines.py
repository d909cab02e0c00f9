"""Baselines measured beside LangevinFlow in the same run.

* :class:`LFADS`: the LFADS-style GRU sequential VAE (Pandarinath et al. 2018,
  Nat. Methods 15:805; arXiv 1608.06315): a bidirectional GRU encoder gives the posterior
  of the generator's initial state ``g_0``; an input-free generator GRU unrolls
  ``g_t``; factors ``f_t = W_f g_t``; a linear readout of ``f_t`` gives log-rates (or
  Gaussian mean / log-variance). No controller. Trained by the same module as LangevinFlow
  (coordinated dropout, KL and L2 ramps).
* :func:`smoothing_glm`: the NLB "smoothing" baseline (Pei et al. 2021, arXiv 2109.04463,
  sec. 5): held-in spikes convolved with a Gaussian kernel, then one GLM per held-out
  channel from the smoothed held-in signals (Poisson with log link for spikes, scikit-learn
  ``PoissonRegressor``'s objective, fitted for all channels at once; ridge for EEG). Held-in rates are the smoothed
  spikes themselves; forward-window predictions are each channel's training mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from modaflow.core.config import Config

from .models import GRUEncoder, VAEOutput, gaussian_kl
from .spikes import TrialData

__all__ = ["LFADSConfig", "LFADS", "SmoothingConfig", "gaussian_smooth", "poisson_glm", "smoothing_glm"]


@dataclass
class LFADSConfig(Config):
    """Sizes of the LFADS-style baseline."""

    lfads_encoder_hidden: int = 64
    """Hidden size of each direction of the LFADS encoder GRU."""
    generator_hidden: int = 64
    """Hidden size of the generator GRU (g_0 has this size)."""
    factors: int = 16
    """Number of latent factors f_t."""
    lfads_dropout: float = 0.1
    """Dropout on the LFADS encoder output and the factors."""

    def validate(self) -> None:
        for name in ("lfads_encoder_hidden", "generator_hidden", "factors"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(0 <= self.lfads_dropout < 1, "lfads_dropout", "a probability in [0, 1)")


class LFADS(nn.Module):
    """LFADS without a controller (see the module docstring); ``forward`` like
    :class:`~.models.LangevinFlow`."""

    def __init__(self, cfg: LFADSConfig, c_in: int, c_out: int, likelihood: Literal["poisson", "gaussian"]) -> None:
        super().__init__()
        self.cfg, self.likelihood = cfg, likelihood
        g = cfg.generator_hidden
        self.encoder = GRUEncoder(c_in, cfg.lfads_encoder_hidden, cfg.lfads_dropout)
        self.to_posterior = nn.Linear(2 * cfg.lfads_encoder_hidden, 2 * g)
        self.generator = nn.GRUCell(1, g)  # input-free: fed a constant zero
        self.to_factors = nn.Linear(g, cfg.factors, bias=False)
        self.drop = nn.Dropout(cfg.lfads_dropout)
        self.readout = nn.Linear(cfg.factors, c_out * (2 if likelihood == "gaussian" else 1))

    def forward(self, x: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> VAEOutput:
        b, t, _ = x.shape
        _, last = self.encoder(x)
        mu, logvar = self.to_posterior(last).chunk(2, dim=-1)
        logvar = logvar.clamp(-10.0, 5.0)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype) if sample else 0.0
        g = mu + (0.5 * logvar).exp() * eps
        zero = x.new_zeros(b, 1)
        states = []
        for _ in range(t):
            states.append(g)
            g = self.generator(zero, g)
        factors = self.drop(self.to_factors(torch.stack(states, 1)))  # (B, T, F)
        return VAEOutput(params=self.readout(factors), kl=gaussian_kl(mu, logvar), latents=factors)


@dataclass
class SmoothingConfig(Config):
    """The smoothing + GLM baseline."""

    kernel_sd_bins: float = 2.0
    """Standard deviation of the Gaussian smoothing kernel, in bins (40 ms at 20 ms bins)."""
    alpha: float = 1e-2
    """L2 penalty of each GLM."""

    def validate(self) -> None:
        self._require(self.kernel_sd_bins > 0, "kernel_sd_bins", "a number > 0")
        self._require(self.alpha >= 0, "alpha", "a number >= 0")


def gaussian_smooth(x: np.ndarray, sd_bins: float) -> np.ndarray:
    """Convolve ``x`` ``(N, T, C)`` along time with a normalised Gaussian of ``sd_bins``
    (kernel truncated at 3 sd; edges renormalised so a constant stays constant)."""
    half = max(1, int(np.ceil(3 * sd_bins)))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sd_bins) ** 2)
    t = x.shape[1]
    out, norm = np.zeros_like(x, dtype=np.float64), np.zeros(t)
    for j, w in zip(range(-half, half + 1), k):
        lo, hi = max(0, -j), min(t, t - j)  # out[s] += w * x[s + j]
        out[:, lo:hi] += w * x[:, lo + j : hi + j]
        norm[lo:hi] += w
    return out / norm[None, :, None]


def poisson_glm(x: np.ndarray, y: np.ndarray, alpha: float, max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Poisson GLMs with log link for every column of ``y`` ``(M, J)`` from ``x`` ``(M, D)``
    at once: minimises ``mean_m(e^{x w + b} - y (x w + b)) + alpha / 2 |w|^2`` per column
    (scikit-learn ``PoissonRegressor``'s objective: half the mean deviance plus the L2
    penalty, intercept unpenalised) by L-BFGS in float64. Returns ``(w (D, J), b (J,))``."""
    xt, yt = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(np.asarray(y, np.float64))
    w = torch.zeros(xt.shape[1], yt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.log(yt.mean(0).clamp_min(1e-9)).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        eta = xt @ w + b
        loss = (eta.exp() - yt * eta).mean(0).sum() + 0.5 * alpha * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def smoothing_glm(train: TrialData, test: TrialData, cfg: SmoothingConfig | None = None) -> Tensor:
    """Predicted rates ``(N_test, T, C)`` (expected counts per bin, or signal means) of
    the smoothing + GLM baseline, fitted on the observed bins of ``train``."""
    from sklearn.linear_model import Ridge

    cfg = cfg or SmoothingConfig()
    hi, to = train.n_heldin, train.t_obs
    if (test.n_heldin, test.t_obs, test.n_channels) != (hi, to, train.n_channels):
        raise ValueError("smoothing_glm: train and test must share channels, held-in split and t_obs")
    feats = lambda d: gaussian_smooth(d.x[:, :to, :hi].double().numpy(), cfg.kernel_sd_bins)  # noqa: E731
    f_train, f_test = feats(train), feats(test)
    x_train = f_train.reshape(-1, hi)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    z_train, z_test = (x_train - mu) / sd, (f_test.reshape(-1, hi) - mu) / sd
    y_train = train.x[:, :to, hi:].double().numpy().reshape(-1, train.n_heldout)
    out = np.empty((test.x.shape[0], test.n_bins, test.n_channels))
    out[:, :to, :hi] = f_test
    if train.likelihood == "poisson":
        w, b = poisson_glm(z_train, y_train, cfg.alpha)
        pred = np.exp(z_test @ w + b)
    else:
        pred = Ridge(alpha=cfg.alpha).fit(z_train, y_train).predict(z_test)
    out[:, :to, hi:] = pred.reshape(test.x.shape[0], to, train.n_heldout)
    out[:, to:, :] = train.x[:, :to].double().mean((0, 1)).numpy()  # forward window: training means
    if train.likelihood == "poisson":
        out = np.maximum(out, 1e-9)
    return torch.from_numpy(out.astype(np.float32))
