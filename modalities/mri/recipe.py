"""The MRI recipe: typed config, how data, path, target and MONAI UNet fit together, and
the train / sample / evaluate / finetune entry points of the CLI.

A model is a MONAI ``DiffusionModelUNet`` (:mod:`.models`) trained by
:class:`~.training.MedForjModule` on DDPM with 1000 linear betas (a core
:class:`~modaflow.core.paths.DiscreteVPPath`) and one of MedForj's targets (:mod:`.targets`).
Sampling (:mod:`.sampling`) starts from ``x0 ~ N(0, I)`` at t = 0 and runs DDIM (eta = 0)
on the DDPM sub-sequence, Euler on the probability-flow ODE, ancestral DDPM, or a distilled
flow map (:mod:`.distill`). Volumes are written as NIfTI with the data's RAS affine.

The target sets the path, the parametrization and the UNet's timestep convention, and
MedForj's loss (:class:`~.training.MedForjModule`: a plain MSE, its own noise, DDPM steps
``k ~ U{1..T}``) reads none of the core loss options; :meth:`MRIConfig.validate` refuses
those fields when set (:func:`unread_fields`) instead of ignoring them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from modaflow.core.config import Config, ConfigError
from modaflow.core.paths import AffinePath
from modaflow.core.training import FlowMatchingConfig, TrainerArgs, checkpoint_path, fit, load_checkpoint

from ..runs import RECIPE_FILE, absolute_source, load_recipe, load_weights, save_recipe
from .data import MRIDataModule, SourceSpec, build_dataset, load_volumes, voxel_sizes
from .models import UNet3D, UNetConfig, apply_gpu_options
from .nifti import NanPolicy, ObliquePolicy, parse_source
from .targets import DataPredictor, Target, core_kind, make_path
from .training import MedForjModule

__all__ = ["MRIConfig", "NAME", "build", "train", "restore", "finetune", "source_of", "unread_fields", "load_config"]

NAME = "mri"


def _default_fm() -> FlowMatchingConfig:
    return FlowMatchingConfig(path="ddpm_linear", parametrization="data", lr=1e-3, batch_size=4, max_steps=400,
                              ema_decay=0.99, log_every=10, ckpt_every=200, grad_clip=1.0)


@dataclass
class MRIConfig(Config):
    """A 3-D T1 diffusion model: data, network, target, sampler defaults and training."""

    data: str = "embedded"
    """embedded (synthetic cohort from the MNI152 template), bids:/path or folder:/path."""
    size: int = 32
    """Cube side (voxels) of the embedded cohort: voxels of 192/size mm (32: 6 mm; the quick benchmark uses 24,
    8 mm)."""
    n_train: int = 48
    """Subjects of the embedded train split."""
    n_test: int = 16
    """Subjects of the embedded test split."""
    data_seed: int = 0
    """Seed of the embedded cohort."""
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
    """Target voxel size (mm) of NIfTI sources."""
    fov: tuple[int, ...] = (192, 224, 192)
    """Field of view (voxels) of NIfTI sources, centred on the brain mask."""
    oblique: ObliquePolicy = "reject"
    """Oblique NIfTI affines: reject, or resample onto an axis-aligned grid."""
    max_anisotropy: float = 4.0
    """Largest ratio of a NIfTI file's longest to shortest voxel side; more anisotropic files are refused."""
    nan: NanPolicy = "reject"
    """NaN voxels of NIfTI files: reject, or read as background (the smallest intensity; masked FSL/SPM outputs)."""
    augment: bool = True
    """MedForj's augmentation while training (L-R flip, +-5 degrees, +-5 voxels)."""
    target: Target = "velocity"
    """What the UNet predicts: sample, velocity, flow, noise (DDPM) or rflow (rectified flow)."""
    unet: UNetConfig = field(default_factory=UNetConfig)
    """The MONAI UNet (UNetConfig.medforj() for the full size)."""
    solver: Literal["ddim", "euler", "ddpm"] = "ddim"
    """Default sampler."""
    steps: int = 64
    """Default sampler steps."""
    channels_last: bool = False
    """Train in channels_last_3d memory format."""
    activation_checkpointing: bool = False
    """Recompute UNet block activations in the backward pass (less memory)."""
    compile: bool = False
    """torch.compile the UNet."""
    num_workers: int = 0
    """Data-loader worker processes."""
    fm: FlowMatchingConfig = field(default_factory=_default_fm)
    """Optimiser, steps, batch size, EMA, seed and DDPM steps T (ddpm_steps, linear betas
    1e-4 -> 2e-2); path and parametrization follow target. The time sampler applies to
    rflow only; loss weighting, coupling, t_min / t_max and conditioning dropout are not read
    (refused when set: unread_fields)."""

    def validate(self) -> None:
        try:
            parse_source(self.data)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self._require(self.size >= 8 and self.size % self.unet.divisor == 0, "size",
                      f"an integer >= 8 divisible by {self.unet.divisor} (the UNet's levels)")
        for name in ("n_train", "n_test", "steps"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.max_anisotropy >= 1, "max_anisotropy", "a ratio >= 1")
        self._require(all(s > 0 for s in self.spacing) and len(self.spacing) == 3, "spacing", "three sizes > 0 (mm)")
        self._require(len(self.fov) == 3 and all(f % self.unet.divisor == 0 and f > 0 for f in self.fov), "fov",
                      f"three sizes divisible by {self.unet.divisor}")
        self._require(self.num_workers >= 0, "num_workers", "an integer >= 0")
        # what the target sets, or MedForj's loss never reads: refused rather than silently ignored
        for name, accepted, why in unread_fields(self.target, self.fm.ddpm_steps):
            section, attr = name.split(".")
            self._require(getattr(getattr(self, section), attr) in accepted, name,
                          " or ".join(map(repr, accepted)) + f" (leave it unset): {why}")

    @property
    def source(self) -> SourceSpec:
        """Where the volumes come from."""
        return source_of(self)


