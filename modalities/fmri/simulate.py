"""A voxel-wise fMRI simulator with a known ground truth.

Generative model (every parameter is a field of :class:`SimConfig` and listed on the
``fmri-simulated`` data card):

1. Voxels live in a ``volume`` grid; the mask is the inscribed ellipsoid. A voxel at grid
   position ``(i, j, k)`` has a population receptive field (pRF, Dumoulin & Wandell 2008,
   NeuroImage 39, 647, eq. 1): an isotropic Gaussian ``G_v`` on the image centred
   retinotopically at ``((i + 1/2) / nx, (j + 1/2) / ny) * size`` (+ jitter), with width
   growing with the slice ``k`` from ``prf_sigma_min`` to ``prf_sigma_max`` pixels.
2. Each voxel is tuned to one feature channel ``c_v`` (luminance, local contrast or Gabor
   energy at one orientation, :mod:`.stimuli`). Its drive for stimulus ``s`` is
   ``d_v(s) = sum_xy G_v(x, y) F_{c_v}(s, x, y)``, passed through the compressive static
   nonlinearity ``d^n`` (CSS model, Kay et al. 2013, J Neurophysiol 110, 481, eq. 2).
3. True response amplitude (percent signal change at the peak of one event):
   ``beta_v(s) = evoked_v + amp_v * zscore_s(d_v(s)^n)``.
4. Event-related design: trials of ``stim_duration`` s with onsets jittered by an
   inter-stimulus interval drawn uniformly from ``[isi_min, isi_max]``, ``trials_per_run``
   per run; each regressor is the boxcar convolved with nilearn's SPM or Glover HRF
   (``nilearn.glm.first_level.spm_hrf``/``glover_hrf``), scaled to peak 1 for one event.
5. BOLD per voxel and run: ``y = baseline + X (beta + e_trial) + drift + AR(1) noise``
   with ``e_trial ~ N(0, neural_noise^2)``, drift = a random linear trend plus a
   random cosine of period ``drift_period`` s, and AR(1) noise ``e_t = rho e_{t-1} + w_t``
   of stationary standard deviation ``noise_sd``.
6. Single-trial responses: least-squares-all (LSA) estimates of every trial's beta per run,
   with an intercept and Legendre drift regressors up to ``drift_order`` (Mumford et al.
   2012, NeuroImage 59, 2636).
7. Split: ``n_test`` stimuli are shown ``n_repeats`` times (noise ceiling, test set), the
   others ``train_repeats`` times (3 by default, as in NSD, Allen et al. 2022); trials are
   shuffled over runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from modaflow.core.config import Config

from .stimuli import STIMULUS_SETS, StimulusSet, feature_maps, feature_names, load_stimuli

__all__ = ["SimConfig", "Simulation", "simulate", "hrf_kernel", "event_regressors", "drift_basis", "lsa_betas"]


@dataclass
class SimConfig(Config):
    """Parameters of the fMRI simulator (all on the fmri-simulated data card)."""

    stimuli: StimulusSet = "both"
    """Stimulus images: digits (sklearn, 1797), faces (skimage lfw_subset, 200), scenes (1979
    patches of 12 bundled photographs, :func:`~.stimuli.scene_patches`), both (digits and
    faces) or all three."""
    n_stimuli: int = 0
    """Use a random subset of this many stimuli (0 = all)."""
    image_size: int = 16
    """Stimuli are resized to image_size x image_size pixels."""
    n_test: int = 300
    """Held-out stimuli, each shown n_repeats times."""
    n_repeats: int = 3
    """Presentations of each test stimulus (for the noise ceiling and test averaging)."""
    train_repeats: int = 3
    """Presentations of each training stimulus, each a separate training trial. 3 as in the
    Natural Scenes Dataset (Allen et al. 2022, Nat Neurosci 25, 116: each image shown 3
    times), whose design this imitates. Evidence (170 validation stimuli of the training
    set, quick sizes, NeuroVAE encoding path scored by median voxel r against the
    noise-free responses, NeuroVAE weights chosen by validation loss): 1 / 2 / 3 repeats ->
    0.912 / 0.920 / 0.923 (2597 / 4294 / 5991 trials; simulation with the GLM 1.5 / 2.0 /
    2.3 s of CPU; training cost is set by step counts, not trials)."""
    volume: tuple[int, ...] = (12, 12, 6)
    """Grid of the BOLD volume (x, y, z); the mask is the inscribed ellipsoid."""
    voxel_size: float = 2.0
    """Voxel edge length in mm (the NIfTI affine is diag(voxel_size))."""
    prf_sigma_min: float = 0.8
    """pRF Gaussian width (pixels) in the first slice."""
    prf_sigma_max: float = 3.0
    """pRF Gaussian width (pixels) in the last slice."""
    prf_jitter: float = 0.5
    """Standard deviation (pixels) of the jitter added to retinotopic pRF centres."""
    n_orient: int = 4
    """Gabor orientations (channels gabor_0 .. gabor_{n_orient-1})."""
    gabor_frequency: float = 0.25
    """Gabor spatial frequency, cycles per pixel."""
    contrast_sigma: float = 1.0
    """Width (pixels) of the local-contrast window."""
    p_luminance: float = 0.2
    """Probability that a voxel is tuned to luminance."""
    p_contrast: float = 0.3
    """Probability that a voxel is tuned to local contrast (the rest: Gabor energy)."""
    exponent: float = 0.5
    """Compressive static nonlinearity d^exponent (CSS)."""
    evoked: float = 1.0
    """Mean evoked response (percent signal change)."""
    amp_min: float = 0.5
    """Smallest stimulus-driven modulation amplitude (percent signal change)."""
    amp_max: float = 1.5
    """Largest stimulus-driven modulation amplitude."""
    neural_noise: float = 0.2
    """Standard deviation of the trial-to-trial response variability (percent)."""
    tr: float = 1.0
    """Repetition time of the simulated BOLD, seconds (bids data: FMRIConfig.glm_tr)."""
    stim_duration: float = 1.0
    """Duration of one presentation, seconds."""
    isi_min: float = 3.0
    """Shortest onset-to-onset interval, seconds."""
    isi_max: float = 5.0
    """Longest onset-to-onset interval, seconds."""
    trials_per_run: int = 60
    """Trials per run."""
    hrf: Literal["spm", "glover"] = "spm"
    """nilearn haemodynamic response model of the simulated BOLD (bids data: FMRIConfig.glm_hrf)."""
    baseline: float = 100.0
    """Mean BOLD signal (so betas are percent signal change)."""
    noise_sd: float = 0.5
    """Stationary standard deviation of the AR(1) noise (percent)."""
    ar_rho: float = 0.4
    """AR(1) coefficient of the noise."""
    drift_sd: float = 0.5
    """Standard deviation of the linear drift's end-to-end change and of the cosine drift's amplitude (percent)."""
    drift_period: float = 150.0
    """Period of the cosine drift, seconds."""
    drift_order: int = 2
    """Legendre polynomial order of the drift regressors of the simulator's LSA fit (bids data: FMRIConfig.glm_drift_order)."""
    sim_seed: int = 0
    """Seed of the voxel population, design and noise."""

    def validate(self) -> None:
        self._require(self.stimuli in STIMULUS_SETS, "stimuli", f"one of {list(STIMULUS_SETS)}")
        for name in ("image_size", "n_test", "n_repeats", "train_repeats", "n_orient", "trials_per_run"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.image_size >= 4, "image_size", "an integer >= 4")
        self._require(self.n_stimuli == 0 or self.n_stimuli > self.n_test, "n_stimuli", f"0 (all) or > n_test = {self.n_test}")
        self._require(len(self.volume) == 3 and all(v >= 2 for v in self.volume), "volume", "three sizes >= 2")
        for name in ("voxel_size", "prf_sigma_min", "gabor_frequency", "contrast_sigma", "exponent", "tr",
                     "stim_duration", "isi_min", "drift_period"):
            self._require(getattr(self, name) > 0, name, "a number > 0")
        self._require(self.prf_sigma_max >= self.prf_sigma_min, "prf_sigma_max", "a width >= prf_sigma_min")
        self._require(self.isi_max >= self.isi_min, "isi_max", "a number >= isi_min")
        self._require(self.isi_min >= self.stim_duration, "isi_min", "a number >= stim_duration")
        self._require(self.amp_max >= self.amp_min > 0, "amp_min", "0 < amp_min <= amp_max")
        self._require(0 <= self.p_luminance and 0 <= self.p_contrast and self.p_luminance + self.p_contrast <= 1,
                      "p_contrast", "probabilities >= 0 with p_luminance + p_contrast <= 1")
        for name in ("neural_noise", "noise_sd", "drift_sd", "prf_jitter"):
            self._require(getattr(self, name) >= 0, name, "a number >= 0")
        self._require(0 <= self.ar_rho < 1, "ar_rho", "a number in [0, 1)")
        self._require(self.drift_order >= 0, "drift_order", "an integer >= 0")


