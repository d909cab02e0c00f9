"""BIDS-style BOLD runs -> single-trial responses with nilearn's first-level GLM.

Layout read (and written by :func:`write_bids` for the simulator)::

    ROOT/sub-XX/func/sub-XX_task-T_run-RR_bold.nii.gz   4-D BOLD (X, Y, Z, T)
    ROOT/sub-XX/func/sub-XX_task-T_run-RR_bold.json     {"RepetitionTime": TR}, or inherited from a
                                                        *_bold.json higher up (ROOT/task-T_bold.json), or
                                                        the NIfTI header's time step
    ROOT/sub-XX/func/sub-XX_task-T_run-RR_events.tsv    onset, duration, stim_id (+ trial_type); rows whose
                                                        stim_id is n/a (or empty) are other events (responses,
                                                        cues): one nuisance regressor per trial_type
    ROOT/mask.nii.gz                                    3-D brain mask (or --mask)
    ROOT/stimuli.npy                                    (S, H, W) images; stim_id indexes them
    ROOT/test_stimuli.npy                               optional test stimulus ids

One subject per run: a dataset with several subjects is refused; ``bids:ROOT/sub-XX`` reads
that subject's runs, and its own ``mask.nii.gz`` / ``stimuli.npy`` / ``test_stimuli.npy`` or
else ROOT's.

Single-trial estimates (Mumford et al. 2012, NeuroImage 59, 2636):

* ``lsa`` (least-squares-all): one nilearn ``FirstLevelModel`` per run whose design has one
  regressor per trial; each trial's beta is the ``effect_size`` of its regressor.
* ``lss`` (least-squares-separate): per trial, a model with that trial as one regressor
  and all other trials of the run as a second one.

In both, the run's other events (stim_id n/a) enter the design as one regressor per
``trial_type`` (``nuisance_<type>``), so that a response or cue is not left in the trials'
betas or the noise.

Data are masked through a ``NiftiMasker`` on the mask image (C order of the mask's voxels).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from modaflow.core.io import read_npy

from .data import TrialData, check_trials, read_image_file, shown_stimuli, stimulus_indices
from .simulate import Simulation

__all__ = ["GLMMethod", "write_bids", "find_runs", "load_bids", "read_events"]

GLMMethod = Literal["lsa", "lss"]
_RUN = re.compile(r"_bold\.nii(\.gz)?$")


def write_bids(sim: Simulation, root: str | Path, runs: int | None = None, subject: str = "01",
               task: str = "sim") -> Path:
    """Write the simulated BOLD of the first ``runs`` runs (all by default) as NIfTI with
    events TSVs and JSON sidecars, plus ``mask.nii.gz``, ``stimuli.npy`` and
    ``test_stimuli.npy``. Voxels outside the mask hold the baseline plus white noise."""
    import nibabel as nib
    import pandas as pd

    root = Path(root)
    func = root / f"sub-{subject}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    cfg = sim.cfg
    rng = np.random.default_rng(cfg.sim_seed + 1)
    n_runs = len(sim.bold) if runs is None else min(runs, len(sim.bold))
    for r in range(n_runs):
        y = sim.bold[r]  # (T, V)
        vol = cfg.baseline + cfg.noise_sd * rng.standard_normal(sim.mask.shape + (y.shape[0],))
        vol[sim.mask] = y.T
        stem = func / f"sub-{subject}_task-{task}_run-{r + 1:02d}"
        img = nib.Nifti1Image(vol.astype(np.float32), sim.affine)
        img.header.set_zooms(img.header.get_zooms()[:3] + (cfg.tr,))
        img.header.set_xyzt_units("mm", "sec")  # the header's time step is the TR too
        nib.save(img, f"{stem}_bold.nii.gz")
        (Path(f"{stem}_bold.json")).write_text(json.dumps({"RepetitionTime": cfg.tr, "TaskName": task}) + "\n")
        sel = sim.run == r
        events = pd.DataFrame({"onset": sim.onset[sel], "duration": cfg.stim_duration, "trial_type": "stimulus",
                               "stim_id": sim.stim_id[sel]})
        events.to_csv(f"{stem}_events.tsv", sep="\t", index=False)
    nib.save(nib.Nifti1Image(sim.mask.astype(np.uint8), sim.affine), root / "mask.nii.gz")
    np.save(root / "stimuli.npy", sim.images, allow_pickle=False)
    np.save(root / "test_stimuli.npy", sim.test_stimuli, allow_pickle=False)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "modaflow fMRI simulation", "BIDSVersion": "1.9.0"}) + "\n")
    return root


def _outside_raw(path: Path, root: Path) -> bool:
    """A file under ``derivatives/``, ``sourcedata/`` or a hidden folder: not a raw BIDS run."""
    parts = path.relative_to(root).parts[:-1]
    return any(p in ("derivatives", "sourcedata") or p.startswith(".") for p in parts)


_ONE_RUN_SPLIT = ("echo", "part", "rec", "space", "res", "den", "desc")
"""Entities that split one run into several files (echoes, magnitude/phase, reconstructions, a preprocessed run
in several spaces, resolutions or versions): not runs of their own."""


def _raw_root(root: Path) -> Path | None:
    """The raw dataset of a derivatives folder (``DS/derivatives/<pipeline>[/<pipeline>][/sub-XX...]`` -> ``DS``),
    else None."""
    return next((p.parent for p in (root, *root.parents) if p.name == "derivatives"), None)


def _raw_counterpart(bold: Path) -> Path | None:
    """Where a derivative run's raw files live: ``DS/derivatives/<pipeline>[/...]/sub-XX/[ses-YY/]func/name`` ->
    ``DS/sub-XX/[ses-YY/]func/name``; None outside a derivatives tree."""
    raw = _raw_root(bold.parent)
    subject = next((p for p in bold.parents if p.name.startswith("sub-")), None)
    return raw / bold.relative_to(subject.parent) if raw is not None and subject is not None else None


def find_runs(root: str | Path, task: str | None = None, top: str | Path | None = None,
              space: str | None = None, desc: str | None = None) -> list[tuple[Path, Path]]:
    """``(bold, events)`` pairs of the runs under ``root``, sorted: the raw runs of a dataset
    (``derivatives/`` and ``sourcedata/`` are skipped, as BIDS keeps processed copies there), or,
    when ``root`` lies in ``DS/derivatives/<pipeline>`` (fMRIPrep's output), the preprocessed runs
    there; ``task``: only runs of that task; ``space``, ``desc``: only runs with that ``space-<label>``,
    ``desc-<label>``.
    A run's events TSV is found by BIDS inheritance (:func:`_inherited`): the most specific
    ``*_events.tsv`` whose entities are a subset of the run's, from its folder up to ``top`` (the
    dataset's root when ``root`` is a subject's folder; default ``root``), and for a derivative run
    then from its raw counterpart's folder up to ``DS``. Runs without one (resting state) are
    skipped with a warning; none left is an error. Several files of one run (differing only by the
    entities of :data:`_ONE_RUN_SPLIT`) are refused: the loader models one series per run."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder (expected a BIDS-style dataset with *_bold.nii.gz runs)")
    bolds = sorted(p for p in root.rglob("*_bold.nii*") if _RUN.search(p.name) and not _outside_raw(p, root))
    if task is not None:
        bolds = [b for b in bolds if f"task-{task}" in _entities(b.name)]
    for key, label in (("space", space), ("desc", desc)):
        if label is not None:
            bolds = [b for b in bolds if f"{key}-{label}" in _entities(b.name)]
    if not bolds:
        raise FileNotFoundError(f"{root}: no *_bold.nii or *_bold.nii.gz runs found" + (f" of task {task!r}" if task else "")
                                + (f" in space {space!r}" if space else "") + (f" with desc {desc!r}" if desc else ""))
    pairs, rest = [], []
    for bold in bolds:
        events = _inherited(bold, Path(top) if top is not None else root, "_events.tsv")
        raw = _raw_counterpart(bold)
        if events is None and raw is not None:  # a preprocessed run: its events stay in the raw dataset
            events = _inherited(raw, _raw_root(bold), "_events.tsv")
        if events is None:
            rest.append(bold)
        else:
            pairs.append((bold, events))
    if rest:
        warnings.warn(f"{root}: {len(rest)} run(s) without an events TSV skipped (resting state?), e.g. {rest[0].name}; "
                      f"--glm-task picks one task", UserWarning, stacklevel=2)
    by_run: dict[tuple, list[Path]] = {}  # among the runs with events: a multi-echo rest run does not block the task
    for bold, _ in pairs:
        key = (bold.parent, tuple(sorted(e for e in _entities(bold.name) if e.split("-", 1)[0] not in _ONE_RUN_SPLIT)))
        by_run.setdefault(key, []).append(bold)
    split = next((files for files in by_run.values() if len(files) > 1), None)
    if split is not None:
        raise ValueError(f"{split[0].parent}: {len(split)} files of one run ({', '.join(p.name for p in split[:3])}); "
                         f"the GLM models one series per run: keep one (the echoes combined into one *_bold file, the "
                         f"magnitude part only, one reconstruction; of preprocessed runs, pick one with --glm-space and "
                         f"--glm-desc; or one task with --glm-task)")
    if not pairs:
        raise FileNotFoundError(f"{root}: no run has an events TSV (*_events.tsv beside it or inherited from a folder "
                                f"above, with a subset of its entities), e.g. {bolds[0]}")
    return pairs


