"""``sample`` (both directions, file in -> file out) and ``finetune`` (a new subject: a new
NeuroVAE head on the same XFM) of the fmri modality.

Inputs and outputs of ``sample``:

* ``--direction encode``: images in -> predicted responses out. ``--input``: ``.npy``
  ``(N, H, W)`` or ``(H, W)`` in [0, 1] (or 0..255), or a ``.png``; empty = the run's test
  stimuli. Output ``.nii``/``.nii.gz``: a 4-D image on the run's mask, one volume per
  stimulus, in the response units of the training data (z-scores undone); ``.npy``: ``(N, V)``.
* ``--direction decode``: responses in -> images out. ``--input``: ``.npy`` ``(N, V)`` raw
  responses, or a 3-D/4-D NIfTI on the run's mask; empty = the run's averaged test
  responses. Output ``.png`` (a grid) or ``.npy`` ``(N, H, W)``.

``--device auto|cpu|cuda`` chooses where the networks run (``evaluate`` too); the ODE is
deterministic, so devices differ only by floating-point rounding.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from modaflow.core.config import Config, ConfigError
from modaflow.core.devices import DeviceName, pick_device
from modaflow.core.io import atomic_write, read_npy
from modaflow.core.training import TrainerArgs

from ..runs import load_recipe, save_recipe
from .data import IMAGE_SUFFIXES, nifti_in_space, prepare, read_image_file, save_mask, stimulus_images
from .models import NeuroVAEConfig
from .neuroflow import AE_FILE, FEATURES_FILE, STATS_FILE, VAE_FILE, NeuroFlow, check_stimulus_size, save_stats
from .recipe import (ABSENT_FIELDS, NAME, SOURCE_FIELDS, FMRIConfig, check_source_fields, source_kind, fit_neurovae, inert_fields, readout_stage, load_prepared, load_trials, restore,
                     stored_data, with_absolute_paths)

__all__ = ["SampleOptions", "sample", "finetune", "read_images", "read_responses", "save_image_grid"]


@dataclass
class SampleOptions(Config):
    """What ``modaflow sample fmri`` does."""

    direction: Literal["encode", "decode"] = "decode"
    """encode: stimuli -> brain responses (NIfTI/NPY); decode: brain responses -> images (PNG/NPY)."""
    input: str = ""
    """encode: .npy images or one image file (PNG, JPEG, TIFF, BMP); decode: .npy responses (N, V) or NIfTI on the run's
    mask. '' = the test set."""
    device: DeviceName = "auto"
    """Where the networks run: auto (a GPU when torch sees one), cpu or cuda (also for ``evaluate``)."""


def read_images(path: str | Path, size: int) -> np.ndarray:
    """Images ``(N, size, size)`` float32 in [0, 1] from ``.npy`` (square ``(N, H, W)``, ``(H, W)`` or RGB(A)
    ``(N, H, W, 3|4)``, in [0, 1] or 0..255, resized: :func:`~.data.stimulus_images`) or one image file
    (:func:`~.data.read_image_file`: any size, resized; grey, grey + alpha, RGB(A), 8 or 16 bits)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input images not found")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image_file(path, size)[None]
    if path.suffix.lower() != ".npy":
        raise ValueError(f"{path}: expected .npy images (N, H, W) or an image file ({', '.join(IMAGE_SUFFIXES)})")
    arr = read_npy(path, "images (N, H, W)", mmap=True)
    return stimulus_images(arr[None] if arr.ndim == 2 else arr, str(path), size)


