"""Networks of NeuroFlow (arXiv 2604.09817): the visual autoencoder, the NeuroVAE, the XFM
velocity field between the two latents, and the conditional velocity of the one-direction
flow baselines.

Shapes: images ``(B, H, W)`` in [0, 1]; voxel responses ``(B, V)`` (z-scored); latents
``(B, d)``; times ``(B,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from modaflow.core.config import Config
from modaflow.core.nn import ResidualMLP, ResidualMLPConfig

__all__ = ["AEConfig", "VisualAE", "FeatureNetConfig", "FeatureNet", "NeuroVAEConfig", "NeuroVAE", "kl_standard_normal", "build_xfm", "CondVelocity"]


def _mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.LayerNorm(b), nn.SiLU()] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers)


@dataclass
class AEConfig(Config):
    """Shape of the visual autoencoder."""

    image_size: int = 16
    """Images are image_size x image_size."""
    hidden: int = 256
    """Width of the hidden layers."""
    latent: int = 32
    """Visual latent dimension d."""

    def validate(self) -> None:
        for name in ("image_size", "hidden", "latent"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")


class VisualAE(nn.Module):
    """A deterministic MLP autoencoder: ``encode (B, H, W) -> (B, d)``, ``decode (B, d) ->
    (B, H, W)`` (sigmoid output). Trained here on the training stimuli (no pretrained
    weights exist offline)."""

    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p = cfg.image_size**2
        self.encoder = _mlp([p, cfg.hidden, cfg.hidden, cfg.latent])
        self.decoder = _mlp([cfg.latent, cfg.hidden, cfg.hidden, p])

    def encode(self, img: Tensor) -> Tensor:
        return self.encoder(img.flatten(1))

    def decode(self, z: Tensor) -> Tensor:
        s = self.cfg.image_size
        return torch.sigmoid(self.decoder(z)).view(-1, s, s)

    def loss(self, img: Tensor) -> Tensor:
        """Pixel MSE of the reconstruction."""
        return ((self.decode(self.encode(img)) - img) ** 2).mean()


@dataclass
class FeatureNetConfig(Config):
    """Shape of the feature network of the decoding metrics."""

    image_size: int = 16
    """Images are image_size x image_size."""
    channels: int = 32
    """Feature maps of the second convolution (the first has half as many)."""

    def validate(self) -> None:
        self._require(self.image_size >= 4, "image_size", "an integer >= 4")
        self._require(self.channels >= 2 and self.channels % 2 == 0, "channels", "an even integer >= 2")


class FeatureNet(nn.Module):
    """The feature space of two-way identification and retrieval of decoded images: a
    convolutional autoencoder trained here on the training stimuli, apart from NeuroFlow.
    ``encode (B, H, W) -> (B, channels * ceil(H/4) * ceil(W/4))`` is its encoder's feature
    map (two 3 x 3 convolutions of stride 2), as NSD decoding papers score images in the
    layers of a network trained elsewhere. Identification in the visual AE's own latent would
    score decoded images in the space NeuroFlow and the latent ridge decoder aim at; this
    network has another architecture and seed and no part in any decoder."""

    def __init__(self, cfg: FeatureNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.encoder = nn.Sequential(nn.Conv2d(1, c // 2, 3, stride=2, padding=1), nn.SiLU(),
                                     nn.Conv2d(c // 2, c, 3, stride=2, padding=1), nn.SiLU())
        self.decoder = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1), nn.SiLU(),
                                     nn.ConvTranspose2d(c // 2, 1, 4, stride=2, padding=1))

    def _maps(self, img: Tensor) -> Tensor:
        return self.encoder(img[:, None])

    def encode(self, img: Tensor) -> Tensor:
        return self._maps(img).flatten(1)

    def loss(self, img: Tensor) -> Tensor:
        """Pixel MSE of the reconstruction (cropped to the image where the strides round up)."""
        s = self.cfg.image_size
        rec = torch.sigmoid(self.decoder(self._maps(img)))[:, 0, :s, :s]
        return ((rec - img) ** 2).mean()


@dataclass
class NeuroVAEConfig(Config):
    """Shape and objective of the NeuroVAE."""

    voxels: int = 464
    """Number of voxels V."""
    hidden: int = 512
    """Width of the hidden layers."""
    latent: int = 32
    """Neural latent dimension d."""
    beta: float = 1.0
    """Weight of the KL term per voxel: loss = MSE + beta * KL / V."""
    dropout: float = 0.1
    """Dropout in the encoder's hidden layers."""

    def validate(self) -> None:
        for name in ("voxels", "hidden", "latent"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.beta >= 0, "beta", "a number >= 0")
        self._require(0 <= self.dropout < 1, "dropout", "a probability in [0, 1)")


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag e^logvar) || N(0, I))`` per sample ``(B,)`` (Kingma & Welling 2014,
    arXiv 1312.6114, appendix B)."""
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)


class NeuroVAE(nn.Module):
    """A VAE on z-scored voxel vectors: ``encode (B, V) -> (mu, logvar)`` each ``(B, d)``,
    ``decode (B, d) -> (B, V)``. The neural latent of NeuroFlow is ``mu``."""

    def __init__(self, cfg: NeuroVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = _mlp([cfg.voxels, cfg.hidden, cfg.hidden, 2 * cfg.latent], cfg.dropout)
        self.decoder = _mlp([cfg.latent, cfg.hidden, cfg.hidden, cfg.voxels])

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 6.0)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def loss(self, x: Tensor, generator: torch.Generator | None = None, target: Tensor | None = None) -> Tensor:
        """``MSE(y, decode(z)) + beta KL / V`` with ``z = mu(x) + e^{logvar(x)/2} eps``
        (reparameterisation, Kingma & Welling 2014, eq. 10) and ``y = target`` (default
        ``x``). A ``target`` that is another trial of ``x``'s stimulus makes it a
        Noise2Noise objective (Lehtinen et al. 2018, ICML, eq. 2: the two trials' noise is
        independent, so the expected target is the noise-free response)."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + (0.5 * logvar).exp() * eps
        y = x if target is None else target
        rec = ((self.decode(z) - y) ** 2).mean()  # Noise2Noise (Lehtinen et al. 2018, eq. 2) when y is another trial
        return rec + self.cfg.beta * kl_standard_normal(mu, logvar).mean() / self.cfg.voxels


def build_xfm(dim: int, hidden: int, depth: int) -> ResidualMLP:
    """The XFM velocity field ``v(x, t)`` on the shared latent space ``(B, dim)``."""
    return ResidualMLP(ResidualMLPConfig(dim=dim, hidden=hidden, depth=depth))


class CondVelocity(nn.Module):
    """``v(x, t, c)``: a :class:`ResidualMLP` on ``[x, c]`` whose first ``dim`` outputs are
    the velocity (the one-direction flow baselines: noise -> one latent given the other).
    ``forward(x (B, dim), t (B,), cond (B, cond_dim)) -> (B, dim)``."""

    def __init__(self, dim: int, cond_dim: int, hidden: int, depth: int) -> None:
        super().__init__()
        self.dim = dim
        self.net = ResidualMLP(ResidualMLPConfig(dim=dim + cond_dim, hidden=hidden, depth=depth))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.net(torch.cat([x, cond], dim=-1), t)[:, : self.dim]
