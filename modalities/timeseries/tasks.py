"""The CLI's ``sample`` and ``evaluate`` for three tasks: unconditional generation,
forecasting (the last ``H`` steps of a window given the rest) and imputation (entries
hidden by a mask, or missing in the user's file).

Samples are written in raw units (the scaling undone). Metrics are computed in the
normalised space (min-max [0, 1] for the protocol's sets), as the protocol does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from modaflow.core.config import Config
from modaflow.core.devices import DeviceName, pick_device
from modaflow.core.stats import mean_ci95

from . import data as D
from . import metrics as M
from .recipe import Restored, draw, prepare, restore, to_raw
from .sampling import condition, steered_impute
from .sources import Source, read_table
from .ts2vec import TS2VecConfig, train_ts2vec

__all__ = ["TimeSeriesOptions", "conditioning", "complete", "stitch", "sample", "evaluate", "generation_metrics"]


@dataclass
class TimeSeriesOptions(Config):
    """Options of ``sample`` and ``evaluate``: the task and its conditioning."""

    task: Literal["generate", "forecast", "impute"] = "generate"
    """generate (unconditional), forecast (the last --horizon steps) or impute (masked / missing entries)."""
    input: str = ""
    """forecast/impute: a .csv/.parquet series to condition on (forecast: continue its end; impute: fill its NaN,
    in windows tiling the file, the last one aligned to its end, and write the whole series back, n filled copies
    with the file's time column); empty = test windows of the training data.
    evaluate scores known values: forecast holds out the file's last horizon steps, impute hides observed entries."""
    horizon: int = 0
    """forecast: steps to predict (0 = window // 4)."""
    missing_rate: float = 0.3
    """impute: fraction of observed entries hidden at random (an input without NaN, and evaluate)."""
    windows: int = 16
    """forecast/impute on test windows: how many windows (evenly spaced over the test split)."""
    guidance: bool = False
    """Impute/forecast through the core's gradient-free steering of the unconditional field (automatic for the
    linear_fm and ddpm baselines, which have no conditional input)."""
    shift: float = 0.0
    """Time shift of the sampling grid (0 = the recipe's; 1 = uniform, the benchmark's validated choice for
    10 NFE with --solver midpoint --steps 5)."""
    device: DeviceName = "auto"
    """Where the network samples: auto = cuda when a GPU is visible, else cpu."""
    diffusion: float | None = None
    """Diffusion level g of TimeFlow's Euler–Maruyama sampler (None = the recipe's em_diffusion, 0.1 as in the
    paper; 0 = no noise, the Euler ODE). The other solvers are deterministic and ignore it."""
    repeats: int = 5
    """evaluate --task generate: metric repeats (seeds of the TS2Vec encoder and the GRU classifiers); each metric is
    reported as mean ± 95% t-interval over them (protocol: 5)."""
    disc_iterations: int = 2000
    """evaluate: training iterations of the discriminative GRU (protocol: 2000)."""
    pred_iterations: int = 5000
    """evaluate: training iterations of the predictive GRU (protocol: 5000)."""
    ts2vec_iterations: int = 0
    """evaluate: TS2Vec training iterations for context-FID (0 = TS2Vec's default)."""

    def validate(self) -> None:
        self._require(self.horizon >= 0, "horizon", "an integer >= 0")
        # conditioning options of another task are refused, not ignored (a forgotten --task would give unconditional
        # samples that look like an answer)
        self._require(not self.input or self.task != "generate", "input",
                      "empty for --task generate (condition on a file with --task forecast or --task impute)")
        self._require(not self.horizon or self.task == "forecast", "horizon",
                      f"0 for --task {self.task} (a horizon is a forecasting option: --task forecast)")
        self._require(not self.guidance or self.task != "generate", "guidance",
                      "off for --task generate (steering conditions forecasts and imputations)")
        self._require(0 < self.missing_rate < 1, "missing_rate", "a number in (0, 1)")
        for name in ("windows", "repeats", "disc_iterations", "pred_iterations"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.ts2vec_iterations >= 0, "ts2vec_iterations", "an integer >= 0")
        self._require(self.shift >= 0, "shift", "a number >= 0 (0 = the recipe's)")
        self._require(self.diffusion is None or self.diffusion >= 0, "diffusion", "a number >= 0 (or unset: the recipe's)")

    @property
    def grid_shift(self) -> float | None:
        """The sampling grid's shift, None for the recipe's."""
        return self.shift or None


def _horizon(r: Restored, opts: TimeSeriesOptions) -> int:
    H = opts.horizon or max(1, r.cfg.window // 4)
    if not 1 <= H < r.cfg.window:
        raise ValueError(f"horizon must lie in [1, window = {r.cfg.window}); got {H}")
    return H


def _tiling(T: int, L: int) -> np.ndarray:
    """Starts of windows of length ``L`` that cover ``0 .. T-1``: non-overlapping, plus one
    aligned to the end when ``L`` does not divide ``T`` (so no step, and no gap, is left out)."""
    starts = np.arange(0, T - L + 1, L)
    return starts if starts[-1] + L == T else np.append(starts, T - L)


def conditioning(r: Restored, opts: TimeSeriesOptions, seed: int, scoring: bool = False,
                 data: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows ``u`` (normalised; 0 where nothing is known), the observation masks ``m`` the
    model sees and the entries to score ``target`` (known in ``u``, hidden by ``m``), each
    ``(W, L, C)``; ``target`` is all 0 when not ``scoring``.

    With ``opts.input``: ``forecast`` conditions on the file's last ``L - H`` steps and
    predicts the ``H`` after them; when ``scoring``, it holds out the file's last ``H`` steps
    instead and conditions on the ``L - H`` before them. ``impute`` tiles the whole file (the
    last window aligned to its end) and fills its missing cells; a file without any hides
    ``missing_rate`` of its entries at random. When ``scoring`` it always hides observed
    entries at random and scores those (the file's own gaps have no truth). Without it: test
    windows of ``data`` (default: the run's data), its channels matched to the run's by name."""
    L, C = r.cfg.window, r.scaler.n_channels
    H = _horizon(r, opts) if opts.task == "forecast" else 0
    if opts.input:
        _, x, mask = _input_series(r, opts)
        if opts.task == "impute":
            return _impute_windows(r, opts, x, mask, seed, scoring)
        # forecast: L - H steps observed, the next H predicted
        need = L if scoring else L - H
        if x.shape[0] < need:
            raise ValueError(f"{opts.input}: the series has {x.shape[0]} steps; "
                             f"{'scoring a forecast' if scoring else 'forecasting'} needs >= {need}")
        u = np.zeros((1, L, C))
        u[0, :need] = r.scaler.transform(x[-need:], opts.input)
        m = np.zeros((1, L, C))
        m[0, : L - H] = 1.0
        return u, m, (1.0 - m) if scoring else np.zeros_like(m)
    cfg = r.cfg if data is None else r.cfg.replace(data=data)
    w, _ = prepare(cfg)
    if len(w.test) == 0:
        raise ValueError(f"{cfg.data}: no test windows (test_fraction = 0); give --input")
    order = D.channel_order(w.channels, r.scaler.channels, cfg.data)
    idx = np.unique(np.linspace(0, len(w.test) - 1, min(opts.windows, len(w.test))).round().astype(int))
    u = r.scaler.transform(w.test[idx][..., order], cfg.data)
    if opts.task == "forecast":
        m = np.zeros_like(u)
        m[:, : L - H] = 1.0
    else:
        m = _random_mask(u.shape, opts.missing_rate, seed)
    return u, m, 1.0 - m


def _input_series(r: Restored, opts: TimeSeriesOptions) -> tuple[Source, np.ndarray, np.ndarray]:
    """``opts.input`` read as the run reads data: ``(source, values (T, C), observed mask (T, C))``,
    its columns put in the run's channel order by name (not position); NaN allowed for impute."""
    src = read_table(opts.input, r.cfg.time_column or None, allow_missing=opts.task == "impute", columns=r.cfg.columns)
    order = D.channel_order(src.channels, r.scaler.channels, opts.input)
    x = src.values[:, order]
    return src, x, np.ones_like(x) if src.mask is None else src.mask[:, order]


def _impute_windows(r: Restored, opts: TimeSeriesOptions, x: np.ndarray, mask: np.ndarray, seed: int,
                    scoring: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`conditioning` of impute on a file's series ``x`` (``(T, C)``, raw) with its observed ``mask``:
    windows tiling it (:func:`_tiling`)."""
    L = r.cfg.window
    if x.shape[0] < L:
        raise ValueError(f"{opts.input}: the series has {x.shape[0]} time steps, shorter than the window length {L}")
    starts = _tiling(x.shape[0], L)
    xs = np.stack([x[s : s + L] for s in starts])
    ms = np.stack([mask[s : s + L] for s in starts])
    known = r.scaler.transform(xs, opts.input) * ms
    if scoring or ms.min() == 1.0:  # hide observed entries at random (and score them when scoring)
        hide = 1.0 - _random_mask(xs.shape, opts.missing_rate, seed)
        m = ms * (1.0 - hide)
        return known, m, ms * hide if scoring else np.zeros_like(m)
    return known, ms, np.zeros_like(ms)


def stitch(windows: np.ndarray, seen: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Whole series ``(S, T, C)`` from completions ``windows`` ``(W, S, L, C)`` of the windows that
    tile ``x`` ``(T, C)`` (:func:`_tiling`): each step from the first window that covers it, and every
    entry the model saw (``seen`` ``(W, L, C)`` = 1) the file's own value, exactly."""
    _, S, L, C = windows.shape
    T = x.shape[0]
    out = np.full((S, T, C), np.nan)
    known = np.zeros((T, C), bool)
    for w, s in enumerate(_tiling(T, L)):
        fresh = np.isnan(out[0, s : s + L, 0])  # steps no earlier window covered
        out[:, s : s + L][:, fresh] = windows[w][:, fresh]
        known[s : s + L][fresh] = seen[w][fresh] == 1
    return np.where(known, x, out)


def _random_mask(shape, rate: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) >= rate).astype(np.float64)


def complete(r: Restored, u: np.ndarray, m: np.ndarray, n: int, steps: int | None, solver: str | None, seed: int,
             guidance: bool = False, shift: float | None = None, diffusion: float | None = None) -> Tensor:
    """``n`` completions of each observed window: ``(W, n, L, C)`` in network space. The
    TimeFlow network conditions on ``[m y, m]``; the baselines (or ``guidance``) steer their
    unconditional flow (:func:`.sampling.steered_impute`). ``shift``: the time grid's,
    ``diffusion``: Euler–Maruyama's level (None: the recipe's)."""
    W = u.shape[0]
    device = next(r.model.parameters()).device
    y = r.scaler.to_model(u).repeat_interleave(n, 0).to(device)
    mk = torch.as_tensor(m, dtype=torch.float32).repeat_interleave(n, 0).to(device)
    if r.cfg.method == "timeflow" and not guidance:
        x = draw(r, W * n, steps, solver, seed, cond=condition(y, mk), shift=shift, diffusion=diffusion)
    else:
        x0 = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(device)
        how = "hard" if r.cfg.method == "ddpm" else "flowchef"
        # the DDPM's clean prediction is clipped to the training range, which a bounded scaler maps onto [-1, 1]
        # (on uschange's out-of-range test windows it overshot to |x| = 30 without: benchmarks/RESULTS.md)
        x1_range = (-1.0, 1.0) if how == "hard" and r.scaler.method != "standard" else None
        with torch.no_grad():
            x = steered_impute(r.model, r.kind, r.path, x0, y, mk, steps or r.cfg.steps,
                               r.cfg.shift if shift is None else shift, how, x1_range)
    x = mk * y + (1 - mk) * x
    return x.reshape(W, n, *x.shape[1:])


def sample(ckpt_dir: str | Path, n: int, steps: int | None, solver: str | None, out_path: str | Path, seed: int,
           options: TimeSeriesOptions | None = None) -> Path:
    """Write samples in raw units to ``out_path`` (.npy or .csv): ``(n, L, C)`` for
    generate, ``(W, n, L, C)`` (windows x samples) for forecast and for impute on test windows;
    impute with ``--input``: the file's whole series filled, ``(n, T, C)`` (:func:`stitch`; the
    CSV with the file's time column beside ``sample``)."""
    opts = options or TimeSeriesOptions()
    r = restore(ckpt_dir, pick_device(opts.device))
    if opts.task == "generate":
        x = draw(r, n, steps, solver, seed, shift=opts.grid_shift, diffusion=opts.diffusion)
    elif opts.task == "impute" and opts.input:  # the file's series back, filled
        src, raw, mask = _input_series(r, opts)
        u, m, _ = _impute_windows(r, opts, raw, mask, seed, scoring=False)
        x = complete(r, u, m, n, steps, solver, seed, opts.guidance, opts.grid_shift, opts.diffusion)
        return D.save_series(out_path, stitch(to_raw(r, x), m, raw), r.scaler.channels, src.times, src.time_name)
    else:
        u, m, _ = conditioning(r, opts, seed)
        x = complete(r, u, m, n, steps, solver, seed, opts.guidance, opts.grid_shift, opts.diffusion)
    return D.save_samples(out_path, to_raw(r, x), r.scaler.channels)


def generation_metrics(real: np.ndarray, fake: np.ndarray, encoder, seed: int, disc_iterations: int = 2000,
                       pred_iterations: int = 5000, bounded: bool = True, repeats: int = 5) -> dict[str, float]:
    """The four protocol metrics of ``fake`` against ``real`` (normalised windows) in the repeat
    seeded ``seed`` of ``repeats``, and the roughness diagnostic (:func:`.metrics.roughness`). The
    correlational score is the protocol's: ``len(real) // repeats`` windows of each set drawn with
    replacement (:func:`.metrics.correlational_score`)."""
    return {
        "discriminative": M.discriminative_score(real, fake, disc_iterations, seed=seed),
        "predictive": M.predictive_score(real, fake, pred_iterations, seed=seed, bounded=bounded),
        "context_fid": M.context_fid(encoder, real, fake),
        "correlational": M.correlational_score(real, fake, subset=max(len(real) // repeats, 2), seed=seed),
        "roughness": M.roughness(real, fake),
    }


def evaluate(ckpt_dir: str | Path, data: str | None, n: int, steps: int | None, solver: str | None, seed: int,
             options: TimeSeriesOptions | None = None) -> dict:
    """generate: the protocol (Diffusion-TS): ``n`` samples against as many real training windows drawn at random (all
    of them when fewer; of ``data`` if given, scaled by the checkpoint's scaler), the four metrics and the roughness
    as ``{"mean", "ci95", "n"}`` over ``opts.repeats`` seeds (TS2Vec encoder and GRUs seeded ``seed + k``, as the
    benchmark), and the copying check (``dcr_ratio``, against every training window). forecast / impute: MSE and
    MAE of the sample mean and CRPS over ``n`` samples per window, on the predicted entries, of ``opts.input`` or
    else the test windows (of ``data`` if given)."""
    opts = options or TimeSeriesOptions()
    if opts.input and data:
        raise ValueError(f"evaluate takes --input ({opts.input}) or --data ({data}), not both: --input scores the "
                         f"conditioning on that file, --data the test windows of that data")
    r = restore(ckpt_dir, pick_device(opts.device))
    if opts.task != "generate":
        u, m, target = conditioning(r, opts, seed, scoring=True, data=data)
        x = r.scaler.from_model(complete(r, u, m, n, steps, solver, seed, opts.guidance, opts.grid_shift,
                                         opts.diffusion))  # (W, n, L, C)
        s = np.moveaxis(x, 1, 0)  # (n, W, L, C)
        return {**M.point_errors(s, u, target), "crps": M.crps_samples(s, u, target), "windows": int(u.shape[0]),
                "samples_per_window": n, "task": opts.task}
    cfg = r.cfg if data is None else r.cfg.replace(data=data)
    w, _ = prepare(cfg)
    real_all = r.scaler.transform(w.train[..., D.channel_order(w.channels, r.scaler.channels, cfg.data)], cfg.data)
    n = min(n, len(real_all))  # equal counts: the discriminator's accuracy is measured on balanced classes
    real = real_all[np.random.default_rng(seed).permutation(len(real_all))[:n]]
    fake = r.scaler.from_model(draw(r, n, steps, solver, seed, shift=opts.grid_shift, diffusion=opts.diffusion))
    x = torch.as_tensor(real_all, dtype=torch.float32)
    reps = [generation_metrics(real, fake, train_ts2vec(x, TS2VecConfig(iterations=opts.ts2vec_iterations), seed + k),
                               seed + k, opts.disc_iterations, opts.pred_iterations, bounded=r.scaler.method != "standard",
                               repeats=opts.repeats)
            for k in range(opts.repeats)]
    scores = {m: mean_ci95(rep[m] for rep in reps) for m in reps[0]}
    # copying check against every training window (metrics.dcr_ratio; ideal 1, a copy 0)
    return {**scores, "dcr_ratio": M.dcr_ratio(real_all, fake, cfg.stride), "n_samples": n, "n_real": n,
            "n_train_windows": int(real_all.shape[0]), "repeats": opts.repeats}
