"""Solver benchmarks that need no training: the error of each sampler against the exact
Gaussian flow, and the overhead of the solver loop against a plain loop of model calls.

1. :func:`oracle_errors`: data ``N(mu, Sigma)`` (the toy ``gaussian`` dataset) on the linear
   path, whose exact velocity and flow map :class:`~modaflow.core.gaussian.GaussianOracle`
   gives. Every sampler integrates the *exact* velocity from the same ``x0`` at NFE
   1, 2, 4, ...; the pathwise error ``rms |x - X(0, 1, x0)|`` isolates discretisation
   error, the Gaussian W2 of the sampled law against ``p_1`` (Dowson & Landau 1982) also
   covers the stochastic sampler. Computed in float64, so orders are visible down to 1e-10.
2. :func:`solver_overhead`: ``solve_ode`` with N Euler steps against N model calls in a
   plain Python loop, same inputs, interleaved repeats, median times; on CUDA also the
   CUDA-graph captured and ``torch.compile``d samplers against the eager loop, with a
   check that their results equal the eager ones (reported, never asserted).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from modaflow.core.gaussian import GaussianOracle
from modaflow.core.ode import ODE_STAGES, solve_ode, time_grid
from modaflow.core.paths import LinearPath
from modaflow.modalities.toy.data import gaussian_params
from modaflow.modalities.toy.models import PlainMLP
from modaflow.modalities.toy.recipe import SOLVERS, run_sampler

from .harness import median_times, progress

__all__ = ["OracleSettings", "OverheadSettings", "SAMPLERS", "oracle_errors", "solver_overhead", "empirical_order"]

SAMPLERS: tuple[str, ...] = SOLVERS  # the ODE methods, then "em" and "ddim"
STAGES: dict[str, int] = {**ODE_STAGES, "em": 1, "ddim": 1}


@dataclass(frozen=True)
class OracleSettings:
    """Sizes of the oracle benchmark."""

    dim: int
    """Data dimension of the Gaussian."""
    n: int
    """Samples per solve (the W2 estimate has a Monte-Carlo floor ~ dim / sqrt(n))."""
    nfes: tuple[int, ...]
    """Numbers of function evaluations (a sampler runs NFE / stages steps when that divides)."""
    em_diffusion: float = 1.0
    """Euler-Maruyama diffusion g(t) = em_diffusion * sigma(t)."""


@dataclass(frozen=True)
class OverheadSettings:
    """Sizes of the solver-overhead benchmark (REFERENCE.md sec. 8: 3 layers, width 256,
    64-d, batch 512, 100 steps)."""

    dim: int = 64
    width: int = 256
    layers: int = 3
    batch: int = 512
    steps: int = 100
    repeats: int = 7
    gpu_batch: int = 4096


def empirical_order(nfes: list[int], errors: list[float]) -> float:
    """Convergence order from the last two points: ``-log(e2 / e1) / log(n2 / n1)``."""
    pts = [(n, e) for n, e in zip(nfes, errors) if e is not None and e > 0]
    if len(pts) < 2:
        return math.nan
    (n1, e1), (n2, e2) = pts[-2], pts[-1]
    return -math.log(e2 / e1) / math.log(n2 / n1)


def oracle_errors(s: OracleSettings, seed: int) -> dict:
    """Errors of every sampler in :data:`SAMPLERS` against the exact flow.

    Returns ``{"path_error": {sampler: [rms error or None per NFE]}, "w2": {sampler: [...]},
    "nfes": [...], "w2_floor": W2 of exact flow-map samples (the Monte-Carlo floor)}``;
    the pathwise error of the stochastic sampler ``em`` is None (it follows no ODE path).
    """
    mean, cov = gaussian_params(s.dim)
    oracle = GaussianOracle(mean, cov, LinearPath())
    x0 = torch.randn(s.n, s.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = oracle.flow_map(0.0, 1.0, x0)
    out: dict = {"nfes": list(s.nfes), "path_error": {}, "w2": {}, "w2_floor": oracle.w2_to(exact)}
    for sampler in progress(SAMPLERS, "oracle solvers"):
        errs, w2s = [], []
        for nfe in s.nfes:
            steps, rem = divmod(nfe, STAGES[sampler])
            if rem or steps < 1:
                errs.append(None)
                w2s.append(None)
                continue
            grid = time_grid(steps, dtype=x0.dtype)
            gen = torch.Generator().manual_seed(seed + 1)
            x = run_sampler(oracle.velocity, "velocity", oracle.path, x0, grid, sampler, s.em_diffusion, gen)
            err = (x - exact).pow(2).sum(1).mean().sqrt().item()
            errs.append(None if sampler == "em" else err)
            w2s.append(oracle.w2_to(x))
        out["path_error"][sampler], out["w2"][sampler] = errs, w2s
    return out


def _plain_euler(model: torch.nn.Module, x: Tensor, ts: list[Tensor], h: float) -> Tensor:
    """The baseline: N model calls in a Python loop, ``x <- x + h model(x, t_k)``."""
    for t in ts:
        x = x + h * model(x, t)
    return x


def solver_overhead(s: OverheadSettings, seed: int) -> dict:
    """Median times of ``solve_ode`` (Euler, ``steps`` steps) and of the plain loop on CPU,
    their ratio, and on CUDA the captured / compiled samplers against the eager loop.

    Returns ``{"timings": {...}, "metrics": {...}, "notes": [...]}``."""
    torch.manual_seed(seed)
    model = PlainMLP(s.dim, s.width, s.layers).eval().requires_grad_(False)
    timings, metrics, notes = {}, {}, []

    def measure(device: str, batch: int) -> tuple[dict, Tensor, Tensor, Tensor]:
        net = model.to(device)
        x = torch.randn(batch, s.dim, generator=torch.Generator().manual_seed(seed)).to(device)
        grid = time_grid(s.steps, device=device)
        ts = [grid[k].expand(batch) for k in range(s.steps)]
        h = 1.0 / s.steps
        sync = torch.cuda.synchronize if device == "cuda" else None
        with torch.no_grad():
            fns = {"solve_ode": lambda: solve_ode(net, x, grid, "euler"), "plain_loop": lambda: _plain_euler(net, x, ts, h)}
            times = median_times(fns, s.repeats, sync)
            eager = solve_ode(net, x, grid, "euler").x
            plain = _plain_euler(net, x, ts, h)
        return times, x, grid, eager - plain

    times, _, _, diff = measure("cpu", s.batch)
    timings.update({"cpu_solve_ode_s": times["solve_ode"], "cpu_plain_loop_s": times["plain_loop"]})
    timings["solver_overhead_ratio"] = times["solve_ode"] / times["plain_loop"]
    metrics["overhead.cpu_max_abs_diff_vs_plain"] = diff.abs().max().item()
    if torch.cuda.is_available():
        _cuda_overhead(model, s, seed, measure, timings, metrics, notes)
    else:
        notes.append("no CUDA device: the CUDA-graph / torch.compile sampler comparison did not run")
    return {"timings": timings, "metrics": metrics, "notes": notes}


def _cuda_overhead(model, s: OverheadSettings, seed: int, measure, timings: dict, metrics: dict, notes: list) -> None:
    from modaflow.core.graph import CapturedSampler, compile_sampler

    times, x, grid, diff = measure("cuda", s.gpu_batch)
    timings.update({"cuda_solve_ode_s": times["solve_ode"], "cuda_plain_loop_s": times["plain_loop"]})
    timings["cuda_solver_overhead_ratio"] = times["solve_ode"] / times["plain_loop"]
    metrics["overhead.cuda_max_abs_diff_vs_plain"] = diff.abs().max().item()
    net = model.to("cuda")
    with torch.no_grad():
        eager = solve_ode(net, x, grid, "euler").x
    variants = {"cuda_graph": lambda: CapturedSampler(net, x, grid, "euler"),
                "compile": lambda: compile_sampler(net, grid, "euler")}
    for name, make in variants.items():
        try:
            start = time.perf_counter()
            fn = make()
            with torch.no_grad():
                out = fn(x)  # compiles on the first call
            torch.cuda.synchronize()
            timings[f"cuda_{name}_setup_s"] = time.perf_counter() - start
            with torch.no_grad():
                t = median_times({name: lambda: fn(x)}, s.repeats, torch.cuda.synchronize)[name]
        except Exception as e:  # report, never fail the benchmark on an optional fast path
            notes.append(f"{name} sampler failed: {type(e).__name__}: {e}")
            continue
        timings[f"cuda_{name}_s"] = t
        timings[f"cuda_{name}_vs_eager_ratio"] = t / times["solve_ode"]
        metrics[f"overhead.{name}_max_abs_diff_vs_eager"] = (out - eager).abs().max().item()
        metrics[f"overhead.{name}_bit_identical"] = float(torch.equal(out, eager))
