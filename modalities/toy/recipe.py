"""The toy recipe: typed config, how path, network and training module fit together, and
the train / sample / evaluate / finetune entry points of the CLI.

A model is :class:`~modaflow.core.nn.ResidualMLP` on ``(B, D)`` vectors, trained by
:class:`~modaflow.core.training.FlowMatchingModule` on the path and parametrization of
``cfg.fm``. Sampling starts from ``x0 ~ N(0, I)`` at t = 0 and integrates to t = 1 with one
of :data:`SOLVERS` over ``steps`` steps (NFE = steps x stages for midpoint/heun/rk4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from modaflow.core.config import Config, ConfigError
from modaflow.core.discrete import solve_ddim
from modaflow.core.ode import solve_ode, time_grid
from modaflow.core.parametrizations import Parametrization, as_velocity_field
from modaflow.core.paths import AffinePath
from modaflow.core.sde import solve_sde
from modaflow.core.training import FlowMatchingConfig, FlowMatchingModule, TrainerArgs, fit, load_checkpoint, make_path
from modaflow.core.training import checkpoint_path

from ..runs import load_recipe, load_weights, save_recipe
from . import data as D
from .metrics import energy_distance, mmd_rbf, sliced_wasserstein
from .models import build_model

__all__ = ["ToyConfig", "SOLVERS", "Solver", "build", "restore", "load_data", "generate", "run_sampler", "train", "sample", "evaluate", "finetune"]

Solver = Literal["euler", "midpoint", "heun", "rk4", "em", "ddim"]
SOLVERS: tuple[str, ...] = get_args(Solver)
NAME = "toy"


def _default_fm() -> FlowMatchingConfig:
    return FlowMatchingConfig(lr=2e-3, max_steps=2000, batch_size=256, ema_decay=0.995, log_every=25, ckpt_every=500)


@dataclass
class ToyConfig(Config):
    """A toy flow: data, network size, sampler defaults and the flow-matching setup."""

    data: str = "moons"
    """A toy dataset (gaussian, gmm, moons, checkerboard) or a .npy/.csv file of shape (N, D)."""
    dim: int = 2
    """Data dimension D of a generated dataset (2 to 64); for a file, its number of columns."""
    n_train: int = 8192
    """Training samples drawn from a generated dataset (a file is used whole)."""
    n_test: int = 2048
    """Held-out samples of a generated dataset for evaluate."""
    data_seed: int = 0
    """Seed of the generated train/test splits."""
    hidden: int = 128
    """Width of the residual MLP."""
    depth: int = 3
    """Number of residual blocks."""
    time_embed_dim: int = 64
    """Width of the sinusoidal time embedding."""
    solver: Solver = "euler"
    """Default sampler: euler, midpoint, heun, rk4 (ODE), em (Euler-Maruyama) or ddim."""
    steps: int = 32
    """Default number of sampler steps."""
    sample_shift: float = 1.0
    """Time shift of the sampling grid (1 = uniform; > 1 puts more steps near the noise)."""
    em_diffusion: float = 1.0
    """Euler-Maruyama diffusion g(t) = em_diffusion * sigma(t) (0 gives the ODE)."""
    fm: FlowMatchingConfig = field(default_factory=_default_fm)
    """Flow-matching training setup (path, parametrization, optimiser, steps, seed)."""

    def validate(self) -> None:
        self._require(bool(self.data), "data", "a dataset name or a file path")
        self._require(D.MIN_DIM <= self.dim <= D.MAX_DIM, "dim", f"an integer in [{D.MIN_DIM}, {D.MAX_DIM}]")
        for name in ("n_train", "n_test", "hidden", "depth", "steps"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        self._require(self.time_embed_dim >= 2, "time_embed_dim", "an integer >= 2")
        self._require(self.sample_shift > 0, "sample_shift", "a number > 0")
        self._require(self.em_diffusion >= 0, "em_diffusion", "a number >= 0")


def load_data(cfg: ToyConfig, split: str) -> Tensor:
    """The ``split`` of ``cfg.data``: ``(N, D)`` float32. A file is read whole for either
    split; its width must equal ``cfg.dim``."""
    if cfg.data in D.TOY_DATASETS:
        n = cfg.n_train if split == "train" else cfg.n_test
        return D.make_split(cfg.data, cfg.dim, n, split, cfg.data_seed)
    x = D.load_array(cfg.data)
    if x.shape[1] != cfg.dim:
        raise ConfigError(f"{cfg.data}: data has D = {x.shape[1]} columns but the model expects dim = {cfg.dim}")
    return x


def with_file_dim(cfg: ToyConfig) -> ToyConfig:
    """``cfg`` with ``dim`` set to the width of its data file (unchanged for a dataset name)."""
    if cfg.data in D.TOY_DATASETS:
        return cfg
    return cfg.replace(dim=int(D.load_array(cfg.data).shape[1]))


def build(cfg: ToyConfig) -> tuple[AffinePath, nn.Module, FlowMatchingModule]:
    """``(path, network, training module)`` of the recipe."""
    path = make_path(cfg.fm)
    model = build_model(cfg.dim, cfg.hidden, cfg.depth, cfg.time_embed_dim)
    return path, model, FlowMatchingModule(model, path, cfg.fm)


@torch.no_grad()
def generate(
    model: nn.Module,
    cfg: ToyConfig,
    path: AffinePath,
    n: int,
    steps: int,
    solver: str,
    seed: int,
) -> Tensor:
    """``n`` samples ``(n, D)`` on the model's device, from ``x0 ~ N(0, I)`` drawn on the
    CPU from ``seed`` (so every device starts from the same noise), with ``solver`` and
    ``steps``."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVERS)}; got {solver!r}")
    if n < 1 or steps < 1:
        raise ValueError(f"n and steps must be >= 1; got n={n}, steps={steps}")
    device = next(model.parameters()).device
    x0 = torch.randn(n, cfg.dim, generator=torch.Generator().manual_seed(seed)).to(device)
    grid = time_grid(steps, shift=cfg.sample_shift, device=device)
    g = torch.Generator(device).manual_seed(seed + 1)
    return run_sampler(model, cfg.fm.parametrization, path, x0, grid, solver, cfg.em_diffusion, g)


