"""The ephys benchmark: ``modaflow bench ephys --profile P``.

Two datasets, each with LangevinFlow (arXiv 2507.11531) and its baselines trained and scored
in the same run on the same trials and seeds:

1. **Lorenz** spiking populations (:mod:`modaflow.modalities.ephys.lorenz`): co-bps, fp-bps,
   rate R² (true rates first), psth R², and the R² of a linear map from the inferred latent
   to the true Lorenz state; baselines LFADS (GRU sequential VAE) and smoothing + Poisson
   GLM; the true rates give the ceiling.
2. **EEG**: spkit's real 14-channel Emotiv recording, sliding 0.5 s windows, split in
   time: held-out channel R² and Gaussian NLL, forecast MSE of the last 0.125 s (signals
   z-scored, so MSE 1 = predicting the mean); baselines LFADS and smoothing + ridge.

Both sequential VAEs keep the weights with the lowest validation loss (10% of the
training trials). Training time of each model and the LangevinFlow / LFADS time ratio are reported. Plots:
true vs inferred rates, 3-D latent trajectories (inferred, PCA, vs true), spike rasters
(observed vs sampled), loss curves, EEG held-out channel predictions.

Profiles: ``smoke`` (seconds, the tests run it), ``quick`` (a few minutes on 2 CPU cores),
``full`` (larger data, longer training, 3 seeds), ``gpu`` (full sizes on CUDA).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modaflow.core.training import TrainerArgs
from modaflow.modalities.ephys import data as D
from modaflow.modalities.ephys import metrics as M
from modaflow.modalities.ephys.baselines import SmoothingConfig, smoothing_glm
from modaflow.modalities.ephys.recipe import EphysConfig, build_model, score
from modaflow.modalities.ephys.spikes import TrialData
from modaflow.modalities.ephys.training import SeqVAEModule, fit_vae, predict

from . import report as R
from .harness import BenchResult, mean_ci95, progress, quiet_training, select_profile, torch_threads

__all__ = ["EphysProfile", "PROFILES", "run"]


@dataclass(frozen=True)
class EphysProfile:
    """Sizes of one benchmark profile."""

    lorenz: dict
    """DataOptions fields of the Lorenz set."""
    eeg: str
    """The EEG dataset name ('' to skip)."""
    steps: int
    """Optimiser steps of each sequential VAE on Lorenz."""
    eeg_steps: int
    """Optimiser steps of each sequential VAE on EEG."""
    width: int
    """Encoder / generator hidden size and decoder width."""
    seeds: tuple[int, ...]
    """Training seeds (offsets to the run seed); metrics are mean ± 95% CI over them."""
    eval_samples: int
    """Posterior draws averaged for the reported rates."""
    threads: int
    """torch threads (0: leave torch's default)."""
    device: str = "cpu"
    """Where the sequential VAEs train."""


PROFILES: dict[str, EphysProfile] = {
    "smoke": EphysProfile(dict(n_conditions=6, trials_per_condition=4, n_neurons=24, bins=20, fp_bins=5),
                          eeg="spkit", steps=12, eeg_steps=6, width=16, seeds=(0,), eval_samples=2, threads=1),
    "quick": EphysProfile(dict(n_conditions=40, trials_per_condition=10), eeg="spkit", steps=800, eeg_steps=400,
                          width=64, seeds=(0,), eval_samples=8, threads=1),
    "full": EphysProfile(dict(n_conditions=65, trials_per_condition=20), eeg="spkit", steps=6000, eeg_steps=3000,
                         width=128, seeds=(0, 1, 2), eval_samples=16, threads=0),
    "gpu": EphysProfile(dict(n_conditions=65, trials_per_condition=20), eeg="spkit", steps=6000, eeg_steps=3000,
                        width=128, seeds=(0, 1, 2), eval_samples=16, threads=0, device="cuda"),
}




def _config(p: EphysProfile, model: str, steps: int, seed: int, options: D.DataOptions) -> EphysConfig:
    w = p.width
    return EphysConfig.from_dict({
        "model": model, "eval_samples": p.eval_samples, "options": options.to_dict(),
        "langevin": {"encoder_hidden": w, "d_model": max(16, w), "heads": 4 if w >= 16 else 2},
        "lfads": {"lfads_encoder_hidden": w, "generator_hidden": w},
        "train": {"max_steps": steps, "seed": seed, "kl_ramp_steps": max(1, steps // 4),
                  "l2_ramp_steps": max(1, steps // 4), "log_every": max(1, steps // 50),
                  "val_every": max(1, steps // 20)},
    })


def _train_vae(p: EphysProfile, model: str, train: TrialData, steps: int, seed: int, out: Path, options) -> tuple:
    cfg = _config(p, model, steps, seed, options)
    net = build_model(cfg, train)
    module = SeqVAEModule(net, cfg.train, train.n_heldin, train.t_obs, train.likelihood)
    args = TrainerArgs(accelerator="gpu" if p.device == "cuda" else "cpu", devices=1)
    with quiet_training():
        res = fit_vae(module, train, out, args, progress=False, resume=False)
    return net.to("cpu"), res


def _latent_r2(z_train: torch.Tensor, s_train: torch.Tensor, z_test: torch.Tensor, s_test: torch.Tensor) -> float:
    """R² on test trials of a least-squares affine map from inferred latents to the true
    Lorenz states, fitted on training trials."""
    a = np.c_[z_train.reshape(-1, z_train.shape[-1]).numpy(), np.ones(z_train.shape[0] * z_train.shape[1])]
    w, *_ = np.linalg.lstsq(a, s_train.reshape(-1, 3).numpy(), rcond=None)
    b = np.c_[z_test.reshape(-1, z_test.shape[-1]).numpy(), np.ones(z_test.shape[0] * z_test.shape[1])]
    return M.r2_uniform(s_test.reshape(-1, 3).numpy(), b @ w)


def _lorenz(p: EphysProfile, seed: int, out: Path) -> dict:
    options = D.DataOptions(**p.lorenz)
    data = D.load_trials("lorenz", options, seed)
    split = D.split_data(data, "lorenz", options, seed)
    train, test = split["train"], split["test"]
    per_seed: dict[str, dict[str, list[float]]] = {}
    times: dict[str, list[float]] = {}
    keep: dict = {}
    for s in progress(p.seeds, "ephys lorenz seeds"):
        for model in ("langevin", "lfads"):
            net, res = _train_vae(p, model, train, p.steps, seed + s, out / f"lorenz_{model}_{s}", options)
            rates, lat = predict(net, test, p.eval_samples, seed + s)
            m = {**score(test, rates), "best_step": float(res["best_step"] or p.steps)}
            if model == "langevin":
                _, lat_train = predict(net, train, 0, seed + s)
                _, lat_test = predict(net, test, 0, seed + s)
                k = lat.shape[-1] // 2
                m["latent_r2"] = _latent_r2(lat_train[..., :k], train.latents, lat_test[..., :k], test.latents)
            for key, v in m.items():
                per_seed.setdefault(model, {}).setdefault(key, []).append(v)
            times.setdefault(model, []).append(res["seconds"])
            if s == p.seeds[0]:
                keep[model] = {"rates": rates, "latents": lat, "history": res["history"]}
    t0 = time.perf_counter()
    glm = smoothing_glm(train, test, SmoothingConfig())
    times["smoothing_glm"] = [time.perf_counter() - t0]
    keep["smoothing_glm"] = {"rates": glm}
    agg = lambda vals: vals[0] if len(vals) == 1 else mean_ci95(vals)  # noqa: E731
    metrics = {f"lorenz.{k}": agg(v) for k, v in per_seed["langevin"].items()}
    baselines = {
        "lfads": {f"lorenz.{k}": agg(v) for k, v in per_seed["lfads"].items()},
        "smoothing_glm": {f"lorenz.{k}": v for k, v in score(test, glm).items()},
        "true_rates": {f"lorenz.{k}": v for k, v in score(test, test.rates).items()},
    }
    timings = {"lorenz.langevin_train_s": float(np.mean(times["langevin"])),
               "lorenz.lfads_train_s": float(np.mean(times["lfads"])),
               "lorenz.smoothing_glm_fit_s": times["smoothing_glm"][0]}
    timings["lorenz.langevin_over_lfads_time_ratio"] = timings["lorenz.langevin_train_s"] / timings["lorenz.lfads_train_s"]
    return {"metrics": metrics, "baselines": baselines, "timings": timings, "keep": keep, "test": test}


def _eeg(p: EphysProfile, seed: int, out: Path) -> dict:
    options = D.DataOptions()
    data = D.load_trials(p.eeg, options, seed)
    split = D.split_data(data, p.eeg, options, seed)
    train, test = split["train"], split["test"]
    metrics, baselines, timings, keep = {}, {}, {}, {}
    for model in ("langevin", "lfads"):
        net, res = _train_vae(p, model, train, p.eeg_steps, seed, out / f"eeg_{model}", options)
        params, _ = predict(net, test, p.eval_samples, seed)
        m = {f"eeg.{k}": v for k, v in score(test, params).items()}
        (metrics if model == "langevin" else baselines.setdefault("lfads", {})).update(m)
        timings[f"eeg.{model}_train_s"] = res["seconds"]
        keep[model] = params[..., : test.n_channels]
    mean = smoothing_glm(train, test, SmoothingConfig())
    fit_train = smoothing_glm(train, train, SmoothingConfig())
    resid = (train.x - fit_train).pow(2)[:, : train.t_obs].mean((0, 1)).clamp_min(1e-6)  # per-channel variance
    params = torch.cat([mean, resid.log().expand_as(mean)], -1)
    baselines["smoothing_ridge"] = {f"eeg.{k}": v for k, v in score(test, params).items()}
    keep["smoothing_ridge"] = mean
    return {"metrics": metrics, "baselines": baselines, "timings": timings, "keep": keep, "test": test}


def run(profile: str, out_dir: str | Path, seed: int = 0) -> BenchResult:
    """Run the ephys benchmark ``profile`` into ``out_dir`` (``results.json``,
    ``report.md``, PNG plots); returns the result."""
    p = select_profile(PROFILES, profile)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(p.threads):
        return _run(profile, p, out, seed)


def _run(profile: str, p: EphysProfile, out: Path, seed: int) -> BenchResult:
    t0 = time.perf_counter()
    lor = _lorenz(p, seed, out / "work")
    parts = [lor]
    eeg = _eeg(p, seed, out / "work") if p.eeg else None
    if eeg is not None:
        parts.append(eeg)
    metrics, baselines, timings = {}, {}, {}
    for part in parts:
        metrics.update(part["metrics"])
        timings.update(part["timings"])
        for b, ms in part["baselines"].items():
            baselines.setdefault(b, {}).update(ms)
    from .ephys_plots import make_plots  # plots in their own module

    plots = make_plots(out, lor, eeg)
    curves = {"loss": {"xlabel": "step", "ylabel": "loss", "series": {
        m: {"x": [s for s, _ in lor["keep"][m]["history"]], "y": [v for _, v in lor["keep"][m]["history"]]}
        for m in ("langevin", "lfads")}}}
    timings["total_s"] = time.perf_counter() - t0
    notes = [
        f"torch threads: {torch.get_num_threads()}; device: {p.device}; seeds: {[seed + s for s in p.seeds]}",
        "rates are expected counts per 20 ms bin; rate_r2 = r2_score(y_true=true rates, y_pred=inferred), "
        "uniform over neurons, all test trials and bins (observed and forward)",
        "co-bps/fp-bps/psth R2 as in nlb_tools.evaluation; null = per-neuron mean count of the scored set",
        "true_rates row: the generating rates, the ceiling any model can reach",
        "EEG: spkit eeg_sample_14ch, 1-40 Hz, z-scored, 0.5 s windows (step 0.125 s), first 80% train, "
        "test windows start after the last training window ends; forecast = last 0.125 s",
        "smoothing baselines predict each channel's training mean in the forward window",
        "sequential VAEs: same steps, ramps, coordinated dropout and seeds; 10% of the training trials held back, "
        "weights with the lowest validation negative ELBO kept (lorenz.best_step)",
        "published (arXiv 2507.11531, Lorenz): not comparable in detail (their generator is unreleased); "
        "our generator is described on the data card ephys-lorenz",
    ]
    result = BenchResult.create("ephys", profile, seed, metrics=metrics, baselines=baselines, timings=timings,
                                curves=curves, plots=plots, notes=notes)
    result.write(out)
    R.write_report(result, out)
    return result
