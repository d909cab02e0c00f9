"""Few-step sampling: distil a trained MRI diffusion model into a flow map.

The teacher's probability-flow ODE is re-expressed on the linear path, where it is not
stiff: a linear-path state ``x_lin = tau x1 + (1 - tau) eps`` at time ``tau`` has the
signal-to-noise ratio of the DDPM time ``t`` with ``sigma(t) / alpha(t) = (1 - tau) / tau``
(:func:`modaflow.core.conventions.edm_sigma_to_time`), and ``x_vp = (alpha(t) / tau) x_lin``
(both are ``alpha x1 + sigma eps`` up to scale; Karras et al. 2022, arXiv 2206.00364,
sec. 3: schedules with one SNR share one ODE up to scaling). From the teacher's
``(x1_hat, eps_hat)`` the linear-path velocity is ``x1_hat - eps_hat``
(:class:`LinearPathTeacher`). DDIM on the DDPM path is Euler on this ODE.

The student is :class:`~modaflow.core.flow_maps.FlowMap` around a
:class:`~.models.TwoTimeUNet3D` initialised from the teacher's UNet. With
``student="teacher"`` (default) the UNet keeps the teacher's input scaling, time
conditioning and output target, and its output is converted to the linear-path velocity
exactly as the teacher's is (:class:`LinearPathStudent`); the gap embedding starts at zero, so
the initial map's diagonal IS the teacher's velocity and ``X(s, t, x)`` starts as one Euler
(= DDIM) step of the teacher's ODE (initialising the map at the teacher, as consistency
distillation does: Song et al. 2023, arXiv 2303.01469, sec. 4; Sabour et al. 2025, arXiv
2506.14603). ``student="linear"`` is the earlier student: the teacher's weights in a UNet
fed the linear-path state and RFlow time and read as the linear velocity (another function
than the teacher's at initialisation). It is trained with the core
:class:`~modaflow.core.training.flow_map_module.FlowMapModule` (``loss="teacher"``: regress
``X(s, t, x_s)`` on the teacher's ODE solution from s to t; Boffi, Albergo &
Vanden-Eijnden 2025, arXiv 2505.18825) and sampled with
:func:`~modaflow.core.flow_maps.sample_flow_map` in 1-8 steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from modaflow.core.config import Config, ConfigError
from modaflow.core.conventions import edm_sigma_to_time
from modaflow.core.flow_maps import FlowMap
from modaflow.core.io import atomic_write_text
from modaflow.core.parametrizations import to_data_noise
from modaflow.core.paths import AffinePath, DiscreteVPPath, LinearPath
from modaflow.core.tensors import expand_t
from modaflow.core.training import TrainerArgs, fit
from modaflow.core.training.flow_map_module import FlowMapConfig, FlowMapModule

from ..runs import load_weights, save_recipe
from .data import MRIDataModule, build_dataset
from .models import TwoTimeUNet3D, apply_gpu_options
from .recipe import NAME, MRIConfig, load_config, restore
from .targets import core_kind, make_path, medforj_to_data_noise

__all__ = ["DistillConfig", "LinearPathTeacher", "LinearPathStudent", "initial_flow_map", "DISTILL_FILE", "distill", "is_flow_map_run", "restore_flow_map"]

DISTILL_FILE = "distill.json"


@dataclass
class DistillConfig(Config):
    """Distil the run ``teacher`` into a flow map (``modaflow distill mri``)."""

    teacher: str = ""
    """Run folder of the trained diffusion model (modaflow train mri --out ...)."""
    max_steps: int = 300
    """Optimiser steps of the student."""
    batch_size: int = 4
    """Volumes per step."""
    lr: float = 5e-4
    """Learning rate."""
    loss: Literal["teacher", "lagrangian", "eulerian"] = "teacher"
    """Flow-map loss (arXiv 2505.18825): teacher (regress on the teacher's ODE solution), or
    lagrangian / eulerian with the teacher's velocity."""
    teacher_steps: int = 4
    """ODE steps of the teacher between s and t (loss=teacher)."""
    teacher_method: Literal["euler", "midpoint", "heun", "rk4"] = "heun"
    """ODE method of the teacher solve."""
    ema_decay: float = 0.99
    """EMA of the student's weights."""
    student: Literal["teacher", "linear"] = "teacher"
    """teacher: the student starts as the teacher (its diagonal is the teacher's velocity;
    :class:`LinearPathStudent`); linear: the earlier student (module docstring)."""
    seed: int = 0
    """Seed of the training noise."""
    trainer: TrainerArgs = field(default_factory=TrainerArgs)
    """Hardware of the distillation (--accelerator, --precision bf16-mixed, --devices, --strategy, as for train); the
    student also takes the teacher recipe's channels_last and activation_checkpointing."""

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "teacher_steps"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.lr > 0, "lr", "a number > 0")
        # the eulerian loss differentiates u in s; the teacher-parametrised student maps s to the
        # DDPM time by bisection, which has no derivative
        self._require(not (self.loss == "eulerian" and self.student == "teacher"), "loss",
                      "teacher or lagrangian with student='teacher' (eulerian needs student='linear')")