def run_sampler(
    model: Callable[[Tensor, Tensor], Tensor],
    kind: Parametrization,
    path: AffinePath,
    x0: Tensor,
    grid: Tensor,
    solver: str,
    em_diffusion: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Integrate ``x0`` ``(B, D)`` over ``grid`` with ``solver``, for a model predicting
    ``kind``: an ODE method, ``"em"`` (diffusion ``g(t) = em_diffusion * sigma(t)``, noise
    from ``generator``) or ``"ddim"`` (eta = 0).

    A model of kind data / noise / score gives no velocity where the conversion divides by
    zero: ``sigma(t) = 0`` (t = 1, which heun and rk4 evaluate) for data and score, and
    ``alpha(t) = 0`` (t = 0 on the linear and cosine paths) for noise and score. Those
    combinations raise a ``ValueError`` instead of returning NaN samples."""
    _check_defined(kind, path, grid, solver)
    if solver == "ddim":
        return solve_ddim(model, kind, path, x0, grid).x
    field_ = as_velocity_field(model, kind, path)
    if solver == "em":
        return solve_sde(field_, x0, grid, path, lambda t: em_diffusion * path.sigma(t), generator=generator).x
    return solve_ode(field_, x0, grid, method=solver).x


def _check_defined(kind: str, path: AffinePath, grid: Tensor, solver: str) -> None:
    evaluated = grid if solver in ("heun", "rk4") else grid[..., :-1]  # euler-type steps skip the end
    if kind in ("data", "score") and solver != "ddim" and bool((path.sigma(evaluated) == 0).any()):
        raise ValueError(f"solver {solver!r} evaluates a {kind!r} model at sigma(t) = 0 (t = 1), where its velocity "
                         f"is undefined; use euler, midpoint, em or ddim")
    if kind in ("noise", "score") and bool((path.alpha(evaluated) == 0).any()):
        raise ValueError(f"a {kind!r} model cannot start at alpha(t) = 0 on {path!r} (no data estimate there); "
                         f"train it on a ddpm_* path, or use the velocity or data parametrization")


def train(cfg: ToyConfig, trainer_args: TrainerArgs, out_dir: str | Path, progress: bool = True) -> dict:
    """Train a toy flow into ``out_dir`` (resumes if it holds a checkpoint); returns
    ``{"steps", "final_loss", "checkpoint"}``."""
    cfg = with_file_dim(cfg)
    x = load_data(cfg, "train")
    save_recipe(out_dir, NAME, cfg)
    _, _, module = build(cfg)
    return _fit(module, cfg, x, trainer_args, out_dir, progress)


def _fit(module: FlowMatchingModule, cfg: ToyConfig, x: Tensor, trainer_args: TrainerArgs, out_dir, progress: bool) -> dict:
    dm = D.ToyDataModule(x, batch_size=cfg.fm.batch_size, seed=cfg.fm.seed)
    res = fit(module, dm, out_dir, trainer_args, progress=progress)
    final = res.history[-1][1] if res.history else math.nan
    return {"steps": res.step, "final_loss": final, "checkpoint": str(res.checkpoint), "history": res.history}


def restore(ckpt_dir: str | Path) -> tuple[ToyConfig, AffinePath, nn.Module]:
    """``(recipe, path, network with the EMA weights in eval mode)`` of a run folder."""
    cfg = load_recipe(ckpt_dir, NAME, ToyConfig)
    path, model, _ = build(cfg)
    load_weights(ckpt_dir, model, use_ema=True)
    return cfg, path, model.eval()


def sample(ckpt_dir: str | Path, n: int, steps: int | None, solver: str | None, out_path: str | Path, seed: int) -> Path:
    """Write ``n`` samples of the run ``ckpt_dir`` to ``out_path`` (``.npy`` or ``.csv``);
    ``steps``/``solver`` default to the recipe's."""
    cfg, path, model = restore(ckpt_dir)
    x = generate(model, cfg, path, n, steps or cfg.steps, solver or cfg.solver, seed)
    return D.save_array(out_path, x)


def evaluate(ckpt_dir: str | Path, data: str | None, n: int, steps: int | None, solver: str | None, seed: int) -> dict:
    """Sliced Wasserstein, energy distance and RBF-MMD between ``n`` samples and held-out
    data (the test split of the training dataset, or ``data``: a dataset name or file)."""
    cfg, path, model = restore(ckpt_dir)
    ref_cfg = cfg if data is None else cfg.replace(data=data)
    ref = load_data(ref_cfg, "test")
    x = generate(model, cfg, path, n, steps or cfg.steps, solver or cfg.solver, seed)
    g = torch.Generator().manual_seed(seed)
    return {
        "sliced_wasserstein": sliced_wasserstein(x, ref, generator=g),
        "energy_distance": energy_distance(x, ref),
        "mmd_rbf": mmd_rbf(x, ref),
        "n_samples": n,
        "n_reference": int(ref.shape[0]),
    }


def finetune(ckpt_dir: str | Path, data: str, out_dir: str | Path, overrides: dict, trainer_args: TrainerArgs, progress: bool = True) -> dict:
    """Continue training the run ``ckpt_dir`` on ``data`` (a dataset name or a file) into
    ``out_dir``, from its weights and EMA with a fresh optimiser. ``overrides`` changes
    recipe fields (e.g. ``{"fm": {"max_steps": 200, "lr": 1e-4}}``); the network shape and
    the data dimension must stay those of the checkpoint."""
    base = load_recipe(ckpt_dir, NAME, ToyConfig)
    merged = base.to_dict()
    for key, value in overrides.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    cfg = ToyConfig.from_dict({**merged, "data": data})
    for name in ("dim", "hidden", "depth", "time_embed_dim"):
        if getattr(cfg, name) != getattr(base, name):
            raise ConfigError(f"finetune cannot change {name} ({getattr(base, name)} in {ckpt_dir}); got {getattr(cfg, name)}")
    x = load_data(cfg, "train")
    save_recipe(out_dir, NAME, cfg)
    _, _, module = build(cfg)
    if not checkpoint_path(out_dir).exists():  # a rerun into the same folder resumes there instead
        load_checkpoint(checkpoint_path(ckpt_dir), module.model, ema=module.ema)
    return _fit(module, cfg, x, trainer_args, out_dir, progress)
