"""The ephys recipe: typed config, building LangevinFlow (or the LFADS baseline) for a
dataset, and the train / sample / evaluate / finetune entry points of the CLI.

Run folder (``modaflow train ephys --out OUT``): ``OUT/recipe.json``,
``OUT/checkpoints/last.safetensors`` (+ ``.json``), ``OUT/metrics.csv``.

``sample`` writes an ``.npz`` of posterior latent trajectories and rates for the first
``n`` test trials (``z``, ``v`` or LFADS ``factors``, ``rates`` or ``mean``/``logvar``,
``spikes`` drawn from the rates, and ``true_rates`` where known); its "solvers" are
``posterior_mean`` (rates averaged over ``steps`` posterior draws) and ``posterior_sample``
(one stochastic draw). ``evaluate`` scores the test split with :mod:`.metrics`. Both take
``--device auto|cpu|cuda`` (:class:`EphysOptions`): where the network runs; metrics stay on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from modaflow.core.config import ConfigError, Config
from modaflow.core.devices import DeviceName, pick_device
from modaflow.core.io import atomic_write
from modaflow.core.training import TrainerArgs, checkpoint_path

from ..runs import absolute_source, load_recipe, save_recipe
from . import data as D
from . import metrics as M
from .baselines import LFADS, LFADSConfig, gaussian_smooth
from .models import LangevinFlow, LangevinFlowConfig
from .spikes import TrialData
from .training import SeqVAEModule, VAETrainConfig, fit_vae, predict

__all__ = ["EphysConfig", "EphysOptions", "SOLVERS", "build_model", "train", "restore", "sample", "evaluate", "finetune",
           "score", "NAME"]

NAME = "ephys"
SOLVERS: tuple[str, ...] = ("posterior_mean", "posterior_sample")


@dataclass
class EphysConfig(Config):
    """A LangevinFlow (or LFADS baseline) run: data, network and training."""

    data: str = "lorenz"
    """lorenz, nitime, spkit, pyedflib, nwb:/path/file.nwb or eeg:/path/file.(fif|edf|bdf|vhdr|set)."""
    data_seed: int = 0
    """Seed of generated data and of the random train/test split of trials."""
    model: Literal["langevin", "lfads"] = "langevin"
    """langevin: LangevinFlow (arXiv 2507.11531); lfads: the LFADS-style GRU baseline."""
    eval_samples: int = 8
    """Posterior draws averaged for evaluate's rates (0: the noise-free mean trajectory)."""
    vel_lag_bins: int = 5
    """vel R2: behaviour this many bins after the rates (NLB MC_Maze: 100 ms = 5 bins of 20 ms)."""
    options: D.DataOptions = field(default_factory=D.DataOptions)
    """Data-source options (Lorenz sizes, NWB binning, EEG preprocessing)."""
    langevin: LangevinFlowConfig = field(default_factory=LangevinFlowConfig)
    """LangevinFlow sizes."""
    lfads: LFADSConfig = field(default_factory=LFADSConfig)
    """LFADS sizes."""
    train: VAETrainConfig = field(default_factory=VAETrainConfig)
    """Optimiser, ramps, coordinated dropout."""

    def validate(self) -> None:
        self._require(bool(self.data), "data", "a dataset name, nwb:PATH or eeg:PATH")
        self._require(self.eval_samples >= 0, "eval_samples", "an integer >= 0")
        self._require(self.vel_lag_bins >= 0, "vel_lag_bins", "an integer >= 0")


@dataclass
class EphysOptions(Config):
    """Extra options of ``sample ephys`` and ``evaluate ephys``."""

    device: DeviceName = "auto"
    """Where the network runs: auto (a GPU when torch sees one), cpu or cuda. Posterior draws come from a
    generator seeded on that device, so cpu and cuda give different draws of the same distribution."""


def build_model(cfg: EphysConfig, data: TrialData) -> nn.Module:
    """The network of ``cfg.model`` for ``data``'s channels and likelihood, initialised
    from ``cfg.train.seed``."""
    torch.manual_seed(cfg.train.seed)
    if cfg.model == "langevin":
        return LangevinFlow(cfg.langevin, data.n_heldin, data.n_channels, data.likelihood)
    return LFADS(cfg.lfads, data.n_heldin, data.n_channels, data.likelihood)


def _shape_extra(data: TrialData) -> dict:
    return {"n_channels": data.n_channels, "n_heldin": data.n_heldin, "t_obs": data.t_obs,
            "n_bins": data.n_bins, "likelihood": data.likelihood}


