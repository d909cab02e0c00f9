"""The time-series benchmark: ``modaflow bench timeseries --profile P``.

Per dataset, four models on the same backbone, data, seeds and initial noise (trained
with :func:`modaflow.modalities.timeseries.recipe.train`): TimeFlow (SDE flow matching;
Euler–Maruyama, sigma = 0.1, time shift 3 by default) at 10 and 100 NFE, TimeFlow predicting the data
(``prediction = "data"``, sampled by DPM-Solver++(2M)) at 10 and 100 NFE, the linear flow-matching
ODE (Euler, uniform grid by default) at 10 and 100 NFE, and the Diffusion-TS-style DDPM with 500
ancestral steps. Each row: the protocol's four metrics (REFERENCE.md §2) and a roughness diagnostic over
``repeats`` metric seeds (mean ± 95% t-interval; the same generated set, new classifier /
encoder seeds, as the protocol repeats them), a copying check (DCR ratio: the metrics compare
with training windows, which a copy would match), samples per second and the speed ratio
against the DDPM measured in the same run. Then: the metric-vs-NFE curves (correlational
and context-FID), forecasting and imputation (MSE / MAE / CRPS of the TimeFlow
conditional model against the baselines' steered sampling), plots (PCA / t-SNE, overlays,
metric vs NFE, a forecast fan), and a table per dataset with the published Diffusion-TS /
FM-TS numbers beside ours, marked as published.

TimeFlow and linear FM train on logit-normal times (the recipe's default), the DDPM on uniform steps.
Each flow row's sampler — the method's one-evaluation-per-step default or the midpoint method at
the same NFE, on a uniform or shifted grid (``SAMPLERS``) — is chosen on a validation comparison
(:func:`choose_samplers`: context-FID of generated windows against training windows, with noise and
a TS2Vec encoder the reported metrics do not use; never the test set); the notes record each choice
and every validation score, and the row reports the chosen solver and shift.

Metrics compare generated windows with an equal number of real **training** windows in
the normalised space (the protocol's); forecasting uses held-out test windows.
Profiles: ``smoke`` (seconds, tests), ``quick`` (about 10 min of CPU time on one thread, measured at
66d8cf0 with the four models: Sines and Stocks, small networks, 1200 training steps, 256 windows per
row, shortened metric training — see the notes), ``full`` (all sets,
protocol metric settings), ``gpu`` (full sizes on CUDA, bf16 training).

A rerun into the same folder resumes: trained models are kept in ``runs/`` and each finished
dataset in ``datasets/`` (:mod:`.timeseries_store`), reused while the profile's sizes and the
seed are the same; the dataset being evaluated is kept stage by stage (encoders, each row's
sampler choice, the timing, each row, the references, the curves), so an interrupted ``full``
run loses at most the stage it was in.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from modaflow.core.training import TrainerArgs
from modaflow.core.training.config import LRDecay
from modaflow.modalities.timeseries import metrics as M
from modaflow.modalities.timeseries.recipe import TimeSeriesConfig, draw_nfe, prepare, restore, train
from modaflow.modalities.timeseries.sampling import resolve_solver
from modaflow.modalities.timeseries.tasks import generation_metrics
from modaflow.modalities.timeseries.ts2vec import TS2VecConfig, TS2VecEncoder, train_ts2vec

from . import report as R
from . import timeseries_eval as E
from . import timeseries_plots as P
from . import timeseries_store as S
from .harness import BenchResult, log, mean_ci95, median_times, progress, quiet_training, select_profile, stage

__all__ = ["TSProfile", "PROFILES", "run"]


@dataclass(frozen=True)
class TSProfile:
    """Sizes of one benchmark profile."""

    datasets: tuple[str, ...]
    """Datasets (registry names)."""
    n_samples: int
    """Samples of the generated sets (sines, mujoco)."""
    d_model: int
    """Token width of the shared backbone."""
    layers: int
    """Decomposition layers."""
    train_steps: int
    """Optimiser steps per model."""
    batch_size: int
    """Training batch size."""
    eval_n: int
    """Generated windows per row (and real training windows they are compared with)."""
    repeats: int
    """Metric repeats (classifier / encoder seeds) for the mean and 95% interval."""
    disc_iterations: int
    """Discriminative GRU iterations (protocol 2000)."""
    pred_iterations: int
    """Predictive GRU iterations (protocol 5000)."""
    ts2vec_iterations: int
    """TS2Vec iterations (0 = TS2Vec's default, 600 / 200)."""
    curve_nfes: tuple[int, ...]
    """NFEs of the metric-vs-NFE curves (TimeFlow and linear FM)."""
    forecast_windows: int
    """Test windows of the forecasting / imputation table."""
    forecast_samples: int
    """Samples per window for CRPS."""
    ddpm_steps: int = 500
    """Steps of the DDPM baseline."""
    time_n: int = 256
    """Windows per timed sampling call (samples/s and speed ratios)."""
    time_repeats: int = 3
    """Interleaved timing rounds; samples/s uses the median."""
    tsne: bool = True
    """Also plot t-SNE (slower than PCA)."""
    threads: int = 1
    """torch threads (0: torch's default)."""
    device: str = "cpu"
    """Where training and sampling run."""
    lr_decay: LRDecay | None = None
    """Learning rate after the warm-up for every model (None: the recipe's default)."""
    ema_decay: float | None = None
    """EMA decay of the weights of every model (None: the recipe's default)."""
    speed_nfes: tuple[int, ...] = ()
    """Extra TimeFlow x1-prediction rows at these NFEs (below 10), for the speed goal: ``>= 50x`` the DDPM's
    samples/s at an equal or better discriminative score needs fewer than 10 NFE, since 500 / 10 is exactly 50
    (RESULTS.md, MuJoCo below 10 NFE). Each gets a sampler chosen on validation like every flow row."""


PROFILES: dict[str, TSProfile] = {
    "smoke": TSProfile(("sines",), n_samples=400, d_model=16, layers=1, train_steps=30, batch_size=64, eval_n=64,
                       repeats=2, disc_iterations=10, pred_iterations=10, ts2vec_iterations=5, curve_nfes=(2, 10),
                       forecast_windows=4, forecast_samples=4, ddpm_steps=100, tsne=False, time_n=32, time_repeats=1,
                       lr_decay="constant", ema_decay=0.995),
    # quick: ~10 min of CPU time on one thread with four models (66d8cf0); ~5.5 min with three at db247c7 (was 13.7
    # min: training 6 models x 1200 steps of batch 128 was ~1/3,
    # sampling — speed rounds of 256 windows, DDPM-500 on 500 windows, curves — and the metric GRUs the rest).
    # 1200 steps (was 700): on Sines, training steps were the best quality per CPU second of the components tried
    # (context-FID of TimeFlow@10 vs 2000 training windows: 700 -> 1400 steps 0.39 -> 0.20; d_model 64 at 1.5x the
    # cost 0.74 -> 0.70). Its 256 windows per row put the metrics' floor high: real vs real scores ~0.05
    # discriminative and ~0.06 context-FID, so quick cannot resolve the goals (<= 0.006); full can.
    # quick keeps a constant learning rate and EMA 0.995: at its 1200 steps the recipe's cosine decay + EMA 0.999
    # scored worse on 8 of 10 rows' context-FID (TimeFlow@10 Sines 0.048 -> 0.065, DDPM Sines 0.11 -> 0.16, Stocks
    # 0.23 -> 0.40) and on Sines forecast MSE (0.0023 -> 0.0035): too few steps to anneal (RESULTS.md, 2b71069).
    "quick": TSProfile(("sines", "stocks"), n_samples=10_000, d_model=32, layers=2, train_steps=1200, batch_size=64,
                       eval_n=256, repeats=3, disc_iterations=250, pred_iterations=200, ts2vec_iterations=60,
                       curve_nfes=(2, 5, 10, 20, 50, 100), forecast_windows=8, forecast_samples=8, time_n=64,
                       lr_decay="constant", ema_decay=0.995),
    # full: the protocol's sizes. eval_n 10 000 = every training window (9000 of Sines). The metrics' own floor
    # (real vs disjoint real windows, Sines) is 0.0025 discriminative / 0.033 context-FID at 2000 windows and
    # 0.0014 / 0.0042 at 9000 (a fresh simulator draw against the training windows, TS2Vec seeds 0-4), under the
    # 0.006 goal: the Fréchet bias falls about as 1 / n. About a day on one CPU thread of a shared 2-core EPYC
    # (RESULTS.md): 28 models x 12 000 steps at 13-26 min each (~9 h, measured), then per dataset the sampler
    # choice, seven rows (DDPM-500 the longest), curves and forecasts, measured: Sines 2 h 22 min (2 threads),
    # Stocks 1 h 24 min, BasicMotions 2 h 15 min, uschange 47 min, ItalyPowerDemand 34 min, solar 42 min (1 thread); estimated
    # from a partial run: MuJoCo ~3 h (2 threads). threads=0 uses every core.
    "full": TSProfile(("sines", "mujoco", "stocks", "basicmotions", "italypowerdemand", "solar", "uschange"),
                      n_samples=10_000, d_model=64, layers=3, train_steps=12_000, batch_size=128, eval_n=10_000,
                      repeats=5, disc_iterations=2000, pred_iterations=5000, ts2vec_iterations=0,
                      curve_nfes=(1, 2, 5, 10, 20, 50, 100), forecast_windows=64, forecast_samples=32, threads=0,
                      speed_nfes=(6, 8)),
    "gpu": TSProfile(("sines", "mujoco", "stocks", "basicmotions", "italypowerdemand", "solar", "uschange"),
                     n_samples=10_000, d_model=128, layers=4, train_steps=30_000, batch_size=256, eval_n=10_000,
                     repeats=5, disc_iterations=2000, pred_iterations=5000, ts2vec_iterations=0,
                     curve_nfes=(1, 2, 5, 10, 20, 50, 100), forecast_windows=256, forecast_samples=100, threads=0,
                     device="cuda", speed_nfes=(6, 8)),
}

MODELS: dict[str, tuple[str, str]] = {
    "timeflow": ("timeflow", "velocity"), "timeflow_x1": ("timeflow", "data"),
    "linear_fm": ("linear_fm", "velocity"), "ddpm": ("ddpm", "velocity"),
}
"""The models of every dataset: name -> (method, TimeFlow's ``prediction``). ``timeflow`` regresses the paper's
velocity target; ``timeflow_x1`` the data (benchmarks/RESULTS.md: on MuJoCo it removes the roughness the
discriminator detects, on Sines it costs context-FID), so the table shows both."""
ROWS: tuple[tuple[str, str, int], ...] = (
    ("TimeFlow", "timeflow", 10), ("TimeFlow", "timeflow", 100),
    ("TimeFlow x1-prediction", "timeflow_x1", 10), ("TimeFlow x1-prediction", "timeflow_x1", 100),
    ("linear FM", "linear_fm", 10), ("linear FM", "linear_fm", 100), ("DDPM", "ddpm", 500),
)
"""(label, model, NFE) of each table row; DDPM's NFE is its step count (profile's ddpm_steps)."""


def rows_of(p: TSProfile) -> tuple[tuple[str, str, int], ...]:
    """The table rows of profile ``p``: :data:`ROWS` and its ``speed_nfes`` rows (TimeFlow x1-prediction)."""
    return ROWS + tuple(("TimeFlow x1-prediction", "timeflow_x1", nfe) for nfe in p.speed_nfes)


def _config(p: TSProfile, ds: str, name: str, seed: int) -> TimeSeriesConfig:
    method, prediction = MODELS[name]
    cfg = TimeSeriesConfig(data=ds, method=method, prediction=prediction, n_samples=p.n_samples, data_seed=seed,
                           d_model=p.d_model, layers=p.layers)
    # time sampler: the recipe's (logit-normal for TimeFlow and linear FM, uniform steps for the DDPM)
    return cfg.replace(fm=cfg.fm.replace(max_steps=p.train_steps, batch_size=p.batch_size, seed=seed, ddpm_steps=p.ddpm_steps,
                                         lr_decay=cfg.fm.lr_decay if p.lr_decay is None else p.lr_decay,
                                         ema_decay=cfg.fm.ema_decay if p.ema_decay is None else p.ema_decay,
                                         log_every=max(1, p.train_steps // 50), ckpt_every=p.train_steps,
                                         warmup_steps=min(100, p.train_steps // 10)))


SHIFTS: tuple[float, ...] = (1.0, 3.0)
"""Candidate sampling time shifts of the flow rows (1 = uniform grid; 3 = TimeFlow's default)."""
SOLVER_CHOICES: tuple[str, ...] = ("auto", "midpoint")
"""Candidate solvers of the flow rows: each model's one-evaluation-per-step default (TimeFlow
Euler–Maruyama, TimeFlow x1-prediction DPM-Solver++(2M), linear FM Euler) and the two-evaluation
midpoint ODE method at the same NFE."""
SAMPLERS: tuple[tuple[str, float], ...] = tuple((solver, a) for solver in SOLVER_CHOICES for a in SHIFTS)
"""Candidate ``(solver, shift)`` pairs of every flow row."""
VAL_SEED = 1000
"""Offset of the validation draws' noise seed and TS2Vec encoder seed from the run's seed."""


def choose_samplers(models: dict, val: np.ndarray, encoder, scaler, seed: int, chosen: dict | None = None,
                    on_choice: Callable[[dict], None] | None = None, rows: tuple[tuple[str, str, int], ...] = ROWS) -> dict:
    """The sampler of each flow row ``(model, NFE)``: the ``(solver, shift)`` of :data:`SAMPLERS`
    whose ``len(val)`` generated windows have the lowest context-FID against ``val`` (training
    windows, never the test split), scored with ``encoder`` (its own seed) on noise seeded by
    ``seed + VAL_SEED`` (the rows use ``seed``). Returns ``{(model, nfe): ((solver, shift),
    {(solver, shift): validation context-FID})}`` with solvers resolved (``auto`` -> em / dpm2m / euler).
    Rows already in ``chosen`` (an interrupted run's) are kept; ``on_choice`` gets the dict after each new row;
    ``rows``: the table's (:func:`rows_of`)."""
    chosen = dict(chosen or {})
    for _, name, nfe in rows:
        r = models[name]
        if r.cfg.method == "ddpm" or (name, nfe) in chosen:
            continue
        fids = {(resolve_solver(r.cfg.method, solver, r.kind), a):
                M.context_fid(encoder, val, scaler.from_model(draw_nfe(r, len(val), nfe, solver, seed + VAL_SEED, shift=a)))
                for solver, a in SAMPLERS}
        chosen[(name, nfe)] = (min(fids, key=fids.get), fids)
        if on_choice is not None:
            on_choice(chosen)
    return chosen


def _choice_json(chosen: dict) -> dict:
    """:func:`choose_samplers`' result as JSON: ``{"model@nfe": {"pick": [solver, shift], "fids": [[solver, shift, fid]]}}``."""
    return {f"{name}@{nfe}": {"pick": list(pick), "fids": [[b, a, v] for (b, a), v in fids.items()]}
            for (name, nfe), (pick, fids) in chosen.items()}


def _choice_from_json(stored: dict) -> dict:
    """The inverse of :func:`_choice_json`."""
    out = {}
    for row, c in stored.items():
        name, nfe = row.rsplit("@", 1)
        out[(name, int(nfe))] = (tuple(c["pick"]), {(b, a): v for b, a, v in c["fids"]})
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def sampling_speed(models: dict, p: TSProfile, samplers: dict, seed: int) -> dict[tuple[str, int], float]:
    """Samples per second of every row with its sampler (``samplers[(model, nfe)] = (solver,
    shift)``; the DDPM's ancestral sampler otherwise): the median over ``p.time_repeats`` rounds
    of one sampling call of ``p.time_n`` windows, rounds interleaving the rows (harness
    :func:`median_times`), so a busy machine slows every row alike."""
    calls = {}
    for _, name, nfe in rows_of(p):
        nfe = p.ddpm_steps if name == "ddpm" else nfe
        solver, shift = samplers.get((name, nfe), ("auto", None))
        calls[(name, nfe)] = partial(draw_nfe, models[name], p.time_n, nfe, solver, seed, shift=shift)
    times = median_times(calls, p.time_repeats, sync=partial(_sync, p.device))
    return {key: p.time_n / secs for key, secs in times.items()}


def _dataset(p: TSProfile, ds: str, out: Path, seed: int) -> dict:
    """Train the models of :data:`MODELS` on ``ds``, evaluate every row, the curves and the
    forecasting table; returns metrics, baselines, timings, curves and arrays for plots."""
    targs = TrainerArgs(accelerator="gpu" if p.device == "cuda" else "cpu", devices=1,
                        precision="bf16-mixed" if p.device == "cuda" else "32-true")
    res: dict = {"metrics": {}, "baselines": {}, "timings": {}, "curves": {}, "losses": {}, "rows": {}, "fakes": {},
                 "draws": {}, "choice": {}, "speed": {}}
    models = {}
    for name in MODELS:
        with stage(f"train {name} on {ds}", res["timings"], f"train.{ds}.{name}_s"), quiet_training():
            summary = train(_config(p, ds, name, seed), targs, out / "runs" / f"{ds}-{name}", progress=False)
        res["losses"][f"{ds} {name}"] = tuple(zip(*summary["history"])) if summary["history"] else ((), ())
        r = restore(out / "runs" / f"{ds}-{name}")
        models[name] = replace(r, model=r.model.to(p.device))
    w, scaler = prepare(models["timeflow"].cfg)
    rng = np.random.default_rng(seed)
    real_all = scaler.transform(w.train)
    n = min(p.eval_n, len(real_all))
    perm = rng.permutation(len(real_all))
    real = real_all[perm[:n]]
    # validation windows for the sampler choice: training windows outside ``real``; where ``real`` is every training
    # window (the full profile's Sines), the same windows with the validation encoder and noise seed
    val = real_all[perm[n : 2 * n]] if len(real_all) >= 2 * n else real_all[perm[n:]] if len(real_all) > n else real
    # an interrupted run's finished stages (timeseries_store.save_partial) are taken up where it stopped
    key = store_key(p, seed)
    state = S.load_partial(out, ds, key, SCORED_FIELDS) or S.Partial(done=[], scalars={k: res[k] for k in S.PARTIAL_SCALARS})
    res.update({k: v for k, v in state.scalars.items() if k not in ("losses", "timings")})
    res["timings"] = {**res["timings"], **state.scalars["timings"]}  # the first run's stage times
    res["draws"] = state.draws
    res["fakes"] = {label: state.draws[k] for label, k in state.fakes.items()}

    def keep(stage_name: str) -> None:
        state.done.append(stage_name)
        state.scalars = {k: res[k] for k in S.PARTIAL_SCALARS}
        S.save_partial(out, ds, key, state)

    ts2vec = TS2VecConfig(iterations=p.ts2vec_iterations)
    if "encoders" in state.done:
        *encoders, val_encoder = [_restore_encoder(weights, real_all.shape[-1], ts2vec) for weights in state.encoders]
    else:
        with stage(f"train {p.repeats + 1} TS2Vec encoders on {ds}", res["timings"], f"{ds}.ts2vec_s"):
            x = torch.as_tensor(real_all, dtype=torch.float32)
            encoders = [train_ts2vec(x, ts2vec, seed + k) for k in range(p.repeats)]
            val_encoder = train_ts2vec(x, ts2vec, seed + VAL_SEED)
        state.encoders = [{name: t.detach().cpu().numpy() for name, t in e.state_dict().items()}
                          for e in (*encoders, val_encoder)]
        keep("encoders")
    bounded = scaler.method != "standard"

    def chose(chosen: dict) -> None:
        res["choice"] = _choice_json(chosen)
        name, nfe = list(chosen)[-1]
        keep(f"sampler {name}@{nfe}")

    with stage(f"choose samplers on {ds} ({len(val)} validation windows)"):
        choice = choose_samplers(models, val, val_encoder, scaler, seed, _choice_from_json(res["choice"]), chose,
                                 rows_of(p))
    res["samplers"] = {row: pick for row, (pick, _) in choice.items()}
    res["sampler_notes"] = [f"{ds} {name}@{nfe}: {pick[0]}, shift {pick[1]:g} (validation context-FID "
                            + ", ".join(f"{b}/{a:g}: {v:.4f}" for (b, a), v in fids.items()) + f"; {len(val)} windows"
                            + (", the reference windows" if val is real else "") + ")"
                            for (name, nfe), (pick, fids) in choice.items()]

    def scores(fake: np.ndarray) -> dict:
        reps = [generation_metrics(real, fake, encoders[k], seed + k, p.disc_iterations, p.pred_iterations, bounded,
                                   p.repeats)
                for k in range(p.repeats)]
        return {m: mean_ci95(rp[m] for rp in reps) for m in P.METRICS}

    with stage(f"closest training windows on {ds}"):  # the copying check's reference, once for every row
        stride = models["timeflow"].cfg.stride
        dcr = partial(M.dcr_ratio, real_all, stride=stride, real_closest=M.closest_distances(real_all, real_all, stride))
    if "speed" not in state.done:
        with stage(f"time sampling on {ds}"):
            res["speed"] = {f"{name}@{nfe}": v for (name, nfe), v in sampling_speed(models, p, res["samplers"], seed).items()}
        keep("speed")
    speed = {(k.rsplit("@", 1)[0], int(k.rsplit("@", 1)[1])): v for k, v in res["speed"].items()}
    for label, name, nfe in progress(rows_of(p), f"evaluate {ds}"):
        r = models[name]
        nfe = p.ddpm_steps if name == "ddpm" else nfe
        solver, shift = res["samplers"].get((name, nfe), ("auto", None))  # the DDPM: ancestral, no grid
        title = f"{label} ({nfe} NFE" + (f", {solver}, shift {shift:g})" if shift is not None else ")")
        if f"row {title}" in state.done:
            continue
        fake = scaler.from_model(draw_nfe(r, n, nfe, solver, seed, shift=shift))
        # the curves reuse these draws where they ask for the same solver and shift
        draw_key = (name, resolve_solver(r.cfg.method, solver, r.kind), nfe, shift or r.cfg.shift)
        res["draws"][draw_key] = fake
        row = {"model": name, "nfe": nfe, "solver": solver, "shift": shift, **scores(fake), "dcr_ratio": dcr(fake),
               "samples_per_s": speed[(name, nfe)]}
        res["rows"][title] = row
        # each row's scores reach the log as they are measured, not only in the report at the end
        log(f"{ds} {title}: " + ", ".join(f"{m} {row[m]['mean']:.4f} ± {row[m]['ci95']:.4f}" for m in P.METRICS)
            + f", DCR ratio {row['dcr_ratio']:.3f}, {row['samples_per_s']:.0f} samples/s")
        res["fakes"][f"{label} {nfe}"] = fake
        state.fakes[f"{label} {nfe}"] = draw_key
        metric_key = f"{ds}.{name}@nfe{nfe}"
        target = res["metrics"] if r.cfg.method == "timeflow" else res["baselines"].setdefault(name, {})
        target.update({f"{metric_key}.{m}": row[m] for m in (*P.METRICS, "dcr_ratio")})
        res["timings"][f"{metric_key}.samples_per_s"] = row["samples_per_s"]
        keep(f"row {title}")
    for row in res["rows"].values():  # every row's rate from the one timing stage (also rows kept from before it)
        if "samples_per_s" in row:
            row["samples_per_s"] = speed[(row["model"], row["nfe"])]
            res["timings"][f"{ds}.{row['model']}@nfe{row['nfe']}.samples_per_s"] = row["samples_per_s"]
    ddpm_rate = res["rows"][f"DDPM ({p.ddpm_steps} NFE)"]["samples_per_s"]
    for row in res["rows"].values():
        if "samples_per_s" in row:
            row["speed_vs_ddpm"] = row["samples_per_s"] / ddpm_rate
            res["timings"][f"{ds}.{row['model']}@nfe{row['nfe']}.speed_vs_ddpm_ratio"] = row["speed_vs_ddpm"]
    if "references" not in state.done:
        with stage(f"score the real references on {ds}"):
            E.real_data_rows(p, ds, models["timeflow"].cfg, real, w, scaler, encoders, seed, bounded, dcr, res)
        keep("references")
    if "curves" not in state.done:
        with stage(f"metric-vs-NFE curves on {ds}"):
            E.curves_vs_nfe(p, ds, models, real, encoders[0], seed, n, scaler, res, SOLVER_CHOICES)
        keep("curves")
    with stage(f"forecast and imputation on {ds}"):
        E.forecast_table(p, ds, models, seed, res)
    res.update(real=real, scaler=scaler, channels=w.channels)
    return res


def _restore_encoder(weights: dict[str, np.ndarray], channels: int, cfg: TS2VecConfig) -> TS2VecEncoder:
    """A TS2Vec encoder from the weights an interrupted run kept (eval mode, as trained)."""
    enc = TS2VecEncoder(channels, cfg)
    enc.load_state_dict({name: torch.from_numpy(np.array(w)) for name, w in weights.items()})
    return enc.eval()


def plotted(fakes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The generated sets of the embedding and overlay plots (label "<row label> <NFE>"): each
    model at 10 NFE and the DDPM."""
    return {k: v for k, v in fakes.items()
            if k in ("TimeFlow 10", "TimeFlow x1-prediction 10", "linear FM 10", "DDPM " + k.split()[-1])}


ROW_FIELDS: tuple[str, ...] = (*P.METRICS, "dcr_ratio", "samples_per_s", "speed_vs_ddpm")
"""What every model row of a dataset's table holds; a stored dataset whose rows lack one (older
code) is evaluated again."""
SCORED_FIELDS: tuple[str, ...] = ROW_FIELDS[:-1]
"""What a model row holds once scored, before the speed ratio (set when every row is); the same
check for the stages of an interrupted dataset."""


def store_key(p: TSProfile, seed: int) -> dict:
    """What a stored dataset's evaluation depends on (:mod:`.timeseries_store`): every size of
    the profile except the dataset list, the thread count and the t-SNE switch, and the seed."""
    sizes = {k: v for k, v in asdict(p).items() if k not in ("datasets", "threads", "tsne")}
    return {"seed": seed, **sizes}


def _plots(out: Path, trained: dict[str, dict], tsne: bool) -> list[str]:
    files = [R.plot_loss(out / "loss.png", {k: v for res in trained.values() for k, v in res["losses"].items()},
                         "training loss").name]
    for ds, res in trained.items():
        fakes = plotted(res["fakes"])
        files.append(P.plot_embeddings(out / f"{ds}_embeddings.png", res["real"], fakes, f"{ds}: real vs generated",
                                       tsne).name)
        files.append(P.plot_overlay(out / f"{ds}_overlay.png", res["real"], fakes, res["channels"],
                                    f"{ds}: sample overlays").name)
        for metric in ("correlational", "context_fid"):
            c = res["curves"][f"{ds}.{metric}_vs_nfe"]
            curves = {lab: (s["x"], s["y"]) for lab, s in c["series"].items()}
            files.append(R.plot_curves(out / f"{ds}_{metric}_vs_nfe.png", curves, f"{ds}: {metric} vs NFE", "NFE",
                                       metric).name)
        if "fan" in res:
            truth, samples, ctx = res["fan"]
            files.append(P.plot_fan(out / f"{ds}_forecast_fan.png", truth, samples, ctx, res["channels"][-1],
                                    f"{ds}: TimeFlow forecast (normalised)").name)
    return files


def run(profile: str, out_dir: str | Path, seed: int = 0) -> BenchResult:
    """Run the benchmark ``profile`` into ``out_dir`` (results.json, report.md, PNGs)."""
    p = select_profile(PROFILES, profile)
    return run_profile(profile, p, out_dir, seed)


def run_profile(name: str, p: TSProfile, out_dir: str | Path, seed: int = 0) -> BenchResult:
    """Run the sizes ``p`` (any profile, e.g. the gpu profile's code path at tiny sizes on
    the CPU) under the name ``name``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if p.threads:
        torch.set_num_threads(p.threads)
    try:
        from threadpoolctl import threadpool_limits  # numpy / sklearn BLAS threads (scikit-learn dependency)
    except ImportError:  # pragma: no cover
        limits = contextlib.nullcontext()
    else:
        limits = threadpool_limits(p.threads) if p.threads else contextlib.nullcontext()
    try:
        with limits:
            return _run(name, p, out, seed)
    finally:
        torch.set_num_threads(threads)


def _run(profile: str, p: TSProfile, out: Path, seed: int) -> BenchResult:
    t0 = time.perf_counter()
    metrics, baselines, timings, curves, trained = {}, {}, {}, {}, {}
    key = store_key(p, seed)
    for ds in p.datasets:
        res = S.load_dataset(out, ds, key, ROW_FIELDS)
        if res is not None:
            log(f"timeseries {ds}: reusing the finished evaluation in {res['reused']}")
        else:
            with stage(f"timeseries {ds}"):
                res = _dataset(p, ds, out, seed)
            S.save_dataset(out, ds, res, key, plotted(res["fakes"]))
        S.clear_partial(out, ds)
        trained[ds] = res
        metrics.update(res["metrics"])
        for b, ms in res["baselines"].items():
            baselines.setdefault(b, {}).update(ms)
        timings.update(res["timings"])
        curves.update(res["curves"])
    for name, table in P.PUBLISHED.items():
        baselines[name] = {f"{ds}.{m}": v for ds, ms in table.items() if ds in p.datasets for m, v in ms.items()}
    baselines = {k: v for k, v in baselines.items() if v}
    with stage("timeseries plots"):
        plots = _plots(out, trained, p.tsne)
    timings["total_s"] = time.perf_counter() - t0
    notes = [
        f"torch threads: {torch.get_num_threads()}; device: {p.device}; backbone d_model={p.d_model}, layers={p.layers}; "
        f"{p.train_steps} training steps per model",
        "metrics: generated vs an equal number of real training windows, normalised space; "
        f"mean ± 95% t-interval over {p.repeats} metric seeds; discriminative {p.disc_iterations} / predictive "
        f"{p.pred_iterations} GRU iterations (protocol 2000 / 5000), TS2Vec {p.ts2vec_iterations or 'default'} iterations; "
        f"correlational as the protocol (Diffusion-TS) computes it: each seed scores N / {p.repeats} windows of each set "
        "drawn with replacement, which raises it above the whole sets' value (the metric-vs-NFE curves use the whole "
        "sets); "
        "roughness (not in the protocol; ideal 1): the largest per-channel ratio of the second difference's std, "
        "generated / real (above 1: high-frequency noise the data lacks); DCR ratio (a copying check, not in the "
        "protocol; ideal 1, a copy of the training set 0): median distance from a generated window to its closest "
        "training window over the median distance from a training window to its closest non-overlapping other "
        "training window (every training window, flattened, Euclidean; metrics.dcr_ratio)",
        f"speed: samples/s = {p.time_n} / median time of one sampling call over {p.time_repeats} interleaved rounds "
        f"(same device and threads); speed_vs_ddpm_ratio against the DDPM with {p.ddpm_steps} ancestral steps in this run",
        "forecast / impute: TimeFlow conditions on the mask; linear FM (FlowChef) and DDPM (hard projection, its clean "
        "prediction clipped to the training range) are steered through core.steering; 100 steps each; errors on the "
        "predicted entries, normalised space",
        "sampler of each flow row (solver: the model's default — TimeFlow Euler–Maruyama, TimeFlow x1-prediction "
        "DPM-Solver++(2M), linear FM Euler — or "
        "midpoint at the same NFE; time shift " + " or ".join(f"{a:g}" for a in SHIFTS) + ") chosen by the lowest "
        "validation context-FID (generated vs training windows disjoint from the metrics' reference windows where the "
        f"split has enough, else those windows; never the test split; noise seed and TS2Vec seed + {VAL_SEED}); the "
        "metric-vs-NFE curves use each method's default shift (TimeFlow 3, linear FM 1), one line per solver: "
        + "; ".join(note for res in trained.values() for note in res["sampler_notes"]),
        "the row 'a classifier guessing at random' is the discriminative score's chance level at this size (the "
        "exact binomial mean absolute deviation on the held-out 20%, metrics.discriminative_chance): a generator "
        "indistinguishable from the data scores about this, or 0 when the classifier collapses onto one class, so "
        "discriminative differences below it are not resolved",
        "published rows are copied from REFERENCE.md §2 (Diffusion-TS table 1, FM-TS); our stocks are GOOG 2004-2013 "
        "from bokeh_sampledata, not the exact file of the publications",
    ]
    reused = [f"{ds}: {res['reused']}" for ds, res in trained.items() if "reused" in res]
    if reused:
        notes.append("evaluated by an earlier run into this folder under the same profile sizes and seed, and reused "
                     "(its samples/s and speed ratios were measured in that run, beside its own DDPM): "
                     + "; ".join(reused))
    result = BenchResult.create("timeseries", profile, seed, metrics=metrics, baselines=baselines, timings=timings,
                                curves=curves, plots=plots, notes=notes)
    result.write(out)
    path = R.write_report(result, out)
    tables = [f"## {ds}\n\n" + P.dataset_table(ds, res["rows"]) + "\n" for ds, res in trained.items()]
    from modaflow.core.io import atomic_write_text

    text = path.read_text()
    atomic_write_text(path, text.replace("## Metrics", "## Tables per dataset\n\n" + "\n".join(tables) + "\n## Metrics", 1))
    return result
