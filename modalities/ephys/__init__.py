"""The ephys modality: LangevinFlow (arXiv 2507.11531), a sequential VAE whose latent state
follows underdamped Langevin dynamics under a coupled-oscillator potential, for spikes
(Lorenz populations, nitime's spike trains, NWB files) and EEG/MEG (via mne; spkit's and
pyedflib's recordings), scored with the Neural Latents Benchmark metrics.

Modules: ``spikes`` (TrialData, binning, nitime), ``lorenz``, ``nwb``, ``eeg``, ``data``
(names, splits), ``models`` (LangevinFlow), ``baselines`` (LFADS, smoothing + GLM),
``training`` (Lightning module, ramps, coordinated dropout), ``metrics``, ``recipe``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..registry import DatasetInfo, Modality
from . import data
from .recipe import SOLVERS, EphysConfig, EphysOptions, evaluate, finetune, sample, train

__all__ = ["MODALITY", "EphysConfig"]


def _load(name: str, split: str, seed: int) -> data.TrialDataset:
    """The registry loader: ``split`` of ``name`` at the card's default size."""
    return data.TrialDataset(data.load_split(name, split, data.DataOptions(), seed))


def _bench(profile: str, out_dir: str | Path, seed: int):
    from modaflow.benchmarks.ephys import run  # benchmarks import the modality, not the reverse

    return run(profile, out_dir, seed)


_SUMMARIES = {
    "lorenz": "Lorenz-driven Poisson spiking population, 96 neurons, 20 ms bins, true rates kept",
    "nitime": "nitime's real locust auditory-receptor spike trains (2 cells, 10 s)",
    "spkit": "spkit's real 14-channel Emotiv EEG, 16 s at 128 Hz, sliding 0.5 s windows",
    "pyedflib": "pyedflib's EDF test recording (11 generator channels, 200 Hz, 600 s), 1 s epochs",
}

MODALITY = Modality(
    name="ephys",
    summary="LangevinFlow latent dynamics for spikes (Lorenz, NWB) and EEG/MEG (mne), NLB metrics",
    datasets={
        name: DatasetInfo(name=name, card=f"ephys-{name}", summary=_SUMMARIES[name], load=partial(_load, name))
        for name in data.NAMED
    },
    config_cls=EphysConfig,
    train=train,
    sample=sample,
    evaluate=evaluate,
    finetune=finetune,
    bench=_bench,
    solvers=SOLVERS,
    sample_options=EphysOptions,  # --device
)
