"""The fmri modality: NeuroFlow (arXiv 2604.09817) — a NeuroVAE over voxels, a visual
autoencoder over stimuli, and one cross-modal flow (XFM) on a bridge between the neural
latent (t = 0) and the visual latent (t = 1) that encodes (stimulus -> brain, integrating
backwards) and decodes (brain -> stimulus, integrating forwards).

Data: a simulator with a known truth (:mod:`.simulate`), BIDS-style BOLD runs through
nilearn's first-level GLM (:mod:`.bids`), precomputed trial responses (:mod:`.data`).
"""

from __future__ import annotations

from pathlib import Path

from ..registry import DatasetInfo, Modality
from .recipe import SOLVERS, FMRIConfig, evaluate, train
from .sampling import SampleOptions, finetune, sample

__all__ = ["MODALITY", "FMRIConfig", "SampleOptions"]


def _load_simulated(split: str, seed: int):
    """The registry loader: the ``split`` responses of the default simulation; an item is
    ``(V,)`` (train: single trials; test: repeat averages), ``.images`` the stimuli."""
    from .data import ResponseDataset, prepare
    from .recipe import load_trials
    from .simulate import SimConfig

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    cfg = FMRIConfig(sim=SimConfig(sim_seed=seed))
    prep = prepare(load_trials(cfg), seed=seed)
    if split == "train":
        return ResponseDataset(prep.train_x, prep.train_img)
    return ResponseDataset(prep.test_x, prep.test_img)


def _bench(profile: str, out_dir: str | Path, seed: int):
    from modaflow.benchmarks.fmri import run  # benchmarks import the modality, not the reverse

    return run(profile, out_dir, seed)


def _modality() -> Modality:
    return Modality(
        name="fmri",
        summary="NeuroFlow: one cross-modal flow that encodes stimuli into voxels and decodes voxels into images",
        datasets={"simulated": DatasetInfo(
            name="simulated", card="fmri-simulated",
            summary="simulated voxels (pRF + Gabor energy, nilearn HRF, AR(1)) viewing sklearn digits + LFW faces",
            load=_load_simulated)},
        config_cls=FMRIConfig,
        train=train,
        sample=sample,
        evaluate=evaluate,
        finetune=finetune,
        bench=_bench,
        solvers=SOLVERS,
        sample_options=SampleOptions,  # the CLI's --direction encode|decode and --input
    )


MODALITY = _modality()