@dataclass(frozen=True)
class Simulation:
    """One simulated subject. ``V`` voxels (mask order = C order of ``mask``), ``S`` stimuli,
    ``N`` trials, ``R`` runs.

    Attributes:
        cfg: the parameters.
        images: stimuli ``(S, H, W)`` float32 in [0, 1]; ``source`` ``(S,)``: 0 digit, 1 face, 2 scene (:data:`~.stimuli.SOURCES`).
        mask: ``(nx, ny, nz)`` bool; ``affine``: ``(4, 4)`` voxel-to-mm.
        prf_center: ``(V, 2)`` (x = column, y = row, pixels); ``prf_sigma`` ``(V,)``;
            ``channel`` ``(V,)`` index into ``channels``; ``amp``, ``evoked`` ``(V,)``.
        true_beta: noise-free response amplitudes ``(S, V)``.
        stim_id, run, onset: per trial ``(N,)``; trials are in run order, then onset order.
        betas: LSA single-trial estimates ``(N, V)`` float32.
        bold: per run the in-mask BOLD ``(T_r, V)`` float32.
        test_stimuli: ids of the repeated (test) stimuli ``(n_test,)``.
    """

    cfg: SimConfig
    images: np.ndarray
    source: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    channels: tuple[str, ...]
    prf_center: np.ndarray
    prf_sigma: np.ndarray
    channel: np.ndarray
    amp: np.ndarray
    evoked: np.ndarray
    true_beta: np.ndarray
    stim_id: np.ndarray
    run: np.ndarray
    onset: np.ndarray
    betas: np.ndarray
    bold: tuple[np.ndarray, ...]
    test_stimuli: np.ndarray