def _inheritance(bold: Path, root: Path, suffix: str):
    """The files ending in ``suffix`` that apply to ``bold`` by BIDS inheritance (entities a subset of
    the run's), from the run's folder up to ``root``: the nearest folder first, within it the most
    entities first."""
    mine = _entities(bold.name)
    folder = bold.parent
    while True:
        found = [p for p in folder.glob(f"*{suffix}") if p.is_file() and _entities(p.name) <= mine] if folder.is_dir() else []
        yield from sorted(found, key=lambda p: (-len(_entities(p.name)), p.name))
        if folder == root or folder == folder.parent:
            return
        folder = folder.parent


def _inherited(bold: Path, root: Path, suffix: str) -> Path | None:
    """The file ending in ``suffix`` that applies to ``bold`` (:func:`_inheritance`'s first); None when
    there is none."""
    return next(_inheritance(bold, root, suffix), None)


def read_events(path: Path):
    """The events table of ``path`` with ``onset``, ``duration`` (finite, >= 0), ``stimulus``
    (False where the event shows no stimulus: its stim_id, or stim_file, is n/a or empty; another
    kind of event, modelled as a nuisance regressor), ``trial_type`` (``events`` where the TSV has
    none), and either integer ``stim_id`` (an index into ``stimuli.npy``; 0 where ``stimulus`` is
    False) or, for a TSV without stim_id, ``stim_file`` (BIDS: the stimulus file's path under the
    dataset's ``stimuli/`` folder; stim_id is then assigned by :func:`load_bids`). Errors name the
    file and the missing or bad column."""
    import pandas as pd

    try:
        ev = pd.read_csv(path, sep="\t")  # "n/a", BIDS' missing value, and empty cells read as NaN
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: not a readable events TSV ({e})") from None
    by_file = "stim_id" not in ev.columns and "stim_file" in ev.columns
    if "stim_id" not in ev.columns and not by_file and {"onset", "duration"} <= set(ev.columns):
        raise ValueError(f"{path}: events need the column 'stim_id' (an index into stimuli.npy) or 'stim_file' (BIDS: "
                         f"a file under the dataset's stimuli/ folder); found columns {list(ev.columns)}")
    for col in ("onset", "duration") if by_file else ("onset", "duration", "stim_id"):
        if col not in ev.columns:
            raise ValueError(f"{path}: events need the column '{col}'; found columns {list(ev.columns)}")
        values = pd.to_numeric(ev[col], errors="coerce")
        bad = values.isna() & (ev[col].notna() if col == "stim_id" else True)  # stim_id may be n/a, not text
        if bad.any() or not np.isfinite(values.dropna().to_numpy(float)).all():
            rows = np.flatnonzero(bad.to_numpy() | (values.notna() & ~np.isfinite(values.fillna(0))).to_numpy())
            raise ValueError(f"{path}: column '{col}' has missing or non-numeric values (data rows "
                             f"{(rows[:5] + 1).tolist()})")
        ev[col] = values
    if (ev["duration"] < 0).any():
        raise ValueError(f"{path}: durations must be >= 0")
    key = "stim_file" if by_file else "stim_id"
    stimulus = ev[key].notna()
    if not stimulus.any():
        raise ValueError(f"{path}: no stimulus events (every {key} is n/a)" if len(ev) else f"{path}: no events")
    if by_file:
        ev["stim_file"] = ev["stim_file"].where(stimulus, "").astype(str)
        ev["stim_id"] = 0
        ev.attrs["by_file"] = True
    else:
        frac = np.flatnonzero(stimulus.to_numpy() & (ev["stim_id"].fillna(0).to_numpy(float) % 1 != 0))
        if frac.size:
            raise ValueError(f"{path}: column 'stim_id' must hold whole stimulus indices; data row {frac[0] + 1} holds "
                             f"{ev['stim_id'].iloc[frac[0]]:g}")
        ev["stim_id"] = ev["stim_id"].fillna(0).astype(np.int64)
    ev["stimulus"] = stimulus
    kinds = ev["trial_type"].astype(object) if "trial_type" in ev.columns else pd.Series("events", index=ev.index)
    ev["trial_type"] = kinds.where(kinds.notna(), "events").astype(str)
    return ev


