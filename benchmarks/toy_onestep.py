"""The one-step table of the toy benchmark (issue 3): few-step generators against their
teacher, measured in the same run on the same data, noise seeds, batch and device.

Per dataset, the teacher is the velocity flow the toy benchmark has just trained (EMA
weights); its Euler sampler runs at 1, 2, 4, 8, 32 and 128 NFE. Against it:

* flow maps ``X(s, t, x)`` (:mod:`modaflow.core.flow_maps`) trained with each loss of
  :mod:`modaflow.core.flow_map_losses` (lagrangian, eulerian, progressive self-distillation;
  ``teacher``: distilled from the teacher's ODE), sampled at 1, 2 and 4 steps;
* reflow (the teacher's own noise/sample pairs, student started from the teacher) and an
  OT-CFM flow (minibatch exact-OT coupling, from scratch), Euler at 1, 2 and 4 steps;
* W-Flow, a one-step generator trained on the Sinkhorn divergence's gradient flow.

Metrics: sliced W2 and energy distance of ``eval_n`` samples to the held-out set (mean and 95%
interval over noise seeds), log-likelihood of held-out points by the instantaneous change of
variables (flows only: teacher, reflow, OT-CFM), samples per second (median over interleaved
repeats, one batch of ``eval_n``), the teacher's conservativity report, and the
inference-time scaling and steering rows of :mod:`.toy_scaling`. Goal ratios (reported,
never asserted): ``sw_ratio_vs_teacher128`` of the best flow map at 1 step (goal <= 1.2) and
its ``speedup_vs_teacher128`` (goal >= 50).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from modaflow.core.diagnostics import conservativity_report, path_samples
from modaflow.core.flow_maps import FlowMap, sample_flow_map
from modaflow.core.io import atomic_write_text
from modaflow.core.likelihood import LikelihoodConfig, log_likelihood
from modaflow.core.nn.two_time import TwoTimeMLP, TwoTimeMLPConfig
from modaflow.core.ode import solve_ode, time_grid
from modaflow.core.parametrizations import as_velocity_field
from modaflow.core.reflow import reflow_pairs, train_reflow
from modaflow.core.training import FlowMapConfig, FlowMapModule, TrainerArgs, fit
from modaflow.core.wflow import ResidualGenerator, WFlowConfig, train_wflow
from modaflow.modalities.toy import data as D
from modaflow.modalities.toy.metrics import energy_distance, random_directions, sliced_wasserstein
from modaflow.modalities.toy.models import build_model
from modaflow.modalities.toy.recipe import ToyConfig, load_data, restore, train

from . import report as R
from .harness import mean_ci95, median_times, progress, quiet_training
from .toy_scaling import ScalingSettings, scaling_table, steering_rows

__all__ = ["OneStepSettings", "ONESTEP_PROFILES", "run_onestep", "onestep_table"]

Sampler = Callable[[Tensor, int], Tensor]
"""``sampler(x0 (B, D), nfe) -> x1 (B, D)``."""


@dataclass(frozen=True)
class OneStepSettings:
    """Sizes of the one-step table of one profile."""

    datasets: tuple[str, ...]
    """Keys (``moons2d``) of the profile's trained datasets to run the table on."""
    losses: tuple[str, ...]
    """Flow-map rows to train, keys of :data:`MAP_ROWS`."""
    train_steps: int
    """Optimiser steps of every new model (flow maps, reflow, OT-CFM, W-Flow)."""
    distill_steps: int
    """Teacher ODE steps (midpoint) per target of the teacher-distilled flow map."""
    reflow_pairs: int
    """Noise/sample pairs drawn from the teacher for reflow (0 = no reflow row)."""
    ot_cfm: bool
    """Train the OT-CFM row."""
    wflow_batch: int
    """W-Flow particles per step (0 = no W-Flow row)."""
    repeats: int
    """Noise seeds per (method, NFE) for the mean and 95% interval."""
    timing_repeats: int
    """Interleaved timing rounds (the median is reported)."""
    likelihood_n: int
    """Held-out points whose log-likelihood is computed."""
    likelihood_steps: int
    """RK4 steps of the likelihood ODE (exact divergence)."""
    conservativity_n: int
    """Points per time of the conservativity report."""
    scaling: ScalingSettings
    """Sizes of the inference-time scaling and steering rows."""


