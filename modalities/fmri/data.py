"""Trial responses paired with stimuli: containers, checks, file loaders, the train/test split.

* :class:`TrialData` — single-trial responses ``(N, V)``, the stimulus shown on each trial
  (``stim_id`` ``(N,)`` into ``images`` ``(S, H, W)``), and the mask/affine when known.
* :func:`load_betas` — precomputed responses (NSD-style): an HDF5 file or a folder of NPY
  files with ``responses`` ``(N, V)``, ``stimuli`` ``(S, H, W)`` and optionally
  ``stim_id`` ``(N,)`` (without it each trial has its own image, ``S == N``); only the images trials show are read,
  resized to the run's stimulus size (:func:`stimulus_images`).
* :func:`prepare` — the split: test stimuli are given, or those shown at least twice when
  others are shown once, or a random fraction of the stimuli;
  responses are z-scored per voxel with the training trials' mean and standard deviation,
  and test responses are averaged over repeats (their single trials kept for the noise
  ceiling).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from modaflow.core.io import read_npy

__all__ = ["TrialData", "Prepared", "save_mask", "nifti_in_space", "read_image_file", "IMAGE_SUFFIXES", "check_trials", "check_responses", "images01", "stimulus_images", "shown_stimuli", "stimulus_indices", "load_betas", "save_betas", "prepare", "ResponseDataset"]


@dataclass(frozen=True)
class TrialData:
    """Single-trial responses and their stimuli.

    Attributes:
        responses: ``(N, V)`` float32.
        stim_id: ``(N,)`` int64, index into ``images``.
        images: ``(S, H, W)`` float32 in [0, 1].
        source: where it came from (named in errors).
        test_stimuli: stimulus ids of the test set, or None (then: those shown >= 2 times).
        mask: ``(X, Y, Z)`` bool brain mask whose C-order voxels are the columns, or None.
        affine: ``(4, 4)`` voxel-to-world matrix of the mask, or None.
        space_code: the NIfTI xform code of that world space, as the mask image says it (4 = MNI152,
            3 = Talairach, 2 = aligned to an anatomy, 1 = scanner); 0 = not known (written as 2).
        image_ids: ``(S,)`` the row of each of ``images`` in the source's stimulus array, where only the images
            trials show were read (betas, a BIDS stimuli.npy); None = ``images`` is that array.
    """

    responses: np.ndarray
    stim_id: np.ndarray
    images: np.ndarray
    source: str
    test_stimuli: np.ndarray | None = None
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None
    space_code: int = 0
    image_ids: np.ndarray | None = None


def save_mask(td: TrialData, path: Path) -> None:
    """Write ``td``'s mask as a uint8 NIfTI at ``path`` with its affine as both sform and qform,
    coded with its world space (``td.space_code``, 2 = aligned when not known); nothing without a
    mask and affine."""
    if td.mask is None or td.affine is None:
        return
    import nibabel as nib

    nib.save(nifti_in_space(td.mask.astype(np.uint8), td.affine, td.space_code), path)


def nifti_in_space(data: np.ndarray, affine: np.ndarray, space_code: int):
    """A NIfTI-1 image of ``data`` whose sform and qform both hold ``affine``, coded ``space_code``
    (2 = aligned when 0, not known)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=space_code or 2)
    img.set_qform(affine, code=space_code or 2)
    return img


def check_trials(td: TrialData) -> TrialData:
    """Raise ``ValueError`` naming ``td.source`` for: wrong ranks, stimuli and responses of
    different counts, out-of-range stimulus ids, NaN/Inf voxels or images, a mask that does not hold
    V voxels (:func:`check_responses`, then the images). Returns ``td``."""
    check_responses(td.responses, td.stim_id, len(td.images), td.source, td.test_stimuli, td.mask, td.affine)
    if td.images.ndim != 3:
        raise ValueError(f"{td.source}: stimuli must be (S, H, W) greyscale images; got shape {td.images.shape}")
    if not np.isfinite(td.images).all():
        raise ValueError(f"{td.source}: stimulus images hold NaN/Inf")
    return td