def hrf_kernel(model: str, tr: float, oversampling: int) -> np.ndarray:
    """nilearn's HRF sampled every ``tr / oversampling`` s over 32 s (sums to 1)."""
    from nilearn.glm.first_level import glover_hrf, spm_hrf

    fns = {"spm": spm_hrf, "glover": glover_hrf}
    if model not in fns:
        raise ValueError(f"hrf must be one of {sorted(fns)}; got {model!r}")
    return fns[model](tr, oversampling=oversampling)


def event_regressors(onsets: np.ndarray, duration: float, n_scans: int, tr: float, hrf: str,
                     oversampling: int = 16) -> np.ndarray:
    """One regressor per event ``(n_scans, n_events)``: the boxcar ``[onset, onset +
    duration)`` convolved with the HRF on a grid of ``tr / oversampling`` s, sampled at the
    frame times ``k * tr``, scaled so that a lone event peaks at 1 on the fine grid."""
    dt = tr / oversampling
    n_hi = n_scans * oversampling
    t_hi = np.arange(n_hi) * dt
    kernel = hrf_kernel(hrf, tr, oversampling)
    box = ((t_hi[:, None] >= onsets[None, :]) & (t_hi[:, None] < onsets[None, :] + duration)).astype(np.float64)
    single = np.convolve((t_hi < duration).astype(np.float64), kernel)[:n_hi]
    from scipy.signal import fftconvolve

    conv = fftconvolve(box, kernel[:, None], mode="full", axes=0)[:n_hi]
    return conv[::oversampling] / single.max()


