"""The toy benchmark, the core's benchmark: ``modaflow bench toy --profile P``.

1. Sampler error against the exact Gaussian flow at NFE 1, 2, 4, ... (pathwise and W2),
   with the empirical convergence order of each ODE solver (:mod:`.solvers`).
2. ``solver_overhead_ratio``: ``solve_ode`` against a plain loop of model calls (and, on
   CUDA, CUDA-graph / torch.compile samplers against the eager loop).
3. Flows trained with the toy recipe (core ``fit``) on toy datasets: sliced Wasserstein and
   energy distance of Euler samples to held-out data against NFE, with baselines measured
   in the same run on the same data, seeds and noise: Heun at equal NFE, a model trained
   with the data parametrization (quick and larger profiles), and the real-data floor
   (a training subsample of the same size against the same held-out set).

Profiles: ``smoke`` (seconds; the tests run it), ``quick`` (a few minutes on 2 CPU cores),
``full`` (longer training, larger sets), ``gpu`` (full sizes on CUDA, bf16 training,
captured samplers). ``smoke`` and ``quick`` use one torch thread: these small networks run
fastest that way and are not slowed by other processes competing for the cores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from modaflow.core.training import FlowMatchingConfig, TrainerArgs
from modaflow.modalities.toy.metrics import energy_distance, mmd_rbf, random_directions, sliced_wasserstein
from modaflow.modalities.toy.recipe import ToyConfig, generate, load_data, restore, train

from . import report as R
from .harness import BenchResult, mean_ci95, progress, quiet_training, select_profile, torch_threads
from .solvers import SAMPLERS, OracleSettings, OverheadSettings, empirical_order, oracle_errors, solver_overhead

__all__ = ["ToyProfile", "PROFILES", "run"]


@dataclass(frozen=True)
class ToyProfile:
    """Sizes of one benchmark profile."""

    oracle: OracleSettings
    """Sizes of the Gaussian-oracle solver benchmark."""
    overhead: OverheadSettings
    """Sizes of the solver-overhead timing."""
    datasets: tuple[tuple[str, int], ...]
    """(toy dataset, dimension) pairs to train on."""
    train_steps: int
    """Optimiser steps per trained model."""
    n_train: int
    """Training samples per dataset."""
    hidden: int
    """Width of the residual MLP."""
    depth: int
    """Residual blocks of the MLP."""
    eval_n: int
    """Samples generated and held-out samples compared, per evaluation."""
    eval_nfes: tuple[int, ...]
    """NFEs of the metric-vs-NFE curves; the last one gets repeats and all metrics."""
    repeats: int
    """Sampling repeats (different noise seeds) for the mean and 95% interval at the top NFE."""
    data_param_baseline: bool
    """Also train the same network with the data parametrization."""
    threads: int
    """torch threads (0: leave torch's default)."""
    device: str = "cpu"
    """Where training and sampling run (the oracle and CPU timings always use the CPU)."""


_NFES = (1, 2, 4, 8, 16, 32, 64, 128)
PROFILES: dict[str, ToyProfile] = {
    "smoke": ToyProfile(
        OracleSettings(dim=2, n=512, nfes=(1, 2, 4, 8)), OverheadSettings(batch=64, steps=10, repeats=1),
        datasets=(("moons", 2),), train_steps=20, n_train=512, hidden=32, depth=1, eval_n=256,
        eval_nfes=(1, 4), repeats=2, data_param_baseline=False, threads=1,
    ),
    "quick": ToyProfile(
        OracleSettings(dim=8, n=4096, nfes=_NFES), OverheadSettings(repeats=7),
        datasets=(("moons", 2), ("gmm", 8), ("checkerboard", 2)), train_steps=1500, n_train=8192,
        hidden=128, depth=3, eval_n=2000, eval_nfes=(1, 2, 4, 8, 16, 32, 64), repeats=5,
        data_param_baseline=True, threads=1,
    ),
    "full": ToyProfile(
        OracleSettings(dim=16, n=20000, nfes=_NFES + (256,)), OverheadSettings(repeats=15),
        datasets=(("moons", 2), ("gmm", 8), ("checkerboard", 2), ("gaussian", 16), ("moons", 32)),
        train_steps=20000, n_train=50000, hidden=256, depth=4, eval_n=5000,
        eval_nfes=(1, 2, 4, 8, 16, 32, 64, 128), repeats=10, data_param_baseline=True, threads=0,
    ),
    "gpu": ToyProfile(
        OracleSettings(dim=16, n=20000, nfes=_NFES + (256,)), OverheadSettings(repeats=25),
        datasets=(("moons", 2), ("gmm", 8), ("checkerboard", 2), ("gaussian", 16), ("moons", 32)),
        train_steps=20000, n_train=50000, hidden=256, depth=4, eval_n=5000,
        eval_nfes=(1, 2, 4, 8, 16, 32, 64, 128), repeats=10, data_param_baseline=True, threads=0, device="cuda",
    ),
}




def _distances(x: torch.Tensor, ref: torch.Tensor, directions: torch.Tensor) -> dict[str, float]:
    return {"sw": sliced_wasserstein(x, ref, directions=directions), "energy": energy_distance(x, ref)}


def _train_eval(p: ToyProfile, name: str, dim: int, out: Path, seed: int) -> dict:
    """Train the method (velocity) and, if asked, the data-parametrization baseline on one
    dataset; evaluate both and the Heun / real-data baselines on the same held-out set."""
    fm = FlowMatchingConfig(lr=2e-3, max_steps=p.train_steps, batch_size=256, ema_decay=0.995, seed=seed,
                            log_every=max(1, p.train_steps // 50), ckpt_every=p.train_steps)
    cfg = ToyConfig(data=name, dim=dim, n_train=p.n_train, n_test=p.eval_n, data_seed=seed,
                    hidden=p.hidden, depth=p.depth, fm=fm)
    variants = {"velocity": cfg}
    if p.data_param_baseline:
        variants["data_param"] = cfg.replace(fm=fm.replace(parametrization="data"))
    targs = TrainerArgs(accelerator="gpu" if p.device == "cuda" else "cpu", devices=1,
                        precision="bf16-mixed" if p.device == "cuda" else "32-true")
    ref = load_data(cfg, "test")
    directions = random_directions(512, dim, torch.Generator().manual_seed(seed))
    key = f"{name}{dim}d"
    res: dict = {"curves": {}, "losses": {}, "metrics": {}, "baselines": {}, "timings": {}}
    models = {}
    for variant, vcfg in variants.items():
        start = time.perf_counter()
        with quiet_training():
            summary = train(vcfg, targs, out / "runs" / f"{key}-{variant}", progress=False)
        res["timings"][f"train.{key}.{variant}_s"] = time.perf_counter() - start
        res["losses"][f"{key} {variant}"] = tuple(zip(*summary["history"])) if summary["history"] else ((), ())
        _, path, model = restore(out / "runs" / f"{key}-{variant}")
        models[variant] = (path, model.to(p.device))
    samplers = {"euler": ("velocity", "euler"), "heun": ("velocity", "heun")}
    if "data_param" in models:
        samplers["data_param"] = ("data_param", "euler")

    def draw(label: str, nfe: int, seed_: int) -> torch.Tensor | None:
        variant, solver = samplers[label]
        steps, rem = divmod(nfe, 2 if solver == "heun" else 1)
        path, model = models[variant]
        return None if rem or steps < 1 else generate(model, variants[variant], path, p.eval_n, steps, solver, seed_).cpu()

    sw_curves: dict[str, tuple[list, list]] = {label: ([], []) for label in samplers}  # SW only: cheap
    for nfe in progress(p.eval_nfes[:-1], f"evaluate {key}"):
        for label in samplers:
            x = draw(label, nfe, seed)
            if x is not None:
                sw_curves[label][0].append(nfe)
                sw_curves[label][1].append(sliced_wasserstein(x, ref, directions=directions))
    top = p.eval_nfes[-1]
    for label in samplers:  # the top NFE: repeats over noise seeds, mean and 95% interval
        draws = [draw(label, top, seed + r) for r in range(p.repeats)]
        dists = [_distances(x, ref, directions) for x in draws]
        summary = {f"{key}.{m}@nfe{top}": mean_ci95(d[m] for d in dists) for m in ("sw", "energy")}
        summary[f"{key}.mmd@nfe{top}"] = mmd_rbf(draws[0], ref)
        summary.update({f"{key}.sw@nfe{n}": v for n, v in zip(*sw_curves[label])})
        sw_curves[label][0].append(top)
        sw_curves[label][1].append(dists[0]["sw"])
        (res["metrics"] if label == "euler" else res["baselines"].setdefault(label, {})).update(summary)
        if label == "euler":
            res["samples"] = draws[0]
    train_x = load_data(cfg.replace(n_train=p.eval_n), "train")  # real vs real: the metrics' floor
    floor = _distances(train_x, ref, directions)
    res["baselines"].setdefault("real_data_floor", {}).update(
        {f"{key}.sw": floor["sw"], f"{key}.energy": floor["energy"], f"{key}.mmd": mmd_rbf(train_x, ref)})
    res["curves"][f"{key}.sw_vs_nfe"] = {
        "xlabel": "NFE", "ylabel": "sliced W2 to held-out data", "floor": floor["sw"],
        "series": {label: {"x": xs, "y": ys} for label, (xs, ys) in sw_curves.items()},
    }
    res["ref"] = ref
    return res


def _plots(out: Path, oracle: dict, trained: dict[str, dict]) -> list[str]:
    """Write the PNGs; returns their file names."""
    files = []
    for kind, label in (("path_error", "rms |x - X(0,1,x0)|"), ("w2", "W2 to N(mu, Sigma)")):
        curves = {s: (oracle["nfes"], oracle[kind][s]) for s in SAMPLERS if any(v is not None for v in oracle[kind][s])}
        if kind == "w2":
            curves["exact flow (MC floor)"] = (oracle["nfes"], [oracle["w2_floor"]] * len(oracle["nfes"]))
        files.append(R.plot_curves(out / f"oracle_{kind}.png", curves, f"Gaussian oracle: {kind} vs NFE", "NFE", label).name)
    losses = {k: v for res in trained.values() for k, v in res["losses"].items()}
    files.append(R.plot_loss(out / "loss.png", losses, "training loss").name)
    for key, res in trained.items():
        files.append(R.plot_scatter(out / f"{key}_samples.png", res["ref"], res["samples"], f"{key}: Euler samples").name)
        c = res["curves"][f"{key}.sw_vs_nfe"]
        curves = {lab: (s["x"], s["y"]) for lab, s in c["series"].items()}
        xs = c["series"]["euler"]["x"]
        curves["real-data floor"] = (xs, [c["floor"]] * len(xs))
        files.append(R.plot_curves(out / f"{key}_sw_vs_nfe.png", curves, f"{key}: sliced W2 vs NFE", "NFE", "SW2").name)
    return files


def run(profile: str, out_dir: str | Path, seed: int = 0) -> BenchResult:
    """Run the toy benchmark ``profile`` into ``out_dir``: ``results.json``, ``report.md``
    and PNG plots. Returns the result."""
    p = select_profile(PROFILES, profile)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(p.threads):
        return _run(profile, p, out, seed)


def _run(profile: str, p: ToyProfile, out: Path, seed: int) -> BenchResult:
    t0 = time.perf_counter()
    metrics, baselines, timings, curves = {}, {}, {}, {}
    oracle = oracle_errors(p.oracle, seed)
    timings["oracle_s"] = time.perf_counter() - t0
    top = max(oracle["nfes"])
    for s in SAMPLERS:
        errs = oracle["path_error"][s]
        if any(e is not None for e in errs):
            metrics[f"oracle.{s}.order"] = empirical_order(oracle["nfes"], errs)
            metrics[f"oracle.{s}.path_error@nfe{top}"] = errs[-1]
        metrics[f"oracle.{s}.w2@nfe{top}"] = oracle["w2"][s][-1]
    baselines["exact_flow_map"] = {"oracle.w2": oracle["w2_floor"]}
    for kind in ("path_error", "w2"):
        curves[f"oracle.{kind}_vs_nfe"] = {"xlabel": "NFE", "ylabel": kind,
                                           "series": {s: {"x": oracle["nfes"], "y": oracle[kind][s]} for s in SAMPLERS}}
    t1 = time.perf_counter()
    over = solver_overhead(p.overhead, seed)
    timings["overhead_s"] = time.perf_counter() - t1
    timings.update(over["timings"])
    metrics.update(over["metrics"])
    trained = {}
    for name, dim in p.datasets:
        res = _train_eval(p, name, dim, out, seed)
        trained[f"{name}{dim}d"] = res
        metrics.update(res["metrics"])
        for b, ms in res["baselines"].items():
            baselines.setdefault(b, {}).update(ms)
        timings.update(res["timings"])
        curves.update(res["curves"])
    from .toy_onestep import run_onestep  # issue 3: one-step table, scaling, steering (imports this module)

    extra = run_onestep(profile, list(trained), out, seed, p.device)
    metrics.update(extra["metrics"])
    timings.update(extra["timings"])
    curves.update(extra["curves"])
    plots = _plots(out, oracle, trained) + extra["plots"]
    timings["total_s"] = time.perf_counter() - t0
    notes = over["notes"] + extra["notes"] + [
        f"torch threads: {torch.get_num_threads()}; device: {p.device}",
        "oracle: exact velocity of N(mu, Sigma) on the linear path, float64; DDIM (eta = 0) equals Euler on this path",
        "trained: method = Euler on the velocity model (EMA weights); baselines share data, seeds and initial noise",
        f"'<data>.<metric>@nfe{p.eval_nfes[-1]}' is the mean and 95% t-interval over {p.repeats} noise seeds; "
        "other NFEs are one draw; real_data_floor compares a training subsample of the same size",
    ]
    result = BenchResult.create("toy", profile, seed, metrics=metrics, baselines=baselines, timings=timings,
                                curves=curves, plots=plots, notes=notes)
    result.write(out)
    R.write_report(result, out)
    return result