def check_responses(responses: np.ndarray, stim_id: np.ndarray, n_images: int, src: str,
                    test_stimuli: np.ndarray | None = None, mask: np.ndarray | None = None,
                    affine: np.ndarray | None = None) -> None:
    """The checks of :func:`check_trials` that need no image, only their count ``n_images`` (a loader runs them
    before it reads any image): ranks, counts, stimulus and test ids in range, NaN/Inf voxels, mask and affine."""
    if responses.ndim != 2 or responses.shape[0] < 2 or responses.shape[1] < 1:
        raise ValueError(f"{src}: responses must be (N trials, V voxels) with N >= 2; got shape {responses.shape}")
    N, V = responses.shape
    if stim_id.ndim != 1:
        raise ValueError(f"{src}: stim_id must be one id per trial, shape ({N},); got shape {stim_id.shape}")
    if stim_id.shape != (N,):
        raise ValueError(f"{src}: stimuli and responses have different counts: {stim_id.shape[0]} stimulus "
                         f"ids for {N} response trials")
    if N and (stim_id.min() < 0 or stim_id.max() >= n_images):
        raise ValueError(f"{src}: stim_id must index the {n_images} stimuli; got range [{stim_id.min()}, {stim_id.max()}]")
    bad = ~np.isfinite(responses).all(axis=0)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(f"{src}: {len(idx)} of {V} voxels hold NaN/Inf responses (first: {idx[:5].tolist()}); "
                         f"remove them from the mask or fix the GLM")
    if mask is not None and int(mask.sum()) != V:
        raise ValueError(f"{src}: the mask holds {int(mask.sum())} voxels but the responses have V = {V}")
    if test_stimuli is not None:
        t = np.asarray(test_stimuli)
        if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer) or (t.size and (t.min() < 0 or t.max() >= n_images)):
            raise ValueError(f"{src}: test_stimuli must be integer ids of the {n_images} stimuli; got shape "
                             f"{t.shape}, dtype {t.dtype}" + (f", range [{t.min()}, {t.max()}]" if t.size and t.ndim == 1 else ""))
    if affine is not None and (np.shape(affine) != (4, 4) or not np.isfinite(affine).all()):
        raise ValueError(f"{src}: affine must be a finite 4 x 4 voxel-to-world matrix; got shape {np.shape(affine)}")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
"""Image files read as stimuli (:func:`read_image_file`)."""


BACKGROUND = 0.5
"""Grey level that transparent pixels of a stimulus image show (a mid-grey screen, as in most fMRI experiments)."""


def read_image_file(path: str | Path, size: int) -> np.ndarray:
    """One image file (PNG, JPEG, TIFF, BMP; grey, palette, RGB, CMYK, with or without alpha; 8
    or 16 bits, or float) as ``(size, size)`` float32 luminance in [0, 1] (ITU-R BT.601, as
    :func:`images01`), transparent pixels over :data:`BACKGROUND` grey, resized with
    anti-aliasing (a non-square image is stretched: crop it square first to keep its aspect)."""
    from PIL import Image, UnidentifiedImageError
    from skimage.transform import resize

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: stimulus image not found")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: expected an image file ({', '.join(IMAGE_SUFFIXES)})")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I;16"):  # 16 bits
                raw = np.asarray(im, dtype=np.float64) / 65535.0
            elif im.mode in ("I", "F"):  # 32-bit integers or floats: images01 reads their range
                raw = np.asarray(im)
            else:
                if "A" in im.mode or "transparency" in im.info:
                    rgba = im.convert("RGBA")
                    grey = round(255 * BACKGROUND)
                    im = Image.alpha_composite(Image.new("RGBA", rgba.size, (grey, grey, grey, 255)), rgba)
                raw = np.asarray(im.convert("L"))  # palette, CMYK, YCbCr, RGB -> BT.601 luma
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    arr = images01(raw[None], str(path))[0]
    return resize(arr, (size, size), anti_aliasing=True).astype(np.float32)


