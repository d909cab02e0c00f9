"""The time-series recipe: the typed config, how data, scaling, network, path and training
module fit together for the three methods, and ``train`` / ``finetune`` / ``restore``.

Methods (one backbone, :class:`~.models.TimeFlowNet`, same size for all three):

* ``timeflow``: conditional network, :class:`~.training.TimeFlowModule` (SDE flow matching
  with random masks), sampled by Euler–Maruyama (TimeFlow, arXiv 2511.07968). With
  ``prediction = "data"`` the network predicts ``x1`` under a velocity-like loss weight and is
  sampled by DPM-Solver++(2M) (the module doc of :mod:`.training`).
* ``linear_fm``: unconditional network, plain linear-path flow matching
  (:class:`~modaflow.core.training.FlowMatchingModule`), sampled by an ODE solver.
* ``ddpm``: unconditional network predicting the data on a cosine DDPM schedule of
  ``fm.ddpm_steps`` (500) steps, sampled ancestrally (Diffusion-TS style, Yuan & Qiao 2024,
  arXiv 2403.01742; without its Fourier loss term).

A run folder holds ``recipe.json``, ``scaler.json`` (fitted on the training split only),
``config.json``, ``checkpoints/last.safetensors`` and ``metrics.csv``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from modaflow.core.config import Config, ConfigError
from modaflow.core.paths import AffinePath, DiscreteVPPath, LinearPath
from modaflow.core.training import FlowMatchingConfig, FlowMatchingModule, TrainerArgs, checkpoint_path, fit, load_checkpoint

from ..runs import absolute_source, load_recipe, load_weights, save_recipe
from . import data as D
from .models import TimeFlowNet, TimeFlowNetConfig
from .sampling import run_solver, steps_for_nfe
from .training import TimeFlowModule

__all__ = ["NAME", "Method", "METHODS", "TimeSeriesConfig", "prepare", "build", "restore", "Restored", "draw", "draw_nfe",
           "train", "finetune", "to_raw"]

NAME = "timeseries"
Method = Literal["timeflow", "linear_fm", "ddpm"]
METHODS: tuple[str, ...] = get_args(Method)
Solver = Literal["auto", "em", "euler", "midpoint", "heun", "rk4", "ddpm", "ddim", "dpm2m"]
SCALER_FILE = "scaler.json"


def _default_fm() -> FlowMatchingConfig:
    # the flow methods train on logit-normal times (Esser et al. 2024, arXiv 2403.03206, sec. 3.1, eq. 19, m = 0,
    # s = 1); Sines component experiment (d_model 32, 700 steps): TimeFlow@10 context-FID 0.39 -> 0.14 and
    # correlational 0.094 -> 0.031 against uniform times at the same cost. The DDPM ignores it (see build).
    # Cosine learning-rate decay to 0 and EMA decay 0.999 (were: constant lr, EMA 0.995): full-size Sines TimeFlow
    # (d_model 64, 3 layers, 12 000 steps), midpoint@10, 9000 draws vs the 9000 training windows, TS2Vec seeds 0-4:
    # context-FID 0.0095 +- 0.0029 -> 0.0035 +- 0.0010 (sd), lower for every encoder seed (benchmarks/RESULTS.md).
    return FlowMatchingConfig(lr=1e-3, max_steps=3000, batch_size=128, ema_decay=0.999, lr_decay="cosine",
                              log_every=50, ckpt_every=1000, warmup_steps=100, ddpm_steps=500,
                              time_sampler="logit_normal")


@dataclass
class TimeSeriesConfig(Config):
    """A time-series generator: data, windows, scaling, network, method and sampler."""

    data: str = "sines"
    """sines, mujoco, stocks, basicmotions, italypowerdemand, solar, uschange, sktime:NAME, or a .csv/.parquet file."""
    method: Method = "timeflow"
    """timeflow (SDE flow matching, masks), linear_fm (ODE baseline) or ddpm (Diffusion-TS-style baseline)."""
    window: int = 24
    """Window length L."""
    stride: int = 1
    """Step between the starts of consecutive windows."""
    test_fraction: float = -1.0
    """Fraction held out for test: the last part in time of a series, or the last samples of a generated set
    (-1 = the dataset's default: 0.2 for solar and uschange, else 0.1)."""
    n_samples: int = 10_000
    """Samples of a generated set (sines, mujoco)."""
    data_seed: int = 0
    """Seed of a generated set."""
    scaling: Literal["auto", "minmax", "standard", "identity"] = "auto"
    """Per-channel scaling fitted on the training split: auto = identity for sines (already in [0, 1]), else minmax."""
    time_column: str = ""
    """Time column of a user file (empty: the first non-numeric column or one named date/time)."""
    columns: tuple[str, ...] = ()
    """Channel columns to model, in this order (empty: every channel of the data in its own order); a user file's
    other columns are not read, so they may hold text or gaps."""
    d_model: int = 64
    """Token width of the network."""
    layers: int = 3
    """Decomposition layers of the network."""
    heads: int = 4
    """Attention heads."""
    mlp_ratio: float = 2.0
    """MLP width as a multiple of d_model."""
    kernel: int = 5
    """Moving-average width of the trend parts (odd)."""
    noise_scale: float = 0.1
    """TimeFlow's training stochastic term: noise of variance t (1 - t) noise_scale^2."""
    prediction: Literal["velocity", "data"] = "velocity"
    """TimeFlow: what the network predicts: velocity (the paper's target x1 - x0) or data (x1, the loss weighted by
    min(1 / (1 - t)^2, weight_cap); smoother samples where the data are smooth, e.g. MuJoCo)."""
    weight_cap: float = 100.0
    """TimeFlow with prediction = data: the cap of the loss weight 1 / (1 - t)^2."""
    p_forecast: float = 0.25
    """TimeFlow: probability that a training window is a forecasting task."""
    p_impute: float = 0.25
    """TimeFlow: probability that a training window is an imputation task."""
    max_horizon: int = 0
    """TimeFlow: the longest forecast horizon drawn in training (0 = window // 2)."""
    solver: Solver = "auto"
    """Sampler: auto (em for timeflow, dpm2m for timeflow with prediction = data, euler for linear_fm, ddpm for
    ddpm), em, euler, midpoint, heun, rk4, ddpm, ddim, dpm2m (DPM-Solver++(2M))."""
    steps: int = 100
    """Sampler steps (ignored by ddpm, which takes every step)."""
    sample_shift: float = 0.0
    """Time shift of the sampling grid (0 = the method's default: 3 for timeflow, 1 otherwise)."""
    em_diffusion: float = 0.1
    """Euler-Maruyama diffusion coefficient g (constant)."""
    fm: FlowMatchingConfig = field(default_factory=_default_fm)
    """Optimiser, steps, EMA, time sampler and seed (path and parametrization follow the method). The time sampler
    (default logit_normal) applies to timeflow and linear_fm; ddpm always draws its steps uniformly (set on
    construction)."""

    def __post_init__(self) -> None:
        if self.method == "ddpm" and isinstance(self.fm, FlowMatchingConfig) and self.fm.time_sampler != "uniform":
            # the DDPM loss draws its step uniformly whatever the flow methods' default says (Ho et al. 2020,
            # arXiv 2006.11239, Alg. 1, as Diffusion-TS, arXiv 2403.01742, trains); set here so recipe.json says so
            self.fm = self.fm.replace(time_sampler="uniform")
        super().__post_init__()

    def validate(self) -> None:
        self._require(bool(self.data), "data", "a dataset name or a file path")
        for name in ("window", "stride", "n_samples", "d_model", "layers", "heads", "steps"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.window >= 2, "window", "an integer >= 2")
        self._require(len(set(self.columns)) == len(self.columns), "columns", "distinct channel names")
        self._require(self.test_fraction == -1 or 0 <= self.test_fraction < 1, "test_fraction", "a number in [0, 1), or -1")
        self._require(self.d_model % self.heads == 0, "heads", f"a divisor of d_model = {self.d_model}")
        self._require(self.kernel >= 1 and self.kernel % 2 == 1, "kernel", "an odd integer >= 1")
        self._require(self.noise_scale >= 0, "noise_scale", "a number >= 0")
        self._require(self.prediction == "velocity" or self.method == "timeflow", "prediction",
                      f"velocity for method {self.method!r} (data prediction is a TimeFlow option)")
        self._require(self.weight_cap >= 1, "weight_cap", "a number >= 1")
        self._require(self.p_forecast >= 0 and self.p_impute >= 0 and self.p_forecast + self.p_impute <= 1,
                      "p_forecast", "p_forecast, p_impute >= 0 with p_forecast + p_impute <= 1")
        self._require(0 <= self.max_horizon < self.window, "max_horizon", f"an integer in [0, window = {self.window})")
        self._require(self.sample_shift >= 0, "sample_shift", "a number >= 0 (0 = the method's default)")
        self._require(self.em_diffusion >= 0, "em_diffusion", "a number >= 0")
        # what build() sets from the method: refused rather than silently replaced
        fm = self.fm
        self._require(fm.parametrization == "velocity", "fm.parametrization",
                      "unset: the method sets it (TimeFlow: --prediction velocity|data; linear_fm velocity; ddpm data)")
        self._require(fm.path == "linear", "fm.path", "unset: the method sets it (TimeFlow: the linear path with its "
                      "stochastic term; linear_fm linear; ddpm the cosine discrete schedule)")
        self._require(fm.cond_dropout == 0, "fm.cond_dropout", "0: the models are unconditional or, for TimeFlow, "
                      "trained on random observation masks (p_forecast, p_impute) instead")
        if self.method == "timeflow":
            self._require(fm.loss_weighting == "none", "fm.loss_weighting", "none for TimeFlow (its data prediction "
                          "is weighted by weight_cap's schedule)")
            self._require(fm.coupling == "independent", "fm.coupling", "independent for TimeFlow (its loss pairs each "
                          "window with its own noise)")

    @property
    def shift(self) -> float:
        """The sampling grid's time shift."""
        return self.sample_shift or (3.0 if self.method == "timeflow" else 1.0)

    @property
    def horizon_max(self) -> int:
        return self.max_horizon or self.window // 2


def inert_fields(config: dict) -> dict[str, object]:
    """The ``fm`` fields :meth:`TimeSeriesConfig.validate` refuses because the method sets them or never
    reads them, at their defaults: a run stored before they were refused loads with them reset
    (:func:`~..runs.load_recipe`'s ``inert``); they never changed its training."""
    fm = _default_fm()
    out = {"fm.parametrization": fm.parametrization, "fm.path": fm.path, "fm.cond_dropout": fm.cond_dropout}
    if config.get("method", "timeflow") == "timeflow":
        out.update({"fm.loss_weighting": fm.loss_weighting, "fm.coupling": fm.coupling})
    return out


@lru_cache(maxsize=8)
def _windows(data: str, window: int, stride: int, test_fraction: float, n_samples: int, seed: int,
             time_column: str, columns: tuple[str, ...]) -> D.Windows:
    src = D.load_source(data, n_samples, window, seed, time_column or None, columns=columns)
    w = D.split_windows(src, window, stride, test_fraction, where=data)
    D.check_finite_windows(w.train, f"{data} (training windows)")
    return w


def prepare(cfg: TimeSeriesConfig) -> tuple[D.Windows, D.Scaler]:
    """Raw train/test windows of ``cfg.data`` and the scaler fitted on the training split
    (cached per data settings within a process)."""
    frac = D.default_test_fraction(cfg.data) if cfg.test_fraction == -1 else cfg.test_fraction
    w = _windows(cfg.data, cfg.window, cfg.stride, frac, cfg.n_samples, cfg.data_seed, cfg.time_column, cfg.columns)
    method = cfg.scaling if cfg.scaling != "auto" else ("identity" if cfg.data.lower() == "sines" else "minmax")
    return w, D.Scaler.fit(w.train, method, w.channels)


def _net(cfg: TimeSeriesConfig, channels: int) -> TimeFlowNet:
    """The network, its initial weights drawn from ``fm.seed`` (the global RNG is left as it was),
    so a run does not depend on what drew from the global RNG before it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.fm.seed)
        return TimeFlowNet(TimeFlowNetConfig(channels=channels, length=cfg.window, d_model=cfg.d_model, layers=cfg.layers,
                                             heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, kernel=cfg.kernel,
                                             conditional=cfg.method == "timeflow"))


def build(cfg: TimeSeriesConfig, channels: int) -> tuple[AffinePath, str, FlowMatchingModule]:
    """``(path, parametrization, training module)`` of ``cfg.method`` for ``channels``."""
    net = _net(cfg, channels)
    if cfg.method == "timeflow":
        module = TimeFlowModule(net, cfg.fm.replace(parametrization=cfg.prediction), cfg.noise_scale, cfg.p_forecast,
                                cfg.p_impute, cfg.horizon_max, cfg.weight_cap)
        return module.path, cfg.prediction, module
    if cfg.method == "linear_fm":
        return LinearPath(), "velocity", FlowMatchingModule(net, LinearPath(), cfg.fm.replace(parametrization="velocity"))
    path = DiscreteVPPath.cosine(cfg.fm.ddpm_steps)  # T = fm.ddpm_steps (500, Diffusion-TS's cosine schedule)
    fm = cfg.fm.replace(parametrization="data", path="ddpm_cosine")  # time_sampler uniform (TimeSeriesConfig)
    return path, "data", FlowMatchingModule(net, path, fm)


@dataclass(frozen=True)
class Restored:
    """A trained run: recipe, scaler, path, what the network predicts, and the network
    (EMA weights, eval mode)."""

    cfg: TimeSeriesConfig
    scaler: D.Scaler
    path: AffinePath
    kind: str
    model: nn.Module


def restore(ckpt_dir: str | Path, device: torch.device | str = "cpu") -> Restored:
    """Rebuild the run ``ckpt_dir`` from its recipe, scaler and checkpoint, the network on ``device``."""
    cfg = load_recipe(ckpt_dir, NAME, TimeSeriesConfig, inert=inert_fields)
    scaler = D.Scaler.load(Path(ckpt_dir) / SCALER_FILE)
    path, kind, module = build(cfg, scaler.n_channels)
    load_weights(ckpt_dir, module.model, use_ema=True)
    return Restored(cfg, scaler, path, kind, module.model.to(device).eval())


@torch.no_grad()
def draw(r: Restored, n: int, steps: int | None = None, solver: str | None = None, seed: int = 0,
         cond: Tensor | None = None, shift: float | None = None, batch: int = 2048,
         diffusion: float | None = None) -> Tensor:
    """``n`` samples ``(n, L, C)`` in network space; ``x0`` comes from a CPU generator seeded
    by ``seed`` (so every device starts from the same noise), Brownian increments from
    ``seed + 1``. ``cond`` ``(n, L, 2C)`` conditions a TimeFlow network. ``shift`` and
    ``diffusion`` (Euler–Maruyama's level g) replace the recipe's ``shift`` / ``em_diffusion``."""
    cfg = r.cfg
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    device = next(r.model.parameters()).device
    x0 = torch.randn(n, cfg.window, r.scaler.n_channels, generator=torch.Generator().manual_seed(seed)).to(device)
    g = torch.Generator(device).manual_seed(seed + 1)
    out = []
    for i in range(0, n, batch):
        c = None if cond is None else cond[i : i + batch].to(device)
        out.append(run_solver(r.model, cfg.method, r.kind, r.path, x0[i : i + batch], steps or cfg.steps,
                              solver or cfg.solver, cfg.shift if shift is None else shift,
                              cfg.em_diffusion if diffusion is None else diffusion, g, c))
    return torch.cat(out)


def draw_nfe(r: Restored, n: int, nfe: int, solver: str = "auto", seed: int = 0, cond: Tensor | None = None,
             shift: float | None = None) -> Tensor:
    """:func:`draw` with ``solver`` spending exactly ``nfe`` network evaluations per window
    (``nfe / 2`` midpoint or Heun steps, ``nfe`` Euler–Maruyama steps; the DDPM takes all of its)."""
    return draw(r, n, steps_for_nfe(r.cfg.method, solver, nfe, r.kind), solver, seed, cond, shift)


def _fit(module: FlowMatchingModule, cfg: TimeSeriesConfig, x: Tensor, trainer_args: TrainerArgs, out_dir,
         progress: bool) -> dict:
    dm = D.SeriesDataModule(x, batch_size=cfg.fm.batch_size, seed=cfg.fm.seed)
    res = fit(module, dm, out_dir, trainer_args, progress=progress)
    final = res.history[-1][1] if res.history else math.nan
    return {"steps": res.step, "final_loss": final, "checkpoint": str(res.checkpoint), "history": res.history}


def _train_tensor(cfg: TimeSeriesConfig, out_dir) -> tuple[Tensor, D.Scaler]:
    w, scaler = prepare(cfg)
    save_recipe(out_dir, NAME, cfg)
    scaler.save(Path(out_dir) / SCALER_FILE)
    return scaler.to_model(scaler.transform(w.train, cfg.data)), scaler


def _stored_data(data: str) -> str:
    """``data`` as the recipe stores it: a user file as its absolute path (so that ``sample`` and
    ``evaluate`` find it from any working directory), a dataset name as it is."""
    key = data.lower()
    return data if key in D.NAMED or key.startswith("sktime:") else absolute_source(data)


def train(cfg: TimeSeriesConfig, trainer_args: TrainerArgs, out_dir: str | Path, progress: bool = True) -> dict:
    """Train ``cfg.method`` on ``cfg.data`` into ``out_dir`` (resumes from its checkpoint);
    returns ``{"steps", "final_loss", "checkpoint", "history"}``."""
    cfg = cfg.replace(data=_stored_data(cfg.data))
    x, scaler = _train_tensor(cfg, out_dir)
    _, _, module = build(cfg, scaler.n_channels)
    return _fit(module, cfg, x, trainer_args, out_dir, progress)


def finetune(ckpt_dir: str | Path, data: str, out_dir: str | Path, overrides: dict, trainer_args: TrainerArgs,
             progress: bool = True) -> dict:
    """Continue training the run ``ckpt_dir`` on ``data`` into ``out_dir``, from its weights
    and EMA with a fresh optimiser; the scaler is refitted on the new training split. The
    network (sizes, method, window) and the channel count must stay those of the checkpoint."""
    base = load_recipe(ckpt_dir, NAME, TimeSeriesConfig, inert=inert_fields)
    base_scaler = D.Scaler.load(Path(ckpt_dir) / SCALER_FILE)
    merged = base.to_dict()
    for key, value in overrides.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    cfg = TimeSeriesConfig.from_dict({**merged, "data": _stored_data(data)})
    for name in ("method", "prediction", "window", "d_model", "layers", "heads", "mlp_ratio", "kernel"):
        if getattr(cfg, name) != getattr(base, name):
            raise ConfigError(f"finetune cannot change {name} ({getattr(base, name)!r} in {ckpt_dir}); got {getattr(cfg, name)!r}")
    w, _ = prepare(cfg)
    order = D.channel_order(w.channels, base_scaler.channels, data)  # the checkpoint's channel count
    if tuple(w.channels[i] for i in order) == base_scaler.channels and not np.array_equal(order, np.arange(len(order))):
        cfg = cfg.replace(columns=base_scaler.channels)  # the checkpoint's channels by name, in its order
    x, scaler = _train_tensor(cfg, out_dir)
    _, _, module = build(cfg, scaler.n_channels)
    if not checkpoint_path(out_dir).exists():  # a rerun into the same folder resumes there instead
        load_checkpoint(checkpoint_path(ckpt_dir), module.model, ema=module.ema)
    return _fit(module, cfg, x, trainer_args, out_dir, progress)


def to_raw(r: Restored, x: Tensor) -> np.ndarray:
    """Network-space samples -> raw units (the scaling undone), float64."""
    return r.scaler.inverse(r.scaler.from_model(x))

