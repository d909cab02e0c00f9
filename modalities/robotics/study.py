"""The COAST steering study with its controls, selected on fit rollouts and tested on
disjoint seeds.

1. Fit: roll the unsteered policy out on the fit seeds, recording every hookable layer at
   every denoising step; label episodes success / failure.
2. Conceptors: ``C_s`` from success states, ``C_f`` from failure states (aperture α,
   global or one per step k); the steering conceptor is ``C = C_s AND NOT C_f``
   (COAST, arXiv 2605.17144); the gate ``(1 − β) I + β C``.
3. Selection on the fit seeds only: (layer, α, β, global / per step) maximising the fit
   success rate. The controls get the same treatment on the same layer:
   - shrink: ``(1 − β) I`` (what the gate does away from C's range), β selected;
   - random: ``Q diag(λ) Qᵀ`` with the chosen C's eigenvalues λ and a random rotation Q
     (a random subspace of matched rank and spectrum), at the chosen β and mode;
   - mean difference: ``h ← h + λ (μ_s − μ_f)``, λ selected.
4. Test: base and every steered condition on the test seeds (disjoint from fit and
   demonstration seeds), same initial states and noise; success with Wilson intervals and
   paired differences (bootstrap interval, exact McNemar).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from modaflow.core.config import Config
from modaflow.core.conceptors import AND, NOT, GateHook, conceptor_from_correlation, gate_matrix

from .metrics import paired_summary, pusht_score, success_summary
from .policies import Policy
from .rollout import RolloutConfig, Rollouts, rollout

__all__ = ["StudyConfig", "steering_conceptor", "random_rotation_like", "run_study", "CONDITIONS"]

Mode = Literal["global", "per_step"]
CONDITIONS = ("base", "coast", "shrink", "random", "mean_diff")


@dataclass
class StudyConfig(Config):
    """Sizes and hyper-parameter grids of the steering study."""

    n_fit: int = 30
    """Fit rollouts (conceptors and hyper-parameters come from these only)."""
    n_test: int = 50
    """Test rollouts on disjoint seeds."""
    fit_seed: int = 0
    """First reset seed of the fit rollouts."""
    test_seed: int = 50_000
    """First reset seed of the test rollouts (must not overlap the fit seeds)."""
    layers: tuple[str, ...] = ()
    """Layers to steer (empty: all of the policy's hookable layers)."""
    apertures: tuple[float, ...] = (0.5, 2.0, 8.0)
    """Aperture grid α."""
    betas: tuple[float, ...] = (0.1, 0.3, 0.5)
    """Gate strength grid β."""
    modes: tuple[str, ...] = ("global", "per_step")
    """global (one conceptor for all denoising steps) and/or per_step (one per step)."""
    center: bool = False
    """Fit conceptors on mean-centred states."""
    mean_diff_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    """Grid of λ for mean-difference steering."""
    noise_seed: int = 0
    """Sampling-noise seed of the fit rollouts (the test rollouts use noise_seed + 1)."""

    def validate(self) -> None:
        self._require(self.n_fit >= 2, "n_fit", "an integer >= 2")
        self._require(self.n_test >= 1, "n_test", "an integer >= 1")
        self._require(self.test_seed >= self.fit_seed + self.n_fit or self.test_seed + self.n_test <= self.fit_seed,
                      "test_seed", "a seed range disjoint from the fit seeds")
        self._require(len(self.apertures) > 0 and all(a > 0 for a in self.apertures), "apertures", "numbers > 0")
        self._require(len(self.betas) > 0 and all(0 < b <= 1 for b in self.betas), "betas", "numbers in (0, 1]")
        self._require(len(self.modes) > 0 and set(self.modes) <= {"global", "per_step"}, "modes", "global and/or per_step")


def _correlations(stats: tuple[Tensor, Tensor, Tensor], mask: np.ndarray, center: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per-step ``R_k`` ``(K, d, d)``, global ``R`` ``(d, d)`` and per-step means ``(K, d)``
    of the episodes in ``mask``."""
    n, s1, s2 = (x[torch.from_numpy(mask)].sum(0) for x in stats)  # (K,), (K, d), (K, d, d)
    nk = n.clamp_min(1)[:, None]
    mu = s1 / nk
    Rk = s2 / nk[..., None]
    R = s2.sum(0) / n.sum().clamp_min(1)
    if center:
        Rk = Rk - mu[:, :, None] * mu[:, None, :]
        mg = s1.sum(0) / n.sum().clamp_min(1)
        R = R - torch.outer(mg, mg)
    return Rk, R, mu


def steering_conceptor(stats, success: np.ndarray, aperture: float, mode: Mode, center: bool) -> Tensor:
    """``C_s AND NOT C_f`` ``(d, d)`` (global) or ``(K, d, d)`` (per step), float64."""
    Rk_s, R_s, _ = _correlations(stats, success, center)
    Rk_f, R_f, _ = _correlations(stats, ~success, center)
    if mode == "global":
        return AND(conceptor_from_correlation(R_s, aperture), NOT(conceptor_from_correlation(R_f, aperture)))
    return torch.stack([AND(conceptor_from_correlation(a, aperture), NOT(conceptor_from_correlation(b, aperture)))
                        for a, b in zip(Rk_s, Rk_f)])


def random_rotation_like(C: Tensor, generator: torch.Generator) -> Tensor:
    """``Q diag(λ(C)) Qᵀ`` with a Haar-random orthogonal ``Q`` (QR of a Gaussian matrix with
    sign correction); per step for ``(K, d, d)``."""
    if C.ndim == 3:
        return torch.stack([random_rotation_like(c, generator) for c in C])
    lam = torch.linalg.eigvalsh(C)
    A = torch.randn(C.shape, generator=generator, dtype=C.dtype)
    Q, Rr = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(Rr))[None, :]
    return (Q * lam) @ Q.T


def _gate_hook(C: Tensor, beta: float) -> GateHook:
    return GateHook(gate=gate_matrix(C, beta).float())


def _mean_diff_hook(v: Tensor, scale: float) -> GateHook:
    v = v.float()
    return GateHook(transform=lambda h, k: h + scale * v.to(h.device))


def _run(policy: Policy, rcfg: RolloutConfig, seeds: list[int], layer: str | None, hook: GateHook | None) -> Rollouts:
    return rollout(policy, rcfg, seeds, hook=hook, hook_layer=layer)


def run_study(policy: Policy, rcfg: RolloutConfig, cfg: StudyConfig, progress=None) -> dict:
    """Run the study; returns the selection table, the chosen hyper-parameters, test
    summaries per condition, paired comparisons, and spectra for plots."""
    progress = progress or (lambda it, desc: it)
    layers = cfg.layers or policy.hook_layers
    fit_seeds = list(range(cfg.fit_seed, cfg.fit_seed + cfg.n_fit))
    test_seeds = list(range(cfg.test_seed, cfg.test_seed + cfg.n_test))
    fit_cfg = RolloutConfig(**{**rcfg.__dict__, "noise_seed": cfg.noise_seed})
    test_cfg = RolloutConfig(**{**rcfg.__dict__, "noise_seed": cfg.noise_seed + 1})
    base_fit = rollout(policy, fit_cfg, fit_seeds, capture=tuple(layers))
    s = base_fit.success.astype(bool)
    out: dict = {"fit_base": success_summary(s), "layers": list(layers), "selection": [], "notes": []}
    base_test = _run(policy, test_cfg, test_seeds, None, None)
    out["test"] = {"base": success_summary(base_test.success)}
    out["test_outcomes"] = {"base": base_test.success.astype(bool).tolist()}
    if rcfg.env == "pusht":
        out["test"]["base"]["pusht_score"] = pusht_score(base_test.coverage, rcfg.success_threshold)
    if s.all() or not s.any():
        out["notes"].append(f"fit rollouts are all {'successes' if s.all() else 'failures'} ({s.sum()}/{s.size}): "
                            "C_s AND NOT C_f cannot be fitted; steering skipped")
        return out
    # --- selection of COAST on the fit seeds -------------------------------------------------
    best = None
    for layer, a, mode in itertools.product(layers, cfg.apertures, cfg.modes):
        C = steering_conceptor(base_fit.stats[layer], s, a, mode, cfg.center)
        for b in cfg.betas:
            rate = float(_run(policy, fit_cfg, fit_seeds, layer, _gate_hook(C, b)).success.mean())
            out["selection"].append({"layer": layer, "aperture": a, "mode": mode, "beta": b, "fit_success": rate})
            if best is None or rate > best[0]:
                best = (rate, layer, a, mode, b, C)
    rate, layer, a, mode, b, C = best
    out["chosen"] = {"layer": layer, "aperture": a, "mode": mode, "beta": b, "fit_success": rate}
    # --- controls, selected on the fit seeds too --------------------------------------------
    shrink = max(((float(_run(policy, fit_cfg, fit_seeds, layer, _gate_hook(torch.zeros_like(C), bb)).success.mean()), bb)
                  for bb in cfg.betas), key=lambda x: x[0])
    _, _, mu_s = _correlations(base_fit.stats[layer], s, False)
    _, _, mu_f = _correlations(base_fit.stats[layer], ~s, False)
    v = (mu_s - mu_f).mean(0)
    mdiff = max(((float(_run(policy, fit_cfg, fit_seeds, layer, _mean_diff_hook(v, lam)).success.mean()), lam)
                 for lam in cfg.mean_diff_scales), key=lambda x: x[0])
    C_rand = random_rotation_like(C, torch.Generator().manual_seed(cfg.noise_seed + 7))
    out["controls_chosen"] = {"shrink_beta": shrink[1], "shrink_fit_success": shrink[0],
                              "mean_diff_scale": mdiff[1], "mean_diff_fit_success": mdiff[0], "random_beta": b}
    # --- test ------------------------------------------------------------------------------
    hooks = {"coast": _gate_hook(C, b), "shrink": _gate_hook(torch.zeros_like(C), shrink[1]),
             "random": _gate_hook(C_rand, b), "mean_diff": _mean_diff_hook(v, mdiff[1])}
    for name, hook in progress(hooks.items(), "test conditions"):
        r = _run(policy, test_cfg, test_seeds, layer, hook)
        out["test"][name] = success_summary(r.success)
        if rcfg.env == "pusht":
            out["test"][name]["pusht_score"] = pusht_score(r.coverage, rcfg.success_threshold)
        out["test_outcomes"][name] = r.success.astype(bool).tolist()
    base = out["test_outcomes"]["base"]
    out["paired"] = {f"{n}_vs_base": paired_summary(base, out["test_outcomes"][n]) for n in hooks}
    for ctrl in ("shrink", "random", "mean_diff"):
        out["paired"][f"coast_vs_{ctrl}"] = paired_summary(out["test_outcomes"][ctrl], out["test_outcomes"]["coast"])
    Rk_s, R_s, _ = _correlations(base_fit.stats[layer], s, cfg.center)
    Rk_f, R_f, _ = _correlations(base_fit.stats[layer], ~s, cfg.center)
    out["spectra"] = {"success": torch.linalg.eigvalsh(R_s).flip(0).tolist(), "failure": torch.linalg.eigvalsh(R_f).flip(0).tolist(),
                      "coast": torch.linalg.eigvalsh(C if C.ndim == 2 else C.mean(0)).flip(0).tolist()}
    out["conceptor"] = C
    return out