OVERSHOOT = 1e-3
"""How far float images in [0, 1] may stray outside it (resampling overshoot) before they are clipped rather than refused."""

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
"""RGB weights of luminance (ITU-R BT.601)."""

CHUNK_VALUES = 1 << 24
"""Stimulus values :func:`stimulus_images` converts at a time (64 MB of float32): a large stimulus array (NSD's
73 000 x 425 x 425 x 3) is never held whole."""


def _check_encoding(dtype: np.dtype, source: str) -> None:
    if not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise ValueError(f"{source}: stimulus images must be numbers; got dtype {dtype}")


def _luminance(raw: np.ndarray, source: str) -> np.ndarray:
    """Float32 values of ``raw`` in its own units, RGB(A) in the last axis as luminance; NaN/Inf refused."""
    if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
        raise ValueError(f"{source}: stimulus images hold NaN/Inf")
    out = raw.astype(np.float32)
    return out[..., :3] @ LUMA if out.ndim == 4 and out.shape[-1] in (3, 4) else out


def _scale(dtype: np.dtype, lo: float, hi: float, source: str) -> float:
    """What an encoding's values are divided by to lie in [0, 1] (:func:`images01`), from its dtype and range."""
    if np.issubdtype(dtype, np.integer):
        if lo < 0 or hi > 255:
            raise ValueError(f"{source}: integer stimulus images must be 8-bit (0..255); got range [{lo:g}, {hi:g}]")
        return 255.0 if hi > 1 else 1.0  # 0/1 integers: binary images, as bool arrays
    if lo < -OVERSHOOT or 1 + OVERSHOOT < hi <= 2 or hi > 255:
        raise ValueError(f"{source}: stimulus images must lie in [0, 1] or in 0..255; got range [{lo:g}, {hi:g}]")
    return 255.0 if hi > 2 else 1.0


def images01(images: np.ndarray, source: str) -> np.ndarray:
    """Stimulus images as float32 luminance in [0, 1], from the encodings users hold:
    integer arrays in 0..255 (8-bit; only 0 and 1: binary, as bool arrays) and float arrays in [0, 1] (clipped within
    :data:`OVERSHOOT`) or in 0..255 (their maximum above 2: scaled by 1/255); RGB(A) in the last
    axis becomes luminance (ITU-R BT.601). Anything else (NaN/Inf, negative values, floats whose
    maximum lies in (1, 2], integers above 255) is refused with an error naming ``source``."""
    arr = np.asarray(images)
    _check_encoding(arr.dtype, source)
    if arr.size == 0:
        raise ValueError(f"{source}: no stimulus images (shape {arr.shape})")
    out = _luminance(arr, source)
    return np.clip(out / np.float32(_scale(arr.dtype, float(arr.min()), float(arr.max()), source)), 0.0, 1.0)


def _check_stimulus_array(stimuli, source: str) -> tuple[int, ...]:
    """The shape of a stimulus array (not read), refused unless square ``(S, H, W)`` or ``(S, H, W, 3|4)`` numbers."""
    shape = tuple(stimuli.shape)
    _check_encoding(np.dtype(stimuli.dtype), source)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (3, 4))):
        raise ValueError(f"{source}: stimuli must be (S, H, W) greyscale or (S, H, W, 3) RGB images; got shape {shape}")
    if shape[1] != shape[2]:
        raise ValueError(f"{source}: stimuli must be square; got {shape[1:3]} (crop them square first)")
    return shape


