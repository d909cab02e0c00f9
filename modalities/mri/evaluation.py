"""``sample`` and ``evaluate`` of the CLI, and the metric bundle the benchmark reuses.

:func:`evaluate_volumes` compares generated volumes with held-out real ones:

* ``fid3d``: Fréchet distance in the feature space of :mod:`.features` (net trained on the
  real *training* volumes), with ``fid3d_real`` = training volumes vs held-out (the floor), and two
  volumes no generator should come near, scored the same way: ``fid3d_noise`` (standard normal noise)
  and ``fid3d_blank`` (every voxel at the background, -1). :func:`.features.graded_fd` checks that
  the space orders graded degradations by severity (the benchmark reports it on every run);
* ``hf_ratio``: high-frequency energy (RMS of the 3-D Laplacian) of the generated volumes over the
  held-out ones, ``hf_ratio_real`` likewise for the training volumes: texture, which the FD's
  features see least (< 1 over-smoothed, > 1 noisy);
* ``ms_ssim``: mean MS-SSIM between generated pairs (diversity) beside ``ms_ssim_real``;
* ``hist_w1``: intensity-histogram Wasserstein-1 to the held-out set, ``hist_w1_real`` likewise;
* tissue volumes (mL, GMM segmentation) per class: mean of generated and real, and the
  permutation-test p-value ``tissue_p.<class>`` (MedForj's protocol).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .distill import is_flow_map_run, restore_flow_map
from .features import FeatureConfig, extract_features, train_feature_net
from .metrics import (TISSUES, frechet_distance, high_frequency_ratio, histogram_distance, ms_ssim_min_side,
                      ms_ssim_pairs, permutation_test, tissue_volumes)
from .recipe import MRIConfig, restore
from .sampling import SampleOptions, draw_noise, generate, on_device, write_volumes
from .data import load_volumes
from .targets import core_kind

__all__ = ["load_generator", "sample", "evaluate", "RealReference", "real_reference", "evaluate_volumes"]


def load_generator(ckpt_dir: str | Path, solver: str | None, steps: int | None = None):
    """``(cfg, model, kind, path, solver)`` of a run folder: a diffusion run, or a
    distilled flow map (solver ``flowmap``). ``steps`` (as asked, None = the recipe's) is
    refused with ``ddpm``, which takes every step of the path, rather than ignored."""
    if is_flow_map_run(ckpt_dir):
        cfg, fm = restore_flow_map(ckpt_dir)
        if solver not in (None, "flowmap"):
            raise ValueError(f"{ckpt_dir} holds a flow map: solver must be 'flowmap', got {solver!r}")
        return cfg, fm, "velocity", None, "flowmap"
    cfg, path, model = restore(ckpt_dir)
    if solver == "flowmap":
        raise ValueError(f"{ckpt_dir} is a diffusion run, not a flow map: distil it first (modaflow distill mri)")
    solver = solver or cfg.solver
    T = getattr(path, "num_steps", None)
    if solver == "ddpm" and steps is not None and steps != T:
        raise ValueError(f"--steps {steps}: the ancestral DDPM sampler (--solver ddpm) takes all {T} steps of the "
                         f"path; use --solver ddim for {steps} steps (or leave --steps out)")
    return cfg, model, core_kind(cfg.target), path, solver


FLOW_MAP_STEPS = 4
"""Default steps of a distilled flow map (the teacher recipe's ``steps`` is its DDIM count)."""


def _steps(steps: int | None, cfg: MRIConfig, solver: str) -> int:
    """The steps asked for, else the flow map's default or the recipe's."""
    return steps or (FLOW_MAP_STEPS if solver == "flowmap" else cfg.steps)


def sample(ckpt_dir: str | Path, n: int, steps: int | None, solver: str | None, out_path: str | Path, seed: int,
           options: SampleOptions | None = None) -> Path:
    """Write ``n`` generated volumes as NIfTI into the folder ``out_path`` (or one volume to a
    ``.nii[.gz]`` file) with the data's RAS affine; returns the folder or file. ``options``: the
    device, bf16, channels-last and compile settings (:class:`~.sampling.SampleOptions`)."""
    if str(out_path).endswith((".nii", ".nii.gz")) and n != 1:  # before minutes of sampling, not after
        raise ValueError(f"{out_path}: a single NIfTI file holds one volume; got --n {n} (pass a folder)")
    cfg, model, kind, path, solver = load_generator(ckpt_dir, solver, steps)
    model, autocast, channels_last = on_device(model, options or SampleOptions())
    x = generate(model, kind, path, draw_noise(n, cfg.source.shape, seed), _steps(steps, cfg, solver), solver,
                 autocast=autocast, channels_last=channels_last)
    paths = write_volumes(x, cfg.source.affine, out_path)
    return paths[0] if len(paths) == 1 and str(out_path).endswith((".nii", ".nii.gz")) else Path(out_path)


class RealReference:
    """What real data contributes to every evaluation: the feature net, the held-out
    volumes, and the real-vs-real values (computed once)."""

    def __init__(self, train: Tensor, test: Tensor, voxel_ml: float, features: FeatureConfig, seed: int = 0) -> None:
        self.train, self.test, self.voxel_ml, self.seed = train, test, voxel_ml, seed
        self.net, self.feature_accuracy = train_feature_net(train, features)
        self.test_features = extract_features(self.net, test)
        self.train_features = extract_features(self.net, train)
        self.test_tissue = tissue_volumes(test, voxel_ml, seed)
        noise = torch.randn(test.shape, generator=torch.Generator().manual_seed(seed + 7))
        self.values = {
            "fid3d_real": frechet_distance(self.train_features, self.test_features),
            "fid3d_noise": frechet_distance(extract_features(self.net, noise), self.test_features),
            "fid3d_blank": frechet_distance(extract_features(self.net, torch.full_like(test, -1.0)), self.test_features),
            "ms_ssim_real": ms_ssim_pairs(test),
            "hist_w1_real": histogram_distance(train, test),
            "hf_ratio_real": high_frequency_ratio(train, test),
        }


    def fid3d_real_at(self, n: int, draws: int = 50) -> dict[str, float]:
        """The floor of the FD at ``n`` generated volumes: FD of ``draws`` random ``n``-subsets
        of the real training volumes (without replacement) against the held-out set;
        ``{"mean", "q05", "q95"}``. The FD is biased upwards at small ``n`` (Chong & Forsyth
        2020, arXiv 1911.07023), so a generator is judged against this, not ``fid3d_real``."""
        if not 2 <= n <= self.train_features.shape[0]:
            raise ValueError(f"n must lie in [2, {self.train_features.shape[0]}] (training volumes); got {n}")
        rng = np.random.default_rng(self.seed)
        fd = np.array([frechet_distance(self.train_features[rng.choice(len(self.train_features), n, replace=False)],
                                        self.test_features) for _ in range(draws)])
        return {"mean": float(fd.mean()), "q05": float(np.quantile(fd, 0.05)), "q95": float(np.quantile(fd, 0.95))}


def real_reference(cfg: MRIConfig, features: FeatureConfig, seed: int = 0, data: str | None = None) -> RealReference:
    """The :class:`RealReference` of a recipe's data (train and test splits)."""
    src = cfg.source if data is None else cfg.replace(data=data).source
    voxel_ml = float(abs(np.linalg.det(src.affine[:3, :3]))) / 1000.0
    test = load_volumes(src, "test")
    if test.shape[0] < 2:
        how = ("(n_test)", "train with --n-test >= 2") if src.data == "embedded" else (
            "(every 5th subject, or every 5th file where files have no subject)", "give >= 10 subjects (files)")
        raise ValueError(f"{src.data}: the held-out split has {test.shape[0]} volume(s) {how[0]}; the Fréchet "
                         f"distance and the tissue tests need >= 2, so {how[1]}")
    return RealReference(load_volumes(src, "train"), test, voxel_ml, features, seed)


def evaluate_volumes(x: Tensor, ref: RealReference) -> dict[str, float]:
    """Metrics of generated volumes ``x`` ``(N, 1, X, Y, Z)`` against ``ref`` (module docstring)."""
    out = dict(ref.values)
    out["fid3d"] = frechet_distance(extract_features(ref.net, x), ref.test_features)
    out["ms_ssim"] = ms_ssim_pairs(x) if x.shape[0] >= 2 else float("nan")
    out["hist_w1"] = histogram_distance(x, ref.test)
    out["hf_ratio"] = high_frequency_ratio(x, ref.test)
    tv = tissue_volumes(x, ref.voxel_ml, ref.seed)
    for name in (*TISSUES, "brain"):
        out[f"tissue_ml.{name}"] = float(tv[name].mean())
        out[f"tissue_ml_real.{name}"] = float(ref.test_tissue[name].mean())
        out[f"tissue_p.{name}"] = permutation_test(tv[name], ref.test_tissue[name], 2000, ref.seed)
    return out


def evaluate(ckpt_dir: str | Path, data: str | None, n: int, steps: int | None, solver: str | None, seed: int,
             options: SampleOptions | None = None) -> dict:
    """Generate ``n`` volumes (where ``options`` say, as :func:`sample`) and compare them with the
    held-out split of the run's data (or of ``data``): see :func:`evaluate_volumes`; also the real
    floor of the Fréchet distance at ``n`` volumes (``fid3d_real_at_n.*``, where the training split has
    ``n``), seconds per volume and the device."""
    if n < 2:  # before minutes of feature-net training and sampling
        raise ValueError(f"evaluate mri needs --n >= 2 generated volumes (the Fréchet distance and MS-SSIM compare "
                         f"several); got {n}")
    cfg, model, kind, path, solver = load_generator(ckpt_dir, solver, steps)
    shape = (cfg.source if data is None else cfg.replace(data=data).source).shape
    if tuple(shape) != tuple(cfg.source.shape):  # before the real volumes are loaded and the feature net trained
        option = "size" if data == "embedded" else "fov"
        raise ValueError(f"{data}: its volumes would have shape {tuple(shape)} (the run's {option}), not the model's "
                         f"{tuple(cfg.source.shape)}; evaluate on data of the model's shape, or finetune the run on this "
                         f"data first (modaflow finetune mri --ckpt {ckpt_dir} --data {data}, with --{option} matching)")
    if min(shape) < ms_ssim_min_side():
        raise ValueError(f"{ckpt_dir}: volumes {tuple(shape)} are too small to evaluate: MS-SSIM needs every side "
                         f">= {ms_ssim_min_side()} voxels (train with a larger --size / --fov)")
    model, autocast, channels_last = on_device(model, options or SampleOptions())
    ref = real_reference(cfg, FeatureConfig(seed=seed), seed, data)
    start = time.perf_counter()
    x = generate(model, kind, path, draw_noise(n, cfg.source.shape, seed), _steps(steps, cfg, solver), solver,
                 autocast=autocast, channels_last=channels_last)
    seconds = (time.perf_counter() - start) / n
    metrics = evaluate_volumes(x, ref)
    if n <= ref.train_features.shape[0]:  # the real floor of the FD at this n (it is biased upwards at small n)
        metrics.update({f"fid3d_real_at_n.{k}": v for k, v in ref.fid3d_real_at(n).items()})
    metrics.update({"seconds_per_volume": seconds, "device": str(next(model.parameters()).device), "n_samples": n, "n_reference": int(ref.test.shape[0]),
                    "feature_net_accuracy": ref.feature_accuracy})
    return metrics

