"""The NeuroFlow recipe: typed config, data loading, the training stages and the
train / evaluate / finetune entry points (``sample`` lives in :mod:`.sampling`).

Stages (each resumes: a stage whose file exists in the run folder is loaded, not retrained):
1. visual AE on the training stimuli (pixel MSE), ``visual_ae.safetensors``;
2. NeuroVAE on the z-scored training trials (MSE + beta KL + ``vae_align`` times the
   squared distance of its mean to the stimulus's standardised visual latent),
   ``neurovae.safetensors``; a ``vae_val_fraction`` of the training stimuli is held out and
   the weights of the step with the lowest validation loss are kept (early stopping), of an
   exponential moving average of the iterates when ``vae_ema > 0``;
3. XFM on paired standardised latents ``(x0 = z_neu, x1 = z_vis)`` with the core's
   :class:`~modaflow.core.training.FlowMatchingModule` and ``fit`` on
   ``bridge(LinearPath | VPCosinePath, noise, "quadratic")`` (noise ``s * t (1 - t)``;
   ``s = 0.04`` peaks at 0.01, close to the paper's ``0.01 sin(pi t)``);
4. (``readout = "ridge"``) the NeuroVAE decoder's last layer refit per voxel on the encoding path
   (:mod:`.readout`), ``neurovae_readout.safetensors``; refit whenever the XFM, NeuroVAE, statistics or
   sampler it was fitted on changed.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from modaflow.core.config import Config, ConfigError
from modaflow.core.devices import pick_device
from modaflow.core.paths import LinearPath, VPCosinePath, bridge
from modaflow.core.training import CheckpointError, FlowMatchingConfig, FlowMatchingModule, TrainerArgs, fit, quiet_lightning

from ..runs import absolute_source, load_recipe, load_weights, save_recipe
from .bids import GLMMethod, load_bids
from .data import Prepared, TrialData, load_betas, prepare, save_mask
from .models import AEConfig, FeatureNet, FeatureNetConfig, NeuroVAE, NeuroVAEConfig, VisualAE, build_xfm
from .neuroflow import (AE_FILE, FEATURES_FILE, STAT_KEYS, STATS_FILE, VAE_FILE, NeuroFlow, check_stimulus_size, load_ae, load_features,
                        load_stats, load_vae, read_ae, read_features, read_vae, save_stats)
from .readout import READOUT_FILE, apply_readout, current_readout, fingerprint, refit_readout, save_readout
from .simulate import SimConfig, simulate
from .training import AutoencoderModule, LRSchedule, fit_autoencoder, repeat_partners

__all__ = ["FMRIConfig", "SOLVERS", "NAME", "load_trials", "load_prepared", "build_path", "train", "restore", "evaluate",
           "latents", "XFMPairs",
           "validation_split", "stimulus_ids", "vae_partners"]

NAME = "fmri"
SELECT_FILE = "neurovae_select.safetensors"
"""The NeuroVAE of the early-stopping run while its refit (``vae_refit``) trains; removed after."""
SOLVERS: tuple[str, ...] = ("euler", "midpoint", "heun", "rk4")


def _default_fm() -> FlowMatchingConfig:
    return FlowMatchingConfig(lr=1e-3, max_steps=3000, batch_size=256, ema_decay=0.995, log_every=25, ckpt_every=1000,
                              weight_decay=1e-4)


XFM_UNREAD: dict[str, str] = {
    "path": "xfm_path sets the bridge's base path", "ddpm_steps": "xfm_path sets the path",
    "coupling": "the XFM's pairs (z_neu, z_vis) are given, no noise is drawn to couple",
    "sinkhorn_epsilon": "no coupling is drawn", "sinkhorn_iterations": "no coupling is drawn",
    "cond_dropout": "the XFM is unconditional", "null_class": "the XFM is unconditional"}
"""``fm`` fields the XFM's training never reads, refused by :meth:`FMRIConfig.validate` (name -> why)."""