def _fit(cfg: EphysConfig, model: nn.Module, data: TrialData, trainer_args, out_dir, progress: bool) -> dict:
    module = SeqVAEModule(model, cfg.train, data.n_heldin, data.t_obs, data.likelihood)
    res = fit_vae(module, data, out_dir, trainer_args, progress=progress, extra=_shape_extra(data))
    return {**res, "checkpoint": str(checkpoint_path(out_dir))}


def _stored_data(data: str) -> str:
    """``--data`` as a run stores it: files (bare, ``nwb:`` or ``eeg:``) by absolute path, the named sets as they are."""
    return absolute_source(data, ("nwb", "eeg"), D.NAMED)


def train(cfg: EphysConfig, trainer_args: TrainerArgs | None, out_dir: str | Path, progress: bool = True) -> dict:
    """Train ``cfg`` into ``out_dir`` (resumes from its checkpoint); returns ``{"steps",
    "final_loss", "history", "seconds", "checkpoint"}``."""
    cfg = cfg.replace(data=_stored_data(cfg.data))
    data = D.load_split(cfg.data, "train", cfg.options, cfg.data_seed)
    save_recipe(out_dir, NAME, cfg)
    return _fit(cfg, build_model(cfg, data), data, trainer_args, out_dir, progress)


def restore(ckpt_dir: str | Path, data: TrialData | None = None) -> tuple[EphysConfig, nn.Module]:
    """``(recipe, network in eval mode)`` of a run folder; ``data`` (default: the recipe's
    test split) must have the channels the network was trained on."""
    from modaflow.core.training import CheckpointError, apply_checkpoint, read_checkpoint

    cfg = load_recipe(ckpt_dir, NAME, EphysConfig)
    ckpt = read_checkpoint(checkpoint_path(ckpt_dir))
    shape = ckpt.extra
    data = data if data is not None else D.load_split(cfg.data, "test", cfg.options, cfg.data_seed)
    _check_fits(shape, data, str(ckpt_dir))
    model = build_model(cfg, data)
    try:
        apply_checkpoint(ckpt, model=model)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (data {cfg.data!r})") from None
    return cfg, model.eval()


def _check_fits(shape: dict, data: TrialData, where: str) -> None:
    for key, have in (("n_channels", data.n_channels), ("n_heldin", data.n_heldin), ("likelihood", data.likelihood)):
        if key in shape and shape[key] != have:
            raise ConfigError(f"{where}: the model was trained with {key} = {shape[key]!r}, the data has {have!r}")


def _data_for(cfg: EphysConfig, data: str | None) -> TrialData:
    if data is None:
        return D.load_split(cfg.data, "test", cfg.options, cfg.data_seed)
    return D.load_split(data, "test", cfg.options, cfg.data_seed)


def sample(ckpt_dir: str | Path, n: int, steps: int | None, solver: str | None, out_path: str | Path, seed: int,
           options: EphysOptions | None = None) -> Path:
    """Write posterior latent trajectories and rates of the first ``n`` test trials to
    ``out_path`` (``.npz``; see the module docstring); the network runs on ``options.device``."""
    device = pick_device((options or EphysOptions()).device)
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        raise ValueError(f"{out_path}: ephys samples are written as .npz; got suffix {out_path.suffix!r}")
    solver = solver or SOLVERS[0]
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVERS)}; got {solver!r}")
    cfg = load_recipe(ckpt_dir, NAME, EphysConfig)
    data = _data_for(cfg, None)
    data = data.subset(np.arange(min(n, data.x.shape[0])))
    cfg, model = restore(ckpt_dir, data)
    draws = (steps or cfg.eval_samples) if solver == "posterior_mean" else 1
    params, latents = predict(model.to(device), data, draws, seed)
    arrays = {"observed": data.x.numpy(), "n_heldin": np.int64(data.n_heldin), "t_obs": np.int64(data.t_obs),
              "bin_s": np.float64(data.bin_s)}
    if cfg.model == "langevin":
        k = latents.shape[-1] // 2
        arrays.update(z=latents[..., :k].numpy(), v=latents[..., k:].numpy())
    else:
        arrays["factors"] = latents.numpy()
    if data.likelihood == "poisson":
        g = torch.Generator().manual_seed(seed)
        arrays.update(rates=params.numpy(), spikes=torch.poisson(params, generator=g).numpy())
    else:
        mean, logvar = params.chunk(2, -1)
        arrays.update(mean=mean.numpy(), logvar=logvar.numpy())
    if data.rates is not None:
        arrays["true_rates"] = data.rates.numpy()

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(out_path, write)
    return out_path