class LinearPathTeacher(nn.Module):
    """The teacher's velocity on the linear path, ``forward(x_lin, tau) -> x1_hat - eps_hat``
    (module docstring). ``model`` predicts the core parametrization ``kind`` on ``path``;
    ``iterations`` bisection steps find the DDPM time of equal SNR (40: ~1e-12 in t)."""

    def __init__(self, model: nn.Module, kind: str, path: AffinePath, iterations: int = 40) -> None:
        super().__init__()
        self.model, self.kind, self.path, self.iterations = model, kind, path, iterations
        if isinstance(path, DiscreteVPPath):
            a0, s0 = path.alpha(torch.zeros((), dtype=torch.float64)), path.sigma(torch.zeros((), dtype=torch.float64))
            self.tau_min = float(a0 / (a0 + s0))  # the noisiest DDPM state, on the linear path
        elif isinstance(path, LinearPath):
            self.tau_min = 0.0
        else:
            raise TypeError(f"teacher path must be a DiscreteVPPath or the LinearPath; got {path!r}")

    def to_path(self, x: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_path, t)``: the teacher path's state and time with the SNR of the linear-path
        state ``x`` at ``tau`` (module docstring)."""
        if isinstance(self.path, LinearPath):
            return x, tau
        tau_c = tau.clamp(self.tau_min, 1.0 - 1e-4)
        t = edm_sigma_to_time((1.0 - tau_c) / tau_c, self.path, iterations=self.iterations)  # same SNR
        return x * expand_t(self.path.alpha(t) / tau_c, x), t

    def forward(self, x: Tensor, tau: Tensor) -> Tensor:
        x_p, t = self.to_path(x, tau)
        x1, eps = to_data_noise(self.model(x_p, t).to(x.dtype), self.kind, x_p, t, self.path)
        return x1 - eps  # d/dtau (tau x1 + (1 - tau) eps)


class LinearPathStudent(nn.Module):
    """A flow map's average velocity ``u(x_lin, s, t)`` on the linear path, computed in the
    teacher's parametrization: the linear state at ``s`` goes to the teacher path's state and
    time of equal SNR (:meth:`LinearPathTeacher.to_path`), ``net`` (a :class:`TwoTimeUNet3D`
    with the teacher's time scale) predicts the MedForj ``target`` there with the gap
    embedding of ``t - s``, and the prediction becomes ``x1_hat - eps_hat`` by MedForj's
    inversions (:func:`~.targets.medforj_to_data_noise`). With the teacher's weights and a zero
    gap embedding, ``u(x, s, s)`` equals ``LinearPathTeacher(x, s)`` exactly."""

    def __init__(self, net: TwoTimeUNet3D, target: str, path: AffinePath, iterations: int = 40) -> None:
        super().__init__()
        self.net, self.target = net, target
        self.cfg = net.cfg
        self._map = LinearPathTeacher(nn.Identity(), "data", path, iterations)  # the time / scale map only

    def forward(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        path = self._map.path
        x_p, tp = self._map.to_path(x, s)
        pred = self.net.with_gap(x_p, tp, t - s).to(x.dtype)
        a, sg = expand_t(path.alpha(tp), x).to(x.dtype), expand_t(path.sigma(tp), x).to(x.dtype)
        x1, eps = medforj_to_data_noise(self.target, pred, x_p, a, sg)
        return x1 - eps


def is_flow_map_run(ckpt_dir: str | Path) -> bool:
    """True for a run folder written by :func:`distill`."""
    return (Path(ckpt_dir) / DISTILL_FILE).is_file()


def _student(cfg: MRIConfig, student: str = "teacher") -> FlowMap:
    if student == "linear":
        unet = cfg.unet.replace(timestep_scale="rflow", num_train_timesteps=cfg.fm.ddpm_steps)
        return FlowMap(TwoTimeUNet3D(unet))
    scale = "rflow" if cfg.target == "rflow" else "ddpm"
    net = TwoTimeUNet3D(cfg.unet.replace(timestep_scale=scale, num_train_timesteps=cfg.fm.ddpm_steps))
    return FlowMap(LinearPathStudent(net, cfg.target, make_path(cfg.target, cfg.fm.ddpm_steps)))


def _two_time(flow_map: FlowMap) -> TwoTimeUNet3D:
    net = flow_map.net
    return net.net if isinstance(net, LinearPathStudent) else net


def _flow_map_cfg(d: DistillConfig, batch_size: int) -> FlowMapConfig:
    return FlowMapConfig(path="linear", parametrization="velocity", loss=d.loss, stop_gradient="target",
                         teacher_steps=d.teacher_steps, teacher_method=d.teacher_method, lr=d.lr,
                         batch_size=batch_size, max_steps=d.max_steps, ema_decay=d.ema_decay, seed=d.seed,
                         log_every=10, ckpt_every=max(d.max_steps // 2, 1), t_max=1.0)


def initial_flow_map(teacher_dir: str | Path, student: str = "teacher") -> FlowMap:
    """The student of :func:`distill` before any training step (eval mode): with
    ``student="teacher"``, ``X(s, t, x)`` is one Euler step of the teacher's linear-path ODE
    (= a DDIM step between the DDPM times of equal SNR), the few-step baseline that
    distillation must beat."""
    cfg, _, teacher_model = restore(teacher_dir)
    flow_map = _student(cfg, student)
    _two_time(flow_map).load_one_time(teacher_model.net)
    return flow_map.eval()


def distill(d: DistillConfig, out_dir: str | Path | None, trainer_args: TrainerArgs | None = None,
            progress: bool = True) -> dict:
    """Train a flow map from ``d.teacher`` into ``out_dir`` (resumes there, with the student it
    started) on ``trainer_args`` (default ``d.trainer``); returns ``{"steps", "final_loss",
    "checkpoint", "history"}``."""
    if not d.teacher:
        raise ConfigError("DistillConfig.teacher: expected the run folder of a trained model (--teacher DIR)")
    if out_dir is None:
        raise ConfigError("distill needs --out (the flow-map run folder)")
    if is_flow_map_run(d.teacher):
        raise ConfigError(f"{d.teacher} is a distilled flow map; distil the diffusion run it came from (its "
                          f"{DISTILL_FILE} names it as teacher)")
    d = d.replace(teacher=str(Path(d.teacher).expanduser().resolve()),  # found from any folder later
                  trainer=trainer_args or d.trainer)  # distill.json records the hardware that ran
    out = Path(out_dir)
    if (out / DISTILL_FILE).is_file():  # a resumed run keeps its network: the student is not changed under it
        before = json.loads((out / DISTILL_FILE).read_text()).get("student", "linear")
        if before != d.student:
            raise ConfigError(f"{out} holds a flow map distilled with --student {before}; resume it with that student, "
                              f"or distil --student {d.student} into a new folder")
    cfg, path, teacher_model = restore(d.teacher)
    teacher = LinearPathTeacher(teacher_model, core_kind(cfg.target), path)
    with torch.random.fork_rng(devices=[]):  # the gap embedding's initialisation from d.seed
        torch.manual_seed(d.seed)
        flow_map = _student(cfg, d.student)
    _two_time(flow_map).load_one_time(teacher_model.net)
    # the teacher's memory options on the student; checkpointing only under the regression loss (the lagrangian and
    # eulerian losses differentiate through the student in time)
    apply_gpu_options(flow_map, cfg.channels_last, cfg.activation_checkpointing and d.loss == "teacher")
    ds = build_dataset(cfg.source, "train", augment=cfg.augment)
    batch = min(d.batch_size, len(ds))
    module = FlowMapModule(flow_map, LinearPath(), _flow_map_cfg(d, batch), teacher=teacher)
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(out, NAME, load_config(d.teacher))  # the teacher's recipe, atomically; refuses to mix with another run
    atomic_write_text(out / DISTILL_FILE, json.dumps(d.to_dict(), indent=2, sort_keys=True) + "\n")
    res = fit(module, MRIDataModule(ds, batch, seed=d.seed), out, d.trainer, progress=progress)
    final = res.history[-1][1] if res.history else math.nan
    return {"steps": res.step, "start_step": res.start_step, "final_loss": final, "checkpoint": str(res.checkpoint),
            "history": res.history}


def restore_flow_map(ckpt_dir: str | Path) -> tuple[MRIConfig, FlowMap]:
    """``(teacher's recipe, flow map with EMA weights, eval mode)`` of a distilled run."""
    cfg = load_config(ckpt_dir)
    saved = json.loads((Path(ckpt_dir) / DISTILL_FILE).read_text())
    saved.setdefault("student", "linear")  # runs from before the field had only the linear student
    flow_map = _student(cfg, DistillConfig.from_dict(saved).student)
    load_weights(ckpt_dir, flow_map, use_ema=True)
    return cfg, flow_map.eval()