TEACHER_NFES = (1, 2, 4, 8, 32, 128)
FEW_NFES = (1, 2, 4)
CONSERVATIVITY_TIMES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
_LOSSES = ("lagrangian", "eulerian", "progressive", "teacher", "lagrangian_teacher")
MAP_ROWS: dict[str, tuple[str, bool, str]] = {
    "lagrangian": ("lagrangian", False, "teacher"),
    "eulerian": ("eulerian", False, "teacher"),
    "progressive": ("progressive", False, "teacher"),
    "teacher": ("teacher", True, "teacher"),
    "lagrangian_teacher": ("lagrangian", True, "target"),
}
"""Flow-map row -> (loss, distil from the teacher's velocity, stop_gradient mode). The
Lagrangian residual with the teacher's velocity and the MeanFlow-form stop-gradient
(``target``) is the variant that trained most steadily in the helpers' 3000-step runs."""
ONESTEP_PROFILES: dict[str, OneStepSettings] = {
    "smoke": OneStepSettings(("moons2d",), _LOSSES, train_steps=10, distill_steps=2, reflow_pairs=256, ot_cfm=True,
                             wflow_batch=64, repeats=1, timing_repeats=1, likelihood_n=64, likelihood_steps=4,
                             conservativity_n=32, scaling=ScalingSettings(64, (1, 2, 4), 4, 4, 64, 8)),
    "quick": OneStepSettings(("moons2d",), _LOSSES, train_steps=600, distill_steps=4, reflow_pairs=8192, ot_cfm=True,
                             wflow_batch=256, repeats=3, timing_repeats=5, likelihood_n=1000, likelihood_steps=32,
                             conservativity_n=512, scaling=ScalingSettings(512, (1, 2, 4, 8, 16), 20, 8, 2000, 50)),
    "full": OneStepSettings(("moons2d", "gmm8d", "checkerboard2d", "gaussian16d", "moons32d"), _LOSSES,
                            train_steps=20000, distill_steps=16, reflow_pairs=50000, ot_cfm=True, wflow_batch=1024,
                            repeats=5, timing_repeats=11, likelihood_n=2000, likelihood_steps=64,
                            conservativity_n=1024, scaling=ScalingSettings(4096, (1, 2, 4, 8, 16, 32), 20, 16, 4000, 100)),
}
ONESTEP_PROFILES["gpu"] = ONESTEP_PROFILES["full"]


def _data_log_prob(cfg: ToyConfig, x: Tensor) -> Tensor | None:
    """True log-density of the gaussian and gmm datasets at ``x`` ``(N, D)`` (None otherwise)."""
    x = x.double().cpu()
    if cfg.data == "gaussian":
        mean, cov = D.gaussian_params(cfg.dim)
        return torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    if cfg.data == "gmm":  # 8 equal components N(3 F (cos, sin)(2 pi k / 8), 0.35^2 I), see data.py
        angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
        means = 3.0 * torch.stack([torch.cos(angle), torch.sin(angle)], -1) @ D.orthonormal_frame(cfg.dim).T
        sq = (x[:, None, :] - means[None]).pow(2).sum(-1)
        comp = -0.5 * sq / 0.35**2 - cfg.dim * math.log(0.35 * math.sqrt(2 * math.pi))
        return torch.logsumexp(comp, 1) - math.log(8)
    return None


def _flow_sampler(field) -> Sampler:
    return lambda x0, nfe: solve_ode(field, x0, time_grid(nfe, device=x0.device), "euler").x