def stimulus_images(stimuli, source: str, size: int | None = None, rows: np.ndarray | None = None) -> np.ndarray:
    """Images ``rows`` (None = all) of ``stimuli`` -- an array, a memory-mapped ``.npy``
    (:func:`~modaflow.core.io.read_npy` with ``mmap``) or an h5py dataset, ``(S, H, W)`` or RGB(A) ``(S, H, W, 3|4)``,
    in any encoding :func:`images01` reads -- as ``(len(rows), size, size)`` float32 luminance in [0, 1], resized with
    anti-aliasing (``size`` None: their own size). Read :data:`CHUNK_VALUES` values at a time, so only the rows named
    are ever read and a large array is never converted whole. Non-square images are refused (crop them first: their
    aspect would be lost). The encoding (0..255 or [0, 1]) is judged on the rows read, as :func:`images01` judges
    its whole array: rows that are all dark (every value <= 1 in an integer array, <= 2 in a float one) would be
    taken for [0, 1] images, which real stimulus sets never are."""
    from skimage.transform import resize

    shape, dtype = _check_stimulus_array(stimuli, source), np.dtype(stimuli.dtype)
    rows, order = (np.arange(shape[0]), None) if rows is None else np.unique(np.asarray(rows, np.int64), return_inverse=True)
    if rows.size == 0 or shape[1] == 0:
        raise ValueError(f"{source}: no stimulus images (shape {shape})")
    if rows[0] < 0 or rows[-1] >= shape[0]:
        raise ValueError(f"{source}: image rows must lie in [0, {shape[0]}); got [{rows[0]}, {rows[-1]}]")
    size = size or shape[1]
    per = max(1, CHUNK_VALUES // int(np.prod(shape[1:])))
    out = np.empty((len(rows), size, size), np.float32)
    lo, hi = np.inf, -np.inf
    for start in range(0, len(rows), per):
        idx = rows[start:start + per]
        # a dense run as one slice, else image by image (h5py's fancy indexing is ~50x slower than row reads)
        dense = idx[-1] - idx[0] < 2 * len(idx)
        raw = np.asarray(stimuli[idx[0]:idx[-1] + 1])[idx - idx[0]] if dense else np.stack([stimuli[i] for i in idx])
        lo, hi = min(lo, float(raw.min())), max(hi, float(raw.max()))
        grey = _luminance(raw, source)
        out[start:start + len(idx)] = grey if size == shape[1] else resize(grey, (len(idx), size, size), order=1,
                                                                           anti_aliasing=True, preserve_range=True)
    out /= np.float32(_scale(dtype, lo, hi, source))  # the encoding's scale is linear: applied after the resize
    np.clip(out, 0.0, 1.0, out=out)
    return out if order is None else out[order.reshape(-1)]


def stimulus_indices(values: np.ndarray, source: str) -> np.ndarray:
    """``values`` as int64 stimulus indices; float arrays (as MATLAB writes) must hold whole,
    finite numbers, else ``ValueError`` naming ``source`` and the first bad entry."""
    arr = np.asarray(values)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{source}: stimulus indices must be numbers; got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(arr.ravel()) | (np.nan_to_num(arr.ravel()) % 1 != 0))
        if bad.size:
            raise ValueError(f"{source}: stimulus indices must be whole numbers; entry {bad[0]} holds "
                             f"{arr.ravel()[bad[0]]:g}")
    return arr.astype(np.int64)


