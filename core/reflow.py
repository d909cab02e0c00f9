"""Rectified-flow *reflow*: re-pair noise with a teacher flow's own samples and retrain on
straight lines, so the new flow's paths straighten.

Liu, Gong & Liu 2022, "Flow straight and fast: learning to generate and transfer data with
rectified flow", arXiv 2209.03003, Algorithm 1 (the optional reflow step): given a flow
``Z`` (the teacher), draw ``z ~ N(0, I)``, solve its ODE to ``x1 = Z_1(z)`` and train a new
velocity field on the *fixed* pairs ``(z, x1)`` along the linear path
``x_t = (1 - t) z + t x1`` (their eq. 1 with these couplings). The pairs are a deterministic
coupling of the two laws with a transport cost no larger than the teacher's coupling, and
repeated reflow straightens the paths (their Theorem 3.7), which is the route SlimFlow
(Zhu et al. 2024, arXiv 2407.12718) takes to small one-step models.

* :func:`reflow_pairs`: the ``(z, teacher(z))`` pairs, deterministic given the seed.
* :class:`ReflowDataset`: items ``{"x0": z, "x1": x1}``, the batch form that
  :class:`~modaflow.core.training.FlowMatchingModule` trains on with the given pairing.
* :func:`train_reflow`: retrain a student on those pairs with ``core.training.fit``.
* :func:`straightness`: ``S(Z) = int_0^1 E ||(Z_1 - Z_0) - dZ_t/dt||^2 dt``, the
  straightness measure of Liu et al. 2022 (0 iff every path is a straight line travelled at
  constant speed), integrated along the ODE of any velocity field.

For Gaussian data ``N(mu, Sigma)`` on the linear path the exact (1-rectified) flow has
``S = (2 - pi/2) tr(Sigma^{1/2})`` (in Sigma's eigenbasis each coordinate scales by
``c(t) = sqrt(t^2 l + (1 - t)^2)``, and ``int c'^2 = l + 1 - (pi/2) sqrt(l)``), positive for
every Gaussian, while its reflow pairs ``(z, mu + Sigma^{1/2} z)`` are the OT map and give a
straight 2-rectified flow; the tests check both.

The training pieces import Lightning lazily (``modaflow.core`` itself needs only torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .ode import ODE_METHODS, Field, solve_ode, time_grid

if TYPE_CHECKING:  # pragma: no cover
    from .training import FitResult, FlowMatchingConfig, FlowMatchingModule, TrainerArgs

__all__ = ["ReflowPairs", "reflow_pairs", "ReflowDataset", "ReflowRun", "train_reflow", "Straightness", "straightness"]


@dataclass(frozen=True)
class ReflowPairs:
    """Couplings made by a teacher flow.

    Attributes:
        x0: the noise ``z``, ``(N, *D)``.
        x1: the teacher's ODE solution from ``z`` at t = 1, ``(N, *D)``.
        nfe: teacher evaluations per sample.
    """

    x0: Tensor
    x1: Tensor
    nfe: int


def reflow_pairs(
    teacher: Field,
    n: int,
    shape: tuple[int, ...],
    steps: int = 100,
    method: str = "rk4",
    seed: int = 0,
    batch_size: int = 4096,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> ReflowPairs:
    """``n`` pairs ``(z, teacher(z))`` for reflow (Liu et al. 2022, arXiv 2209.03003,
    Algorithm 1): ``z ~ N(0, I)`` of shape ``(n, *shape)`` drawn on the CPU from a generator
    seeded by ``seed`` (the same noise on every device), then moved to ``device`` and pushed
    through the teacher's ODE from t = 0 to 1 with ``steps`` fixed steps of ``method``, in
    chunks of ``batch_size``, without gradients."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1; got {n!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}; got {method!r}")
    shape = tuple(shape)
    z = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
    grid = time_grid(steps, device=z.device, dtype=dtype)
    chunks, nfe = [], 0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            result = solve_ode(teacher, z[start : start + batch_size], grid, method)
            chunks.append(result.x)
            nfe = result.nfe
    return ReflowPairs(x0=z, x1=torch.cat(chunks), nfe=nfe)


