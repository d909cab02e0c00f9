"""The fmri benchmark: ``modaflow bench fmri --profile P``.

On the simulator (known truth, digits + LFW faces), one run trains NeuroFlow (visual AE,
NeuroVAE, XFM bridge) and scores it at 1, 4 and 20 ODE steps in both directions, against
baselines on the same split, latents and seeds: voxel-wise ridge encoding (pixels, visual
latent), ridge decoding (pixels, visual latent), two one-direction conditional flows, and
the simulator's true response model (the encoding ceiling a perfect model reaches).

Profiles: ``smoke`` (seconds, run by the tests), ``quick`` (minutes on 2 CPU cores, the full
simulated set), ``full`` (longer training), ``gpu`` (full on CUDA; raises without one).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modaflow.core.training import FlowMatchingConfig, TrainerArgs
from modaflow.modalities.fmri.baselines import ridge_fit_predict, stimulus_means, train_one_direction
from modaflow.modalities.fmri.evaluation import decoding_metrics, encoding_metrics, score_neuroflow
from modaflow.modalities.fmri.metrics import noise_ceiling, voxel_r
from modaflow.modalities.fmri.neuroflow import FEATURES_FILE, VAE_FILE, load_features, load_vae
from modaflow.modalities.fmri.readout import refit_readout
from modaflow.modalities.fmri.recipe import FMRIConfig, restore, train
from modaflow.modalities.fmri.data import TrialData, prepare
from modaflow.modalities.fmri.simulate import SimConfig, simulate
from modaflow.modalities.fmri.stimuli import SOURCES

from . import report as R
from .fmri_plots import plot_ceiling_scatter, plot_decoded_grid, plot_voxel_r_map
from .harness import BenchResult, progress, select_profile, stage, torch_threads

__all__ = ["FMRIProfile", "PROFILES", "run"]

MIN_SOURCE_STIMULI = 20
"""A stimulus source (digits, faces, scenes) gets its own encoding scores when the test set
holds at least this many of its stimuli and some of another source."""
SOURCE_METRICS = ("enc.voxel_r_median", "enc.noise_ceiling_median", "enc.median_r_over_median_ceiling")
"""The encoding scores reported per stimulus source (ceiling and r over that source's test stimuli)."""


@dataclass(frozen=True)
class FMRIProfile:
    """Sizes of one benchmark profile."""

    n_stimuli: int
    """Stimuli simulated (0 = all 1997 digits + faces)."""
    n_test: int
    """Test stimuli (3 repeats each)."""
    train_repeats: int
    """Presentations of each training stimulus, each a training trial (3: NSD's design, the
    simulator's default; see ``SimConfig.train_repeats``)."""
    ae_steps: int
    """Visual AE optimiser steps."""
    vae_steps: int
    """NeuroVAE optimiser steps."""
    xfm_steps: int
    """XFM (and each one-direction flow) optimiser steps."""
    hidden: int
    """Width of the AE, the NeuroVAE (x2) and the flows."""
    ode_steps: tuple[int, ...]
    """ODE steps at which NeuroFlow and the flow baselines are scored."""
    threads: int
    """torch threads (0: leave torch's default)."""
    bridge_variant: bool = True
    """Also train the XFM on the other bridge path (linear beside the recipe's cosine) on the same AE and NeuroVAE."""
    one_direction_flows: bool = True
    """Also train the two one-direction flows (decode-only, encode-only; each as long as the XFM)."""
    device: str = "cpu"
    """Where training and sampling run."""


PROFILES: dict[str, FMRIProfile] = {
    "smoke": FMRIProfile(n_stimuli=160, n_test=30, train_repeats=3, ae_steps=25, vae_steps=25, xfm_steps=25, hidden=64,
                         ode_steps=(1, 4), threads=1),
    "quick": FMRIProfile(n_stimuli=0, n_test=300, train_repeats=3, ae_steps=1500, vae_steps=1500, xfm_steps=2500, hidden=256,
                         ode_steps=(1, 4, 20), threads=1),
    "full": FMRIProfile(n_stimuli=0, n_test=300, train_repeats=3, ae_steps=6000, vae_steps=6000, xfm_steps=15000, hidden=512,
                        ode_steps=(1, 2, 4, 8, 20, 50), threads=0),
    "gpu": FMRIProfile(n_stimuli=0, n_test=300, train_repeats=3, ae_steps=6000, vae_steps=6000, xfm_steps=15000, hidden=512,
                       ode_steps=(1, 2, 4, 8, 20, 50), threads=0, device="cuda"),
}


def run(profile: str, out_dir: str | Path, seed: int = 0) -> BenchResult:
    """Run the fmri benchmark ``profile`` into ``out_dir`` (results.json, report.md, PNGs)."""
    p = select_profile(PROFILES, profile)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(p.threads):
        return _run(profile, p, out, seed)


def _config(p: FMRIProfile, seed: int) -> FMRIConfig:
    fm = FlowMatchingConfig(lr=1e-3, max_steps=p.xfm_steps, batch_size=256, ema_decay=0.995, seed=seed, weight_decay=1e-4,
                            log_every=max(1, p.xfm_steps // 50), ckpt_every=p.xfm_steps)
    sim = SimConfig(n_stimuli=p.n_stimuli, n_test=p.n_test, train_repeats=p.train_repeats, sim_seed=seed)
    return FMRIConfig(sim=sim, ae_hidden=p.hidden, ae_steps=p.ae_steps, vae_hidden=2 * p.hidden, vae_steps=p.vae_steps,
                      xfm_hidden=p.hidden, steps=max(p.ode_steps), fm=fm)


def _run(profile: str, p: FMRIProfile, out: Path, seed: int) -> BenchResult:
    t0 = time.perf_counter()
    cfg = _config(p, seed)
    targs = TrainerArgs(accelerator="gpu" if p.device == "cuda" else "cpu", devices=1)
    timings: dict[str, float] = {}
    with stage("simulate fMRI", timings, "simulate_s"):
        sim = simulate(cfg.sim)
        td = TrialData(sim.betas, sim.stim_id.astype(np.int64), sim.images, "simulated", sim.test_stimuli, sim.mask,
                       sim.affine)
        prep = prepare(td, seed)
    with stage(f"train NeuroFlow (visual AE {p.ae_steps}, NeuroVAE {p.vae_steps}, XFM {p.xfm_steps} steps)", timings,
               "train_neuroflow_s"):
        summary = train(cfg, targs, out / "neuroflow", progress=False, data=(td, prep))
    _, nf = restore(out / "neuroflow")
    feats, K = load_features(out / "neuroflow" / FEATURES_FILE).encode, cfg.n_candidates
    metrics, baselines, curves = {}, {}, {}
    scores = {}
    for k in progress(p.ode_steps, "score NeuroFlow"):
        ts = time.perf_counter()
        scores[k] = score_neuroflow(nf, prep.test_x, prep.test_img, prep.test_trials, k, "euler", feats, K, seed)
        timings[f"score_neuroflow@{k}_s"] = time.perf_counter() - ts
        metrics.update({f"neuroflow@{k}.{m}": v for m, v in scores[k].items()})
    top = max(p.ode_steps)
    if p.bridge_variant:  # same AE, NeuroVAE and metrics' feature files, so only the XFM (and readout) train again
        other = "linear" if cfg.xfm_path == "cosine" else "cosine"
        var_dir = out / f"neuroflow_{other}"
        var_dir.mkdir(exist_ok=True)
        for name in ("visual_ae", "neurovae", "features"):
            for ext in (".safetensors", ".json"):
                shutil.copy2(out / "neuroflow" / f"{name}{ext}", var_dir / f"{name}{ext}")
        with stage(f"train the {other}-bridge XFM ({p.xfm_steps} steps)", timings, f"train_xfm_{other}_s"):
            train(cfg.replace(xfm_path=other), targs, var_dir, progress=False, data=(td, prep))
        _, nf_var = restore(var_dir)
        for k in p.ode_steps:
            sc = score_neuroflow(nf_var, prep.test_x, prep.test_img, prep.test_trials, k, "euler", feats, K, seed)
            baselines.setdefault(f"neuroflow_{other}_bridge", {}).update({f"@{k}.{m}": v for m, v in sc.items()})
    # --- baselines: same split, same latents, same seeds -----------------------------------
    ceiling = noise_ceiling(prep.test_trials)
    true_z = (sim.true_beta[prep.test_ids] - prep.mean) / prep.std  # the simulator's noise-free responses
    baselines["true_model"] = encoding_metrics(true_z, prep.test_x, prep.test_trials, K, seed)
    px_tr, px_te = prep.train_img.reshape(len(prep.train_img), -1), prep.test_img.reshape(len(prep.test_img), -1)
    with torch.no_grad():
        lat_tr = nf.ae.encode(torch.as_tensor(prep.train_img)).numpy()
        lat_te = nf.ae.encode(torch.as_tensor(prep.test_img)).numpy()
    with stage("ridge baselines", timings, "ridge_s"):
        px_u, y_u = stimulus_means(px_tr, prep.train_x)  # encoding fits the repeat means: leave-one-stimulus-out
        with torch.no_grad():
            lat_u = nf.ae.encode(torch.as_tensor(px_u.reshape((-1,) + prep.test_img.shape[1:]))).numpy()
        enc_px = ridge_fit_predict(px_u, y_u, px_te)
        enc_lat = ridge_fit_predict(lat_u, y_u, lat_te)
        dec_px = ridge_fit_predict(prep.train_x, px_tr, prep.test_x).reshape(prep.test_img.shape)
        dec_lat = ridge_fit_predict(prep.train_x, lat_tr, prep.test_x)
        with torch.no_grad():
            dec_lat_img = nf.ae.decode(torch.as_tensor(dec_lat)).numpy()
    baselines["ridge_enc_pixels"] = encoding_metrics(enc_px, prep.test_x, prep.test_trials, K, seed)
    baselines["ridge_enc_latent"] = encoding_metrics(enc_lat, prep.test_x, prep.test_trials, K, seed)
    baselines["ridge_dec_pixels"] = decoding_metrics(dec_px, prep.test_img, feats, K, seed)
    baselines["ridge_dec_latent"] = decoding_metrics(dec_lat_img, prep.test_img, feats, K, seed)
    # two one-direction flows on the same standardised latents
    flow_imgs = None
    if p.one_direction_flows:
        with torch.no_grad():
            zv_tr, zn_tr = nf.visual_latent(torch.as_tensor(prep.train_img)), nf.neural_latent(torch.as_tensor(prep.train_x))
            zv_te, zn_te = nf.visual_latent(torch.as_tensor(prep.test_img)), nf.neural_latent(torch.as_tensor(prep.test_x))
        with stage(f"train two one-direction flows ({p.xfm_steps} steps each)", timings, "train_one_direction_flows_s"):
            dec_flow = train_one_direction(zv_tr, zn_tr, p.hidden, cfg.xfm_depth, cfg.fm, out / "flow_decode_only", targs)
            enc_flow = train_one_direction(zn_tr, zv_tr, p.hidden, cfg.xfm_depth, cfg.fm, out / "flow_encode_only", targs)
        enc_vae = load_vae(out / "neuroflow" / VAE_FILE)  # the trained NeuroVAE; its readout refit on this flow's
        if cfg.readout == "ridge":                       # own encoding path, as NeuroFlow's is on the XFM's
            def enc_latent(img: torch.Tensor) -> torch.Tensor:
                return nf.raw_neural(enc_flow.sample(nf.visual_latent(img), top, seed + 1))

            enc_vae = refit_readout(enc_vae, enc_latent, prep.train_img, prep.train_x)[0]
        for k in p.ode_steps:
            imgs = nf.image(dec_flow.sample(zn_te, k, seed)).numpy()
            with torch.no_grad():
                vox = enc_vae.decode(nf.raw_neural(enc_flow.sample(zv_te, k, seed + 1))).numpy()
            baselines.setdefault("flow_decode_only", {}).update(
                {f"@{k}.{m}": v for m, v in decoding_metrics(imgs, prep.test_img, feats, K, seed).items()})
            baselines.setdefault("flow_encode_only", {}).update(
                {f"@{k}.{m}": v for m, v in encoding_metrics(vox, prep.test_x, prep.test_trials, K, seed).items()})
            flow_imgs = imgs if k == top else flow_imgs
    # --- encoding per stimulus source (digits, faces, scenes) at the top step count ---------------
    source = sim.source[prep.test_ids]
    for code, name in enumerate(SOURCES):
        sel = source == code
        if MIN_SOURCE_STIMULI <= sel.sum() < len(sel):  # a source with enough test stimuli, beside another
            sub = encoding_metrics(scores[top].pred_vox[sel], prep.test_x[sel], prep.test_trials[sel],
                                   min(K, int(sel.sum())), seed)
            metrics.update({f"neuroflow@{top}.enc.{name}.{m.split('.', 1)[1]}": sub[m] for m in SOURCE_METRICS})
            metrics[f"neuroflow@{top}.enc.{name}.n_test_stimuli"] = int(sel.sum())
    # --- goals of the issue (on the top step count) ------------------------------------------
    s = scores[top]
    ridge_enc = max(baselines["ridge_enc_pixels"]["enc.voxel_r_median"], baselines["ridge_enc_latent"]["enc.voxel_r_median"])
    ridge_dec = max(baselines["ridge_dec_pixels"]["dec.twoway_features"], baselines["ridge_dec_latent"]["dec.twoway_features"])
    metrics.update({
        "goal.enc_median_r_over_ceiling": s["enc.median_r_over_median_ceiling"],
        "goal.dec_twoway_features": s["dec.twoway_features"],
        "goal.dec_top1_retrieval": s["dec.top1_retrieval"],
        "goal.enc_r_ratio_vs_best_ridge": s["enc.voxel_r_median"] / ridge_enc,
        "goal.dec_twoway_ratio_vs_best_ridge": s["dec.twoway_features"] / ridge_dec,
    })
    # --- plots ----------------------------------------------------------------------------------
    plots = [plot_decoded_grid(out / "decoded_grid.png", {
        "stimulus": prep.test_img, f"NeuroFlow@{top}": s.pred_img, "ridge->latent": dec_lat_img,
        "ridge->pixels": dec_px, **({f"decode-only flow@{top}": flow_imgs} if flow_imgs is not None else {})}).name]
    plots.append(plot_voxel_r_map(out / "voxel_r_map.png", s.voxel_r, sim.mask, sim.affine,
                                  f"NeuroFlow@{top}: held-out voxel r").name)
    plots.append(plot_ceiling_scatter(out / "noise_ceiling_scatter.png", ceiling, {
        f"NeuroFlow@{top}": s.voxel_r, "ridge (latent)": voxel_r(enc_lat, prep.test_x),
        "true model": voxel_r(true_z, prep.test_x)}).name)
    losses = {"visual AE": summary["ae"].get("history", []), "NeuroVAE": summary["neurovae"].get("history", []),
              "XFM": summary["xfm"]["history"], "metrics' feature net": summary["features"].get("history", [])}
    plots.append(R.plot_loss(out / "loss.png", {k: tuple(zip(*v)) for k, v in losses.items() if v}, "training loss").name)
    curve_keys = ("dec.twoway_features", "dec.top1_retrieval", "enc.voxel_r_median")
    curves["metric_vs_steps"] = {"xlabel": "ODE steps", "series": {
        m: {"x": list(p.ode_steps), "y": [scores[k][m] for k in p.ode_steps]} for m in curve_keys}}
    plots.append(R.plot_curves(out / "metric_vs_steps.png", {m: (c["x"], c["y"]) for m, c in curves["metric_vs_steps"]["series"].items()},
                               "NeuroFlow vs ODE steps", "ODE steps", "metric", log=False).name)
    timings["total_s"] = time.perf_counter() - t0
    notes = [
        f"torch threads: {torch.get_num_threads()}; device: {p.device}",
        f"simulator: {len(sim.images)} stimuli, {int(sim.mask.sum())} voxels, {len(prep.train_x)} training trials "
        f"({len(prep.train_x) // max(cfg.sim.train_repeats, 1)} stimuli x {cfg.sim.train_repeats} repeats, as in NSD), "
        f"{len(prep.test_x)} test stimuli x {cfg.sim.n_repeats} repeats; median noise ceiling r = {float(np.median(ceiling)):.3f}",
        f"NeuroFlow: one XFM ({cfg.xfm_path} bridge, Euler) decodes (t 0 -> 1) and encodes (t 1 -> 0); 'neuroflow@k' = k "
        f"ODE steps; encoding reads voxels through the NeuroVAE decoder's {cfg.readout} readout (ridge: refit per voxel "
        f"on the encoding path at {cfg.steps} steps); the NeuroVAE mean is pulled onto the stimulus's visual latent "
        f"(vae_align = {cfg.vae_align:g}, chosen on a validation split of the training stimuli), so the latent pairs are "
        "nearly deterministic (on the linear bridge one Euler step already gives the conditional mean); "
        + ("the one-direction flows use the same latents" if p.one_direction_flows
           else "the one-direction flows were not trained in this run (profile option one_direction_flows)"),
        f"NeuroVAE early stopping: {cfg.vae_val_fraction:g} of the training stimuli held out, best validation step "
        f"{summary['neurovae'].get('best_step', cfg.vae_steps)} of {cfg.vae_steps} kept"
        + (f", then refit on all {summary['neurovae']['refit_rows']} training trials for that many steps"
           if "refit_steps" in summary["neurovae"] else "")
        + (f" (weights: EMA of the iterates, decay {cfg.vae_ema:g})" if cfg.vae_ema > 0 else "")
        + f"; learning rate {cfg.vae_lr:g}, {cfg.vae_lr_schedule} schedule, weight decay {cfg.vae_weight_decay:g}",
        "features for two-way identification / retrieval: a convolutional autoencoder's feature maps (models.FeatureNet), "
        "trained here on the training stimuli apart from NeuroFlow (not its visual AE, whose latent NeuroFlow and the latent "
        "ridge decoder aim at)",
        f"retrieval: top-1 among min({K}, n_test) candidates; two-way chance 0.5",
        "true_model: the simulator's noise-free responses (the encoding ceiling); goals: enc median r / median ceiling "
        ">= 0.9, dec two-way >= 0.95, top-1 >= 0.5, ratios vs the best ridge >= 1",
    ]
    result = BenchResult.create("fmri", profile, seed, metrics=metrics, baselines=baselines, timings=timings,
                                curves=curves, plots=plots, notes=notes)
    result.write(out)
    R.write_report(result, out)
    return result
