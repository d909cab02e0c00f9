"""The time-series modality: TimeFlow (arXiv 2511.07968), SDE flow matching with an
encoder-only decomposition transformer, for generation, forecasting and imputation of
multivariate series; with a linear flow-matching ODE and a Diffusion-TS-style DDPM as
baselines on the same backbone, and the standard generation benchmark's metrics.

Modules: ``sources`` (generated sets, package data, user CSV/Parquet), ``data`` (windows,
time splits, scaling, data module), ``models`` (the network), ``training`` (TimeFlow's
loss with random masks), ``sampling`` (core solvers, steering), ``recipe`` (config, train,
finetune), ``tasks`` (sample, evaluate), ``metrics`` and ``ts2vec`` (context-FID encoder).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from ..registry import DatasetInfo, Modality
from . import data
from .recipe import TimeSeriesConfig, finetune, prepare, train
from .sampling import SOLVERS
from .tasks import TimeSeriesOptions, evaluate, sample

__all__ = ["MODALITY", "TimeSeriesConfig", "TimeSeriesOptions"]


def _load(name: str, split: str, seed: int) -> data.WindowDataset:
    """The registry loader: normalised windows ``(L, C)`` (min-max [0, 1]; Sines as
    generated) of ``split`` (train or test) at the recipe's defaults (window 24, stride 1,
    scaler fitted on the training split)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    w, scaler = prepare(TimeSeriesConfig(data=name, data_seed=seed))
    x = w.train if split == "train" else w.test
    return data.WindowDataset(torch.as_tensor(scaler.transform(x), dtype=torch.float32))


def _bench(profile: str, out_dir: str | Path, seed: int):
    from modaflow.benchmarks.timeseries import run  # benchmarks import the modality, not the reverse

    return run(profile, out_dir, seed)


_SUMMARIES = {
    "sines": "5-channel sines, length 24, 10 000 samples (TimeGAN / Diffusion-TS protocol)",
    "mujoco": "dm_control hopper-stand qpos+qvel, 14 channels, 10 000 windows of 24 steps",
    "stocks": "GOOG daily OHLC, adjusted close, volume 2004-2013 (bokeh_sampledata), windows of 24",
    "basicmotions": "sktime BasicMotions: 6-axis accelerometer/gyroscope, 80 recordings of 100 steps",
    "italypowerdemand": "sktime ItalyPowerDemand: daily 24-hour electricity demand curves",
    "solar": "sktime solar: one day of half-hourly solar generation (289 values)",
    "uschange": "sktime uschange: quarterly US consumption, income, production, savings, unemployment",
}

MODALITY = Modality(
    name="timeseries",
    summary="multivariate series: TimeFlow generation, forecasting and imputation",
    datasets={name: DatasetInfo(name=name, card=f"timeseries-{name}", summary=_SUMMARIES[name], load=partial(_load, name))
              for name in data.NAMED},
    config_cls=TimeSeriesConfig,
    train=train,
    sample=sample,
    evaluate=evaluate,
    finetune=finetune,
    bench=_bench,
    solvers=SOLVERS,
    sample_options=TimeSeriesOptions,
)
