"""The MRI benchmark: ``modaflow bench mri --profile P``.

In one run, on the same data, seeds and starting noise:

1. data: the embedded cohort (train / test splits), loader throughput (augmented volumes/s)
   beside training throughput, and the NIfTI pipeline's at MedForj's 192 x 224 x 192 (cache
   build, then augmented volumes/s per data-loader worker count);
2. MedForj's targets (sample, velocity, flow; ``full`` adds noise and rectified flow), each
   trained with the mri recipe (core ``fit``, Lightning), sampled with DDIM at several step
   counts; metrics (3-D FD in the feature space of a net trained on the real training
   volumes, MS-SSIM diversity, intensity-histogram W1, high-frequency energy ratio, GMM tissue
   volumes with permutation p-values) against the held-out split, with the real-vs-real values
   as the floor; the FD's feature space is checked on every run: its distance must grow with
   the severity of graded degradations of the held-out volumes (``fid3d_check.*``);
3. few-step: the velocity model distilled into a flow map (core FlowMapModule), sampled in
   1-4 steps, against DDIM at the same NFE and at the top NFE;
4. the GPU path against stock MONAI (:mod:`modaflow.modalities.mri.gpu`): training and
   sampling step time per volume and peak memory, and their ratios (tiny sizes on CPU, where
   no memory is measured and ``torch.compile`` is skipped; MedForj size on ``gpu``).

Profiles: ``smoke`` (16^3, seconds, for the tests); ``quick`` (the README demo, about 5.5 min
on one thread): 24^3 cohort (48 train / 16 held-out subjects), tiny UNet
(8/16/32 channels), 400 steps x batch 4 per target (at 100 the velocity model's DDIM samples got
noisier with more steps and the targets scored 144-524 at DDIM-32; at 400 every DDIM curve falls
with NFE and they score 64-90; benchmarks/RESULTS.md, mri), 8 volumes per evaluation (the top DDIM
and the flow-map rows: 3 noise draws), DDIM at 4/16/32 steps (32 is its reference), the
undistilled student and a 40-step flow map sampled in 1/2/4 steps, the feature net at 600
steps (:class:`~modaflow.modalities.mri.features.FeatureConfig`), GPU-path timing at 32^3 --
sizes chosen by CPU cost (a 32^3 UNet step costs ~3x a 24^3 one; training, DDIM sampling
and distillation are >90% of the time, the metrics <5%); its FD values come from 8 volumes:
compare them with ``fid3d_real_n8`` (real vs real at 8 volumes) and ``fid3d_sd`` (spread
over noise draws), not with the 48-volume floor; ``full`` (hours on CPU: 32^3 cohort of 96 /
32 subjects, the tiny UNet, 1000 steps per target, all five targets, DDIM 4..64 with MedForj's
64 as the reference, a 400-step flow map in 1..8 steps, 32 volumes; 1 h 30 min on one thread. A
training step of the 48^3 cohort with the 16/32/64-channel, two-block UNet took 16 s on one
thread against 0.5 s for this one: about 67 h for the profile); ``gpu`` (CUDA: MedForj's UNet, timing at 192x224x192, quality at 64^3, bf16).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modaflow.core.training import TrainerArgs
from modaflow.modalities.mri.data import MRIDataModule, SourceSpec, build_dataset
from modaflow.modalities.mri.distill import DistillConfig, distill, initial_flow_map, restore_flow_map
from modaflow.modalities.mri.evaluation import RealReference, evaluate_volumes
from modaflow.modalities.mri.features import FeatureConfig, graded_fd
from modaflow.modalities.mri.gpu import compare_variants
from modaflow.modalities.mri.metrics import tissue_volumes
from modaflow.modalities.mri.models import UNetConfig
from modaflow.modalities.mri.recipe import MRIConfig, restore, train
from modaflow.modalities.mri.sampling import draw_noise, generate
from modaflow.modalities.mri.targets import core_kind

from . import mri_plots as P
from . import report as R
from .harness import BenchResult, progress, quiet_training, select_profile, stage

__all__ = ["MRIProfile", "PROFILES", "run"]

EVAL_KEYS = ("fid3d", "ms_ssim", "hist_w1", "hf_ratio", "tissue_p.csf", "tissue_p.gm", "tissue_p.wm")


@dataclass(frozen=True)
class MRIProfile:
    """Sizes of one profile (see the module docstring)."""

    size: int
    """Cube side of the embedded cohort."""
    n_train: int
    """Training subjects."""
    n_test: int
    """Held-out subjects."""
    targets: tuple[str, ...]
    """Targets to train (the first DDPM one after 'sample' is distilled)."""
    unet: UNetConfig
    """The UNet."""
    train_steps: int
    """Optimiser steps per target."""
    batch_size: int
    """Training batch."""
    lr: float
    """Learning rate."""
    eval_n: int
    """Generated volumes per evaluation."""
    ddim_steps: tuple[int, ...]
    """DDIM step counts (the last is the reference: MedForj's 64, 32 in quick)."""
    distill_steps: int
    """Flow-map optimiser steps."""
    flowmap_steps: tuple[int, ...]
    """Flow-map sampling steps."""
    features: FeatureConfig
    """Feature network of the 3-D FD."""
    timing_shape: tuple[int, int, int]
    """Volume shape of the GPU-path step timing."""
    timing_unet: UNetConfig
    """UNet of the step timing."""
    timing_repeats: int
    """Timed repeats per variant."""
    eval_seeds: int = 1
    """Noise draws (``eval_n`` volumes each, the same for every generator) of the rows the
    goals compare: the top DDIM of each target and the flow-map rows; their metrics are means
    over draws and ``fid3d_sd`` is the spread."""
    teacher_steps: int = 4
    """Heun steps of the teacher's ODE solve per distillation target."""
    device: str = "cpu"
    """Where everything runs."""
    threads: int = 1
    """torch threads (0 leaves the default)."""
    loader_files: int = 0
    """NIfTI files (copies of nilearn's 1 mm MNI152 template) of the file-pipeline throughput at MedForj's field of
    view, 192 x 224 x 192 at 1 mm (:func:`_file_loader_rates`; 0 skips it)."""
    loader_workers: tuple[int, ...] = (0, 2)
    """Data-loader worker counts of the file-pipeline throughput."""


_TINY = UNetConfig(channels=(8, 16, 32), attention_levels=(False, False, True), num_res_blocks=1)
PROFILES: dict[str, MRIProfile] = {
    "smoke": MRIProfile(size=16, n_train=4, n_test=4, targets=("sample", "velocity"), unet=_TINY, train_steps=2,
                        batch_size=2, lr=1e-3, eval_n=2, ddim_steps=(2,), distill_steps=1, flowmap_steps=(1,),
                        features=FeatureConfig(width=4, steps=3, batch_size=4), timing_shape=(16, 16, 16),
                        timing_unet=_TINY, timing_repeats=1, teacher_steps=1),
    "quick": MRIProfile(size=24, n_train=48, n_test=16, targets=("sample", "velocity", "flow"), unet=_TINY,
                        train_steps=400, batch_size=4, lr=2e-3, eval_n=8, ddim_steps=(4, 16, 32), distill_steps=40,
                        flowmap_steps=(1, 2, 4), features=FeatureConfig(width=8, steps=600, batch_size=8),
                        timing_shape=(32, 32, 32), timing_unet=_TINY, timing_repeats=3, eval_seeds=3, loader_files=10),
    "full": MRIProfile(size=32, n_train=96, n_test=32, targets=("sample", "velocity", "flow", "noise", "rflow"),
                       unet=_TINY, train_steps=1000, batch_size=4, lr=1e-3, eval_n=32, ddim_steps=(4, 8, 16, 32, 64),
                       distill_steps=400, flowmap_steps=(1, 2, 4, 8), features=FeatureConfig(width=8, steps=600),
                       timing_shape=(32, 32, 32), timing_unet=_TINY, timing_repeats=5, threads=0, eval_seeds=3,
                       loader_files=10),
    "gpu": MRIProfile(size=64, n_train=128, n_test=32, targets=("sample", "velocity", "flow"),
                      unet=UNetConfig.medforj(), train_steps=2000, batch_size=4, lr=1e-4, eval_n=32,
                      ddim_steps=(4, 16, 64), distill_steps=1000, flowmap_steps=(1, 2, 4),
                      features=FeatureConfig(width=16, steps=1000), timing_shape=(192, 224, 192),
                      timing_unet=UNetConfig.medforj(), timing_repeats=5, device="cuda", threads=0, eval_seeds=3,
                      loader_files=10, loader_workers=(0, 4, 8)),
}


def run(profile: str, out_dir: str | Path, seed: int = 0) -> BenchResult:
    """Run profile ``profile`` into ``out_dir`` (results.json, report.md, PNGs)."""
    p = select_profile(PROFILES, profile)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if p.threads:
        torch.set_num_threads(p.threads)
    try:
        with quiet_training():  # Lightning's banners ("GPU available", tips, "fit stopped") off, as in the other benchmarks
            return _run(profile, p, out, seed)
    finally:
        torch.set_num_threads(threads)


def _recipe(p: MRIProfile, target: str, seed: int) -> MRIConfig:
    cfg = MRIConfig(size=p.size, n_train=p.n_train, n_test=p.n_test, data_seed=seed, target=target, unet=p.unet)
    return cfg.replace(fm=cfg.fm.replace(max_steps=p.train_steps, batch_size=p.batch_size, lr=p.lr, seed=seed,
                                         log_every=max(1, p.train_steps // 50), ckpt_every=p.train_steps))


def _loader_rate(spec: SourceSpec, batch: int, seed: int, volumes: int) -> float:
    dl = MRIDataModule(build_dataset(spec, "train", augment=True), batch, seed).train_dataloader()
    start, seen = time.perf_counter(), 0
    while seen < volumes:
        for x in dl:
            seen += x.shape[0]
            if seen >= volumes:
                break
    return seen / (time.perf_counter() - start)


def _file_loader_rates(folder: Path, p: MRIProfile, seed: int) -> dict[str, float]:
    """Throughput of the NIfTI pipeline at MedForj's size, the one a GPU run on the user's files trains from:
    ``p.loader_files`` copies of nilearn's 1 mm MNI152 template (197 x 233 x 189, offline) in ``folder``; their train
    split preprocessed once into the cache (reorientation, 1 mm resampling, percentile clip, brain-centred crop /
    pad to 192 x 224 x 192, scaling: ``cache_s_per_volume``), then one epoch of augmented volumes (flip, rotation,
    shift) per worker count of ``p.loader_workers``, timed from the second volume on, so worker start-up is left
    out (``w{k}.volumes_per_s``). A GPU step of s seconds per volume needs ``1 / s`` volumes/s from the loader."""
    from nilearn.datasets import load_mni152_template

    from modaflow.modalities.mri.data import train_loader
    from modaflow.modalities.mri.nifti import write_volume

    template = load_mni152_template(resolution=1)
    data = np.asarray(template.get_fdata(), np.float32)
    for i in range(p.loader_files):
        write_volume(folder / f"vol{i:02d}_T1w.nii.gz", data, template.affine)
    spec = SourceSpec(data=f"folder:{folder}", seed=seed)
    start = time.perf_counter()
    ds = build_dataset(spec, "train", augment=True)
    if len(ds) < 2:
        raise ValueError(f"loader_files = {p.loader_files} leaves {len(ds)} training volume(s); the steady rate needs >= 2")
    rates = {"volumes": float(len(ds)), "cache_s_per_volume": (time.perf_counter() - start) / len(ds)}
    for workers in p.loader_workers:
        start = 0.0
        for i, _ in enumerate(train_loader(ds, 1, seed, workers)):
            if i == 0:  # worker start-up and the first item are not the steady rate
                start = time.perf_counter()
        rates[f"w{workers}.volumes_per_s"] = i / (time.perf_counter() - start)
    return rates


def _evaluate(name: str, xs: list[torch.Tensor], ref: RealReference, seconds: float, metrics: dict, rows: dict) -> None:
    """Metrics of the volumes of each noise draw in ``xs``, averaged over draws (``fid3d_sd``:
    their standard deviation, 0 for one draw)."""
    ms = [evaluate_volumes(x, ref) for x in xs]
    m = {k: float(np.mean([d[k] for d in ms])) for k in ms[0]}
    m["fid3d_sd"] = float(np.std([d["fid3d"] for d in ms], ddof=1)) if len(ms) > 1 else 0.0
    rows[name] = m
    for k in (*EVAL_KEYS, "fid3d_sd"):
        metrics[f"{name}.{k}"] = m[k]
    metrics[f"{name}.seconds_per_volume"] = seconds
    metrics[f"{name}.draws"] = len(xs)


def _draws(gen, noises: list[torch.Tensor], n: int) -> tuple[list[torch.Tensor], float]:
    """``gen(noise)`` for the first ``n`` noise draws; ``(volumes per draw, seconds per volume)``."""
    start, xs = time.perf_counter(), [gen(z) for z in noises[:n]]
    return xs, (time.perf_counter() - start) / sum(x.shape[0] for x in xs)


def _run(profile: str, p: MRIProfile, out: Path, seed: int) -> BenchResult:
    t0 = time.perf_counter()
    dev = torch.device(p.device)
    trainer = TrainerArgs(accelerator="gpu" if p.device == "cuda" else "cpu",
                          precision="bf16-mixed" if p.device == "cuda" else "32-true")
    metrics: dict = {}
    baselines: dict = {}
    timings: dict = {}
    curves: dict = {}
    rows: dict[str, dict] = {}
    cfg0 = _recipe(p, p.targets[0], seed)
    spec = cfg0.source
    ref = RealReference(torch.from_numpy(np.asarray(build_dataset(spec, "train").volumes)),
                        torch.from_numpy(np.asarray(build_dataset(spec, "test").volumes)),
                        float(abs(np.linalg.det(spec.affine[:3, :3]))) / 1000.0, p.features, seed)
    timings["data_and_features_s"] = time.perf_counter() - t0
    timings["loader_volumes_per_s"] = _loader_rate(spec, p.batch_size, seed, max(2 * p.batch_size, min(32, p.n_train)))
    if p.loader_files:
        with stage(f"NIfTI pipeline throughput at 192 x 224 x 192 ({p.loader_files} files)"):
            rates = _file_loader_rates(out / "loader_files", p, seed)
        timings.update({f"file_loader.{k}": v for k, v in rates.items()})
    baselines["real_vs_real"] = dict(ref.values)
    baselines["real_vs_real"].update({f"fid3d_real_n{p.eval_n}.{k}": v for k, v in ref.fid3d_real_at(p.eval_n).items()})
    metrics["feature_net_accuracy"] = ref.feature_accuracy
    graded = graded_fd(ref.net, ref.test, ref.train_features, seed)
    metrics.update({f"fid3d_check.{name}.spearman": g["spearman"] for name, g in graded.items()})
    metrics["fid3d_check.min_spearman"] = min(g["spearman"] for g in graded.values())
    curves["fid3d_check"] = {"xlabel": "severity level", "ylabel": "fid3d",
                             "series": {k: {"x": g["levels"], "y": g["fd"]} for k, g in graded.items()}}
    noises = [draw_noise(p.eval_n, spec.shape, seed + 1000 * (i + 1)) for i in range(p.eval_seeds)]
    samples: dict[str, torch.Tensor] = {"real (held-out)": ref.test}
    losses, nfe_curves = {}, {}
    top = p.ddim_steps[-1]

    def nfe_curve(label: str, key: str, steps: tuple[int, ...], make, n_draws) -> torch.Tensor:
        """Rows ``{key}{k}`` of ``make(noise, k)`` at each NFE ``k`` of ``steps`` over
        ``n_draws(k)`` noise draws; the FD-vs-NFE curve goes to ``nfe_curves[label]``.
        Returns the first draw at the last ``k``."""
        ys = []
        for k in steps:
            xs, sec = _draws(lambda z: make(z, k), noises, n_draws(k))
            _evaluate(f"{key}{k}", xs, ref, sec, metrics, rows)
            ys.append(rows[f"{key}{k}"]["fid3d"])
        nfe_curves[label] = (list(steps), ys)
        return xs[0]

    for target in progress(p.targets, "mri targets"):
        run_dir = out / "runs" / target
        start = time.perf_counter()
        res = train(_recipe(p, target, seed), trainer, run_dir, progress=False)
        dt, trained = time.perf_counter() - start, res["steps"] - res["start_step"]
        if trained > 0:  # a rerun into the same --out reuses finished runs: no throughput to report for them
            timings[f"{target}.train_s"] = dt
            timings[f"{target}.train_volumes_per_s"] = trained * p.batch_size / dt
        else:
            timings[f"{target}.train_reused"] = 1.0
        losses[target] = ([h[0] for h in res["history"]], [h[1] for h in res["history"]])
        cfg, path, model = restore(run_dir)
        model.to(dev)
        samples[f"{target} DDIM{top}"] = nfe_curve(
            f"{target} DDIM", f"{target}.ddim", p.ddim_steps,
            lambda z, k: generate(model, core_kind(target), path, z, k, "ddim", batch_size=4),
            lambda k: p.eval_seeds if k == top else 1)
    teacher = next(t for t in p.targets if t != "sample")
    init = initial_flow_map(out / "runs" / teacher).to(dev)  # the student before distillation: teacher Euler steps
    nfe_curve(f"{teacher} Euler (linear path)", f"{teacher}.euler_linear", p.flowmap_steps,
              lambda z, k: generate(init, "velocity", None, z, k, "flowmap"), lambda k: p.eval_seeds)
    start = time.perf_counter()
    d = distill(DistillConfig(teacher=str(out / "runs" / teacher), max_steps=p.distill_steps, batch_size=p.batch_size,
                              lr=p.lr, seed=seed, teacher_steps=p.teacher_steps),
                out / "runs" / f"{teacher}_flowmap", trainer, progress=False)
    if d["steps"] > d["start_step"]:
        timings["distill_s"] = time.perf_counter() - start
    else:
        timings["distill_reused"] = 1.0
    losses[f"{teacher} flow map"] = ([h[0] for h in d["history"]], [h[1] for h in d["history"]])
    _, fm = restore_flow_map(out / "runs" / f"{teacher}_flowmap")
    fm.to(dev)
    samples[f"{teacher} flow map {p.flowmap_steps[-1]} steps"] = nfe_curve(
        f"{teacher} flow map", f"{teacher}.flowmap", p.flowmap_steps,
        lambda z, k: generate(fm, "velocity", None, z, k, "flowmap"), lambda k: p.eval_seeds)
    baselines[f"{teacher}.ddim{top}"] = {k: rows[f"{teacher}.ddim{top}"][k] for k in EVAL_KEYS}
    if "sample" in p.targets:
        baselines[f"sample.ddim{top}"] = {k: rows[f"sample.ddim{top}"][k] for k in EVAL_KEYS}
        for t in p.targets:
            if t != "sample":
                metrics[f"goal.fid3d_ratio.{t}_over_sample"] = rows[f"{t}.ddim{top}"]["fid3d"] / rows[f"sample.ddim{top}"]["fid3d"]
    few = max(k for k in p.flowmap_steps if k <= 4)
    metrics[f"goal.fid3d_ratio.flowmap{few}_over_ddim{top}"] = rows[f"{teacher}.flowmap{few}"]["fid3d"] / rows[f"{teacher}.ddim{top}"]["fid3d"]
    metrics[f"goal.fid3d_ratio.flowmap{few}_over_euler_linear{few}"] = (
        rows[f"{teacher}.flowmap{few}"]["fid3d"] / rows[f"{teacher}.euler_linear{few}"]["fid3d"])
    timing_notes = _timing(p, dev, metrics, baselines, timings)
    tissue = {"real": ref.test_tissue}
    for name in (f"{t}.ddim{top}" for t in p.targets):
        tissue[name] = tissue_volumes(samples[f"{name.split('.')[0]} DDIM{top}"], ref.voxel_ml, seed)
    plots = [P.plot_slices(out / "slices.png", samples).name,
             P.plot_tissue(out / "tissue_volumes.png", tissue).name,
             P.plot_metric_vs_nfe(out / "fid3d_vs_nfe.png", nfe_curves, "3-D FD", {
                 "real vs real": ref.values["fid3d_real"], "pure noise (reference)": ref.values["fid3d_noise"],
                 "blank volume (reference)": ref.values["fid3d_blank"]}).name,
             P.plot_graded_fd(out / "fid3d_check.png", graded, {
                 "real vs real": ref.values["fid3d_real"], "pure noise": ref.values["fid3d_noise"],
                 "blank volume": ref.values["fid3d_blank"],
                 **{f"{t} DDIM{top}": rows[f"{t}.ddim{top}"]["fid3d"] for t in p.targets}}).name,
             R.plot_loss(out / "loss.png", {k: v for k, v in losses.items() if v[0]}, "training loss").name]
    curves["fid3d_vs_nfe"] = {"xlabel": "NFE", "ylabel": "fid3d",
                              "series": {k: {"x": x, "y": y} for k, (x, y) in nfe_curves.items()}}
    timings["total_s"] = time.perf_counter() - t0
    notes = [
        f"device {p.device}, torch threads {torch.get_num_threads()}; embedded cohort {p.size}^3 "
        f"({p.n_train} train / {p.n_test} held-out subjects), synthetic from ONE template (data card mri-embedded)",
        f"UNet channels {list(p.unet.channels)}, {p.train_steps} steps x batch {p.batch_size} per target, EMA weights; "
        f"{p.eval_n} volumes per evaluation from the same noise (seed {seed + 1000}); the top DDIM and the flow-map "
        f"rows average {p.eval_seeds} noise draws (seeds {seed + 1000}, {seed + 2000}, ...; fid3d_sd their spread)",
        f"real_vs_real.fid3d_real_n{p.eval_n}: FD of {p.eval_n} real training volumes vs held-out (mean, 5-95% over "
        "50 subsets): the floor at the generated sample size",
        "euler_linearK: the flow-map student before distillation = K Euler steps of the teacher's linear-path ODE "
        "(DDIM steps at the DDPM times of equal SNR); flowmapK: after distillation",
        "fid3d: Frechet distance in the feature space of a 3-D CNN trained in this run on the real training volumes "
        "(real vs noise/blur/gamma/shuffled-octant/intensity-scale/fade degradations; features: mean and sd of every "
        "layer, no normalisation layer); real_vs_real = train vs held-out; fid3d_check.<family>.spearman: rank "
        "correlation of the FD with the severity of graded degradations of the held-out volumes (1 = monotone; "
        "lowres, ghost and spikes are not training tasks), plotted in fid3d_check.png",
        "hf_ratio: RMS of the 3-D Laplacian of the generated volumes over the held-out ones (texture: < 1 over-smoothed, "
        "> 1 noisy); the FD's features barely see added noise below 0.1 sd, so read the two together",
        "ms_ssim: generated pairs (lower = more diverse); tissue_p: permutation-test p-values of GMM tissue volumes",
        "published (MedForj, arXiv 2510.26834): velocity and flow beat sample on FID at 192x224x192; not comparable in scale",
        "loader_volumes_per_s: the embedded cohort (in memory, augmented); file_loader.*: the NIfTI pipeline at MedForj's "
        "192x224x192 on copies of the 1 mm MNI152 template (cache build per volume, then augmented volumes/s per "
        "data-loader worker count, worker start-up excluded); a training step of s seconds per volume needs 1/s from it",
        "GPU path on CPU: tiny UNet, no torch.compile, no peak memory; REFERENCE s.4 (H200, published here as measured "
        "by the project): compile + channels_last_3d = 0.38x time, 0.43x memory of stock MONAI",
        *timing_notes,
    ]
    result = BenchResult.create("mri", profile, seed, metrics=metrics, baselines=baselines, timings=timings,
                                curves=curves, plots=plots, notes=notes)
    result.write(out)
    R.write_report(result, out)
    return result


def _timing(p: MRIProfile, dev: torch.device, metrics: dict, baselines: dict, timings: dict) -> list[str]:
    """GPU path vs stock MONAI (module docstring, item 4); returns notes on failed variants."""
    res, m, baselines["stock_monai"], notes = compare_variants(p.timing_unet, p.timing_shape, p.timing_repeats, dev,
                                                           allow_compile=dev.type == "cuda")
    metrics.update(m)
    for name, r in res.items():
        timings[f"step.{name}.first_step_s"] = r.first_step_s
    return notes