def read_responses(path: str | Path, ckpt_dir: Path, voxels: int) -> np.ndarray:
    """Raw responses ``(N, V)`` from ``.npy`` or a NIfTI on the run's mask."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input responses not found")
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        mask_path = ckpt_dir / "mask.nii.gz"
        data = np.asarray(nib.load(path).dataobj, np.float32)
        data = data[..., None] if data.ndim == 3 else data
        if not mask_path.is_file():  # a run without a mask (betas data) writes voxels as a (V, 1, 1, N) image
            if data.shape[1:3] != (1, 1):
                raise ValueError(f"{path}: the run has no mask ({mask_path} does not exist), so a NIfTI input must be "
                                 f"the (V, 1, 1, N) image its encoding writes; got shape {data.shape} (or use .npy)")
            arr = data[:, 0, 0, :].T
        else:
            img, mask = nib.load(path), nib.load(mask_path)
            if data.shape[:3] != mask.shape[:3] or not np.allclose(img.affine, mask.affine, atol=1e-4):
                raise ValueError(f"{path}: shape {data.shape[:3]} / affine do not match the run's mask {mask_path} "
                                 f"{mask.shape}")
            arr = data[np.asarray(mask.dataobj) > 0].T  # (N, V), C order of the mask
    elif path.suffix.lower() == ".npy":
        arr = read_npy(path, "responses (N, V)").astype(np.float32)
        arr = arr[None] if arr.ndim == 1 else arr
    else:
        raise ValueError(f"{path}: expected .npy responses (N, V) or a NIfTI image")
    if arr.ndim != 2 or arr.shape[1] != voxels:
        raise ValueError(f"{path}: expected responses (N, {voxels}); got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: responses hold NaN/Inf")
    return arr


def save_image_grid(path: str | Path, images: np.ndarray, ncols: int = 10) -> Path:
    """A PNG grid of greyscale images ``(N, H, W)`` in [0, 1] (one pixel of padding)."""
    from PIL import Image

    n, h, w = images.shape
    cols = min(ncols, n)
    rows = -(-n // cols)
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1), np.float32)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = im
    pixels = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    atomic_write(Path(path), lambda p: Image.fromarray(pixels, mode="L").save(p, format="PNG"))
    return Path(path)


def _save_npy(path: Path, arr: np.ndarray) -> Path:
    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)

    atomic_write(path, write)
    return path


def _write_voxels(out: Path, raw: np.ndarray, ckpt_dir: Path) -> Path:
    if out.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        mask_path = ckpt_dir / "mask.nii.gz"
        if mask_path.is_file():
            mask = nib.load(mask_path)
            m = np.asarray(mask.dataobj) > 0
            vol = np.zeros(m.shape + (len(raw),), np.float32)
            vol[m] = raw.T
            img = nifti_in_space(vol, mask.affine, int(mask.header["sform_code"]))  # the mask's world space (MNI: 4)
            img.header.set_xyzt_units("mm")
        else:  # no mask known (betas data): a (V, 1, 1, N) image with an identity affine
            img = nib.Nifti1Image(raw.T[:, None, None, :].astype(np.float32), np.eye(4))
        data = img.to_bytes()
        data = gzip.compress(data) if out.name.endswith(".gz") else data
        atomic_write(out, lambda p: p.write_bytes(data))
        return out
    if out.suffix.lower() == ".npy":
        return _save_npy(out, raw.astype(np.float32))
    raise ValueError(f"{out}: encoding writes .nii, .nii.gz or .npy")


def sample(ckpt_dir: str | Path, n: int, steps: int | None, solver: str | None, out_path: str | Path, seed: int,
           options: SampleOptions | None = None) -> Path:
    """Encode stimuli into responses or decode responses into images (see the module doc);
    ``n`` caps the number of items (0 = all). The ODE is deterministic; ``seed`` is unused."""
    ckpt_dir, out = Path(ckpt_dir), Path(out_path)
    opts = options or SampleOptions()
    cfg, model = restore(ckpt_dir)
    model = model.to(pick_device(opts.device))
    steps, solver = steps or cfg.steps, solver or cfg.solver
    out.parent.mkdir(parents=True, exist_ok=True)
    if opts.direction == "encode":
        size = model.ae.cfg.image_size
        imgs = read_images(opts.input, size) if opts.input else load_prepared(cfg)[1].test_img
        imgs = imgs[: n or None]
        z = model.encode(torch.as_tensor(imgs), steps, solver)
        return _write_voxels(out, model.unzscore(z).cpu().numpy(), ckpt_dir)
    if opts.input:
        x = model.zscore(torch.as_tensor(read_responses(opts.input, ckpt_dir, model.vae.cfg.voxels)))
    else:
        x = torch.as_tensor(load_prepared(cfg)[1].test_x)
    imgs = model.decode(x[: n or None], steps, solver).cpu().numpy()
    if out.suffix.lower() == ".png":
        return save_image_grid(out, imgs)
    if out.suffix.lower() == ".npy":
        return _save_npy(out, imgs)
    raise ValueError(f"{out}: decoding writes .png or .npy")


def finetune(ckpt_dir: str | Path, data: str, out_dir: str | Path, overrides: dict, trainer_args: TrainerArgs,
             progress: bool = True) -> dict:
    """A new subject on the same XFM: train a new NeuroVAE on ``data`` whose latents are
    pulled (``align_weight``) onto the XFM's encoding of the same stimuli (integrated from
    the visual latent at t = 1 to t = 0); the visual AE, XFM, latent statistics and the
    metrics' feature network are copied unchanged. ``overrides`` may change vae_* fields, align_weight and the data
    source settings (sim, glm, mask). On data other than the base run's, ``mask``, ``glm_tr`` and the preprocessed
    runs' settings (``glm_space``, ``glm_desc``, ``glm_confounds``, ``glm_slice_time_ref``) start from their defaults
    (ROOT/mask.nii.gz; the runs' sidecars; ...), not from the base run's subject."""
    ckpt_dir, out = Path(ckpt_dir), Path(out_dir)
    base = load_recipe(ckpt_dir, NAME, FMRIConfig, inert=inert_fields, absent=ABSENT_FIELDS)
    allowed = {"sim", "glm", "glm_noise_model", "glm_hrf", "glm_drift_order", "glm_tr", "glm_task", "glm_space", "glm_desc", "glm_confounds",
               "glm_slice_time_ref", "glm_scaling", "mask", "vae_hidden", "vae_steps", "vae_lr", "vae_beta", "vae_dropout",
               "vae_val_fraction", "vae_val_every", "vae_ema", "vae_refit", "align_weight", "steps", "solver"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ConfigError(f"finetune cannot change {bad}: the visual AE and XFM are shared (allowed: {sorted(allowed)})")
    check_source_fields(data, overrides)
    merged = base.to_dict()
    if stored_data(data) != base.data:
        # another subject's data: its own mask image and TR, not those the base run's data needed
        merged.update(mask=FMRIConfig.mask, glm_tr=FMRIConfig.glm_tr, glm_space=FMRIConfig.glm_space,
                      glm_desc=FMRIConfig.glm_desc, glm_confounds=FMRIConfig.glm_confounds,
                      glm_slice_time_ref=FMRIConfig.glm_slice_time_ref)
    for key, value in overrides.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    _, model = restore(ckpt_dir, readout=False)  # its visual AE, XFM and statistics; the readout is the base subject's
    if source_kind(data) in SOURCE_FIELDS["stimulus_size"]:
        merged["stimulus_size"] = model.ae.cfg.image_size  # stimuli are read at the shared visual AE's size
    else:  # the simulator sets its own (its image_size); the field stays unset for a source that never reads it
        merged["stimulus_size"] = FMRIConfig.stimulus_size
    cfg = with_absolute_paths(FMRIConfig.from_dict({**merged, "data": data}))
    td = load_trials(cfg)
    check_stimulus_size(td.images, model.ae, data, ckpt_dir)
    prep = prepare(td, seed=cfg.fm.seed)
    if not (ckpt_dir / FEATURES_FILE).is_file():  # checked before anything is written
        raise FileNotFoundError(f"{ckpt_dir / FEATURES_FILE}: the decoding metrics' feature network is missing (a run "
                                f"trained before it existed); rerun the run's 'modaflow train fmri ... --out {ckpt_dir}' "
                                f"first: it keeps the trained stages and trains only this network")
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(out, NAME, cfg, absent=ABSENT_FIELDS)
    for name in (AE_FILE, FEATURES_FILE, "checkpoints"):
        src, dst = ckpt_dir / name, out / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
            shutil.copy2(src.with_suffix(".json"), dst.with_suffix(".json"))
    save_mask(td, out / "mask.nii.gz")
    img = torch.as_tensor(prep.train_img)
    zn_std = model.flow(model.visual_latent(img), 1.0, 0.0, cfg.steps, cfg.solver)
    target = model.raw_neural(zn_std)  # raw neural-latent space of the XFM
    vae_cfg = NeuroVAEConfig(voxels=prep.train_x.shape[1], hidden=cfg.vae_hidden, latent=cfg.latent,
                             beta=cfg.vae_beta, dropout=cfg.vae_dropout)
    tensors = (torch.as_tensor(prep.train_x), target)
    # early stopping and refit as the recipe's NeuroVAE (recipe.fit_neurovae), pulled onto the XFM's latents
    vae, summary = fit_neurovae(cfg, vae_cfg, prep.train_img, tensors, cfg.align_weight, cfg.fm.seed + 2, out,
                                trainer_args, progress)
    stats = {**model.stats, "vox_mean": torch.as_tensor(prep.mean), "vox_std": torch.as_tensor(prep.std)}
    save_stats(out / STATS_FILE, stats)
    new = NeuroFlow(model.ae, vae.eval(), model.xfm, stats, cfg.solver)
    with torch.no_grad():
        mu = new.neural_latent(torch.as_tensor(prep.train_x))
    summary["align_rmse"] = float(((mu - zn_std) ** 2).mean().sqrt())
    if cfg.readout == "ridge":  # the new subject's readout on the shared encoding path
        summary["readout"] = readout_stage(cfg, new, prep, out)
    summary["voxels"] = int(prep.train_x.shape[1])
    return summary