def _entities(name: str) -> set[str]:
    """BIDS key-value entities of a file name (``sub-01_task-a_run-1_bold.json`` ->
    ``{sub-01, task-a, run-1}``)."""
    return set(name.split(".", 1)[0].split("_")[:-1])


def _tr(bold: Path, root: Path, t_r: float | None, header_img) -> float:
    """The repetition time of ``bold``: ``t_r`` when given; else ``RepetitionTime`` of the
    nearest ``*_bold.json`` sidecar whose entities are a subset of the run's (BIDS
    inheritance, from the run's folder up to ``root``; the more specific file wins); else
    the NIfTI header's time step when its unit is set."""
    if t_r is not None:
        return t_r
    for side in _inheritance(bold, root, "_bold.json"):  # a more specific sidecar without the TR defers to the next
        try:
            tr = json.loads(side.read_text()).get("RepetitionTime")
        except (json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{side}: not a JSON object ({e})") from None
        if tr is not None:
            if not isinstance(tr, (int, float)) or tr <= 0:
                raise ValueError(f"{side}: RepetitionTime must be a positive number of seconds; got {tr!r}")
            return float(tr)
    step = float(header_img.header.get_zooms()[3]) if len(header_img.header.get_zooms()) > 3 else 0.0
    unit = header_img.header.get_xyzt_units()[1]
    scale = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}.get(unit)
    if step > 0 and scale is not None:
        return step * scale
    raise ValueError(f"{bold}: no RepetitionTime in a *_bold.json sidecar of the run or above it (BIDS inheritance up to "
                     f"{root}), and the NIfTI header's time step ({step:g}, unit {unit!r}) is not usable; pass --glm-tr")