def shown_stimuli(stimuli, source: str, size: int | None, ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(images, shown)``: the rows ``shown`` (sorted, unique) of a stimulus array that the id arrays ``ids`` name
    (trials' stimuli, test stimuli), read by :func:`stimulus_images`; ``np.searchsorted(shown, x)`` renumbers
    ids ``x`` into ``images``."""
    shown = np.unique(np.concatenate([np.ravel(i) for i in ids]).astype(np.int64))
    return stimulus_images(stimuli, source, size, shown), shown


BETAS_ARRAYS = ("responses", "stim_id", "test_stimuli", "mask", "affine")
"""Arrays :func:`load_betas` reads whole, beside ``stimuli`` (read only where trials show them)."""


def load_betas(path: str | Path, stimulus_size: int | None = None) -> TrialData:
    """Read precomputed trial responses: an ``.h5``/``.hdf5`` file or a folder with
    ``responses.npy``, ``stimuli.npy`` and optionally ``stim_id.npy``, ``test_stimuli.npy``,
    ``mask.npy``, ``affine.npy`` (same names as HDF5 datasets). Only the stimuli that trials show (or
    ``test_stimuli`` names) are read, a chunk at a time, and resized to ``stimulus_size`` pixels square
    (None: their own size; :func:`stimulus_images`), so a subject's trials can index a stimulus array of
    all NSD's images; ids are renumbered in their order. Images in 0..255 are scaled to [0, 1], RGB converted
    to luminance."""
    path = Path(path)
    if path.is_dir():
        arrays = {n: read_npy(path / f"{n}.npy", n) for n in BETAS_ARRAYS if (path / f"{n}.npy").is_file()}
        stimuli = read_npy(path / "stimuli.npy", "stimuli", mmap=True) if (path / "stimuli.npy").is_file() else None
        return _betas(path, arrays, stimuli, sorted(p.name for p in path.glob("*.npy")), stimulus_size)
    if not (path.suffix.lower() in (".h5", ".hdf5") and path.is_file()):
        raise FileNotFoundError(f"{path}: expected an .h5/.hdf5 file or a folder of .npy files (responses, stimuli)")
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            for name in ("stimuli", *BETAS_ARRAYS):
                if name in fh and not isinstance(fh[name], h5py.Dataset):
                    raise ValueError(f"{path}: '{name}' is an HDF5 {type(fh[name]).__name__.lower()}; expected a dataset "
                                     f"(an array)")
            arrays = {n: fh[n][()] for n in BETAS_ARRAYS if n in fh}
            return _betas(path, arrays, fh.get("stimuli"), sorted(fh.keys()), stimulus_size)
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None


def _betas(path: Path, arrays: dict[str, np.ndarray], stimuli, present: list[str], size: int | None) -> TrialData:
    """:func:`load_betas` of the arrays read from ``path`` (``stimuli``: still on disk)."""
    for need, got in (("responses", "responses" in arrays), ("stimuli", stimuli is not None)):
        if not got:
            raise ValueError(f"{path}: no '{need}' array (expected responses (N, V) and stimuli (S, H, W)); it holds "
                             f"{present}; the names read are {['stimuli', *BETAS_ARRAYS]}")
    responses = np.asarray(arrays["responses"], np.float32)
    n_images = _check_stimulus_array(stimuli, f"{path} (stimuli)")[0]
    if "stim_id" in arrays:
        stim_id = stimulus_indices(arrays["stim_id"], f"{path} (stim_id)")
    elif n_images == len(responses):
        stim_id = np.arange(len(responses), dtype=np.int64)
    else:
        raise ValueError(f"{path}: stimuli and responses have different counts ({n_images} images, "
                         f"{len(responses)} trials) and no stim_id maps trials to images")
    test = stimulus_indices(arrays["test_stimuli"], f"{path} (test_stimuli)") if "test_stimuli" in arrays else None
    mask = np.asarray(arrays["mask"], bool) if "mask" in arrays else None
    affine = np.asarray(arrays["affine"], np.float64) if "affine" in arrays else None
    check_responses(responses, stim_id, n_images, str(path), test, mask, affine)  # before any image is read
    images, shown = shown_stimuli(stimuli, f"{path} (stimuli)", size, [stim_id] + ([test] if test is not None else []))
    stim_id = np.searchsorted(shown, stim_id)  # ids into the images read, in the file's order
    test = np.searchsorted(shown, test) if test is not None else None
    if (mask is None) != (affine is None):
        warnings.warn(f"{path}: a '{'mask' if affine is None else 'affine'}' without its "
                      f"'{'affine' if affine is None else 'mask'}': encoded responses are written as a (V, 1, 1, N) image "
                      f"without brain geometry; store both to get volumes on the mask", UserWarning, stacklevel=3)
    # checked: the responses and ids above, the images by stimulus_images (finite, (S, size, size))
    return TrialData(responses, stim_id, images, str(path), test, mask, affine, image_ids=shown)


def save_betas(path: str | Path, td: TrialData) -> Path:
    """Write ``td`` in the format :func:`load_betas` reads (``.h5`` file or folder)."""
    path = Path(path)
    arrays = {"responses": td.responses, "stimuli": td.images, "stim_id": td.stim_id, "test_stimuli": td.test_stimuli,
              "mask": td.mask, "affine": td.affine}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    if path.suffix.lower() in (".h5", ".hdf5"):
        import h5py

        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as fh:
            for k, v in arrays.items():
                fh.create_dataset(k, data=v)
    else:
        path.mkdir(parents=True, exist_ok=True)
        for k, v in arrays.items():
            np.save(path / f"{k}.npy", v, allow_pickle=False)
    return path


@dataclass(frozen=True)
class Prepared:
    """The split, z-scored with training statistics.

    Attributes:
        train_x: training trial responses ``(N_tr, V)`` (z-scored), ``train_img`` their
            stimuli ``(N_tr, H, W)``.
        test_x: test responses averaged over repeats ``(n_test, V)`` (z-scored),
            ``test_img`` ``(n_test, H, W)``, ``test_ids`` the stimulus ids ``(n_test,)``.
        test_trials: ``(n_test, R, V)`` z-scored single test trials, ``R`` = the largest repeat
            count; a stimulus shown fewer times holds NaN in its remaining rows (the noise
            ceiling's input, :func:`~.metrics.noise_ceiling`); None when no test stimulus is repeated.
        mean, std: the training statistics ``(V,)``.
    """

    train_x: np.ndarray
    train_img: np.ndarray
    test_x: np.ndarray
    test_img: np.ndarray
    test_ids: np.ndarray
    test_trials: np.ndarray | None
    mean: np.ndarray
    std: np.ndarray


def prepare(td: TrialData, seed: int = 0, test_fraction: float = 0.1) -> Prepared:
    """Split ``td`` by stimulus (test: ``td.test_stimuli``, else the stimuli shown >= 2
    times when others are shown once, else a random ``test_fraction`` of the stimuli, e.g.
    when every stimulus is repeated as in NSD), z-score every voxel with the training
    trials' statistics and average test repeats; training repeats stay separate trials."""
    check_trials(td)
    counts = np.bincount(td.stim_id, minlength=len(td.images))
    if td.test_stimuli is not None:
        test = np.unique(td.test_stimuli)
    elif (counts >= 2).any() and (counts == 1).any():  # repeats mark the test set only if some stimuli are single
        test = np.flatnonzero(counts >= 2)
    else:
        shown = np.flatnonzero(counts > 0)
        k = max(1, int(round(test_fraction * len(shown))))
        test = np.sort(np.random.default_rng(seed).choice(shown, k, replace=False))
    is_test = np.isin(td.stim_id, test)
    if is_test.all() or not is_test.any():
        raise ValueError(f"{td.source}: the split leaves no {'training' if is_test.all() else 'test'} trials")
    train = td.responses[~is_test].astype(np.float64)
    mean, std = train.mean(0), train.std(0)
    if (std == 0).any():
        raise ValueError(f"{td.source}: {int((std == 0).sum())} voxels are constant over the training trials "
                         f"(first: {np.flatnonzero(std == 0)[:5].tolist()}); remove them from the mask")
    z = ((td.responses - mean) / std).astype(np.float32)
    test = np.array([s for s in test if counts[s] > 0], np.int64)
    groups = [z[td.stim_id == s] for s in test]
    test_x = np.stack([g.mean(0) for g in groups])
    r = max(len(g) for g in groups)
    trials = np.full((len(groups), r, z.shape[1]), np.nan, np.float32)
    for row, g in zip(trials, groups):
        row[: len(g)] = g
    return Prepared(train_x=z[~is_test], train_img=td.images[td.stim_id[~is_test]], test_x=test_x,
                    test_img=td.images[test], test_ids=test, test_trials=trials if r >= 2 else None,
                    mean=mean.astype(np.float32), std=std.astype(np.float32))


class ResponseDataset(Dataset):
    """Rows of a response matrix ``(N, V)``; an item is ``(V,)`` float32. ``images``
    ``(N, H, W)`` holds each row's stimulus."""

    def __init__(self, responses: np.ndarray, images: np.ndarray) -> None:
        if len(responses) != len(images):
            raise ValueError(f"{len(responses)} responses but {len(images)} images")
        self.x = torch.as_tensor(np.ascontiguousarray(responses), dtype=torch.float32)
        self.images = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]