def score(data: TrialData, params: torch.Tensor, train: TrialData | None = None,
          train_params: torch.Tensor | None = None, vel_lag: int = 0) -> dict[str, float]:
    """Metrics of predictions ``params`` (rates, or ``[mean, logvar]``) on ``data``:
    spikes: co-bps, fp-bps, rate R² (true rates first), psth R², vel R² (with training
    predictions); EEG/MEG: held-out R², Gaussian NLL (held-out channels), forecast MSE."""
    hi, to = data.n_heldin, data.t_obs
    if data.likelihood == "poisson":
        out = {"co_bps": M.co_bps(params, data.x, hi, to)}
        if data.n_bins > to:
            out["fp_bps"] = M.fp_bps(params, data.x, to)
        if data.rates is not None:
            out["rate_r2"] = M.rate_r2(data.rates, params)
            out["rate_r2_heldout"] = M.rate_r2(data.rates[..., hi:], params[..., hi:])
        if data.condition is not None:  # true rates where known, else smoothed counts (sd 2 bins)
            ref = data.rates.numpy() if data.rates is not None else gaussian_smooth(data.x.double().numpy(), 2.0)
            out["psth_r2"] = M.psth_r2(M.condition_psth(ref, data.condition.numpy()), params)
        if data.behavior is not None and train is not None and train_params is not None:
            out["vel_r2"] = M.velocity_r2(train_params, train.behavior, params, data.behavior, vel_lag)
        return out
    mean, logvar = params.chunk(2, -1)
    x = data.x
    out = {
        "heldout_r2": M.r2_uniform(x[:, :to, hi:].reshape(-1, data.n_heldout), mean[:, :to, hi:].reshape(-1, data.n_heldout)),
        "heldout_gauss_nll": M.gaussian_nll(x[:, :to, hi:], mean[:, :to, hi:], logvar[:, :to, hi:]),
    }
    if data.n_bins > to:
        out["forecast_mse"] = M.forecast_mse(x, mean, to)
    return out


def evaluate(ckpt_dir: str | Path, data: str | None, n: int, steps: int | None, solver: str | None, seed: int,
             options: EphysOptions | None = None) -> dict:
    """Metrics on (at most ``n`` trials of) the test split of the recipe's data or of ``data``; the network
    runs on ``options.device``, the metrics on the CPU."""
    device = pick_device((options or EphysOptions()).device)
    cfg = load_recipe(ckpt_dir, NAME, EphysConfig)
    test = _data_for(cfg, data)
    test = test.subset(np.arange(min(n, test.x.shape[0])))
    cfg, model = restore(ckpt_dir, test)
    model = model.to(device)
    draws = (steps or cfg.eval_samples) if (solver or SOLVERS[0]) == "posterior_mean" else 1
    params, _ = predict(model, test, draws, seed)
    train = train_params = None
    if test.behavior is not None:  # vel R2: the decoder is fitted on the training trials' rates
        train = D.load_split(cfg.data if data is None else data, "train", cfg.options, cfg.data_seed)
        train_params, _ = predict(model, train, draws, seed)
    return {**score(test, params, train, train_params, cfg.vel_lag_bins), "n_trials": int(test.x.shape[0])}


def finetune(ckpt_dir: str | Path, data: str, out_dir: str | Path, overrides: dict,
             trainer_args: TrainerArgs | None, progress: bool = True) -> dict:
    """Continue training the run ``ckpt_dir`` on ``data`` into ``out_dir`` (its weights, a
    fresh optimiser, ``overrides`` applied to the recipe; ``train.max_steps`` counts the new
    steps). The data must have the checkpoint's channels and likelihood."""
    from modaflow.core.training import apply_checkpoint, read_checkpoint

    base = load_recipe(ckpt_dir, NAME, EphysConfig)
    merged = base.to_dict()
    for key, value in overrides.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) else value
    cfg = EphysConfig.from_dict({**merged, "data": _stored_data(data)})
    for name in ("model", "langevin", "lfads"):
        if getattr(cfg, name) != getattr(base, name):
            raise ConfigError(f"finetune cannot change {name} (the network of {ckpt_dir})")
    train_data = D.load_split(cfg.data, "train", cfg.options, cfg.data_seed)
    ckpt = read_checkpoint(checkpoint_path(ckpt_dir))
    _check_fits(ckpt.extra, train_data, str(ckpt_dir))
    model = build_model(cfg, train_data)
    if not checkpoint_path(out_dir).exists():  # a rerun into the same folder resumes there instead
        apply_checkpoint(ckpt, model=model)
    save_recipe(out_dir, NAME, cfg)
    return _fit(cfg, model, train_data, trainer_args, out_dir, progress)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