_DDPM_STEPS = ("DDPM targets draw their step k ~ U{1..T} (Ho et al. 2020, arXiv 2006.11239, Algorithm 1); "
               "the time sampler applies to --target rflow only")


def unread_fields(target: str, ddpm_steps: int) -> list[tuple[str, tuple, str]]:
    """Fields under ``fm`` and ``unet`` that the MRI build sets from the target or that
    :class:`~.training.MedForjModule` never reads, for ``target``: ``(dotted name, accepted
    values, what sets it instead)``; the first accepted value is the default. The time sampler
    fields are read with ``rflow`` (uniform t on the linear path) and are listed for the DDPM
    targets only."""
    fm, unet = _default_fm(), UNetConfig()
    rflow = target == "rflow"

    def keep(*values):  # the default first, then the value the target sets, once
        return tuple(dict.fromkeys(values))

    fields = [
        ("fm.path", keep(fm.path, "linear" if rflow else "ddpm_linear"),
         "--target sets the path (DDPM, fm.ddpm_steps linear betas 1e-4 -> 2e-2; the linear path for rflow)"),
        ("fm.parametrization", keep(fm.parametrization, core_kind(target)),
         "--target sets what the UNet predicts (sample, velocity, flow, noise, rflow)"),
        ("fm.loss_weighting", (fm.loss_weighting,),
         "MedForj's loss is a plain MSE on the target (training.MedForjModule); --target chooses the target"),
        ("fm.min_snr_gamma", (fm.min_snr_gamma,), "it weights the min_snr loss, which the MRI recipe does not use"),
        ("fm.t_min", (fm.t_min,), "MedForj's loss draws t itself (DDPM steps 1..T, or t in [0, 1] for rflow)"),
        ("fm.t_max", (fm.t_max,), "MedForj's loss draws t itself (DDPM steps 1..T, or t in [0, 1] for rflow)"),
        ("fm.coupling", (fm.coupling,), "MedForj's loss draws its own noise per volume (no coupling)"),
        ("fm.sinkhorn_epsilon", (fm.sinkhorn_epsilon,), "it tunes the sinkhorn coupling, which the MRI recipe does not use"),
        ("fm.sinkhorn_iterations", (fm.sinkhorn_iterations,),
         "it tunes the sinkhorn coupling, which the MRI recipe does not use"),
        ("fm.cond_dropout", (fm.cond_dropout,), "the MRI models are unconditional"),
        ("fm.null_class", (fm.null_class,), "the MRI models are unconditional"),
        ("unet.timestep_scale", keep(unet.timestep_scale, "rflow" if rflow else "ddpm"),
         "--target sets it (rflow: the RFlow timestep; the DDPM index otherwise)"),
        ("unet.num_train_timesteps", keep(unet.num_train_timesteps, ddpm_steps), "--ddpm-steps (fm.ddpm_steps) sets it"),
    ]
    if not rflow:
        fields += [(f"fm.{name}", (getattr(fm, name),), _DDPM_STEPS)
                   for name in ("time_sampler", "logit_normal_m", "logit_normal_s", "mode_scale", "time_shift")]
    return fields


def source_of(cfg: MRIConfig) -> SourceSpec:
    """The :class:`SourceSpec` of a recipe."""
    return SourceSpec(data=cfg.data, size=cfg.size, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.data_seed,
                      spacing=tuple(cfg.spacing), fov=tuple(cfg.fov), oblique=cfg.oblique,
                      max_anisotropy=cfg.max_anisotropy, nan=cfg.nan)