def _train_models(s: OneStepSettings, cfg: ToyConfig, teacher, path, run_dir: Path, targs: TrainerArgs,
                  seed: int, device: str) -> tuple[dict[str, tuple[Sampler, tuple[int, ...]]], dict, dict[str, float]]:
    """Train every row's model; returns ``(samplers {name: (sampler, nfes)}, flows {name: field},
    timings)``."""
    teacher_field = as_velocity_field(teacher, cfg.fm.parametrization, path)
    samplers = {"teacher": (_flow_sampler(teacher_field), TEACHER_NFES)}
    flows, timings = {"teacher": teacher_field}, {}
    train_x = load_data(cfg, "train")
    fm = cfg.fm.replace(max_steps=s.train_steps, ckpt_every=s.train_steps, log_every=max(1, s.train_steps // 20))
    key = run_dir.name.removeprefix("onestep-")
    for row in progress(s.losses, f"flow maps {key}"):
        loss, distil, stop_gradient = MAP_ROWS[row]
        start = time.perf_counter()
        net = TwoTimeMLP(TwoTimeMLPConfig(dim=cfg.dim, hidden=cfg.hidden, depth=cfg.depth,
                                          time_embed_dim=cfg.time_embed_dim))
        mcfg = FlowMapConfig.from_dict({**fm.to_dict(), "loss": loss, "teacher_steps": s.distill_steps,
                                        "teacher_method": "midpoint", "stop_gradient": stop_gradient})
        module = FlowMapModule(FlowMap(net), path, mcfg, teacher=teacher_field if distil else None)
        with quiet_training():
            fit(module, D.ToyDataModule(train_x, fm.batch_size, fm.seed), run_dir / f"map-{row}",
                targs, progress=False)
        flow_map = module.flow_map().to(device)
        samplers[f"map_{row}"] = (lambda x0, nfe, m=flow_map: sample_flow_map(m, x0, time_grid(nfe, device=x0.device)).x,
                          FEW_NFES)
        timings[f"onestep.{key}.map_{row}.train_s"] = time.perf_counter() - start
    if s.reflow_pairs:
        start = time.perf_counter()
        pairs = reflow_pairs(teacher_field, s.reflow_pairs, (cfg.dim,), steps=32, method="rk4", seed=seed + 100,
                             device=device)
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        with quiet_training():
            run = train_reflow(student, pairs, fm, run_dir / "reflow", targs)
        flows["reflow"] = run.module.velocity_field()
        samplers["reflow"] = (_flow_sampler(flows["reflow"]), FEW_NFES)
        timings[f"onestep.{key}.reflow.train_s"] = time.perf_counter() - start
    if s.ot_cfm:
        start = time.perf_counter()
        with quiet_training():
            train(cfg.replace(fm=fm.replace(coupling="exact_ot")), targs, run_dir / "ot_cfm", progress=False)
        _, ot_path, ot_model = restore(run_dir / "ot_cfm")
        flows["ot_cfm"] = as_velocity_field(ot_model.to(device), cfg.fm.parametrization, ot_path)
        samplers["ot_cfm"] = (_flow_sampler(flows["ot_cfm"]), FEW_NFES)
        timings[f"onestep.{key}.ot_cfm.train_s"] = time.perf_counter() - start
    if s.wflow_batch:
        start = time.perf_counter()
        torch.manual_seed(seed)  # the generator's initial weights
        gen = ResidualGenerator(build_model(cfg.dim, cfg.hidden, cfg.depth, cfg.time_embed_dim)).to(device)
        train_wflow(gen, train_x.to(device), WFlowConfig(blur=0.05, batch_size=s.wflow_batch, max_steps=s.train_steps,
                                                         lr=1e-3, seed=seed))
        samplers["wflow"] = (lambda x0, nfe, g=gen: g(x0), (1,))
        timings[f"onestep.{key}.wflow.train_s"] = time.perf_counter() - start
    return samplers, flows, timings


def _evaluate(s: OneStepSettings, samplers: dict, ref: Tensor, n: int, key: str, seed: int,
              directions: Tensor, device: str) -> tuple[dict, dict, dict]:
    """Distances of every (method, NFE) over ``s.repeats`` noise seeds; samples/s; first-seed samples."""
    dim = ref.shape[1]
    noise = [torch.randn(n, dim, generator=torch.Generator().manual_seed(seed + r)).to(device) for r in range(s.repeats)]
    metrics, shown = {}, {}
    with torch.no_grad():
        for name, (sampler, nfes) in progress(samplers.items(), f"evaluate one-step {key}", total=len(samplers)):
            for nfe in nfes:
                draws = [sampler(x0, nfe).cpu() for x0 in noise]
                metrics[f"onestep.{key}.{name}.sw@nfe{nfe}"] = mean_ci95(
                    sliced_wasserstein(x, ref, directions=directions) for x in draws)
                metrics[f"onestep.{key}.{name}.energy@nfe{nfe}"] = mean_ci95(energy_distance(x, ref) for x in draws)
                if nfe == nfes[0] or nfe == 128:
                    shown[f"{name}@{nfe}"] = draws[0]
        fns = {f"{name}@{nfe}": (lambda sm=sampler, k=nfe: sm(noise[0], k))
               for name, (sampler, nfes) in samplers.items() for nfe in nfes}
        sync = torch.cuda.synchronize if device == "cuda" else None
        secs = median_times(fns, s.timing_repeats, sync)
    rate = {label: n / max(t, 1e-12) for label, t in secs.items()}
    return metrics, rate, shown


def _onestep_dataset(s: OneStepSettings, key: str, out: Path, seed: int, device: str) -> dict:
    targs = TrainerArgs(accelerator="gpu" if device == "cuda" else "cpu", devices=1)
    cfg, path, teacher = restore(out / "runs" / f"{key}-velocity")
    teacher = teacher.to(device)
    ref = load_data(cfg, "test")
    directions = random_directions(512, cfg.dim, torch.Generator().manual_seed(seed))
    samplers, flows, timings = _train_models(s, cfg, teacher, path, out / "runs" / f"onestep-{key}", targs, seed, device)
    metrics, rate, shown = _evaluate(s, samplers, ref, ref.shape[0], key, seed, directions, device)
    for label, r in rate.items():
        name, nfe = label.split("@")
        timings[f"onestep.{key}.{name}.samples_per_s" + ("" if nfe == "1" else f"@nfe{nfe}")] = r
    mean = lambda m: m["mean"]  # noqa: E731
    notes = []
    sw_t128 = mean(metrics[f"onestep.{key}.teacher.sw@nfe128"])
    for group, names in (("best_flow_map", [f"map_{n}" for n in s.losses]),
                         ("best_one_step", [n for n in samplers if n != "teacher"])):
        if not names:
            continue
        best = min(names, key=lambda n: mean(metrics[f"onestep.{key}.{n}.sw@nfe1"]))
        metrics[f"onestep.{key}.{group}.sw@nfe1"] = mean(metrics[f"onestep.{key}.{best}.sw@nfe1"])
        metrics[f"onestep.{key}.{group}.sw_ratio_vs_teacher128"] = metrics[f"onestep.{key}.{group}.sw@nfe1"] / sw_t128
        metrics[f"onestep.{key}.{group}.speedup_vs_teacher128"] = rate[f"{best}@1"] / rate["teacher@128"]
        notes.append(f"{key}: {group} = {best}")
    # log-likelihood of held-out points (flows only), and the true log-density where known
    test = ref[: s.likelihood_n].to(device)
    lcfg = LikelihoodConfig(steps=s.likelihood_steps, method="rk4",
                            t1=0.999 if cfg.fm.parametrization in ("data", "score") else 1.0)
    for name, field in flows.items():
        with torch.no_grad():  # with gradients on, log_likelihood keeps every step's double-backward graph (8 GB here)
            metrics[f"onestep.{key}.{name}.loglik"] = mean_ci95(log_likelihood(field, test, lcfg).log_prob.tolist())
    true = _data_log_prob(cfg, test)
    if true is not None:
        metrics[f"onestep.{key}.data.loglik"] = mean_ci95(true.tolist())
    # conservativity of the teacher's field
    g = torch.Generator(device).manual_seed(seed)
    xs = path_samples(path, ref[: s.conservativity_n].to(device), CONSERVATIVITY_TIMES, g)
    rep = conservativity_report(flows["teacher"], xs, CONSERVATIVITY_TIMES, n_probes=8, generator=g,
                                radius=0.1, n_points=16)
    rows = rep.rows()
    for row in rows:
        metrics[f"conservativity.{key}.teacher.asymmetry@t{row['t']:g}"] = row["asymmetry"]
        metrics[f"conservativity.{key}.teacher.circulation@t{row['t']:g}"] = row["circulation"]
    curves = {f"conservativity.{key}.teacher": {
        "xlabel": "t", "ylabel": "|J - J^T|_F / |J|_F", "series": {
            c: {"x": [r["t"] for r in rows], "y": [r[c] for r in rows], "stderr": [r[c + "_stderr"] for r in rows]}
            for c in ("asymmetry", "circulation")}}}
    curves[f"onestep.{key}.sw_vs_nfe"] = {"xlabel": "NFE", "ylabel": "sliced W2 to held-out data", "series": {
        name: {"x": list(nfes), "y": [mean(metrics[f"onestep.{key}.{name}.sw@nfe{k}"]) for k in nfes]}
        for name, (_, nfes) in samplers.items()}}
    start = time.perf_counter()
    scaled = scaling_table(flows["teacher"], path, ref.to(device), s.scaling, key, seed, directions)
    timings[f"scaling.{key}_s"] = time.perf_counter() - start
    metrics.update(scaled["metrics"])
    curves.update(scaled["curves"])
    return {"metrics": metrics, "timings": timings, "curves": curves, "shown": shown, "ref": ref, "notes": notes}


def _plots(out: Path, key: str, res: dict) -> list[str]:
    files = []
    shown, ref = res["shown"], res["ref"]
    plt = R._pyplot()
    panels = [("held-out data", ref), *shown.items()]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, (label, x) in zip(axes.flat, panels):
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        ax.set_title(label, fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{key}: samples per method (method@NFE)")
    files.append(R._save(fig, out / f"onestep_{key}_samples.png").name)
    for curve, fname, title, ylabel, log in (
        (f"onestep.{key}.sw_vs_nfe", f"onestep_{key}_sw_vs_nfe.png", f"{key}: sliced W2 vs NFE", "SW2", True),
        (f"conservativity.{key}.teacher", f"conservativity_{key}.png", f"{key}: teacher conservativity vs t",
         "relative asymmetry / circulation", False),
        (f"scaling.{key}.reward_vs_nfe", f"scaling_{key}.png", f"{key}: inference-time scaling", "mean reward", False),
    ):
        c = res["curves"][curve]
        lines = {name: (v["x"], v["y"]) for name, v in c["series"].items()}
        if log:
            plot = R.plot_curves(out / fname, lines, title, c["xlabel"], ylabel)
        else:
            plot = R.plot_curves(out / fname, lines, title, c["xlabel"], ylabel, log=False)
        files.append(plot.name)
    return files


def onestep_table(key: str, metrics: dict, timings: dict) -> str:
    """Markdown table of the one-step rows of ``key``: per (method, NFE) the sliced W2 and energy
    distance (mean ± 95% interval), samples per second and the log-likelihood where defined."""
    pre = f"onestep.{key}."
    rows = []
    for name in dict.fromkeys(k[len(pre):].split(".")[0] for k in metrics if k.startswith(pre)):
        for nfe in TEACHER_NFES:
            sw = metrics.get(f"{pre}{name}.sw@nfe{nfe}")
            if sw is None or name.startswith("best_"):
                continue
            rate = timings.get(f"{pre}{name}.samples_per_s" + ("" if nfe == 1 else f"@nfe{nfe}"))
            ll = metrics.get(f"{pre}{name}.loglik") if nfe == 1 else None
            rows.append((name, str(nfe), R.format_metric(sw), R.format_metric(metrics[f"{pre}{name}.energy@nfe{nfe}"]),
                         "n/a" if rate is None else f"{rate:.3g}", "" if ll is None else R.format_metric(ll)))
    return R._table(("method", "NFE", "sliced W2", "energy", "samples/s", "log-lik (nats)"), rows, markdown=True)


def run_onestep(profile: str, keys: list[str], out: Path, seed: int, device: str) -> dict:
    """The one-step, conservativity, scaling and steering rows for the datasets ``keys`` the toy
    benchmark has trained (teacher runs under ``out/runs/<key>-velocity``); returns
    ``{"metrics", "timings", "curves", "plots", "notes"}`` to merge into the toy result."""
    s = ONESTEP_PROFILES[profile]
    metrics, timings, curves, plots, notes = {}, {}, {}, [], []
    start = time.perf_counter()
    for key in [k for k in s.datasets if k in keys]:
        res = _onestep_dataset(s, key, out, seed, device)
        notes += res["notes"]
        metrics.update(res["metrics"])
        timings.update(res["timings"])
        curves.update(res["curves"])
        plots += _plots(out, key, res)
        lines = [f"# One-step table: {key} ({profile})", "", onestep_table(key, res["metrics"], res["timings"]), ""]
        lines += [f"- {k.removeprefix(f'onestep.{key}.')}: {R.format_metric(v)}" for k, v in res["metrics"].items()
                  if k.startswith(f"onestep.{key}.best_")]
        atomic_write_text(out / f"onestep_{key}.md", "\n".join(lines) + "\n")
    metrics.update(steering_rows(s.scaling, seed))
    timings["onestep_total_s"] = time.perf_counter() - start
    notes = [
        f"one-step table: teacher = the benchmark's velocity flow (Euler at {TEACHER_NFES}); flow maps, reflow, OT-CFM "
        f"and W-Flow train {s.train_steps} steps each in this run, on the same data; every row samples from the same "
        f"noise seeds ({s.repeats}), and samples_per_s is the median of {s.timing_repeats} interleaved rounds on one "
        "batch of the held-out size on the same device",
        "onestep.<data>.best_flow_map.sw_ratio_vs_teacher128 (goal <= 1.2) and .speedup_vs_teacher128 (goal >= 50) "
        "are reported, not asserted; best_one_step also counts reflow, OT-CFM and W-Flow; the table per dataset "
        "is in onestep_<data>.md",
        "scaling: reward -|x - x*|^2 with x* the first held-out point; K = 1 is the plain SDE sampler",
        "steering: exact Gaussian velocity, first half of the coordinates observed; cond_mean_max_err compares the "
        "unobserved sample mean with the exact conditional mean",
    ] + notes
    return {"metrics": metrics, "timings": timings, "curves": curves, "plots": plots, "notes": notes}