@dataclass
class FMRIConfig(Config):
    """NeuroFlow: data, the three networks, the bridge, the sampler and training."""

    data: str = "simulated"
    """simulated, bids:/path/to/dataset (BOLD + events TSV) or betas:/path (.h5 file or .npy folder)."""
    sim: SimConfig = field(default_factory=SimConfig)
    """Simulator parameters (data = simulated)."""
    glm: GLMMethod = "lsa"
    """Single-trial GLM of bids data: lsa (least-squares-all) or lss (least-squares-separate)."""
    glm_noise_model: Literal["ar1", "ols"] = "ar1"
    """Noise model of nilearn's first-level GLM (bids data)."""
    glm_hrf: Literal["spm", "glover"] = "spm"
    """nilearn haemodynamic response model of the single-trial GLM (bids data; the simulator's is ``hrf``)."""
    glm_drift_order: int = 2
    """Polynomial drift order of the single-trial GLM (bids data; the simulator's is ``drift_order``)."""
    glm_tr: float = 0.0
    """Repetition time in seconds of bids data (0: from the runs' *_bold.json sidecars, inherited
    BIDS-style, or the NIfTI header). The simulator's own TR is ``tr``."""
    glm_task: str = ""
    """Only the runs of this BIDS task (the label after task-; '' = every task with an events TSV; runs without
    one, such as resting state, are skipped with a warning)."""
    glm_space: str = ""
    """Preprocessed bids data (bids:DS/derivatives/fmriprep/sub-XX): the space of the runs to model (the label
    after space-, e.g. MNI152NLin2009cAsym); '' = the runs have a single space."""
    glm_desc: str = ""
    """Preprocessed bids data: the version of the runs to model (the label after desc-, e.g. preproc or
    smoothAROMAnonaggr); '' = the runs have a single one."""
    glm_confounds: tuple[str, ...] = ()
    """Columns of each run's fMRIPrep *_desc-confounds_timeseries.tsv added to the GLM (e.g. trans_x trans_y trans_z
    rot_x rot_y rot_z)."""
    glm_slice_time_ref: float = 0.0
    """Fraction of the TR at which each volume is timed (0.5 for fMRIPrep's slice-timing-corrected runs)."""
    glm_scaling: Literal["psc", "none"] = "psc"
    """bids data: psc = each voxel's series in percent of its run mean before the GLM (betas comparable across runs
    and sessions); none = scanner units."""
    stimulus_size: int = 32
    """bids and betas data: stimuli are resized to this many pixels square (the images under a BIDS dataset's stimuli/
    folder that events name by stim_file, its stimuli.npy, a betas file's stimuli); the visual AE is an MLP on their
    pixels. A run's sample, evaluate and finetune read stimuli at its visual AE's size. The simulator's own size is
    ``image_size`` (SimConfig)."""
    mask: str = ""
    """Mask image of bids data ('' = ROOT/mask.nii.gz)."""
    latent: int = 32
    """Dimension d of both latents (visual and neural)."""
    ae_hidden: int = 256
    """Width of the visual autoencoder."""
    ae_steps: int = 1500
    """Optimiser steps of the visual autoencoder."""
    ae_lr: float = 2e-3
    """Learning rate of the visual autoencoder."""
    vae_hidden: int = 512
    """Width of the NeuroVAE."""
    vae_steps: int = 1500
    """Optimiser steps of the NeuroVAE."""
    vae_lr: float = 1e-3
    """Peak learning rate of the NeuroVAE (see ``vae_lr_schedule``)."""
    vae_lr_schedule: LRSchedule = "cosine"
    """Learning-rate schedule of the NeuroVAE over its ``vae_steps``: constant, cosine
    (annealed to 0, Loshchilov & Hutter 2017, SGDR eq. 5 with eta_min = 0) or linear decay
    to 0 (:func:`~.training.lr_factor`). Evidence (170 validation stimuli of the training
    set, quick sizes, 3 presentations, EMA 0.99, step chosen by validation loss, encoding
    path decode(z_vis) scored by median voxel r against the simulator's noise-free
    responses): constant 0.9232 (step 900, validation loss 1.7256), cosine 0.9239 (step
    850, 1.7382), halving on a plateau of 3 validations 0.9232 (step 900; the first halving
    came after the best step), cosine from lr 2e-3 0.9234 (step 650, 1.7124); weight decay
    1e-2 / 0.1 / 1 (constant lr) 0.9239 (cosine) / 0.9208 / 0.9230. All within 0.003: the
    validation loss rises after step ~900 under every schedule, so its plateau is the
    decoder starting to fit single-trial noise (early stopping and the EMA already handle
    it), not optimiser noise a decaying step would remove. Cosine is kept as the best
    of these at the same cost; its gain (+0.0007) is inside the run-to-run spread.
    Diagnostic on the same split (constant schedule, XFM trained on the fit stimuli):
    decode(true neural latent, mean over a stimulus's 3 trials) 0.928, decode(XFM@1(z_vis))
    0.923, @20 0.921 (latent R^2 of the XFM's prediction 0.895), the plain mean of the 3
    noisy trials 0.919: the NeuroVAE decoder bounds the encoding path at ~0.928 and the
    XFM costs another 0.005. Quick profile (test stimuli, scored once after the choice; best
    step 750 of 1500): encoding median r 0.817 -> 0.814 (0.898 -> 0.895 of the ceiling),
    decoding top-1 0.977 -> 0.973: no gain on the test set either."""
    vae_weight_decay: float = 1e-4
    """Decoupled weight decay of the NeuroVAE's AdamW (Loshchilov & Hutter 2019, ICLR);
    1e-2 to 1 did not raise the validation encoding r (see ``vae_lr_schedule``)."""
    vae_target: Literal["input", "other_trial"] = "other_trial"
    """What the NeuroVAE reconstructs from a training trial: the trial itself (``input``,
    the plain VAE) or a random other trial of the same stimulus, drawn anew each time
    (``other_trial``: Noise2Noise, Lehtinen et al. 2018, ICML; the trials' noise is
    independent given the stimulus, so the expected target is the noise-free response and
    the decoder gains nothing by reproducing its input's single-trial noise). A stimulus
    shown once reconstructs its own trial. The KL term, the alignment and the latent are
    unchanged; validation (below) is too. Evidence (170 validation stimuli of the training
    set, quick sizes, cosine lr, EMA 0.99, step chosen by validation loss, encoding path
    decode(z_vis) scored by median voxel r against the simulator's noise-free responses;
    seeds 1 / 2 / 3): input 0.9218 / 0.9219 / 0.9234 (validation loss 1.7398 / 1.7578 /
    1.7720), other_trial 0.9242 / 0.9234 / 0.9209 (1.7391 / 1.7530 / 1.7705); at the last
    step (1450) input 0.9207 / 0.9229 / 0.9236, other_trial 0.9242 / 0.9230 / 0.9243. The
    validation loss is lower on all three seeds and the decline after its minimum smaller,
    but the chosen step's r gains only +0.0004 on average, inside the seed spread (0.002).
    Other targets on seed 1: the mean of the other two trials 0.9221, the stimulus's
    3-trial mean 0.9222; the mean of the other two trials as input, this trial as target
    0.9222 / 0.9234 (seeds 1 / 2). Why so little: the alignment (``vae_align``) makes the
    latent nearly a function of the stimulus, so the decoder sees a stimulus's trials
    through almost one latent and fits their mean (noise variance sigma^2 / 3) whatever
    the pairing; Noise2Noise only removes the part of the fit that runs through
    trial-specific latent content. Same split, XFM: training it on each stimulus's mean
    neural latent instead of the single trials' raises the latent R^2 0.892 -> 0.910 but
    the encoding path only 0.9185 -> 0.9190 (@1), so it was not adopted. Quick profile
    (test stimuli, scored once after the choice; best step 750 of 1500 both times):
    encoding median r @20 0.814 -> 0.813 (0.895 -> 0.894 of the ceiling), decoding top-1
    0.973 -> 0.963: no gain on the test set, as the validation spread predicted."""
    vae_beta: float = 1.0
    """KL weight of the NeuroVAE (loss = MSE + vae_beta * KL / V); 1 keeps noise out of the
    latent (quick profile: encoding r 0.58 -> 0.70 at 1e-3 -> 1)."""
    vae_dropout: float = 0.1
    """Dropout in the NeuroVAE encoder."""
    vae_align: float = 10.0
    """Weight of a term ``||mu(x) - z_vis||^2`` pulling the NeuroVAE mean of each training trial
    onto its stimulus's standardised visual latent (the supervised counterpart of the
    finetune alignment): the neural latent then keeps stimulus information instead of the
    trial's noise, and the XFM coupling becomes nearly deterministic, so (on the linear bridge) 1 and 20 Euler
    steps agree (0 = unsupervised). Chosen on 300 validation stimuli of the training set
    (quick sizes, 800 steps): weight 0 / 1 / 10 -> encoding median r 0.69 / 0.735 / 0.738
    at 1 step (0.61 / 0.735 / 0.738 at 20), decoding top-1 0.49 / 0.88 / 0.90 (0.38 at 20
    steps for 0); ridge on the same split: 0.64 and 0.83. Quick profile (test stimuli, scored
    once after the choice): encoding median r 0.70 -> 0.78 (ridge 0.69, ceiling 0.91),
    decoding top-1 among 300 0.59 -> 0.95 (ridge 0.93), the same at 1, 4 and 20 steps."""
    vae_val_fraction: float = 0.1
    """Fraction of the training stimuli held out from the NeuroVAE to choose its step by
    validation loss (early stopping; 0 = train on all and keep the last step). Evidence
    (300 validation stimuli of the training set, quick sizes): the encoding path's voxel r
    against the simulator's noise-free responses peaks at 0.898 after 500 of 1500 steps and
    falls to 0.851 at 1500 (the decoder overfits the single-trial noise); latent 64 gives
    the same peak (0.899), so the step count, not the latent size, was the bottleneck; KL
    weight 4 or encoder dropout 0.3 flatten the decline but do not raise the peak (0.897).
    Quick profile (test stimuli, scored once after the choice; best step 650 of 1500):
    encoding median r 0.780 -> 0.800 (0.858 -> 0.880 of the ceiling), decoding top-1 0.953
    -> 0.977, encoding top-1 0.75 -> 0.67."""
    vae_refit: bool = True
    """After early stopping chose the NeuroVAE's step ``k`` on the ``vae_val_fraction`` held-out
    stimuli, train a fresh NeuroVAE (seeded) on every training stimulus for ``k`` steps
    (same learning-rate schedule over ``vae_steps``, the EMA weights of step ``k`` kept): the
    held-out stimuli then set only the step count and still train the decoder (the usual
    refit after model selection, e.g. Hastie, Tibshirani & Friedman 2009, ESL §7.10). One
    more NeuroVAE training of at most ``vae_steps``. Evidence (seed-0 subject, quick sizes,
    170 validation stimuli, encoding path decode(z_vis) scored by median voxel r against the
    noise-free responses): the NeuroVAE's learning curve over its fit stimuli rises steeply,
    764 / 1145 / 1527 stimuli -> 0.8707 / 0.8860 / 0.8960 (training seed 1); fitting on 90 % of
    the fit stimuli, choosing the step there and refitting on all of them scored 0.8928 -> 0.8975 (training
    seed 1, step 1100) and 0.9055 -> 0.9108 (seed 2, step 600), +0.005 each time."""
    vae_val_every: int = 50
    """Steps between two validation losses of the NeuroVAE."""
    vae_ema: float = 0.99
    """Decay of an exponential moving average of the NeuroVAE weights (Polyak & Juditsky
    1992, SIAM J. Control Optim. 30, 838: averaging the SGD iterates lowers their variance);
    the average is what early stopping validates and keeps (0 = the raw iterates). Evidence
    (170 validation stimuli of the training set, quick sizes, encoding path decode(z_vis)
    scored by median voxel r against the simulator's noise-free responses, step chosen by
    validation loss): raw iterates 0.905 (step 500; peak 0.910, 0.879 at 1400); EMA 0.99
    0.913 (step 550; peak 0.915), without the warm-up 0.915, decay 0.995 0.915; decoder
    dropout 0.2 instead: 0.913. Quick profile (test stimuli, scored once after the choice):
    encoding median r 0.800 -> 0.801 (0.880 of the ceiling both), r against the noise-free
    responses 0.881 -> 0.885, encoding top-1 0.670 -> 0.673, decoding top-1 0.977 -> 0.960:
    the validation gain did not carry over to the test set. Not the limit either (same
    validation protocol, visual AE trained without the validation stimuli): a visual AE of
    5000 instead of 1500 steps (its reconstructions bound the encoding r at 0.953 instead of
    0.938) gives the same 0.911; a factorised spatial readout (Klindt et al. 2017, NeurIPS:
    non-negative 8 x 8 feature maps, a softmax spatial mask and feature weights per voxel,
    a sqrt for the CSS nonlinearity) reaches 0.910-0.913 after 1500 steps."""
    readout: Literal["ridge", "decoder"] = "ridge"
    """The voxel readout of the encoding path (:mod:`.readout`): ridge = after the XFM is trained, the NeuroVAE
    decoder's last linear layer is refit per voxel by ridge on ``phi(XFM(z_vis))`` of the training stimuli against
    their mean responses (penalty by leave-one-stimulus-out), saved as ``neurovae_readout.safetensors``; decoder = the
    SGD-trained layer as it is. Decoding is the same either way. Evidence (quick profile's trained stages, seed-0
    subject, 20 Euler steps): on the test stimuli encoding median r 0.8110 -> 0.8156 (0.8914 -> 0.8964 of the
    ceiling; median of r / ceiling 0.8986 -> 0.9015); with penalties chosen by stimulus-grouped 5-fold CV instead,
    0.8967. Tried beside it and not better: the readout shrunk toward the trained layer (0.8928), features of both
    hidden layers (0.8971), features of the early-stopping NeuroVAE added (0.8960), rows of the trials' own neural
    latents added (0.8961-0.8965), RBF kernel ridge on the latent itself (0.8929). Scripts: /work/s16/ (sixteenth
    session)."""
    align_weight: float = 1.0
    """finetune: weight of the term pulling a new subject's latents onto the XFM's."""
    xfm_hidden: int = 256
    """Width of the XFM residual MLP."""
    xfm_depth: int = 3
    """Residual blocks of the XFM."""
    xfm_path: Literal["linear", "cosine"] = "cosine"
    """Bridge base path: cosine (sin/cos of pi t / 2, the paper's) or linear (x_t = t z_vis + (1-t) z_neu; one Euler
    step from either end gives the conditional mean of the other latent, so it decodes better in 1 step). Evidence
    (quick profile, the same AE and NeuroVAE under both, ridge readout; simulator seeds 0 / 1 / 2), encoding median r
    / median ceiling at 20 steps: cosine 0.9049 / 0.9128 / 0.9281, linear 0.8964 / 0.9114 / 0.9257; decoding top-1
    among 300 at 20 steps: cosine 0.977 / 0.967 / 0.983, linear 0.957 / 0.973 / 0.980; at 1 step linear decodes
    better (top-1 0.957 / 0.973 / 0.983 against 0.920 / 0.940 / 0.923; PixCorr 0.957 against 0.928 on seed 0). Earlier
    runs with the trained readout also had cosine ahead in encoding (0.8953 against 0.8914; 0.897 / 0.902 / 0.922
    against 0.894 / 0.903 / 0.921). Linear was the default until the sixteenth session."""
    xfm_noise: float = 0.0
    """Scale s of the bridge noise s * t (1 - t) * eps (0.04 peaks at 0.01)."""
    solver: Literal["euler", "midpoint", "heun", "rk4"] = "euler"
    """Default ODE method."""
    steps: int = 20
    """Default ODE steps."""
    n_candidates: int = 300
    """Candidates of the top-1 retrieval metric."""
    fm: FlowMatchingConfig = field(default_factory=_default_fm)
    """Flow-matching training of the XFM (lr, steps, batch, EMA, seed)."""

    def validate(self) -> None:
        self._require(self.data == "simulated" or self.data.startswith(("bids:", "betas:")), "data",
                      "simulated, bids:/path or betas:/path")
        for name in ("latent", "ae_hidden", "ae_steps", "vae_hidden", "vae_steps", "xfm_hidden", "xfm_depth", "steps",
                     "n_candidates"):
            self._require(getattr(self, name) >= 1, name, "an integer >= 1")
        for name in ("ae_lr", "vae_lr"):
            self._require(getattr(self, name) > 0, name, "a number > 0")
        for name in ("vae_beta", "vae_align", "xfm_noise", "align_weight", "vae_weight_decay", "glm_tr"):
            self._require(getattr(self, name) >= 0, name, "a number >= 0")
        self._require(self.glm_drift_order >= 0, "glm_drift_order", "an integer >= 0")
        self._require(0.0 <= self.glm_slice_time_ref <= 1.0, "glm_slice_time_ref", "a fraction of the TR in [0, 1]")
        self._require(self.stimulus_size >= 4, "stimulus_size", "an integer >= 4")
        self._require(0 <= self.vae_val_fraction < 1, "vae_val_fraction", "a fraction in [0, 1)")
        self._require(self.vae_val_every >= 1, "vae_val_every", "an integer >= 1")
        self._require(0 <= self.vae_ema < 1, "vae_ema", "a decay in [0, 1)")
        self._require(0 <= self.vae_dropout < 1, "vae_dropout", "a probability in [0, 1)")
        self._require(self.vae_target in ("input", "other_trial"), "vae_target", "input or other_trial")
        # the XFM is a velocity field on the bridge build_path makes, trained on given (z_neu, z_vis) pairs:
        # the fm fields below are never read (or, parametrization, misread), so they are refused rather than ignored
        fm, fm0 = self.fm, FlowMatchingConfig()
        self._require(fm.parametrization == "velocity", "fm.parametrization",
                      "velocity (NeuroFlow integrates the XFM as a velocity field in both directions)")
        for name, why in XFM_UNREAD.items():
            self._require(getattr(fm, name) == getattr(fm0, name), f"fm.{name}", f"unset ({getattr(fm0, name)!r}): {why}")


