"""Parts of the time-series benchmark beyond the main table: the real-data reference rows,
metric-vs-NFE curves and the forecasting / imputation table (see :mod:`.timeseries`).
Each adds its numbers to the per-dataset result dict ``res`` in place."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from modaflow.modalities.timeseries import metrics as M
from modaflow.core.ode import ODE_STAGES
from modaflow.modalities.timeseries.data import GENERATED
from modaflow.modalities.timeseries.recipe import draw_nfe, prepare
from modaflow.modalities.timeseries.sampling import resolve_solver
from modaflow.modalities.timeseries.tasks import complete, generation_metrics

from . import timeseries_plots as P
from .harness import mean_ci95

__all__ = ["real_data_rows", "curves_vs_nfe", "forecast_table"]


FRESH_SEED = 2000
"""Offset of the simulator seed of the fresh draw (beside the training data's ``data_seed``)."""


def real_data_rows(p, ds, cfg, real, w, scaler, encoders, seed, bounded, dcr, res) -> None:
    """The metrics' references, scored like generated rows against the same ``real`` windows:

    * held-out real test windows (protocol's "real data" predictive: train and test on real);
      fewer of them than ``real`` on most sets, which biases the Fréchet distance upward;
    * for a simulated set (Sines, MuJoCo), a fresh simulator draw of as many windows as ``real``
      (``data_seed + FRESH_SEED``): the floor a perfect generator would score at this size;
    * the discriminative score of a classifier guessing at random on the held-out windows
      (:func:`~modaflow.modalities.timeseries.metrics.discriminative_chance`, exact): the
      metric's noise floor at this size, which differences between rows must exceed.

    ``dcr(windows)`` is the copying check of the rows (:func:`~modaflow.modalities.timeseries.metrics.dcr_ratio`
    against every training window); the fresh draw shows its value for new data from the same source."""

    def row(label: str, key: str, ref: np.ndarray, other: np.ndarray) -> None:
        reps = [generation_metrics(ref, other, encoders[k], seed + k, p.disc_iterations, p.pred_iterations, bounded,
                                   p.repeats)
                for k in range(p.repeats)]
        scores = {m: mean_ci95(rp[m] for rp in reps) for m in P.METRICS}
        res["rows"][label] = {"nfe": "", **scores, "dcr_ratio": dcr(other)}
        res["baselines"].setdefault(key, {}).update({f"{ds}.{m}": scores[m] for m in P.METRICS})
        res["baselines"][key][f"{ds}.dcr_ratio"] = res["rows"][label]["dcr_ratio"]

    if len(w.test) >= 2:
        test = scaler.transform(w.test)[: len(real)]
        row("real test windows (reference)", "real_data", real[: len(test)], test)
    if cfg.data.lower() in GENERATED:
        fresh, _ = prepare(replace(cfg, data_seed=cfg.data_seed + FRESH_SEED))
        row(f"fresh simulator draw, {len(real)} windows (reference)", "real_fresh_draw", real,
            scaler.transform(fresh.train)[: len(real)])
    chance = M.discriminative_chance(len(real), len(real))
    res["rows"]["a classifier guessing at random (discriminative chance level)"] = {"nfe": "", "discriminative": chance}
    res["baselines"].setdefault("discriminative_chance", {})[f"{ds}.discriminative"] = chance


def curves_vs_nfe(p, ds, models, real, encoder, seed, n, scaler, res, solvers: tuple[str, ...]) -> None:
    """Correlational and context-FID against NFE for every flow model (TimeFlow, TimeFlow
    x1-prediction, linear FM), at each method's default time shift, one line per solver of
    ``solvers`` (a two-stage one at the NFEs that are whole steps); a row's draws are reused where
    its sampler is the same."""
    for metric in ("correlational", "context_fid"):
        res["curves"][f"{ds}.{metric}_vs_nfe"] = {"xlabel": "NFE", "ylabel": metric, "series": {}}
    for name, r in models.items():
        if r.cfg.method == "ddpm":
            continue
        shift = r.cfg.shift
        for solver in (resolve_solver(r.cfg.method, s, r.kind) for s in solvers):
            nfes = [nfe for nfe in p.curve_nfes if nfe % ODE_STAGES.get(solver, 1) == 0]
            vals = {"correlational": [], "context_fid": []}
            for nfe in nfes:
                fake = res["draws"].get((name, solver, nfe, shift))
                if fake is None:
                    fake = scaler.from_model(draw_nfe(r, n, nfe, solver, seed, shift=shift))
                vals["correlational"].append(M.correlational_score(real, fake))  # whole sets: the curves' lower noise
                vals["context_fid"].append(M.context_fid(encoder, real, fake))
            for metric, ys in vals.items():
                res["curves"][f"{ds}.{metric}_vs_nfe"]["series"][f"{name} ({solver})"] = {"x": nfes, "y": ys}


def forecast_table(p, ds, models, seed, res) -> None:
    """MSE / MAE / CRPS of forecasts (last L/4 steps) and imputations (50% missing) on test
    windows: TimeFlow conditional (100 steps of its default sampler; keys ``{ds}.{task}.*`` for the
    velocity model, ``{ds}.timeflow_x1.{task}.*`` for data prediction) vs the baselines steered (100 steps)."""
    r0 = models["timeflow"]
    w, _ = prepare(r0.cfg)
    if len(w.test) == 0:
        return
    L = r0.cfg.window
    H = max(1, L // 4)
    idx = np.unique(np.linspace(0, len(w.test) - 1, min(p.forecast_windows, len(w.test))).round().astype(int))
    u = r0.scaler.transform(w.test[idx])
    rng = np.random.default_rng(seed)
    masks = {"forecast": np.concatenate([np.ones_like(u[:, : L - H]), np.zeros_like(u[:, L - H:])], axis=1),
             "impute": (rng.random(u.shape) >= 0.5).astype(np.float64)}
    for task, m in masks.items():
        for name, r in models.items():
            x = r.scaler.from_model(complete(r, u, m, p.forecast_samples, 100, "euler" if name == "ddpm" else "auto", seed))
            s = np.moveaxis(x, 1, 0)
            scores = {**M.point_errors(s, u, 1 - m), "crps": M.crps_samples(s, u, 1 - m)}
            if r.cfg.method == "timeflow":
                prefix = f"{ds}." if name == "timeflow" else f"{ds}.{name}."
                res["metrics"].update({f"{prefix}{task}.{k}": v for k, v in scores.items()})
            else:
                res["baselines"].setdefault(name, {}).update({f"{ds}.{task}.{k}": v for k, v in scores.items()})
            if task == "forecast" and name == "timeflow":
                res["fan"] = (u[0, :, -1], x[0, :, :, -1], L - H)