def _fm(cfg: MRIConfig) -> FlowMatchingConfig:
    path = "linear" if cfg.target == "rflow" else "ddpm_linear"
    return cfg.fm.replace(path=path, parametrization=core_kind(cfg.target))


def _unet_cfg(cfg: MRIConfig) -> UNetConfig:
    return cfg.unet.replace(timestep_scale="rflow" if cfg.target == "rflow" else "ddpm",
                            num_train_timesteps=cfg.fm.ddpm_steps)


def build(cfg: MRIConfig) -> tuple[AffinePath, DataPredictor, MedForjModule]:
    """``(path, wrapped network, training module)`` of the recipe (GPU options applied); the
    network's initial weights depend on ``cfg.fm.seed`` only (so every target of a benchmark
    starts from the same weights, whatever ran before)."""
    path = make_path(cfg.target, cfg.fm.ddpm_steps)
    with torch.random.fork_rng(devices=[]):  # the initialisation is drawn from fm.seed, not the global RNG
        torch.manual_seed(cfg.fm.seed)
        net = UNet3D(_unet_cfg(cfg))
    apply_gpu_options(net, cfg.channels_last, cfg.activation_checkpointing)
    model = DataPredictor(net, cfg.target, path)
    module = MedForjModule(model, path, _fm(cfg), channels_last=cfg.channels_last)
    if cfg.compile:
        net.unet.compile()
    return path, model, module


def _fit(module: MedForjModule, cfg: MRIConfig, trainer_args: TrainerArgs, out_dir, progress: bool) -> dict:
    ds = build_dataset(cfg.source, "train", augment=cfg.augment, num_workers=cfg.num_workers)
    dm = MRIDataModule(ds, batch_size=min(cfg.fm.batch_size, len(ds)), seed=cfg.fm.seed, num_workers=cfg.num_workers)
    res = fit(module, dm, out_dir, trainer_args, progress=progress)
    final = res.history[-1][1] if res.history else math.nan
    return {"steps": res.step, "start_step": res.start_step, "final_loss": final, "checkpoint": str(res.checkpoint),
            "history": res.history}


def _stored_data(data: str) -> str:
    """``--data`` as a run stores it: ``bids:`` / ``folder:`` paths absolute
    (:func:`~modaflow.modalities.runs.absolute_source`), ``embedded`` as it is."""
    return absolute_source(data, ("bids", "folder"), ("embedded",))


EMBEDDED_FIELDS = ("size", "n_train", "n_test", "data_seed")
"""Fields read by the embedded cohort only (a NIfTI source's volumes are ``fov`` voxels of ``spacing`` mm)."""
FILE_FIELDS = ("spacing", "fov", "oblique", "max_anisotropy", "nan")
"""Fields read by the NIfTI pipeline only."""


def _check_source_fields(cfg: MRIConfig, given) -> None:
    """Refuse the fields among ``given`` that the source ``cfg.data`` never reads (``--size 32`` with
    ``--data bids:...`` left the volumes at the default 192 x 224 x 192 ``fov``, without a word)."""
    embedded = parse_source(cfg.data)[0] == "embedded"
    for name in given:
        if embedded and name in FILE_FIELDS:
            raise ConfigError(f"MRIConfig.{name}: read for NIfTI sources (bids:/path, folder:/path) only; the embedded "
                              f"cohort has {cfg.size}^3 voxels of 192/size mm (set --size instead; leave it unset)")
        if not embedded and name in EMBEDDED_FIELDS:
            raise ConfigError(f"MRIConfig.{name}: read for --data embedded only; the volumes of {cfg.data} are --fov "
                              f"{tuple(cfg.fov)} voxels of --spacing {tuple(cfg.spacing)} mm (set those instead; "
                              f"leave it unset)")


def _set_fields(cfg: MRIConfig, out_dir: str | Path) -> list[str]:
    """The source fields of ``cfg`` that differ from their defaults (set by the user), less those a run
    in ``out_dir`` already stores with the same value (resuming a run trained before the refusal)."""
    default, new = MRIConfig(), json.loads(json.dumps(cfg.to_dict()))
    try:
        stored = json.loads((Path(out_dir) / RECIPE_FILE).read_text()).get("config") or {}
    except (OSError, ValueError, AttributeError):  # none, or a broken one: save_recipe says what is wrong
        stored = {}
    return [n for n in (*EMBEDDED_FIELDS, *FILE_FIELDS)
            if getattr(cfg, n) != getattr(default, n) and stored.get(n) != new[n]]


def _check_shape(cfg: MRIConfig) -> None:
    shape = cfg.source.shape
    if any(s % cfg.unet.divisor for s in shape):
        raise ConfigError(f"volumes of shape {shape} do not fit a UNet with {len(cfg.unet.channels)} levels "
                          f"(each side must be divisible by {cfg.unet.divisor})")