def inert_fields(config: dict) -> dict[str, object]:
    """:data:`XFM_UNREAD` at their defaults: a run stored before they were refused loads with them reset
    (:func:`~..runs.load_recipe`'s ``inert``); they never changed its training. ``fm.parametrization``
    is not among them: a run trained to predict the data is refused, since it never sampled right."""
    fm = FlowMatchingConfig()
    return {f"fm.{name}": getattr(fm, name) for name in XFM_UNREAD}


@functools.lru_cache(maxsize=4)
def _simulated(sim_json: str) -> TrialData:
    sim = simulate(SimConfig.from_dict(json.loads(sim_json)))
    return TrialData(sim.betas, sim.stim_id.astype(np.int64), sim.images, "simulated", sim.test_stimuli, sim.mask,
                     sim.affine)


def stored_data(data: str) -> str:
    """``--data`` as a run stores it: ``bids:`` / ``betas:`` paths absolute
    (:func:`~modaflow.modalities.runs.absolute_source`), ``simulated`` as it is."""
    return absolute_source(data, ("bids", "betas"), ("simulated",))


def with_absolute_paths(cfg: FMRIConfig) -> FMRIConfig:
    """``cfg`` with its data and mask paths absolute, as a run stores them (so that ``sample``,
    ``evaluate`` and ``finetune`` find them from any folder)."""
    return cfg.replace(data=stored_data(cfg.data), mask=absolute_source(cfg.mask) if cfg.mask else cfg.mask)


SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "sim": ("simulated",), **{name: ("bids",) for name in (
        "glm", "glm_noise_model", "glm_hrf", "glm_drift_order", "glm_tr", "glm_task", "glm_space", "glm_desc",
        "glm_confounds", "glm_slice_time_ref", "glm_scaling", "mask")},
    "stimulus_size": ("bids", "betas")}
"""Fields of one data source -> the sources (``data``'s kind) that read them; :func:`check_source_fields` refuses
them set for another."""


def source_kind(data: str) -> str:
    """``simulated``, ``bids`` or ``betas``: the kind of a ``data`` source."""
    return data.partition(":")[0]


def check_source_fields(data: str, given: dict[str, object]) -> None:
    """Refuse options ``given`` (field -> value; ``sim`` a :class:`SimConfig` or a dict of some of its fields) that
    the source ``data`` never reads, with ``ConfigError`` naming them and the sources that read them
    (``--glm-space`` with betas data would otherwise be silently ignored). Values equal to the default pass."""
    kind, default = source_kind(data), FMRIConfig()

    def differs(name: str, value: object) -> bool:
        if name != "sim":
            return value != getattr(default, name)
        fields = value.to_dict() if isinstance(value, SimConfig) else dict(value)
        return any(default.sim.to_dict().get(k) != v for k, v in fields.items())

    unread = [name for name, value in given.items()
              if name in SOURCE_FIELDS and kind not in SOURCE_FIELDS[name] and differs(name, value)]
    if unread:
        what = ", ".join(f"{'the simulator options' if name == 'sim' else '--' + name.replace('_', '-')} (read for "
                         f"{' or '.join(SOURCE_FIELDS[name])} data)" for name in unread)
        hint = " (the simulator's stimulus size is --image-size)" if kind == "simulated" and "stimulus_size" in unread else ""
        raise ConfigError(f"FMRIConfig: --data {data} never reads {what}; leave {'it' if len(unread) == 1 else 'them'} "
                          f"unset{hint}")


