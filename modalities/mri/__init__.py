"""The mri modality: MedForj (arXiv 2510.26834) — 3-D T1 brain MRI generation with a MONAI
``DiffusionModelUNet`` trained as a 1000-step DDPM with sample-, velocity- or
flow-prediction (plus noise and rectified flow for comparison), DDIM sampling through the
core, few-step sampling from a distilled flow map, a NIfTI / BIDS pipeline on nibabel and
MONAI dictionary transforms, and a GPU training path (bf16, channels_last_3d, activation
checkpointing, torch.compile).

Modules: :mod:`.nifti` (files, checks), :mod:`.transforms` (MONAI pipeline),
:mod:`.cohort` (embedded synthetic cohort), :mod:`.data`, :mod:`.targets`, :mod:`.models`,
:mod:`.training`, :mod:`.recipe`, :mod:`.sampling`, :mod:`.distill`, :mod:`.features`,
:mod:`.metrics`, :mod:`.evaluation`, :mod:`.gpu`.
"""

from __future__ import annotations

from pathlib import Path

from ..registry import DatasetInfo, Modality, ModalityCommand
from .data import embedded_dataset
from .distill import DistillConfig, distill
from .evaluation import evaluate, sample
from .recipe import MRIConfig, finetune, train
from .sampling import SOLVERS, SampleOptions

__all__ = ["MODALITY", "MRIConfig", "DistillConfig"]


def _bench(profile: str, out_dir: str | Path, seed: int):
    from modaflow.benchmarks.mri import run  # benchmarks import the modality, not the reverse

    return run(profile, out_dir, seed)


def _distill(cfg: DistillConfig, out_dir: Path | None) -> dict:
    res = distill(cfg, out_dir)
    return {k: v for k, v in res.items() if k != "history"}


MODALITY = Modality(
    name="mri",
    summary="3-D T1 brain MRI: MedForj DDPM (sample/velocity/flow targets), DDIM, distilled few-step flow maps",
    datasets={
        "embedded": DatasetInfo(
            name="embedded", card="mri-embedded",
            summary="synthetic T1 cohort from nilearn's MNI152 template (random deformation, bias, contrast, noise), 32^3",
            load=embedded_dataset,
        ),
    },
    config_cls=MRIConfig,
    train=train,
    sample=sample,
    evaluate=evaluate,
    finetune=finetune,
    bench=_bench,
    solvers=SOLVERS,
    sample_options=SampleOptions,
    sample_n=(4, 16),  # one 192x224x192 volume is 33 MB of float32 and 64 network calls at DDIM 64
    commands={
        "distill": ModalityCommand(
            summary="distil a trained mri run (--teacher DIR) into a few-step flow map written to --out",
            config_cls=DistillConfig, run=_distill,
        ),
    },
)