def _stimuli(events: list, paths: list[Path], shared, stim_root: Path, size: int):
    """``(images (S, H, W), each run's stimulus ids, test ids or None, where the images came from, the rows of
    stimuli.npy the images are or None)``
    for the runs' ``events`` (:func:`read_events`; ``paths`` their files): by ``stim_id`` into
    ``shared("stimuli.npy")``, or by ``stim_file`` into ``stim_root/stimuli/`` (see :func:`load_bids`)."""
    by_file = [bool(ev.attrs.get("by_file")) for ev in events]
    if any(by_file) and not all(by_file):
        raise ValueError(f"{paths[by_file.index(True)]} names its stimuli by stim_file but {paths[by_file.index(False)]} "
                         f"by stim_id; use one of the two in every run")
    if not any(by_file):
        stim_path = shared("stimuli.npy")
        stimuli = read_npy(stim_path, "stimulus images (S, H, W)", mmap=True)
        n = int(stimuli.shape[0]) if stimuli.ndim else 0
        ids = [ev["stim_id"].to_numpy() for ev in events]
        for path, ev, run in zip(paths, events, ids):  # checked before any image is read
            trials = np.flatnonzero(ev["stimulus"].to_numpy())
            outside = trials[(run[trials] < 0) | (run[trials] >= n)]
            if outside.size:
                raise ValueError(f"{path}: stim_id must index the {n} images of {stim_path}; data row "
                                 f"{outside[0] + 1} holds {ev['stim_id'].iloc[outside[0]]}")
        test_path = shared("test_stimuli.npy")
        test = stimulus_indices(read_npy(test_path, "test stimulus ids"), str(test_path)) if test_path.is_file() else None
        if test is not None and test.size and (test.ndim != 1 or test.min() < 0 or test.max() >= n):
            raise ValueError(f"{test_path}: test_stimuli must be integer ids of the {n} stimuli of {stim_path}; got shape "
                             f"{test.shape}, range [{test.min()}, {test.max()}]")
        # only the images the runs show (or the test set names) are read, renumbered in their order
        images, shown = shown_stimuli(stimuli, str(stim_path), size, [run[ev["stimulus"].to_numpy()] for ev, run in
                                                                       zip(events, ids)] + ([test] if test is not None else []))
        ids = [np.where(ev["stimulus"].to_numpy(), np.searchsorted(shown, run), 0) for ev, run in zip(events, ids)]
        return images, ids, None if test is None else np.searchsorted(shown, test), stim_path, shown
    folder = Path(os.path.normpath(stim_root / "stimuli"))

    def key(name: str, where: str) -> str:  # one spelling per file: ./a.png, a.png and DS/stimuli/a.png are one stimulus
        path = Path(os.path.normpath(folder / name))  # not resolve(): DataLad's files are links into .git/annex
        if not path.is_relative_to(folder):
            raise ValueError(f"{where}: stim_file {name!r} lies outside the dataset's stimuli folder {folder} (BIDS: "
                             f"stim_file is a path relative to it)")
        return path.relative_to(folder).as_posix()

    keys = [np.array([key(name, str(path)) if shown else "" for name, shown in zip(ev["stim_file"], ev["stimulus"])],
                     dtype=object) for ev, path in zip(events, paths)]
    names = sorted({k for ks, ev in zip(keys, events) for k in ks[ev["stimulus"].to_numpy()]})
    for name in names:
        if not (folder / name).is_file():
            path, ev, ks = next((p, e, k) for p, e, k in zip(paths, events, keys) if name in set(k))
            row = int(np.flatnonzero(ks == name)[0]) + 1
            raise FileNotFoundError(f"{path}: data row {row} names stim_file {ev['stim_file'].iloc[row - 1]!r}, but "
                                    f"{folder / name} does not exist (stim_file is relative to {folder})")
    images = np.stack([read_image_file(folder / name, size) for name in names])
    index = {name: i for i, name in enumerate(names)}
    ids = [np.array([index.get(k, 0) for k in ks], np.int64) for ks in keys]
    if shared("test_stimuli.npy").is_file():
        raise ValueError(f"{shared('test_stimuli.npy')}: holds stimulus indices, but the events name their stimuli by "
                         f"stim_file; list the test files in test_stimuli.txt (one per line) instead")
    test_path, test = shared("test_stimuli.txt"), None
    if test_path.is_file():
        listed = [key(line.strip(), str(test_path)) for line in test_path.read_text().splitlines() if line.strip()]
        unknown = [name for name in listed if name not in index]
        if len(unknown) == len(listed):
            raise ValueError(f"{test_path}: none of its {len(listed)} file(s) is shown in the events, e.g. {listed[0]!r}")
        if unknown:
            warnings.warn(f"{test_path}: {len(unknown)} listed file(s) never shown in these runs, e.g. {unknown[0]!r}; "
                          f"left out", UserWarning, stacklevel=3)
        test = np.array(sorted(index[name] for name in listed if name in index), np.int64)
    return images, ids, test, folder, None