def train(cfg: MRIConfig, trainer_args: TrainerArgs, out_dir: str | Path, progress: bool = True) -> dict:
    """Train into ``out_dir`` (resumes if it holds a checkpoint); returns
    ``{"steps", "final_loss", "checkpoint", "history"}``."""
    _check_source_fields(cfg, _set_fields(cfg, out_dir))
    cfg = cfg.replace(data=_stored_data(cfg.data))
    _check_shape(cfg)
    save_recipe(out_dir, NAME, cfg)
    _, _, module = build(cfg)
    return _fit(module, cfg, trainer_args, out_dir, progress)


def _inert(config: dict) -> dict[str, object]:
    """:func:`unread_fields` of a stored recipe as ``{name: default}`` (:func:`~..runs.load_recipe`'s ``inert``)."""
    target = config.get("target", MRIConfig.target)
    steps = (config.get("fm") or {}).get("ddpm_steps", _default_fm().ddpm_steps)
    out = {}
    for name, accepted, _ in unread_fields(target, steps):
        section, attr = name.split(".")
        if (config.get(section) or {}).get(attr, accepted[0]) not in accepted:
            out[name] = accepted[0]
    return out


def load_config(ckpt_dir: str | Path) -> MRIConfig:
    """The recipe of the run folder ``ckpt_dir`` (errors name the file). A recipe written before
    :meth:`MRIConfig.validate` refused the :func:`unread_fields` loads with those fields at their
    defaults, with a warning: they had no effect on the trained weights."""
    return load_recipe(ckpt_dir, NAME, MRIConfig, inert=_inert)


def restore(ckpt_dir: str | Path) -> tuple[MRIConfig, AffinePath, nn.Module]:
    """``(recipe, path, wrapped network with EMA weights, eval mode)`` of a run folder."""
    cfg = load_config(ckpt_dir)
    cfg = cfg.replace(compile=False, activation_checkpointing=False)
    path, model, _ = build(cfg)
    load_weights(ckpt_dir, model, use_ema=True)
    return cfg, path, model.eval()


def finetune(ckpt_dir: str | Path, data: str, out_dir: str | Path, overrides: dict, trainer_args: TrainerArgs,
             progress: bool = True) -> dict:
    """Continue training the run ``ckpt_dir`` on ``data`` into ``out_dir`` from its weights and
    EMA (fresh optimiser). ``overrides`` change recipe fields; the network, the target and
    the volume shape must stay those of the checkpoint."""
    from .distill import is_flow_map_run  # distill imports this module

    if is_flow_map_run(ckpt_dir):
        raise ConfigError(f"{ckpt_dir} is a distilled flow map; finetune the diffusion run it came from (its "
                          f"distill.json names it as teacher), then distil again")
    base = load_config(ckpt_dir)
    merged = base.to_dict()
    for key, value in overrides.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    cfg = MRIConfig.from_dict({**merged, "data": _stored_data(data)})
    _check_source_fields(cfg, overrides)  # the checkpoint's own values of the other source's fields are carried
    for name in ("unet", "target"):
        if getattr(cfg, name) != getattr(base, name):
            raise ConfigError(f"finetune cannot change {name} ({getattr(base, name)} in {ckpt_dir}); got {getattr(cfg, name)}")
    if cfg.source.shape != base.source.shape:
        raise ConfigError(f"{data}: volumes of shape {cfg.source.shape} do not match the checkpoint's "
                          f"{base.source.shape} (set --{'size' if cfg.data == 'embedded' else 'fov'} to match)")
    if base.data == "embedded" and cfg.data != "embedded" and "spacing" not in overrides:
        mm = voxel_sizes(base.source)  # the cohort's voxels are 192 / size mm: 1 mm files would fill 1/12 of that view
        raise ConfigError(f"{data}: the checkpoint learnt the embedded cohort's {mm[0]:g} mm voxels; give --spacing for "
                          f"the files (--spacing {mm[0]:g} {mm[1]:g} {mm[2]:g} keeps its field of view of "
                          f"{mm[0] * base.source.shape[0]:g} mm)")
    save_recipe(out_dir, NAME, cfg)
    _, _, module = build(cfg)
    if not checkpoint_path(out_dir).exists():
        load_checkpoint(checkpoint_path(ckpt_dir), module.model, ema=module.ema)
    return _fit(module, cfg, trainer_args, out_dir, progress)


def test_volumes(cfg: MRIConfig, data: str | None = None) -> torch.Tensor:
    """Held-out volumes ``(N, 1, X, Y, Z)`` of the recipe's data (or of ``data``)."""
    src = cfg.source if data is None else source_of(cfg.replace(data=data))
    return load_volumes(src, "test")
