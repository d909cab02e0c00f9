"""Inference-time scaling for flow models: best-of-N, particle sampling under a reward,
interpolant conversion and rollover budget forcing.

Kim, Yoon, Hwang & Sung 2025, "Inference-time scaling for flow models via stochastic
generation and rollover budget forcing", arXiv 2503.19385 (below: *Kim et al.*). Given a
velocity field trained on ``path`` and a reward ``r(x1)`` (``(n, *D) -> (n,)``), spend more
field evaluations (NFE) to get samples of higher reward; with a temperature ``lam`` the
particle methods target the tilted law ``p(x1) exp(lam r(x1)) / Z`` (Kim et al. sec. 3).

* **SDE form** (Kim et al. sec. 4). The ODE sampler is deterministic, so particles sharing a
  state cannot branch. The SDE ``dX = [v + g^2/2 s] dt + g dW`` of :mod:`modaflow.core.sde`
  has the same marginals for any ``g`` and its steps branch. The score comes from the
  velocity through the path. ``g(t) = diffusion * sigma(t)`` (the default) vanishes at t = 1.
* **Particles.** ``K`` particles per output sample. Each step evaluates the field once per
  particle, scores the predicted clean sample ``x1_hat = E[x1 | x_t]`` (from the same field
  call), resamples, and takes an Euler–Maruyama step. ``"greedy"`` branches every particle
  from the best one (the search of Kim et al. sec. 4). ``"multinomial"`` and ``"systematic"``
  are sequential Monte Carlo with incremental weights ``exp(lam (r_k - r_{k-1}))``, the
  "difference" potential of twisted SMC (Singhal et al. 2025, FK steering, arXiv
  2501.06848), resampled when the effective sample size drops. With
  ``select="weighted"`` the output law tends to ``p exp(lam r) / Z`` as ``K`` grows (up to
  the discretisation). ``"best_of_n"`` runs ``K`` independent SDE paths and keeps one at the
  end (``select="weighted"``: sampling importance resampling).
* **Rollover budget forcing** (Kim et al. sec. 6, "RBF"). Each step gets a quota of ``K``
  NFE. Children of the current state are drawn one at a time. The first child whose reward
  beats the best seen so far is taken at once, and the unused quota rolls over to the next
  step. When the quota runs out, the best child of the step is taken. The last noisy step
  spends everything that is left. Its loop is adaptive: it syncs with the host, like an
  adaptive ODE solver.
* **Interpolant conversion**: see :func:`convert_interpolant` (Kim et al. sec. 4–5 find
  that sampling a linear-path model along a VP path, with the SDE, searches best).

**Budget.** Every method spends exactly ``K * steps`` field evaluations per output sample
(``K = num_particles``), reported as ``nfe``. Reward calls are not counted. The last step is
a plain Euler step of the ODE, as in :func:`modaflow.core.sde.solve_sde` (rollover reuses
the field value it computed to score that state). With a reward that is constant, every
method samples the law of the plain SDE sampler. Shapes: ``x`` ``(B, *D)``, ``t`` ``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .config import Config
from .ode import Field, time_grid
from .parametrizations import to_data_noise
from .paths import AffinePath, LinearPath, VPCosinePath
from .sde import euler_maruyama_step
from .tensors import expand_t

__all__ = ["Reward", "ScalingConfig", "ScalingResult", "snr_time", "convert_interpolant", "sample_scaled"]

Reward = Callable[[Tensor], Tensor]
"""A reward ``r(x1)``: samples ``(n, *D)`` -> ``(n,)``, higher is better."""


@dataclass
class ScalingConfig(Config):
    """Options of :func:`sample_scaled`."""

    method: Literal["best_of_n", "particles", "rollover"] = "particles"
    """best_of_n: K independent SDE paths, keep one; particles: K particles per sample scored
    and resampled at every step; rollover: rollover budget forcing (Kim et al. 2025, sec. 6)."""
    num_particles: int = 4
    """K: particles (or paths) per output sample; the budget is K * steps NFE per sample."""
    steps: int = 50
    """Euler–Maruyama steps T on a uniform grid from 0 to 1 (the last one is a noise-free Euler step)."""
    diffusion: float = 1.0
    """Diffusion scale c >= 0: g(t) = c * sigma(t) ("sigma") or g = c ("constant"). 0 is the ODE."""
    diffusion_schedule: Literal["sigma", "constant"] = "sigma"
    """sigma: g(t) = c * sigma(t), stable up to t = 1 for any data; constant: g = c."""
    resample: Literal["greedy", "multinomial", "systematic"] = "greedy"
    """particles only. greedy: branch all K from the best; multinomial / systematic: SMC with
    incremental weights exp(lam (r_k - r_{k-1}))."""
    ess_threshold: float = 0.5
    """multinomial / systematic: resample a sample's particles when their effective sample size
    falls below ess_threshold * K (1.0: whenever the weights are not uniform; 0.0: never, i.e.
    importance sampling)."""
    temperature: float = 1.0
    """lam >= 0 of the SMC weights and of select="weighted"; unused by greedy and select="best"."""
    select: Literal["best", "weighted"] = "best"
    """Final pick among the K particles: the highest reward, or a draw by the final weights."""
    interpolant: Literal["trained", "vp_cosine"] = "trained"
    """Path to sample along: the one the field was trained on, or the VP cosine path by the
    exact interpolant conversion (Kim et al. 2025, sec. 4)."""

    def validate(self) -> None:
        self._require(self.num_particles >= 1, "num_particles", "an integer >= 1")
        self._require(self.steps >= 1, "steps", "an integer >= 1")
        self._require(self.diffusion >= 0 and math.isfinite(self.diffusion), "diffusion", "a finite number >= 0")
        self._require(0.0 <= self.ess_threshold <= 1.0, "ess_threshold", "a number in [0, 1]")
        self._require(self.temperature >= 0 and math.isfinite(self.temperature), "temperature", "a finite number >= 0")


@dataclass(frozen=True)
class ScalingResult:
    """Output of :func:`sample_scaled`.

    Attributes:
        samples: one sample per batch entry, ``(B, *D)``.
        rewards: their rewards, ``(B,)``.
        nfe: field evaluations spent per output sample (``num_particles * steps``).
    """

    samples: Tensor
    rewards: Tensor
    nfe: int


# --- interpolant conversion ------------------------------------------------------------------

_SNR_INVERSE: dict[type, Callable[[Tensor, Tensor], Tensor]] = {
    LinearPath: lambda a, s: a / (a + s),  # t / (1 - t) = a / s
    VPCosinePath: lambda a, s: torch.atan2(a, s) * (2.0 / math.pi),  # tan(pi t / 2) = a / s
}


def snr_time(path: AffinePath, alpha: Tensor, sigma: Tensor, iters: int = 64) -> Tensor:
    """The time ``t`` on ``path`` with the signal-to-noise ratio ``alpha(t) / sigma(t) =
    alpha / sigma``. Closed form for the linear and VP cosine paths. Any other path (whose
    ratio must increase in t) uses ``iters`` bisection steps on ``alpha(t) sigma - sigma(t)
    alpha``, with no host sync. A ratio outside the path's range clamps to 0 or 1."""
    inverse = _SNR_INVERSE.get(type(path))
    if inverse is not None:
        return inverse(alpha, sigma)
    lo, hi = torch.zeros_like(alpha), torch.ones_like(alpha)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        above = path.alpha(mid) * sigma - path.sigma(mid) * alpha > 0  # mid is past the target SNR
        lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
    return 0.5 * (lo + hi)


