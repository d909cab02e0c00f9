"""Metrics of the time-series generation protocol (TimeGAN, Yoon et al. 2019; Diffusion-TS,
Yuan & Qiao 2024, arXiv 2403.01742, sec. 5.1) and of probabilistic forecasts.

Inputs are windows ``(N, L, C)`` in the normalised space (min-max [0, 1] for the protocol's
sets). Lower is better for all of them but :func:`roughness`, whose ideal is 1.

* :func:`discriminative_score`: a 1-layer GRU (hidden ``max(1, C // 2)``) + linear logit is
  trained to tell real from generated on an 80/20 split of each (2000 Adam iterations of
  batch 128 in the protocol); score ``|accuracy - 0.5|`` on the 20%.
  :func:`discriminative_chance` is what a classifier guessing at random scores on that 20%:
  a generator indistinguishable from the data earns about this much, not 0, unless the
  classifier collapses onto one class.
* :func:`predictive_score`: "train on synthetic, test on real": a GRU (hidden
  ``max(1, C // 2)``) + linear + sigmoid predicts channel ``C - 1`` at step ``j + 1`` from
  channels ``0..C-2`` at steps ``<= j``; trained with the L1 loss on generated windows
  (5000 iterations of batch 128), score = MAE on all real windows. With one channel it
  predicts that channel from its own past (the protocol leaves ``C = 1`` undefined).
* :func:`correlational_score`: channels standardised over (windows, time); lag-0
  cross-correlations ``E[x_i x_j]`` for ``i >= j``, averaged over windows; the sum of
  absolute differences real vs generated, divided by 10 (Diffusion-TS's CrossCorrelLoss).
* :func:`roughness` (a diagnostic beside the protocol's four): the largest, over channels,
  ratio of the second difference's standard deviation, generated over real. 1 is as smooth
  as the data; above 1 the samples carry high-frequency noise the data lacks (MuJoCo's root
  positions are nearly straight lines over a window, and a GRU seed that notices the noise
  scores them far from chance: benchmarks/RESULTS.md); below 1 they are over-smoothed.
* :func:`dcr_ratio` (a diagnostic of copying, not in the protocol; ideal 1): every metric above
  compares generated windows with the training windows, so a model that copied its training set
  would score at chance. The median distance from a generated window to its closest training
  window (DCR, "distance to closest record", flattened windows, Euclidean), over the median
  distance from a training window to its closest other training window that does not overlap it
  (:func:`closest_distances`): a new window from the data's distribution scores about 1, a
  copy 0.
* :func:`context_fid`: the Fréchet distance between Gaussians fitted to the TS2Vec
  embeddings (:mod:`.ts2vec`) of real and generated windows (Jeha et al. 2022, ICLR,
  "PSA-GAN", sec. 4): ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``.
* :func:`crps_samples`: CRPS from ``S`` samples, ``E|X - y| - 1/2 E|X - X'|`` (Gneiting &
  Raftery 2007, JASA 102, eq. 21), averaged over the forecast entries; :func:`point_errors`:
  MSE and MAE of the sample mean.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from .ts2vec import TS2VecEncoder, embed

__all__ = [
    "GRUHead",
    "discriminative_score",
    "discriminative_chance",
    "predictive_score",
    "cross_correlation",
    "correlational_score",
    "roughness",
    "overlapping_neighbours",
    "closest_distances",
    "dcr_ratio",
    "frechet_distance",
    "context_fid",
    "crps_samples",
    "point_errors",
]


def _as_tensor(x, dtype: torch.dtype = torch.float32) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).to(dtype)
    if t.ndim != 3:
        raise ValueError(f"expected windows of shape (N, L, C); got {tuple(t.shape)}")
    return t


class GRUHead(nn.Module):
    """A 1-layer GRU and a linear read-out per step (or of the last step): ``(B, L, Cin) ->
    (B, L, out)`` or ``(B, out)``."""

    def __init__(self, cin: int, hidden: int, out: int = 1) -> None:
        super().__init__()
        self.gru = nn.GRU(cin, hidden, batch_first=True)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: Tensor, last: bool = False) -> Tensor:
        h, _ = self.gru(x)
        return self.head(h[:, -1] if last else h)


DISC_TRAIN_FRACTION = 0.8
"""Fraction of each set (real, generated) the discriminative classifier trains on; it is
scored on the rest (the protocol's 80/20 split)."""


def _disc_test_size(n: int) -> int:
    return n - int(DISC_TRAIN_FRACTION * n)


def discriminative_chance(n_real: int, n_fake: int) -> float:
    """Expected :func:`discriminative_score` of a classifier that calls each held-out window
    real with probability 1/2, whatever its class, for sets of ``n_real`` and ``n_fake``
    windows: the score's noise floor. Its correct count K on the ``N`` held-out windows is
    Binomial(N, 1/2), and ``E|K/N - 1/2|`` is de Moivre's mean absolute deviation
    ``E|K - Np| = 2 nu C(N, nu) p^nu q^(N - nu + 1)``, ``nu = floor(Np) + 1`` (Diaconis &
    Zabell 1991, Statist. Sci. 6, 284, eq. 1.1), divided by N; about ``sqrt(2 / pi) / (2
    sqrt(N))``, 0.0066 for the protocol's 9000 + 9000 Sines windows. Scores below it are
    not resolved by the metric."""
    if n_real < 1 or n_fake < 1:
        raise ValueError(f"discriminative_chance needs at least one window per set; got {n_real} and {n_fake}")
    N = _disc_test_size(n_real) + _disc_test_size(n_fake)
    nu = N // 2 + 1  # floor(N p) + 1 with p = 1/2
    log_mad = math.log(2 * nu) + math.lgamma(N + 1) - math.lgamma(nu + 1) - math.lgamma(N - nu + 1) - (N + 1) * math.log(2)
    return math.exp(log_mad) / N  # de Moivre (Diaconis & Zabell 1991, eq. 1.1), p = q = 1/2


def discriminative_score(real, fake, iterations: int = 2000, batch: int = 128, seed: int = 0) -> float:
    """``|accuracy - 0.5|`` of a post-hoc GRU classifier on a held-out 20% (module doc)."""
    real, fake = _as_tensor(real), _as_tensor(fake)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    def split(x: Tensor) -> tuple[Tensor, Tensor]:
        perm = torch.randperm(x.shape[0], generator=g)
        cut = x.shape[0] - _disc_test_size(x.shape[0])
        return x[perm[:cut]], x[perm[cut:]]

    (rtr, rte), (ftr, fte) = split(real), split(fake)
    C = real.shape[-1]
    net = GRUHead(C, max(1, C // 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    bce = nn.BCEWithLogitsLoss()
    for _ in range(iterations):
        xr = rtr[torch.randint(0, rtr.shape[0], (min(batch, rtr.shape[0]),), generator=g)]
        xf = ftr[torch.randint(0, ftr.shape[0], (min(batch, ftr.shape[0]),), generator=g)]
        logits = net(torch.cat([xr, xf]), last=True)[:, 0]
        labels = torch.cat([torch.ones(xr.shape[0]), torch.zeros(xf.shape[0])])
        loss = bce(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pr = net(rte, last=True)[:, 0] > 0
        pf = net(fte, last=True)[:, 0] > 0
    acc = (pr.sum() + (~pf).sum()).item() / (pr.numel() + pf.numel())
    return abs(acc - 0.5)


def _predictive_io(x: Tensor) -> tuple[Tensor, Tensor]:
    C = x.shape[-1]
    inputs = x[:, :-1, : C - 1] if C > 1 else x[:, :-1, :]
    return inputs, x[:, 1:, C - 1 :]


def predictive_score(real, fake, iterations: int = 5000, batch: int = 128, seed: int = 0, bounded: bool = True,
                     lr: float = 1e-3) -> float:
    """MAE on real windows of a GRU one-step predictor trained on generated ones (module
    doc). ``bounded``: a sigmoid output (data in [0, 1], the protocol's); ``lr``: Adam's
    learning rate (the protocol's 1e-3, TensorFlow's default)."""
    real, fake = _as_tensor(real), _as_tensor(fake)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    C = real.shape[-1]
    net = GRUHead(max(1, C - 1), max(1, C // 2))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xin, yout = _predictive_io(fake)
    act = torch.sigmoid if bounded else (lambda z: z)
    for _ in range(iterations):
        idx = torch.randint(0, xin.shape[0], (min(batch, xin.shape[0]),), generator=g)
        loss = (act(net(xin[idx])) - yout[idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    rin, rout = _predictive_io(real)
    with torch.no_grad():
        pred = act(net(rin))
    return float((pred - rout).abs().mean(dim=(1, 2)).mean())  # per-window MAE, averaged


def cross_correlation(x) -> Tensor:
    """Lag-0 cross-correlations of standardised channels, lower triangle incl. the
    diagonal (``torch.tril_indices`` order), averaged over windows: ``(C (C + 1) / 2,)``
    float64. Channels are standardised over (windows, time), unbiased std."""
    x = _as_tensor(x, torch.float64)
    x = (x - x.mean(dim=(0, 1), keepdim=True)) / x.std(dim=(0, 1), keepdim=True)
    i, j = torch.tril_indices(x.shape[-1], x.shape[-1])
    return (x[..., i] * x[..., j]).mean(dim=1).mean(dim=0)


def correlational_score(real, fake, subset: int = 0, seed: int = 0) -> float:
    """``sum |rho_real - rho_fake| / 10`` over the lower-triangular lag-0 correlations, of the
    whole sets, or (``subset > 0``) of ``subset`` windows drawn at random with replacement from
    each set (generator seeded ``seed``): the protocol's estimator (Diffusion-TS scores 5 such
    draws of N / 5 windows, one per repeat), whose sampling noise raises the score, so that its
    published numbers compare with this one only (a perfect generator scores about 0.016 on Sines
    and 0.19 on MuJoCo with it, 0.007 and 0.08 on the whole sets)."""
    if subset > 0:
        rng = np.random.default_rng(seed)
        real = np.asarray(real)[rng.integers(0, len(real), subset)]
        fake = np.asarray(fake)[rng.integers(0, len(fake), subset)]
    return float((cross_correlation(fake) - cross_correlation(real)).abs().sum() / 10.0)


def roughness(real, fake) -> float:
    """``max_c std(D2 fake[..., c]) / std(D2 real[..., c])`` with ``D2 x_j = x_{j+1} - 2 x_j +
    x_{j-1}`` along time, std over (windows, time) per channel (module doc). Channels that are
    straight lines in every real window (second difference below 1e-9 of the channel's std:
    rounding) are left out; an error if that leaves none."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if real.ndim != 3 or fake.ndim != 3 or real.shape[1:] != fake.shape[1:] or real.shape[1] < 3:
        raise ValueError(f"roughness needs windows (N, L >= 3, C) of one shape; got {real.shape} and {fake.shape}")
    d2r = np.diff(real, 2, axis=1).std(axis=(0, 1))
    d2f = np.diff(fake, 2, axis=1).std(axis=(0, 1))
    keep = d2r > 1e-9 * real.std(axis=(0, 1))
    if not keep.any():
        raise ValueError("roughness is undefined: every real channel is a straight line (no second difference)")
    return float((d2f[keep] / d2r[keep]).max())


def overlapping_neighbours(windows, stride: int) -> np.ndarray:
    """``(N, K)`` boolean, ``K = ceil(L / stride) - 1``: entry ``(i, k - 1)`` says whether window
    ``i + k`` is window ``i`` moved on by ``k * stride`` steps of the same series, i.e. whether
    the two share their ``L - k * stride`` common steps exactly (sliding windows of one series;
    never across the end of one series and the start of the next, nor for independent windows)."""
    w = np.asarray(windows)
    if w.ndim != 3 or stride < 1:
        raise ValueError(f"expected windows (N, L, C) and stride >= 1; got {w.shape} and {stride}")
    n, length = w.shape[:2]
    k_max = max(0, -(-length // stride) - 1)
    out = np.zeros((n, k_max), dtype=bool)
    for k in range(1, min(k_max, n - 1) + 1):
        lag = k * stride
        out[: n - k, k - 1] = (w[: n - k, lag:] == w[k:, : length - lag]).all(axis=(1, 2))
    return out


def closest_distances(query, reference, stride: int | None = None, chunk: int = 1024) -> np.ndarray:
    """Euclidean distance from each window of ``query`` ``(N, L, C)`` to its closest window of
    ``reference`` ``(M, L, C)``, windows flattened, float64. With ``stride``, ``query`` must be
    ``reference`` itself: each window's own entry and the windows overlapping it
    (:func:`overlapping_neighbours`) are left out, so the distance is to a different stretch."""
    q = torch.as_tensor(np.asarray(query), dtype=torch.float64)
    r = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
    if q.ndim != 3 or r.ndim != 3 or q.shape[1:] != r.shape[1:] or len(r) == 0:
        raise ValueError(f"expected windows (N, L, C) and (M >= 1, L, C); got {tuple(q.shape)} and {tuple(r.shape)}")
    if stride is not None and q.shape != r.shape:
        raise ValueError(f"with stride, query must be the reference itself; got {tuple(q.shape)} and {tuple(r.shape)}")
    q, r = q.flatten(1), r.flatten(1)
    skip = torch.as_tensor(overlapping_neighbours(np.asarray(reference), stride)) if stride is not None else None
    out = []
    for start in range(0, len(q), chunk):
        d = torch.cdist(q[start : start + chunk], r)
        if skip is not None:
            i = torch.arange(start, start + len(d))
            d[i - start, i] = math.inf
            for k in range(1, skip.shape[1] + 1):  # window i + k overlaps i, and i - k overlaps i when skip[i - k]
                fwd = i[(i + k < len(r)) & skip[i, k - 1]]
                d[fwd - start, fwd + k] = math.inf
                back = i[(i - k >= 0)]
                back = back[skip[back - k, k - 1]]
                d[back - start, back - k] = math.inf
        out.append(d.min(1).values)
    return torch.cat(out).numpy()


def dcr_ratio(real, fake, stride: int, real_closest: np.ndarray | None = None) -> float:
    """``median_i min_j |fake_i - real_j| / median_i min_{j ~ i} |real_i - real_j|`` with ``j ~ i``
    the training windows other than ``i`` that do not overlap it (module doc; windows flattened,
    Euclidean). ``real`` are the training windows in their order, cut with ``stride``;
    ``real_closest`` may pass ``closest_distances(real, real, stride)`` computed once for many
    ``fake`` sets."""
    own = closest_distances(real, real, stride) if real_closest is None else np.asarray(real_closest)
    if not np.isfinite(own).any():
        raise ValueError("dcr_ratio needs at least two training windows that do not overlap")
    return float(np.median(closest_distances(fake, real)) / np.median(own[np.isfinite(own)]))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` ``(N, D)`` and ``b``
    ``(M, D)`` (unbiased covariances): ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    ``tr (S_a S_b)^(1/2)`` is computed as ``sum_k sqrt(lambda_k)`` over the eigenvalues of
    the symmetric PSD matrix ``S_a^(1/2) S_b S_a^(1/2)``, which is similar to ``S_a S_b``
    (two symmetric eigendecompositions instead of a general matrix square root; the tests
    compare it with ``scipy.linalg.sqrtm``)."""
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)  # torch's LAPACK: numpy's threaded OpenBLAS
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)  # stalls for seconds on a shared machine
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"expected (N, D) and (M, D) with N, M >= 2; got {tuple(a.shape)}, {tuple(b.shape)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))
    lam, vec = torch.linalg.eigh(s_a)
    root_a = (vec * lam.clamp(min=0.0).sqrt()) @ vec.T
    inner = root_a @ s_b @ root_a
    tr_covmean = torch.linalg.eigvalsh(0.5 * (inner + inner.T)).clamp(min=0.0).sqrt().sum()
    d = float(((mu_a - mu_b) ** 2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2.0 * tr_covmean)
    return float(max(d, 0.0))  # >= 0 in exact arithmetic; round-off can dip below


def context_fid(encoder: TS2VecEncoder, real, fake) -> float:
    """Fréchet distance of TS2Vec embeddings of ``real`` and ``fake`` windows; the encoder
    is trained on the real training data (:func:`.ts2vec.train_ts2vec`)."""
    return frechet_distance(embed(encoder, _as_tensor(real)).numpy(), embed(encoder, _as_tensor(fake)).numpy())


def crps_samples(samples, y, mask=None) -> float:
    """CRPS of the empirical law of ``samples`` ``(S, *D)`` at the truth ``y`` ``(*D)``,
    averaged over the entries where ``mask`` (``(*D)``, 1 = scored) is set (all if None):
    ``E|X - y| - 1/2 E|X - X'|`` (Gneiting & Raftery 2007, eq. 21), computed in
    ``O(S log S)`` per entry through the sorted samples:
    ``E|X - X'| = 2 / S^2 sum_i (2 i - S - 1) x_(i)`` (``i = 1..S``)."""
    s = torch.as_tensor(np.asarray(samples), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if s.shape[1:] != y.shape:
        raise ValueError(f"samples (S, *D) and y (*D) disagree: {tuple(s.shape)} vs {tuple(y.shape)}")
    S = s.shape[0]
    term1 = (s - y).abs().mean(0)
    xs = torch.sort(s, dim=0).values
    w = (2.0 * torch.arange(1, S + 1, dtype=torch.float64) - S - 1).reshape((S,) + (1,) * y.ndim)
    term2 = 2.0 * (w * xs).sum(0) / (S * S)
    crps = term1 - 0.5 * term2
    if mask is None:
        return float(crps.mean())
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float64)
    return float((crps * m).sum() / m.sum().clamp(min=1.0))


def point_errors(samples, y, mask=None) -> dict[str, float]:
    """``{"mse", "mae"}`` of the sample mean ``(S, *D) -> (*D)`` against ``y`` on ``mask``."""
    s = torch.as_tensor(np.asarray(samples), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    err = s.mean(0) - y
    m = torch.ones_like(y) if mask is None else torch.as_tensor(np.asarray(mask), dtype=torch.float64)
    n = m.sum().clamp(min=1.0)
    return {"mse": float((err**2 * m).sum() / n), "mae": float((err.abs() * m).sum() / n)}