CONFOUND_SUFFIXES = ("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv")
"""fMRIPrep's confounds table of a run (the second name before fMRIPrep 20.2)."""


def _confounds(bold: Path, columns: tuple[str, ...], n_scans: int):
    """The ``columns`` of ``bold``'s confounds table: the ``*_desc-confounds_timeseries.tsv`` beside
    it whose other entities are a subset of the run's (no space or desc of its own); NaN (the
    first row of derivative columns) read as 0."""
    import pandas as pd

    mine = _entities(bold.name)
    found = [p for suffix in CONFOUND_SUFFIXES for p in bold.parent.glob(f"*{suffix}")
             if _entities(p.name) - {"desc-confounds"} <= mine]
    if not found:
        raise FileNotFoundError(f"{bold}: no confounds table ({' or '.join('*' + s for s in CONFOUND_SUFFIXES)}) beside "
                                f"it for --glm-confounds {' '.join(columns)}")
    path = max(found, key=lambda p: len(_entities(p.name)))
    table = pd.read_csv(path, sep="\t")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: no confound column(s) {missing}; it has {len(table.columns)}, e.g. "
                         f"{list(table.columns[:8])}")
    if len(table) != n_scans:
        raise ValueError(f"{path}: {len(table)} rows for the {n_scans} volumes of {bold.name}")
    values = table[list(columns)].apply(pd.to_numeric, errors="coerce")
    bad = [c for c in columns if values[c].iloc[1:].isna().any()]
    if bad:
        raise ValueError(f"{path}: confound column(s) {bad} hold missing or non-numeric values after the first row")
    return values.fillna(0.0)