class ReflowDataset(Dataset):
    """The pairs as a dataset of ``{"x0": z_i, "x1": x1_i}`` (plus ``"cond": cond_i`` when
    ``cond`` ``(N, ...)`` is given), the batch form that keeps the pairing in
    :class:`~modaflow.core.training.FlowMatchingModule`."""

    def __init__(self, pairs: ReflowPairs, cond: Tensor | None = None) -> None:
        if pairs.x0.shape != pairs.x1.shape:
            raise ValueError(
                f"pairs.x0 and pairs.x1 must have one shape; got {tuple(pairs.x0.shape)}, {tuple(pairs.x1.shape)}"
            )
        if cond is not None and cond.shape[0] != pairs.x0.shape[0]:
            raise ValueError(f"cond must have {pairs.x0.shape[0]} rows like the pairs; got {tuple(cond.shape)}")
        self.pairs, self.cond = pairs, cond

    def __len__(self) -> int:
        return self.pairs.x0.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {"x0": self.pairs.x0[i], "x1": self.pairs.x1[i]}
        if self.cond is not None:
            item["cond"] = self.cond[i]
        return item


@dataclass(frozen=True)
class ReflowRun:
    """A finished reflow training: the trained module (its ``velocity_field()`` is the new
    flow) and what ``fit`` reported."""

    module: FlowMatchingModule
    fit: FitResult


def train_reflow(
    student: nn.Module,
    pairs: ReflowPairs,
    cfg: FlowMatchingConfig,
    out_dir: str | Path,
    trainer_args: TrainerArgs | None = None,
    cond: Tensor | None = None,
    progress: bool = False,
) -> ReflowRun:
    """Train ``student`` on the fixed couplings ``pairs`` along the linear path (rectified
    flow, Liu et al. 2022, arXiv 2209.03003, eq. 1 with the reflow coupling), with
    :func:`modaflow.core.training.fit` (checkpoints and resume under ``out_dir``). Batches of
    ``cfg.batch_size`` pairs are shuffled by a generator seeded with ``cfg.seed``.
    ``cfg.path`` must be ``"linear"``; a ``cfg.coupling`` never re-pairs given pairs."""
    from .training import FlowMatchingModule, fit

    if cfg.path != "linear":
        raise ValueError(
            f"FlowMatchingConfig.path: reflow trains on the linear path; expected 'linear', got {cfg.path!r}"
        )
    data = ReflowDataset(pairs, cond)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=len(data) >= cfg.batch_size,
                        generator=torch.Generator().manual_seed(cfg.seed))
    module = FlowMatchingModule(student, None, cfg)
    result = fit(module, loader, out_dir, trainer_args, progress=progress)
    return ReflowRun(module=module, fit=result)


@dataclass(frozen=True)
class Straightness:
    """Straightness of a flow's paths.

    Attributes:
        value: scalar ``E int_0^1 ||(Z_1 - Z_0) - v(Z_t, t)||^2 dt`` (mean over the batch).
        per_sample: the integral for each start point, ``(B,)``.
        x1: the end points ``Z_1``, ``(B, *D)``.
    """

    value: Tensor
    per_sample: Tensor
    x1: Tensor


def straightness(field: Field, x0: Tensor, steps: int = 100, method: str = "rk4") -> Straightness:
    """Straightness ``S(Z) = int_0^1 E ||(Z_1 - Z_0) - dZ_t/dt||^2 dt`` of the flow
    ``dZ_t/dt = field(Z_t, t)`` from ``Z_0 = x0`` ``(B, *D)`` (Liu et al. 2022,
    arXiv 2209.03003, the straightness measure of the reflow analysis, their Theorem 3.7).

    The ODE is solved on ``steps`` uniform steps of ``method``; the field is evaluated on
    every grid state (``steps + 1`` more calls) and the time integral uses the trapezoid
    rule. No gradients."""
    grid = time_grid(steps, device=x0.device, dtype=x0.dtype)
    with torch.no_grad():
        traj = solve_ode(field, x0, grid, method, return_trajectory=True).trajectory  # (K+1, B, *D)
        chord = traj[-1] - traj[0]
        dev = torch.stack([
            (chord - field(traj[k], grid[k].expand(x0.shape[0]))).flatten(1).pow(2).sum(1)
            for k in range(steps + 1)
        ])  # (K+1, B)
        per_sample = torch.trapezoid(dev, grid, dim=0)
    return Straightness(value=per_sample.mean(), per_sample=per_sample, x1=traj[-1])