ABSENT_FIELDS: dict[str, object] = {"glm_scaling": "none", "readout": "decoder"}
"""Fields a run's recipe lacks when it was written before they existed, read as what that run did: bids betas in
scanner units (percent signal change became the default in the fifteenth session), the NeuroVAE's trained readout
(the ridge readout came in the sixteenth)."""


def load_trials(cfg: FMRIConfig) -> TrialData:
    """The single-trial responses named by ``cfg.data``."""
    if cfg.data == "simulated":
        return _simulated(json.dumps(cfg.sim.to_dict(), sort_keys=True))
    kind, _, path = cfg.data.partition(":")
    if not path:
        raise ConfigError(f"FMRIConfig.data: {cfg.data!r} names no path (expected {kind}:/path)")
    if kind == "bids":
        return load_bids(path, cfg.glm, cfg.mask or None, t_r=cfg.glm_tr or None, hrf_model=cfg.glm_hrf,
                         drift_order=cfg.glm_drift_order, noise_model=cfg.glm_noise_model, task=cfg.glm_task or None,
                         space=cfg.glm_space or None, desc=cfg.glm_desc or None, confounds=cfg.glm_confounds, slice_time_ref=cfg.glm_slice_time_ref,
                         scaling=cfg.glm_scaling, stimulus_size=cfg.stimulus_size)
    return load_betas(path, cfg.stimulus_size)


def load_prepared(cfg: FMRIConfig) -> tuple[TrialData, Prepared]:
    td = load_trials(cfg)
    return td, prepare(td, seed=cfg.fm.seed)


def build_path(cfg: FMRIConfig):
    """The XFM bridge: neural latent at t = 0, visual latent at t = 1."""
    base = LinearPath() if cfg.xfm_path == "linear" else VPCosinePath()
    return bridge(base, cfg.xfm_noise, "quadratic")


class XFMPairs(Dataset):
    """Paired latents: item ``{"x0": z_neu (d,), "x1": z_vis (d,)}`` (the core's bridge batch)."""

    def __init__(self, zn: torch.Tensor, zv: torch.Tensor) -> None:
        if zn.shape != zv.shape:
            raise ValueError(f"neural latents {tuple(zn.shape)} and visual latents {tuple(zv.shape)} differ")
        self.zn, self.zv = zn, zv

    def __len__(self) -> int:
        return len(self.zn)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x0": self.zn[i], "x1": self.zv[i]}


