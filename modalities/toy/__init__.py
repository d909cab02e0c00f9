"""The toy modality: low-dimensional synthetic data (a Gaussian with a known flow, a
Gaussian mixture, two moons, a checkerboard) in 2 to 64 dimensions. It is the template
every other modality follows: ``data.py``, ``models.py``, ``recipe.py``, ``metrics.py`` and
the ``MODALITY`` object below, registered in :mod:`modaflow.modalities.registry`."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..registry import DatasetInfo, Modality
from . import data
from .recipe import SOLVERS, ToyConfig, evaluate, finetune, sample, train

__all__ = ["MODALITY", "ToyConfig"]


def _load(name: str, split: str, seed: int) -> data.ToyDataset:
    """The registry loader: ``split`` of ``name`` in 2-D at the card's default size."""
    return data.ToyDataset(data.make_split(name, 2, data.DEFAULT_SIZES[split], split, seed))


def _bench(profile: str, out_dir: str | Path, seed: int):
    from modaflow.benchmarks.toy import run  # benchmarks import the modality, not the reverse

    return run(profile, out_dir, seed)


_SUMMARIES = {
    "gaussian": "correlated Gaussian with known mean/cov (exact oracle flow)",
    "gmm": "8-component Gaussian mixture on a circle",
    "moons": "two moons, tiled to D dims",
    "checkerboard": "checkerboard, tiled to D dims",
}

MODALITY = Modality(
    name="toy",
    summary="synthetic low-dimensional data in 2-64 D; the solver and training testbed",
    datasets={
        name: DatasetInfo(name=name, card=f"toy-{name}", summary=_SUMMARIES[name], load=partial(_load, name))
        for name in data.TOY_DATASETS
    },
    config_cls=ToyConfig,
    train=train,
    sample=sample,
    evaluate=evaluate,
    finetune=finetune,
    bench=_bench,
    solvers=SOLVERS,
)