def _check_geometry(bold_img, mask_img, bold: Path, mask: Path) -> None:
    if bold_img.ndim != 4:
        raise ValueError(f"{bold}: BOLD must be 4-D (X, Y, Z, T); got shape {bold_img.shape}")
    if tuple(bold_img.shape[:3]) != tuple(mask_img.shape[:3]):
        raise ValueError(f"{mask}: mask shape {tuple(mask_img.shape[:3])} does not match the BOLD volume "
                         f"{tuple(bold_img.shape[:3])} of {bold}")
    if not np.allclose(bold_img.affine, mask_img.affine, atol=1e-4):
        raise ValueError(f"{mask}: mask affine does not match that of {bold}:\n{mask_img.affine}\nvs\n{bold_img.affine}")


def load_bids(root: str | Path, method: GLMMethod = "lsa", mask: str | Path | None = None,
              t_r: float | None = None, hrf_model: str = "spm", drift_order: int = 2,
              noise_model: str = "ar1", max_runs: int | None = None, task: str | None = None,
              space: str | None = None, desc: str | None = None, confounds: tuple[str, ...] = (),
              slice_time_ref: float = 0.0,
              scaling: Literal["psc", "none"] = "psc", stimulus_size: int = 32) -> TrialData:
    """Single-trial responses ``(N, V)`` of every run under ``root`` (``max_runs``: the
    first ones only) estimated with nilearn's ``FirstLevelModel`` (``method`` lsa or lss,
    polynomial drift of ``drift_order``, ``noise_model`` ar1 or ols), masked by ``mask``
    (default ``root/mask.nii.gz``); ``task``: only that task's runs. ``root`` is one subject's runs: a
    dataset or a subject's (or session's) folder ``ROOT/sub-XX[/ses-YY]``, which reads ``stimuli.npy``,
    ``test_stimuli.npy`` and ``mask.nii.gz`` from ``ROOT`` when it has none itself.

    Preprocessed runs (fMRIPrep): ``root`` in ``DS/derivatives/<pipeline>``, ``space`` and ``desc``
    the ones to model (``space-<label>``, ``desc-<label>``); events and the shared files also come
    from the raw dataset ``DS``;
    ``confounds`` names columns of each run's ``*_desc-confounds_timeseries.tsv`` (motion,
    aCompCor, ...; leading NaN of derivative columns read as 0) added to the design;
    ``slice_time_ref`` is the fraction of the TR the volumes are timed at (0.5 after fMRIPrep's
    slice-timing correction). ``scaling`` psc: each voxel's series in percent of its mean over the
    run (nilearn's signal scaling), so betas compare across runs and sessions whatever the
    scanner's intensity scale; none: scanner units.

    Stimuli: ``stimuli.npy`` indexed by the events' ``stim_id`` (test ids in ``test_stimuli.npy``),
    or, for events with a BIDS ``stim_file`` column instead, the image files under the dataset's
    ``stimuli/`` folder, resized to ``stimulus_size`` pixels square, ids in sorted file-name order
    (test files listed in ``test_stimuli.txt``, one per line)."""
    import nibabel as nib
    from nilearn.glm.first_level import FirstLevelModel
    from nilearn.maskers import NiftiMasker

    if method not in ("lsa", "lss"):
        raise ValueError(f"method must be 'lsa' or 'lss'; got {method!r}")
    root = Path(root)
    # a subject's (or session's) folder, ROOT/sub-XX[/ses-YY], reads the files it lacks, and the BIDS-inherited
    # sidecars, from ROOT
    subject_dir = next((p for p in (root, *root.parents) if p.name.startswith("sub-")), None)
    top = subject_dir.parent if subject_dir is not None else root
    raw_root = _raw_root(root)
    runs = find_runs(root, task, top, space, desc)[: max_runs or None]
    subjects = sorted({e for bold, _ in runs for e in _entities(bold.name) if e.startswith("sub-")})
    if len(subjects) > 1:  # pooled, their trials would train one NeuroVAE as if they were one brain
        names = ", ".join(subjects[:5]) + (", ..." if len(subjects) > 5 else "")
        raise ValueError(f"{root}: runs of {len(subjects)} subjects ({names}); a run trains one subject (finetune adds "
                         f"another): pass bids:{root / subjects[0]} (its stimuli.npy, test_stimuli.npy and mask.nii.gz "
                         f"are read there, else in {root})")

    def shared(name: str) -> Path:  # the subject's folder's own, else the dataset's, else the raw dataset's
        for folder in (root, top, raw_root):
            if folder is not None and (folder / name).is_file():
                return folder / name
        return root / name

    mask_path = Path(mask) if mask is not None else shared("mask.nii.gz")
    if not mask_path.is_file():
        raise FileNotFoundError(f"{mask_path}: mask image not found (pass --mask or put mask.nii.gz in {root})")
    mask_img = nib.funcs.squeeze_image(nib.load(mask_path))  # (X, Y, Z, 1) -> (X, Y, Z)
    if mask_img.ndim != 3:
        raise ValueError(f"{mask_path}: the mask must be a 3-D image; got shape {mask_img.shape}")
    mask_arr = np.asarray(mask_img.dataobj) > 0
    events = [read_events(path) for _, path in runs]
    stim_root = top if (top / "stimuli").is_dir() or raw_root is None else raw_root  # DS/stimuli (BIDS)
    images, run_ids, test, stim_source, image_ids = _stimuli(events, [p for _, p in runs], shared, stim_root,
                                                             stimulus_size)
    masker = NiftiMasker(mask_img=mask_img, standardize=None).fit()
    betas, stim_ids = [], []
    for (bold, events_path), ev, ids in zip(runs, events, run_ids):
        img = nib.load(bold)
        _check_geometry(img, mask_img, bold, mask_path)
        data = np.asarray(img.dataobj)[mask_arr]  # (V, T); checked before nilearn, which turns NaN into 0
        if not np.isfinite(data).all():
            bad = np.flatnonzero(~np.isfinite(data).all(1))
            raise ValueError(f"{bold}: {len(bad)} in-mask voxels hold NaN/Inf (first: {bad[:5].tolist()})")
        if scaling == "psc":  # nilearn divides by max(mean, 1): a mean under 1 is not a percent of it
            low = int((data.mean(1) < 1.0).sum())
            if low:
                warnings.warn(f"{bold}: {low} in-mask voxel(s) have a mean under 1 over the run (background in the mask, "
                              f"or data on a 0-1 scale), so percent signal change is wrong there; fix the mask, or use "
                              f"--glm-scaling none", UserWarning, stacklevel=2)
        trials = np.flatnonzero(ev["stimulus"].to_numpy())  # the stimulus events
        outside = trials[(ids[trials] < 0) | (ids[trials] >= len(images))]
        if outside.size:
            raise ValueError(f"{events_path}: stim_id must index the {len(images)} images of {stim_source}; data row "
                             f"{outside[0] + 1} holds {ev['stim_id'].iloc[outside[0]]}")
        t_r_run = _tr(bold, top, t_r, img)
        end = img.shape[3] * t_r_run
        late = np.flatnonzero(ev["onset"].to_numpy() >= end)
        if late.size:
            raise ValueError(f"{events_path}: {late.size} event(s) start at or after the end of the run ({img.shape[3]} "
                             f"volumes x TR {t_r_run:g} s = {end:g} s), first in data row {late[0] + 1} "
                             f"(onset {ev['onset'].iloc[late[0]]:g} s); is the TR or the events file wrong?")
        flm = FirstLevelModel(t_r=t_r_run, hrf_model=hrf_model, drift_model="polynomial", drift_order=drift_order,
                              noise_model=noise_model, mask_img=masker, signal_scaling=0 if scaling == "psc" else False,
                              slice_time_ref=slice_time_ref, minimize_memory=True)
        conf = _confounds(bold, confounds, img.shape[3]) if confounds else None
        nuisance = np.array(["nuisance_" + k for k in ev["trial_type"]], dtype=object)  # one regressor per other kind
        base = ev[["onset", "duration"]].copy()

        def design(names: np.ndarray):  # the events table with the stimulus trials named, the other events nuisance
            kinds = nuisance.copy()
            kinds[trials] = names
            return base.assign(trial_type=kinds)

        if method == "lsa":
            labels = np.array([f"trial{i:04d}" for i in range(len(trials))], dtype=object)
            flm.fit(img, events=design(labels), confounds=conf)
            run_betas = [np.ravel(masker.transform(flm.compute_contrast(lab, output_type="effect_size"))) for lab in labels]
        else:
            run_betas = []
            for i in range(len(trials)):
                flm.fit(img, events=design(np.where(np.arange(len(trials)) == i, "target", "other").astype(object)),
                        confounds=conf)
                run_betas.append(np.ravel(masker.transform(flm.compute_contrast("target", output_type="effect_size"))))
        betas.append(np.stack(run_betas))
        stim_ids.append(ids[trials])
    td = TrialData(np.concatenate(betas).astype(np.float32), np.concatenate(stim_ids).astype(np.int64), images,
                   str(root), test, mask_arr, np.asarray(mask_img.affine, np.float64),
                   int(mask_img.header["sform_code"]) or int(mask_img.header["qform_code"]), image_ids)
    return check_trials(td)