@torch.no_grad()
def latents(ae: VisualAE, vae: NeuroVAE, prep: Prepared) -> dict[str, torch.Tensor]:
    """Raw training latents and their statistics (:data:`~.neuroflow.STAT_KEYS`)."""
    zv = ae.encode(torch.as_tensor(prep.train_img))
    zn = vae.encode(torch.as_tensor(prep.train_x))[0]
    return {"zv": zv, "zn": zn, "vox_mean": torch.as_tensor(prep.mean), "vox_std": torch.as_tensor(prep.std),
            "zv_mean": zv.mean(0), "zv_std": zv.std(0).clamp_min(1e-6), "zn_mean": zn.mean(0), "zn_std": zn.std(0).clamp_min(1e-6)}


def stimulus_ids(images: np.ndarray) -> np.ndarray:
    """``(N,)`` int64: trials whose stimulus images ``(N, H, W)`` are identical share an id
    (the repeats of a stimulus)."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    _, stim = np.unique(flat, axis=0, return_inverse=True)
    return stim.reshape(-1).astype(np.int64)


def validation_split(images: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(fit, val)`` of training trials, split by stimulus (all repeats of a
    held-out stimulus are in ``val``): ``round(fraction * n_stimuli)`` random stimuli,
    none when that is 0 or would leave fewer than 2 stimuli to fit."""
    stim = stimulus_ids(images)
    n = int(stim.max()) + 1 if len(stim) else 0
    k = int(round(fraction * n))
    rows = np.arange(len(stim))
    if k < 1 or n - k < 2:
        return rows, rows[:0]
    held = np.random.default_rng(seed).choice(n, k, replace=False)
    is_val = np.isin(stim, held)
    return rows[~is_val], rows[is_val]


def vae_partners(cfg: FMRIConfig, images: np.ndarray) -> np.ndarray | None:
    """The NeuroVAE's reconstruction partners of training trials with stimuli ``images``:
    :func:`~.training.repeat_partners` of their :func:`stimulus_ids` when ``cfg.vae_target``
    is ``other_trial`` (rows without another trial reconstruct themselves), else None."""
    return repeat_partners(stimulus_ids(images)) if cfg.vae_target == "other_trial" else None


def _stage(path: Path, read, train_fn) -> tuple[torch.nn.Module, dict]:
    """A stage's ``(model, summary)``: read from ``path`` when a run already wrote it (the summary
    is then what was saved with it: loss history, best validation step), else trained."""
    if path.is_file():
        model, extra = read(path)
        return model, {"resumed": True, **extra}
    return train_fn()


def fit_neurovae(cfg: FMRIConfig, vae_cfg: NeuroVAEConfig, images: np.ndarray, tensors: tuple[torch.Tensor, ...],
                 align: float, seed: int, out: Path, trainer_args: TrainerArgs, progress: bool) -> tuple[NeuroVAE, dict]:
    """The NeuroVAE of a run folder ``out`` (its ``VAE_FILE``), fit on the training trials ``tensors`` (responses,
    then the latents their means are pulled onto with weight ``align``; ``images``: each row's stimulus): early
    stopping on the ``vae_val_fraction`` held-out stimuli chooses the step ``k``, then (``vae_refit``) a fresh
    NeuroVAE trains on every row for ``k`` steps (:class:`FMRIConfig`'s ``vae_refit``). ``train`` and ``finetune``
    (a new subject's head) both fit this way."""
    fit_rows, val_rows = validation_split(images, cfg.vae_val_fraction, seed)
    val = tuple(t[val_rows] for t in tensors) if len(val_rows) else None
    refit = cfg.vae_refit and val is not None

    def fit_vae(rows, steps: int, path: Path, val=None, notes: dict | None = None):
        """A NeuroVAE fit on ``rows`` for ``steps`` (the schedule always spans ``vae_steps``)."""
        partners = vae_partners(cfg, images[rows])
        torch.manual_seed(seed)  # the initial weights: the same whether earlier stages were trained or read from disk
        m = AutoencoderModule(NeuroVAE(vae_cfg), cfg.vae_lr, align, seed=seed, val=val,
                              val_every=cfg.vae_val_every, ema_decay=cfg.vae_ema, lr_schedule=cfg.vae_lr_schedule,
                              weight_decay=cfg.vae_weight_decay, cross_trial=partners is not None,
                              schedule_steps=cfg.vae_steps)
        return m.model, fit_autoencoder(m, tuple(t[rows] for t in tensors), cfg.fm.batch_size, steps, trainer_args,
                                        path, seed, progress, partners=partners, notes=notes)

    # with a refit to follow, the selection run gets its own file: VAE_FILE (what a resumed run reads as this
    # stage's result) is only ever the NeuroVAE the run keeps, even when training stops between the two
    select = out / SELECT_FILE if refit else out / VAE_FILE
    model, s = fit_vae(fit_rows, cfg.vae_steps, select, val)
    if not refit:
        return model, s
    k = max(1, int(s["best_step"]))
    notes = {"best_step": k, "val_history": s["val_history"], "refit_steps": k, "refit_rows": len(images)}
    model, s = fit_vae(np.arange(len(images)), k, out / VAE_FILE, notes=notes)
    for f in (select, select.with_suffix(".json")):
        f.unlink(missing_ok=True)
    return model, s


def resumed_stimulus_size(cfg: FMRIConfig, out: Path) -> FMRIConfig:
    """``cfg`` to read the data of a training into ``out`` with: where ``out`` already holds a visual AE (a resumed
    run), stimuli at that AE's size (a run trained before stimulus_size resized stimulus arrays holds one at their
    own size, its recipe the default, which the run keeps); a ``stimulus_size`` set to another size is refused,
    since the AE stage is not retrained."""
    if not (out / AE_FILE).is_file() or source_kind(cfg.data) == "simulated":
        return cfg
    size = load_ae(out / AE_FILE).cfg.image_size
    if cfg.stimulus_size == size:
        return cfg
    if cfg.stimulus_size != FMRIConfig.stimulus_size:
        raise ConfigError(f"FMRIConfig.stimulus_size: {out} holds a visual AE trained on {size} x {size} stimuli, which "
                          f"this run resumes; --stimulus-size {cfg.stimulus_size} needs a new run folder")
    return cfg.replace(stimulus_size=size)