def convert_interpolant(field: Field, source: AffinePath, target: AffinePath) -> Field:
    """Turn a velocity field trained on ``source`` into the exact velocity of ``target``
    (Kim et al. 2025, arXiv 2503.19385, sec. 4, "interpolant conversion").

    Derivation. For target time ``s``, take the source time ``t(s)`` of the same SNR,
    ``alpha(t)/sigma(t) = a(s)/b(s)`` (target coefficients ``a, b``). Then ``a = c alpha`` and
    ``b = c sigma`` with one scale ``c(s) = (a + b) / (alpha(t) + sigma(t))``, so pathwise
    ``x~_s = a x1 + b x0 = c x_t``. Differentiating, ``dx~/ds = c' x_t + c t' dx_t/dt``. Condition
    on ``x~_s = x~``, which is the same as ``x_t = x~ / c``:

        u~(x~, s) = (c'/c) x~ + c t' u(x~ / c, t(s)).

    From ``rho = alpha / sigma``, ``rho'(t) = W / sigma^2`` with ``W = alpha' sigma - alpha sigma'``.
    So ``t' = W~(s) / (W(t) c^2)`` and ``c' = [(a' + b') - c (alpha' + sigma')(t) t'] /
    (alpha + sigma)(t)``. Both are finite at the end points. The conversion is exact: no
    Gaussian assumption, any source distribution. The returned field costs one call of ``field``.
    """

    def converted(x: Tensor, s: Tensor) -> Tensor:
        a, b = target.alpha(s), target.sigma(s)
        t = snr_time(source, a, b)
        al, sg = source.alpha(t), source.sigma(t)
        c = (a + b) / (al + sg)
        w_target = target.d_alpha(s) * b - a * target.d_sigma(s)
        w_source = source.d_alpha(t) * sg - al * source.d_sigma(t)
        dt = w_target / (w_source * c * c)
        dc = (target.d_alpha(s) + target.d_sigma(s) - c * (source.d_alpha(t) + source.d_sigma(t)) * dt) / (al + sg)
        # u~(x~, s) = (c'/c) x~ + c t' u(x~ / c, t(s))   (Kim et al. 2025, arXiv 2503.19385, sec. 4)
        return expand_t(dc / c, x) * x + expand_t(c * dt, x) * field(x / expand_t(c, x), t)

    return converted