def drift_basis(n_scans: int, order: int) -> np.ndarray:
    """Intercept plus Legendre polynomials 1..order on [-1, 1]: ``(n_scans, order + 1)``."""
    x = np.linspace(-1.0, 1.0, n_scans)
    return np.polynomial.legendre.legvander(x, order)


def lsa_betas(y: np.ndarray, X: np.ndarray, confounds: np.ndarray) -> np.ndarray:
    """Least-squares-all estimates ``(n_events, V)`` of ``y`` ``(T, V)`` on the trial
    regressors ``X`` ``(T, n_events)`` fitted jointly with ``confounds`` ``(T, C)``."""
    design = np.concatenate([X, confounds], axis=1)
    return (np.linalg.pinv(design) @ y)[: X.shape[1]]  # OLS: (D^T D)^+ D^T y


def _ellipsoid(shape: tuple[int, int, int]) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) + 0.5) / n - 0.5 for n in shape], indexing="ij")
    return sum((g / 0.5) ** 2 for g in grids) <= 1.0


def _voxels(cfg: SimConfig, mask: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    idx = np.argwhere(mask).astype(np.float64)  # (V, 3), C order like mask[mask]
    nx, ny, nz = mask.shape
    size = cfg.image_size
    centre = np.stack([(idx[:, 0] + 0.5) / nx, (idx[:, 1] + 0.5) / ny], 1) * size - 0.5
    centre += cfg.prf_jitter * rng.standard_normal(centre.shape)
    depth = idx[:, 2] / max(nz - 1, 1)
    sigma = (cfg.prf_sigma_min + depth * (cfg.prf_sigma_max - cfg.prf_sigma_min)) * np.exp(0.1 * rng.standard_normal(len(idx)))
    p_gabor = (1.0 - cfg.p_luminance - cfg.p_contrast) / cfg.n_orient
    probs = np.array([cfg.p_luminance, cfg.p_contrast] + [p_gabor] * cfg.n_orient)
    channel = rng.choice(len(probs), size=len(idx), p=probs / probs.sum())
    amp = rng.uniform(cfg.amp_min, cfg.amp_max, len(idx))
    evoked = cfg.evoked * rng.uniform(0.5, 1.5, len(idx))
    return {"prf_center": centre, "prf_sigma": sigma, "channel": channel, "amp": amp, "evoked": evoked}


def _true_beta(cfg: SimConfig, images: np.ndarray, vox: dict[str, np.ndarray]) -> np.ndarray:
    """``beta_v(s) = evoked_v + amp_v zscore_s(d_v(s)^n)`` (steps 1-3 of the module doc)."""
    feats = feature_maps(images, cfg.n_orient, cfg.gabor_frequency, cfg.contrast_sigma)  # (S, C, H, W)
    S, C, H, W = feats.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    c, s = vox["prf_center"], vox["prf_sigma"]
    g = np.exp(-((xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2) / (2 * s[:, None, None] ** 2))
    g = g.reshape(len(s), -1)
    g /= g.sum(1, keepdims=True)  # Dumoulin & Wandell 2008 eq. 1, normalised to unit mass
    drive = np.empty((S, len(s)))
    flat = feats.reshape(S, C, H * W).astype(np.float64)
    for ch in range(C):
        sel = vox["channel"] == ch
        drive[:, sel] = flat[:, ch] @ g[sel].T
    r = np.maximum(drive, 0.0) ** cfg.exponent  # CSS compressive nonlinearity, Kay et al. 2013 eq. 2
    z = (r - r.mean(0)) / np.maximum(r.std(0), 1e-12)
    return vox["evoked"] + vox["amp"] * z


def _ar1(n: int, v: int, rho: float, sd: float, rng: np.random.Generator) -> np.ndarray:
    """AR(1) noise ``(n, v)`` with stationary standard deviation ``sd``."""
    from scipy.signal import lfilter

    w = rng.standard_normal((n, v)) * sd * np.sqrt(1.0 - rho**2)
    zi = rho * sd * rng.standard_normal((1, v))  # start in the stationary law
    out, _ = lfilter([1.0], [1.0, -rho], w, axis=0, zi=zi)
    return out


def simulate(cfg: SimConfig) -> Simulation:
    """Run the simulator (deterministic given ``cfg``). BLAS runs on one thread: these
    small solves are fastest so and do not fight other processes for the cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _simulate(cfg)


def _simulate(cfg: SimConfig) -> Simulation:
    rng = np.random.default_rng(cfg.sim_seed)
    images, source = load_stimuli(cfg.stimuli, cfg.image_size)
    if cfg.n_stimuli:
        if cfg.n_stimuli > len(images):
            raise ValueError(f"SimConfig.n_stimuli: {cfg.n_stimuli} > {len(images)} available {cfg.stimuli} stimuli")
        keep = np.sort(rng.choice(len(images), cfg.n_stimuli, replace=False))
        images, source = images[keep], source[keep]
    S = len(images)
    if cfg.n_test >= S:
        raise ValueError(f"SimConfig.n_test: {cfg.n_test} must be < the {S} stimuli")
    mask = _ellipsoid(cfg.volume)
    affine = np.diag([cfg.voxel_size] * 3 + [1.0])
    vox = _voxels(cfg, mask, rng)
    true_beta = _true_beta(cfg, images, vox)
    test = np.sort(rng.choice(S, cfg.n_test, replace=False))
    is_test = np.zeros(S, bool)
    is_test[test] = True
    trials = np.concatenate([np.repeat(np.flatnonzero(~is_test), cfg.train_repeats), np.repeat(test, cfg.n_repeats)])
    trials = rng.permutation(trials)
    V = int(mask.sum())
    stim_ids, runs, onsets, betas, bold = [], [], [], [], []
    for r, start in enumerate(range(0, len(trials), cfg.trials_per_run)):
        ids = trials[start : start + cfg.trials_per_run]
        on = 4.0 + np.concatenate([[0.0], np.cumsum(rng.uniform(cfg.isi_min, cfg.isi_max, len(ids) - 1))])
        n_scans = int(np.ceil((on[-1] + 20.0) / cfg.tr))
        X = event_regressors(on, cfg.stim_duration, n_scans, cfg.tr, cfg.hrf)
        amp = true_beta[ids] + cfg.neural_noise * rng.standard_normal((len(ids), V))
        t = np.arange(n_scans) * cfg.tr
        trend = np.outer(np.linspace(-0.5, 0.5, n_scans), cfg.drift_sd * rng.standard_normal(V))
        phase = rng.uniform(0, 2 * np.pi, V)
        wave = cfg.drift_sd * rng.standard_normal(V) * np.cos(2 * np.pi * t[:, None] / cfg.drift_period + phase)
        y = cfg.baseline + X @ amp + trend + wave + _ar1(n_scans, V, cfg.ar_rho, cfg.noise_sd, rng)
        betas.append(lsa_betas(y, X, drift_basis(n_scans, cfg.drift_order)))
        bold.append(y.astype(np.float32))
        stim_ids.append(ids)
        runs.append(np.full(len(ids), r))
        onsets.append(on)
    return Simulation(
        cfg=cfg, images=images, source=source, mask=mask, affine=affine, channels=feature_names(cfg.n_orient),
        **vox, true_beta=true_beta, stim_id=np.concatenate(stim_ids), run=np.concatenate(runs),
        onset=np.concatenate(onsets), betas=np.concatenate(betas).astype(np.float32), bold=tuple(bold),
        test_stimuli=test,
    )