def train(cfg: FMRIConfig, trainer_args: TrainerArgs, out_dir: str | Path, progress: bool = True,
          data: tuple[TrialData, Prepared] | None = None) -> dict:
    """Train the stages (visual AE, NeuroVAE, XFM, readout) into ``out_dir``, and the decoding metrics' feature network
    (``data``: already loaded data, else ``cfg.data`` is loaded). Returns per-stage summaries."""
    out = Path(out_dir)
    check_source_fields(cfg.data, {name: getattr(cfg, name) for name in SOURCE_FIELDS})
    cfg = with_absolute_paths(cfg)
    td, prep = data or load_prepared(resumed_stimulus_size(cfg, out))
    if prep.train_img.shape[-1] != prep.train_img.shape[-2]:  # refused before anything is written
        raise ValueError(f"{td.source}: stimuli must be square; got {prep.train_img.shape[1:]}")
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(out, NAME, cfg, absent=ABSENT_FIELDS)
    save_mask(td, out / "mask.nii.gz")
    seed = cfg.fm.seed
    ae_cfg = AEConfig(image_size=prep.train_img.shape[-1], hidden=cfg.ae_hidden, latent=cfg.latent)

    # every stage seeds its initial weights itself, so a run that reads earlier stages from disk (resumed) trains
    # the later ones exactly as a run that trained them all
    def train_ae():
        torch.manual_seed(seed)
        m = AutoencoderModule(VisualAE(ae_cfg), cfg.ae_lr, seed=seed)
        s = fit_autoencoder(m, (torch.as_tensor(prep.train_img),), cfg.fm.batch_size, cfg.ae_steps, trainer_args,
                            out / AE_FILE, seed, progress)
        return m.model, s

    ae, ae_sum = _stage(out / AE_FILE, read_ae, train_ae)

    def train_features():  # the decoding metrics' feature space (models.FeatureNet), apart from the model
        torch.manual_seed(seed + 2)
        m = AutoencoderModule(FeatureNet(FeatureNetConfig(image_size=ae_cfg.image_size)), cfg.ae_lr, seed=seed + 2)
        s = fit_autoencoder(m, (torch.as_tensor(prep.train_img),), cfg.fm.batch_size, cfg.ae_steps, trainer_args,
                            out / FEATURES_FILE, seed + 2, progress)
        return m.model, s

    _, features_sum = _stage(out / FEATURES_FILE, read_features, train_features)
    vae_cfg = NeuroVAEConfig(voxels=prep.train_x.shape[1], hidden=cfg.vae_hidden, latent=cfg.latent, beta=cfg.vae_beta,
                             dropout=cfg.vae_dropout)

    def train_vae():
        tensors = (torch.as_tensor(prep.train_x),)
        if cfg.vae_align > 0:  # targets: the standardised visual latents of the trials' stimuli
            with torch.no_grad():
                zv = ae.encode(torch.as_tensor(prep.train_img))
            tensors += ((zv - zv.mean(0)) / zv.std(0).clamp_min(1e-6),)
        return fit_neurovae(cfg, vae_cfg, prep.train_img, tensors, cfg.vae_align, seed + 1, out, trainer_args, progress)

    vae, vae_sum = _stage(out / VAE_FILE, read_vae, train_vae)
    ae.eval(), vae.eval()
    lat = latents(ae, vae, prep)
    save_stats(out / STATS_FILE, lat)
    zv = (lat["zv"] - lat["zv_mean"]) / lat["zv_std"]
    zn = (lat["zn"] - lat["zn_mean"]) / lat["zn_std"]
    torch.manual_seed(seed + 3)
    module = FlowMatchingModule(build_xfm(cfg.latent, cfg.xfm_hidden, cfg.xfm_depth), build_path(cfg), cfg.fm)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(XFMPairs(zn, zv), batch_size=min(cfg.fm.batch_size, len(zn)), shuffle=True, drop_last=True, generator=g)
    with quiet_lightning():
        res = fit(module, loader, out, trainer_args, progress=progress)
    final = res.history[-1][1] if res.history else math.nan
    summary = {"steps": res.step, "final_loss": final, "checkpoint": str(res.checkpoint),  # the XFM's, as the CLI prints
               "ae": ae_sum, "features": features_sum, "neurovae": vae_sum,
               "xfm": {"steps": res.step, "final_loss": final, "history": res.history},
               "voxels": int(prep.train_x.shape[1]), "train_trials": int(len(prep.train_x)), "test_stimuli": int(len(prep.test_x))}
    if cfg.readout == "ridge":
        nf = NeuroFlow(ae, vae, module.network(use_ema=True).eval(), lat, cfg.solver)
        summary["readout"] = readout_stage(cfg, nf, prep, out)
    return summary


def readout_fingerprint(cfg: FMRIConfig, nf: NeuroFlow) -> str:
    """:func:`~.readout.fingerprint` of ``nf`` (its XFM, trained NeuroVAE and statistics) on ``cfg``'s sampler."""
    return fingerprint(nf.xfm, nf.vae, nf.stats, STAT_KEYS, cfg.steps, cfg.solver)