# --- particle methods -------------------------------------------------------------------------

_PATHS: dict[str, Callable[[], AffinePath]] = {"vp_cosine": VPCosinePath}


@dataclass(frozen=True)
class _Run:
    """One call of :func:`sample_scaled`: the field and path to sample along, ``B`` samples of
    event shape ``shape``, the grid ``times`` ``(T+1,)`` and the diffusion ``g(t, like)``."""

    field: Field
    path: AffinePath
    reward: Reward
    B: int
    shape: tuple[int, ...]
    cfg: ScalingConfig
    times: Tensor
    g: Callable[[Tensor, Tensor], Tensor]
    generator: torch.Generator | None

    def noise(self, n: int) -> Tensor:
        return torch.randn((n, *self.shape), generator=self.generator, device=self.times.device, dtype=self.times.dtype)

    def score(self, x: Tensor) -> Tensor:
        r = self.reward(x)
        if r.shape != (x.shape[0],):
            raise ValueError(f"reward must map {tuple(x.shape)} to shape ({x.shape[0]},); got {tuple(r.shape)}")
        return r

    def score_x1_hat(self, v: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The reward of ``E[x1 | x_t]``, read off the velocity ``v = field(x, t)``."""
        return self.score(to_data_noise(v, "velocity", x, t, self.path)[0])

    def em_step(self, x: Tensor, v: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        h = expand_t(t_next - t, x)
        return euler_maruyama_step(x, v, t, h, h.sqrt(), self.g(t, x), self.noise(x.shape[0]), self.path)


def _ancestors(
    log_w: Tensor, r: Tensor, cfg: ScalingConfig, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Ancestor indices ``(B, K)`` from log-weights and rewards ``(B, K)``, and which samples
    were resampled ``(B, 1)``. SMC resamples a sample's particles only when their effective
    sample size ``1 / sum w^2`` falls below ``ess_threshold * K`` (adaptive resampling, Liu &
    Chen 1995), otherwise keeps them."""
    B, K = r.shape
    keep = torch.arange(K, device=r.device).expand(B, K)
    if cfg.resample == "greedy":
        return r.argmax(1, keepdim=True).expand(B, K), torch.ones(B, 1, dtype=torch.bool, device=r.device)
    w = torch.softmax(log_w, dim=1)
    if cfg.resample == "multinomial":  # Gordon, Salmond & Smith 1993
        idx = torch.multinomial(w, K, replacement=True, generator=generator)
    else:  # systematic (Kitagawa 1996): one uniform per sample, K evenly spaced points
        u = torch.rand(B, 1, generator=generator, device=r.device, dtype=w.dtype)
        idx = torch.searchsorted(torch.cumsum(w, dim=1), (u + keep) / K).clamp(max=K - 1)
    low = 1.0 / (w * w).sum(1, keepdim=True) < cfg.ess_threshold * K
    return torch.where(low, idx, keep), low


def _particles(run: _Run) -> tuple[Tensor, Tensor]:
    """best_of_n and particles: ``K`` particles per sample, ``(B*K, *D)`` rows, ``K * T`` NFE."""
    cfg, times, B, field = run.cfg, run.times, run.B, run.field
    K, T = cfg.num_particles, cfg.steps
    x = run.noise(B * K)
    offset = torch.arange(B, device=x.device)[:, None] * K  # row of particle j of sample b: b*K + j
    r_prev = torch.zeros(B, K, device=x.device, dtype=x.dtype)  # reward of each particle's last twist
    log_w = torch.zeros_like(r_prev)
    for k in range(T - 1):
        t = times[k].expand(B * K)
        v = field(x, t)
        if cfg.method == "particles":
            r = run.score_x1_hat(v, x, t).view(B, K)
            log_w = log_w + cfg.temperature * (r - r_prev)  # twisted SMC, "difference" potential
            idx, resampled = _ancestors(log_w, r, cfg, run.generator)
            rows = (idx + offset).reshape(-1)
            x, v, r_prev = x[rows], v[rows], r.gather(1, idx)
            log_w = torch.where(resampled, 0.0, log_w)  # resampled particles weigh the same
        x = run.em_step(x, v, t, times[k + 1].expand(B * K))
    t = times[T - 1].expand(B * K)
    x = x + (times[T] - times[T - 1]) * field(x, t)  # last step: noise-free Euler, as in solve_sde
    r = run.score(x).view(B, K)
    if cfg.select == "best":
        pick = r.argmax(1, keepdim=True)
    else:
        log_w = log_w + cfg.temperature * (r - r_prev)
        pick = torch.multinomial(torch.softmax(log_w, dim=1), 1, generator=run.generator)
    rows = (pick + offset).reshape(-1)
    return x[rows], r.reshape(-1)[rows]


def _rollover(run: _Run) -> tuple[Tensor, Tensor]:
    """Rollover budget forcing (Kim et al. 2025, arXiv 2503.19385, sec. 6): ``K * T`` NFE."""
    cfg, times, B = run.cfg, run.times, run.B
    K, T = cfg.num_particles, cfg.steps
    # Start: the best of K noises by the reward of their x1_hat (K NFE).
    x = run.noise(B * K)
    t = times[0].expand(B * K)
    v = run.field(x, t)
    best_r, j = run.score_x1_hat(v, x, t).view(B, K).max(1)
    rows = torch.arange(B, device=x.device) * K + j
    x, v = x[rows], v[rows]
    step = torch.zeros(B, dtype=torch.long, device=x.device)  # current grid index per sample
    quota = torch.full_like(step, K)  # NFE allowed at this step (K + what rolled over)
    used = torch.zeros_like(step)
    cand_x, cand_v = x.clone(), v.clone()  # best child of the current step
    cand_r = torch.full_like(best_r, -math.inf)
    while True:
        ia = torch.nonzero(step < T - 1).squeeze(1)  # samples still moving (host sync)
        if ia.numel() == 0:
            break
        k = step[ia]
        t, t_next = times[k], times[k + 1]
        child = run.em_step(x[ia], v[ia], t, t_next)
        v_child = run.field(child, t_next)  # 1 NFE per moving sample
        r = run.score_x1_hat(v_child, child, t_next)
        used[ia] += 1
        better = (r > cand_r[ia]) | (used[ia] == 1)  # the step's first child is its first candidate
        cand_x[ia[better]], cand_v[ia[better]], cand_r[ia[better]] = child[better], v_child[better], r[better]
        early = (r > best_r[ia]) & (k < T - 2)  # beats everything so far: take it (not on the last step)
        best_r[ia] = torch.maximum(best_r[ia], r)
        moved = ia[early | (used[ia] >= quota[ia])]
        x[moved], v[moved] = cand_x[moved], cand_v[moved]  # an early child is its step's best
        quota[moved] = K + quota[moved] - used[moved]  # the unused quota rolls over
        used[moved], cand_r[moved] = 0, -math.inf
        step[moved] += 1
    x = x + (times[T] - times[T - 1]) * v  # last step: noise-free Euler with the cached field value
    return x, run.score(x)


def sample_scaled(
    field: Field,
    path: AffinePath,
    reward: Reward,
    num_samples: int,
    shape: tuple[int, ...],
    cfg: ScalingConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> ScalingResult:
    """Draw ``num_samples`` samples of event shape ``shape`` with ``cfg.num_particles * cfg.steps``
    NFE each, favouring high ``reward``.

    Args:
        field: velocity field ``(x, t) -> v`` trained on ``path`` (see
            :func:`modaflow.core.parametrizations.as_velocity_field` for other predictions).
        path: the path it was trained on (Gaussian source: noise is drawn from N(0, I)).
        reward: ``r(x1)``, ``(n, *D) -> (n,)``.
        num_samples: ``B``; the field sees batches of ``B * K`` rows (``B`` for rollover).
        shape: the event shape ``D``.
        cfg: the options.
        generator: for the noise and the resampling draws.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1; got {num_samples}")
    if not path.gaussian_source:
        raise ValueError(f"sample_scaled needs a path with a Gaussian source (for the score); got {path!r}")
    if cfg.interpolant != "trained":
        target = _PATHS[cfg.interpolant]()
        field, path = convert_interpolant(field, path, target), target
    times = time_grid(cfg.steps, device=device, dtype=dtype)
    scale = cfg.diffusion

    def g(t: Tensor, x: Tensor) -> Tensor:
        g_t = scale * path.sigma(t) if cfg.diffusion_schedule == "sigma" else torch.full_like(t, scale)
        return expand_t(g_t, x)

    method = _rollover if cfg.method == "rollover" else _particles
    x, r = method(_Run(field, path, reward, num_samples, tuple(shape), cfg, times, g, generator))
    return ScalingResult(samples=x, rewards=r, nfe=cfg.num_particles * cfg.steps)