def readout_stage(cfg: FMRIConfig, nf: NeuroFlow, prep: Prepared, out: Path) -> dict:
    """The summary of ``out``'s readout: read when it was fitted on ``nf`` as it is, else refit on ``nf``'s encoding
    path (``cfg.steps`` of ``cfg.solver``) over the training stimuli of ``prep`` (:func:`~.readout.refit_readout`)
    and saved (a readout of an earlier XFM, NeuroVAE or sampler is never reused). Runs on the CPU (after a GPU fit,
    the networks may be left on either device)."""
    nf = nf.to("cpu")
    fitted_on = readout_fingerprint(cfg, nf)
    saved = current_readout(out / READOUT_FILE, fitted_on)
    if saved is not None:
        return {"resumed": True, **saved}

    def latent_of(img: torch.Tensor) -> torch.Tensor:  # the raw neural latent the encoder decodes
        return nf.raw_neural(nf.flow(nf.visual_latent(img), 1.0, 0.0, cfg.steps, cfg.solver))

    vae, summary = refit_readout(nf.vae, latent_of, prep.train_img, prep.train_x)
    save_readout(out / READOUT_FILE, vae, summary, fitted_on)
    return summary


def restore(ckpt_dir: str | Path, readout: bool = True) -> tuple[FMRIConfig, NeuroFlow]:
    """``(recipe, NeuroFlow with the XFM's EMA weights)`` of a run folder; ``readout`` False: with the NeuroVAE as
    trained, whatever the recipe's readout (finetune, which keeps only the visual AE, XFM and statistics)."""
    ckpt_dir = Path(ckpt_dir)
    cfg = load_recipe(ckpt_dir, NAME, FMRIConfig, inert=inert_fields, absent=ABSENT_FIELDS)
    xfm = build_xfm(cfg.latent, cfg.xfm_hidden, cfg.xfm_depth)
    load_weights(ckpt_dir, xfm, use_ema=True)
    model = NeuroFlow(load_ae(ckpt_dir / AE_FILE), load_vae(ckpt_dir / VAE_FILE), xfm.eval(),
                      load_stats(ckpt_dir / STATS_FILE), cfg.solver)
    if cfg.readout == "ridge" and readout:
        if not (ckpt_dir / READOUT_FILE).is_file():
            raise CheckpointError(f"{ckpt_dir / READOUT_FILE}: the encoding path's ridge readout is missing (the run "
                                  f"stopped before it); rerun the command that made the run ('modaflow train fmri ... "
                                  f"--out {ckpt_dir}' keeps the trained stages and fits only the readout; a 'modaflow "
                                  f"finetune fmri' trains the new subject again)")
        apply_readout(ckpt_dir / READOUT_FILE, model.vae, readout_fingerprint(cfg, model))
    # its stimuli at the size its visual AE was trained on (a run on stimulus arrays trained before stimulus_size
    # resized them read them at their own size, whatever its recipe says)
    return cfg.replace(stimulus_size=model.ae.cfg.image_size), model


def evaluate(ckpt_dir: str | Path, data: str | None, n: int, steps: int | None, solver: str | None, seed: int,
             options: Config | None = None) -> dict:
    """Encoding, decoding and cycle metrics on the test stimuli (of the training data, or
    of ``data``, whose voxels must match the run's) at ``steps`` ODE steps; ``n`` caps the
    number of test stimuli (0 = all)."""
    from .evaluation import score_neuroflow

    from .sampling import SampleOptions

    opts = options if isinstance(options, SampleOptions) else SampleOptions()
    if opts.replace(device="auto") != SampleOptions():  # sample's other options, set: refuse rather than ignore
        raise ConfigError("evaluate fmri scores both directions on the test stimuli; --direction and --input are "
                          "options of 'modaflow sample fmri' (give other data with --data)")
    cfg, model = restore(ckpt_dir)
    model = model.to(pick_device(opts.device))
    features_path = Path(ckpt_dir) / FEATURES_FILE
    if not features_path.is_file():  # a run trained before the metrics' feature network existed
        raise FileNotFoundError(f"{features_path}: the decoding metrics' feature network is missing (a run trained "
                                f"before it existed); rerun the run's 'modaflow train fmri ... --out {ckpt_dir}': it keeps "
                                f"the trained stages and trains only this network. A run made by 'finetune': copy "
                                f"features.safetensors and features.json from the run it was fine-tuned from (after "
                                f"adding them there)")
    # other data's stim_file images are read at the visual AE's size, as the run's own were
    td, prep = load_prepared(cfg if data is None else cfg.replace(data=data, stimulus_size=model.ae.cfg.image_size))
    check_stimulus_size(td.images, model.ae, data or cfg.data, ckpt_dir)
    if prep.test_x.shape[1] != model.vae.cfg.voxels:
        raise ValueError(f"{data}: {prep.test_x.shape[1]} voxels, the run {ckpt_dir} has {model.vae.cfg.voxels}")
    k = len(prep.test_x) if n <= 0 else min(n, len(prep.test_x))
    if k < 2:  # voxel r, identification and retrieval compare test stimuli with each other
        raise ValueError(f"{data or cfg.data}: evaluation needs at least 2 test stimuli; got {k}"
                         + (f" (--n {n} of {len(prep.test_x)})" if k < len(prep.test_x) else ""))
    trials = None if prep.test_trials is None else prep.test_trials[:k]
    scores = score_neuroflow(model, prep.test_x[:k], prep.test_img[:k], trials, steps or cfg.steps,
                             solver or cfg.solver, load_features(features_path).encode, cfg.n_candidates, seed)
    # top-1 retrieval draws its candidates among the k test stimuli: chance is 1 / min(n_candidates, k)
    return {**dict(scores), "n_test": k, "retrieval_candidates": min(cfg.n_candidates, k), "steps": steps or cfg.steps}
