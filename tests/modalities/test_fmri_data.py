"""fmri data: the simulator's parts against closed forms, both loaders on files the tests
write (the simulator's own NIfTI for the nilearn GLM), the split, and every bad input."""

import json

import numpy as np
import pytest

from modaflow.modalities.fmri.bids import load_bids, write_bids
from modaflow.modalities.fmri.data import TrialData, images01, load_betas, prepare, save_betas
from modaflow.modalities.fmri.simulate import SimConfig, _ar1, drift_basis, event_regressors, lsa_betas, simulate
from modaflow.modalities.fmri.stimuli import SCENE_MIN_STD, SCENE_PATCH, SOURCES, _photo, feature_maps, load_stimuli, scene_patches

SMALL = SimConfig(n_stimuli=120, n_test=20, trials_per_run=20, volume=(6, 6, 3))


@pytest.fixture(scope="module")
def sim():
    return simulate(SMALL)


@pytest.fixture(scope="module")
def bids_root(sim, tmp_path_factory):
    return write_bids(sim, tmp_path_factory.mktemp("bids"), runs=2)


def test_stimuli_are_real_images_in_unit_range() -> None:
    imgs, src = load_stimuli("both", 16)
    assert imgs.shape == (1997, 16, 16) and imgs.dtype == np.float32
    assert (src == 1).sum() == 200 and imgs.min() >= 0 and imgs.max() <= 1


def test_scene_patches_are_the_non_flat_grid_cells_of_the_photographs() -> None:
    patches = scene_patches()
    camera = _photo("skimage:camera")  # 512 x 512 grey, 16 x 16 cells of 32 px
    assert camera.shape == (512, 512) and 0 <= camera.min() and camera.max() <= 1
    cells = [camera[r:r + SCENE_PATCH, c:c + SCENE_PATCH] for r in range(0, 512, SCENE_PATCH) for c in range(0, 512, SCENE_PATCH)]
    kept = [cell for cell in cells if cell.std() >= SCENE_MIN_STD]
    astronaut = (512 // SCENE_PATCH) ** 2 - int((_cell_stds("skimage:astronaut") < SCENE_MIN_STD).sum())
    np.testing.assert_array_equal(patches[astronaut:astronaut + len(kept)], np.stack(kept))  # camera follows astronaut
    assert patches.std(axis=(1, 2)).min() >= SCENE_MIN_STD
    np.testing.assert_array_equal(scene_patches(), patches)  # no randomness
    imgs, src = load_stimuli("all", 16)
    assert imgs.shape == (1997 + len(patches), 16, 16) and SOURCES[int(src[-1])] == "scene"
    assert np.bincount(src).tolist() == [1797, 200, len(patches)] and imgs.min() >= 0 and imgs.max() <= 1
    np.testing.assert_array_equal(load_stimuli("scenes", 16)[0], imgs[1997:])


def _cell_stds(name: str) -> np.ndarray:
    """Grid-cell standard deviations of one photograph (the slow obvious loop)."""
    grey = _photo(name)
    return np.array([grey[r:r + SCENE_PATCH, c:c + SCENE_PATCH].std()
                     for r in range(0, grey.shape[0] - SCENE_PATCH + 1, SCENE_PATCH)
                     for c in range(0, grey.shape[1] - SCENE_PATCH + 1, SCENE_PATCH)])


def test_gabor_energy_peaks_at_the_grating_orientation() -> None:
    yy, xx = np.mgrid[0:32, 0:32]
    for k, theta in enumerate(np.pi * np.arange(4) / 4):
        grating = 0.5 + 0.5 * np.cos(2 * np.pi * 0.25 * (xx * np.cos(theta) + yy * np.sin(theta)))
        maps = feature_maps(grating[None].astype(np.float32), 4, 0.25, 1.0)[0]
        energy = maps[2:, 8:24, 8:24].mean(axis=(1, 2))
        assert int(np.argmax(energy)) == k


def test_regressor_of_one_event_peaks_at_one_and_lsa_is_exact_without_noise() -> None:
    X = event_regressors(np.array([4.0, 30.0, 55.0]), 1.0, 90, 1.0, "spm")
    assert 0.95 < X[:, 0].max() <= 1.0 + 1e-12  # peak 1 on the fine grid; frames sample near it
    rng = np.random.default_rng(0)
    beta = rng.normal(size=(3, 5))
    conf = drift_basis(90, 2)
    y = X @ beta + conf @ rng.normal(size=(3, 5))
    np.testing.assert_allclose(lsa_betas(y, X, conf), beta, atol=1e-9)


def test_ar1_noise_has_the_stationary_sd_and_lag_one_correlation() -> None:
    e = _ar1(20000, 4, 0.4, 0.5, np.random.default_rng(1))
    np.testing.assert_allclose(e.std(0), 0.5, atol=0.02)
    lag1 = [np.corrcoef(e[1:, v], e[:-1, v])[0, 1] for v in range(4)]
    np.testing.assert_allclose(lag1, 0.4, atol=0.03)


def test_simulator_is_deterministic_and_tracks_the_truth(sim) -> None:
    again = simulate(SMALL)
    np.testing.assert_array_equal(sim.betas, again.betas)
    V = int(sim.mask.sum())
    assert sim.betas.shape == (100 * SMALL.train_repeats + 20 * 3, V) and sim.true_beta.shape == (120, V)
    r = [np.corrcoef(sim.betas[:, v], sim.true_beta[sim.stim_id, v])[0, 1] for v in range(V)]
    assert np.median(r) > 0.5
    noisy = simulate(SMALL.replace(noise_sd=3.0, neural_noise=1.0))
    r2 = [np.corrcoef(noisy.betas[:, v], noisy.true_beta[noisy.stim_id, v])[0, 1] for v in range(V)]
    assert np.median(r2) < np.median(r)


def test_bids_lsa_with_nilearn_matches_the_simulators_estimates(sim, bids_root) -> None:
    td = load_bids(bids_root, "lsa", noise_model="ols")
    sel = sim.run < 2
    assert td.responses.shape == (int(sel.sum()), int(sim.mask.sum()))
    np.testing.assert_array_equal(td.image_ids[td.stim_id], sim.stim_id[sel])  # the rows of stimuli.npy the runs show
    r = [np.corrcoef(td.responses[:, v], sim.betas[sel, v])[0, 1] for v in range(td.responses.shape[1])]
    assert min(r) > 0.99  # same design, same drift model: only the HRF sampling grid differs
    lss = load_bids(bids_root, "lss", max_runs=1)
    truth = sim.true_beta[lss.image_ids[lss.stim_id]]
    r_lss = [np.corrcoef(lss.responses[:, v], truth[:, v])[0, 1] for v in range(truth.shape[1])]
    assert np.median(r_lss) > 0.5


def test_bids_repetition_time_is_inherited_then_read_from_the_header(sim, tmp_path) -> None:
    import nibabel as nib

    per_run = load_bids(write_bids(sim, tmp_path / "run", runs=1), noise_model="ols")
    root = write_bids(sim, tmp_path / "inherit", runs=1)
    side = next(root.rglob("*_bold.json"))
    side.write_text(json.dumps({"TaskName": "sim"}))  # no TR beside the run ...
    (root / "task-sim_bold.json").write_text(json.dumps({"RepetitionTime": sim.cfg.tr}))  # ... but at the top
    (root / "task-other_bold.json").write_text(json.dumps({"RepetitionTime": 9.0}))  # another task's: not inherited
    np.testing.assert_array_equal(load_bids(root, noise_model="ols").responses, per_run.responses)
    for p in root.glob("task-*_bold.json"):
        p.unlink()
    bold = next(root.rglob("*_bold.nii.gz"))
    assert nib.load(bold).header.get_zooms()[3] == sim.cfg.tr  # write_bids puts the TR in the header too
    np.testing.assert_array_equal(load_bids(root, noise_model="ols").responses, per_run.responses)
    img = nib.load(bold)
    img.header.set_xyzt_units("mm", "unknown")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), bold)
    with pytest.raises(ValueError, match=r"_bold.nii.gz: no RepetitionTime in a \*_bold.json sidecar.*--glm-tr"):
        load_bids(root)
    from modaflow.modalities.fmri.recipe import FMRIConfig, load_trials

    via_recipe = load_trials(FMRIConfig(data=f"bids:{root}", glm_tr=sim.cfg.tr, glm_noise_model="ols"))
    np.testing.assert_array_equal(via_recipe.responses, per_run.responses)  # --glm-tr reaches the GLM
    glover = load_trials(FMRIConfig(data=f"bids:{root}", glm_tr=sim.cfg.tr, glm_noise_model="ols", glm_hrf="glover",
                                    glm_drift_order=1))
    assert not np.allclose(glover.responses, per_run.responses)  # --glm-hrf / --glm-drift-order too
    slower = load_bids(root, t_r=2 * sim.cfg.tr, noise_model="ols")  # given explicitly: used, and it matters
    assert slower.responses.shape == per_run.responses.shape and not np.allclose(slower.responses, per_run.responses)


def test_bids_mask_4d_derivatives_and_late_events(sim, tmp_path) -> None:
    import nibabel as nib
    import shutil

    root = write_bids(sim, tmp_path / "b", runs=1)
    want = load_bids(root, noise_model="ols").responses
    nib.save(nib.Nifti1Image(sim.mask.astype(np.uint8)[..., None], sim.affine), root / "mask4d.nii.gz")
    np.testing.assert_array_equal(load_bids(root, mask=root / "mask4d.nii.gz", noise_model="ols").responses, want)
    nib.save(nib.Nifti1Image(np.ones(sim.mask.shape + (2,), np.uint8), sim.affine), root / "mask2.nii.gz")
    with pytest.raises(ValueError, match=r"mask2.nii.gz: the mask must be a 3-D image"):
        load_bids(root, mask=root / "mask2.nii.gz")
    func = next(root.rglob("func"))  # a processed copy under derivatives/ is not a second run
    deriv = root / "derivatives" / "prep" / "sub-01" / "func"
    shutil.copytree(func, deriv)
    np.testing.assert_array_equal(load_bids(root, noise_model="ols").responses, want)
    events = next(func.glob("*_events.tsv"))
    lines = events.read_text().splitlines()
    last = lines[-1].split("\t")
    lines.append("\t".join(["9999.0"] + last[1:]))
    events.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"_events.tsv: 1 event\(s\) start at or after the end of the run .*row {len(lines) - 1}"):
        load_bids(root)


def test_bids_layouts_inherited_events_rest_runs_echoes_and_sessions(sim, tmp_path) -> None:
    """Events found by BIDS inheritance, runs without events skipped (or left out by task), the echoes of one
    run refused, and a session folder reading the dataset's shared files."""
    import shutil

    root = write_bids(sim, tmp_path / "b", runs=1)
    want = load_bids(root, noise_model="ols").responses
    func = root / "sub-01" / "func"
    for p in sorted(func.glob("sub-01_task-sim_run-01_*")):  # an acq- entity on the run, none on its events
        if not p.name.endswith("_events.tsv"):
            p.rename(func / p.name.replace("_run-01_", "_acq-mb4_run-01_"))
    np.testing.assert_array_equal(load_bids(root, noise_model="ols").responses, want)
    (func / "sub-01_task-sim_run-01_events.tsv").rename(root / "task-sim_events.tsv")  # inherited from the top
    np.testing.assert_array_equal(load_bids(root, noise_model="ols").responses, want)
    bold = next(func.glob("*_bold.nii.gz"))
    shutil.copy(bold, func / "sub-01_task-rest_run-01_bold.nii.gz")  # resting state: no events
    with pytest.warns(UserWarning, match=r"1 run\(s\) without an events TSV skipped .*task-rest"):
        np.testing.assert_array_equal(load_bids(root, noise_model="ols").responses, want)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(load_bids(root, noise_model="ols", task="sim").responses, want)
    with pytest.raises(FileNotFoundError, match="no run has an events TSV"):
        load_bids(root, task="rest")
    rec = func / bold.name.replace("_acq-mb4_", "_acq-mb4_rec-nordic_")  # a second reconstruction of the run
    shutil.copy(bold, rec)
    with pytest.raises(ValueError, match=r"2 files of one run .*one reconstruction"):
        load_bids(root, task="sim")
    rec.unlink()
    rest = func / "sub-01_task-rest_run-01_bold.nii.gz"  # a multi-echo rest run (no events) does not block the task
    for echo in (1, 2):
        shutil.copy(rest, func / f"sub-01_task-rest_run-01_echo-{echo}_bold.nii.gz")
    rest.unlink()
    with pytest.warns(UserWarning, match="without an events TSV skipped"):
        np.testing.assert_array_equal(load_bids(root, noise_model="ols").responses, want)
    for p in func.glob("*task-rest*"):
        p.unlink()
    for echo in (1, 2):
        shutil.copy(bold, func / bold.name.replace("_bold", f"_echo-{echo}_bold"))
    bold.unlink()
    with pytest.raises(ValueError, match=r"func: 2 files of one run .*echo-1.*keep one"):
        load_bids(root, task="sim")
    for p in func.glob("*echo-2*"):
        p.unlink()
    ses = root / "sub-01" / "ses-1"
    ses.mkdir()
    func.rename(ses / "func")  # bids:ROOT/sub-01/ses-1 reads ROOT's mask and stimuli
    np.testing.assert_array_equal(load_bids(ses, noise_model="ols", task="sim").responses, want)


def test_fmriprep_derivatives_spaces_confounds_and_percent_signal_change(sim, tmp_path) -> None:
    """bids:DS/derivatives/fmriprep/sub-01: the preprocessed runs of one --glm-space, events and shared files from
    the raw dataset; confounds from the run's *_desc-confounds_timeseries.tsv (a motion-like signal in the BOLD that
    is modelled leaves the betas as they are, under OLS in scanner units); percent signal change makes betas
    independent of a run's intensity scale."""
    import shutil

    import nibabel as nib
    import pandas as pd

    root = write_bids(sim, tmp_path / "ds", runs=2)
    raw = load_bids(root, noise_model="ols", scaling="none")
    func = root / "sub-01" / "func"
    deriv = root / "derivatives" / "fmriprep" / "sub-01" / "func"
    deriv.mkdir(parents=True)
    for bold in sorted(func.glob("*_bold.nii.gz")):
        stem = bold.name.replace("_bold.nii.gz", "")
        for space in ("MNI152NLin2009cAsym", "T1w"):
            shutil.copy(bold, deriv / f"{stem}_space-{space}_desc-preproc_bold.nii.gz")
    sub = root / "derivatives" / "fmriprep" / "sub-01"
    with pytest.raises(ValueError, match=r"2 files of one run .*pick one with --glm-space"):
        load_bids(sub)
    prep = load_bids(sub, noise_model="ols", scaling="none", space="MNI152NLin2009cAsym")
    np.testing.assert_array_equal(prep.responses, raw.responses)  # the same series, events from the raw dataset
    np.testing.assert_array_equal(prep.stim_id, raw.stim_id)
    for p in deriv.glob("*space-T1w*"):
        p.unlink()
    # confounds: a slow motion-like regressor added to every voxel of run 1, modelled, changes no beta
    bold = sorted(deriv.glob("*run-01*_bold.nii.gz"))[0]
    img = nib.load(bold)
    img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)  # in memory: the file is rewritten below
    n = img.shape[3]
    motion = np.sin(np.linspace(0, 3 * np.pi, n)) + np.linspace(0, 1, n) ** 3
    for b in sorted(deriv.glob("*_bold.nii.gz")):
        stem = b.name.split("_space-")[0]
        pd.DataFrame({"trans_x": motion, "framewise_displacement":
                      np.r_[np.nan, np.abs(np.diff(motion))]}).to_csv(deriv / f"{stem}_desc-confounds_timeseries.tsv",
                                                                      sep="\t", index=False, na_rep="n/a")
    modelled = load_bids(sub, noise_model="ols", scaling="none", confounds=("trans_x", "framewise_displacement"))
    data = np.asarray(img.dataobj, np.float64)
    nib.save(nib.Nifti1Image((data + 40.0 * motion).astype(np.float32), img.affine, img.header), bold)
    moved = load_bids(sub, noise_model="ols", scaling="none", confounds=("trans_x", "framewise_displacement"))
    scale = np.abs(modelled.responses).max()
    assert np.abs(moved.responses - modelled.responses).max() < 1e-3 * scale
    leaked = load_bids(sub, noise_model="ols", scaling="none")
    assert np.abs(leaked.responses - modelled.responses).max() > 0.05 * scale
    with pytest.raises(ValueError, match=r"desc-confounds_timeseries.tsv: no confound column\(s\) \['rot_q'\]"):
        load_bids(sub, confounds=("rot_q",))
    # percent signal change: run 2 at 1.5x the intensity gives the same betas; in scanner units it does not
    nib.save(img, bold)  # run 1 as it was
    run2 = sorted(deriv.glob("*run-02*_bold.nii.gz"))[0]
    psc = load_bids(sub, noise_model="ols")
    img2 = nib.load(run2)
    img2 = nib.Nifti1Image(np.asarray(img2.dataobj), img2.affine, img2.header)  # in memory, as img
    nib.save(nib.Nifti1Image((1.5 * np.asarray(img2.dataobj, np.float64)).astype(np.float32), img2.affine, img2.header),
             run2)
    np.testing.assert_allclose(load_bids(sub, noise_model="ols").responses, psc.responses, rtol=1e-3,
                               atol=1e-4 * np.abs(psc.responses).max())
    assert not np.allclose(load_bids(sub, noise_model="ols", scaling="none").responses[-5:], raw.responses[-5:])
    # slice timing: volumes timed at half the TR are the same design as every onset half a TR earlier (up to
    # where nilearn's 1/50-TR grid for the HRF convolution falls)
    early = tmp_path / "early"
    shutil.copytree(root, early, ignore=shutil.ignore_patterns("derivatives"))
    for tsv in early.rglob("*_events.tsv"):
        events = pd.read_csv(tsv, sep="\t")
        events["onset"] -= 0.5 * sim.cfg.tr
        events.to_csv(tsv, sep="\t", index=False)
    at0, half = (load_bids(root, noise_model="ols", slice_time_ref=ref).responses for ref in (0.0, 0.5))
    shifted = load_bids(early, noise_model="ols").responses
    assert np.abs(half - shifted).max() < 0.05 * np.abs(half - at0).max()  # measured: 0.23 against 7.75
    # data on a 0-1 scale: percent signal change would be wrong (nilearn divides by max(mean, 1)), so it warns
    small = nib.Nifti1Image((np.asarray(img2.dataobj, np.float64) / 1000).astype(np.float32), img2.affine, img2.header)
    nib.save(small, run2)
    with pytest.warns(UserWarning, match=r"in-mask voxel\(s\) have a mean under 1 .* --glm-scaling none"):
        load_bids(sub, noise_model="ols")
    nib.save(img2, run2)
    # a second version of each run (ICA-AROMA): refused until --glm-desc picks one
    for b in sorted(deriv.glob("*desc-preproc_bold.nii.gz")):
        shutil.copy(b, b.with_name(b.name.replace("desc-preproc", "desc-smoothAROMAnonaggr")))
    with pytest.raises(ValueError, match=r"2 files of one run .*--glm-desc"):
        load_bids(sub)
    np.testing.assert_array_equal(load_bids(sub, noise_model="ols", scaling="none", desc="preproc").responses,
                                  raw.responses)
    # fMRIPrep <= 20.2 nested its output one level deeper: the raw dataset is still found
    nested = root / "derivatives" / "fmriprep" / "fmriprep"
    nested.mkdir()
    shutil.move(str(sub), str(nested / "sub-01"))
    np.testing.assert_array_equal(load_bids(nested / "sub-01", noise_model="ols", scaling="none", desc="preproc").responses,
                                  raw.responses)


def test_bids_stimuli_named_by_stim_file(sim, tmp_path) -> None:
    """Events naming each stimulus by its file under DS/stimuli/ (the BIDS stim_file column) instead of an index:
    the same trials and betas as the stimuli.npy layout, ids in file-name order, the test set from test_stimuli.txt,
    the images read from the files."""
    import pandas as pd
    from PIL import Image

    root = write_bids(sim, tmp_path / "ds", runs=2)
    want = load_bids(root, noise_model="ols")
    (root / "stimuli").mkdir()
    for i, im in enumerate(sim.images):
        Image.fromarray((im * 255).round().astype(np.uint8), mode="L").save(root / "stimuli" / f"img_{i:04d}.png")
    for events in sorted(root.rglob("*_events.tsv")):
        ev = pd.read_csv(events, sep="\t")
        ev.assign(stim_file=[f"img_{i:04d}.png" for i in ev["stim_id"]]).drop(columns="stim_id").to_csv(
            events, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"test_stimuli.npy: holds stimulus indices, .*test_stimuli.txt"):
        load_bids(root, noise_model="ols", stimulus_size=sim.images.shape[-1])
    (root / "test_stimuli.npy").unlink()
    (root / "stimuli.npy").unlink()
    shown = sorted({int(i) for i in want.image_ids[want.stim_id]})
    annex = root / ".git" / "annex"  # DataLad keeps files as links into the annex: read through the link
    annex.mkdir(parents=True)
    linked = f"img_{shown[0]:04d}.png"
    (root / "stimuli" / linked).rename(annex / linked)
    (root / "stimuli" / linked).symlink_to(annex / linked)
    index = {s: k for k, s in enumerate(shown)}  # only the shown files get ids, in file-name order
    (root / "test_stimuli.txt").write_text("".join(f"img_{i:04d}.png\n" for i in want.image_ids[want.test_stimuli]))
    with pytest.warns(UserWarning, match=r"test_stimuli.txt: \d+ listed file\(s\) never shown in these runs"):
        got = load_bids(root, noise_model="ols", stimulus_size=sim.images.shape[-1])
    np.testing.assert_array_equal(got.responses, want.responses)
    np.testing.assert_array_equal(got.stim_id, [index[int(i)] for i in want.image_ids[want.stim_id]])
    np.testing.assert_array_equal(got.test_stimuli, sorted(index[int(i)] for i in want.image_ids[want.test_stimuli]
                                                           if int(i) in index))
    np.testing.assert_allclose(got.images, sim.images[shown], atol=0.5 / 255 + 1e-6)  # 8-bit PNGs
    assert load_bids(root, noise_model="ols", stimulus_size=8, max_runs=1).images.shape[1:] == (8, 8)
    (root / "test_stimuli.txt").write_text("img_9999.png\n")
    with pytest.raises(ValueError, match=r"test_stimuli.txt: none of its 1 file\(s\) is shown in the events"):
        load_bids(root, noise_model="ols")
    (root / "test_stimuli.txt").unlink()
    events = sorted(root.rglob("*_events.tsv"))[0]
    ev = pd.read_csv(events, sep="\t")
    first = ev["stim_file"].iloc[0]
    ev.assign(stim_file=[f"./{n}" for n in ev["stim_file"]]).to_csv(events, sep="\t", index=False)  # one file, spelt
    again = load_bids(root, noise_model="ols", stimulus_size=sim.images.shape[-1])                    # two ways
    np.testing.assert_array_equal(again.stim_id, got.stim_id)
    ev.assign(stim_file=["../secret.png"] + list(ev["stim_file"].iloc[1:])).to_csv(events, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"_events.tsv: stim_file '../secret.png' lies outside the dataset's stimuli"):
        load_bids(root, noise_model="ols")
    ev.assign(stim_file=["gone.png"] + list(ev["stim_file"].iloc[1:])).to_csv(events, sep="\t", index=False)
    with pytest.raises(FileNotFoundError, match=r"_events.tsv: data row 1 names stim_file 'gone.png', but .*gone.png does "
                                                r"not exist \(stim_file is relative to"):
        load_bids(root, noise_model="ols")
    assert first


def test_stimulus_image_files_of_every_common_kind(tmp_path) -> None:
    """CMYK JPEGs, transparency over the mid-grey background, palette and 16-bit images all read as luminance."""
    from PIL import Image

    from modaflow.modalities.fmri.data import BACKGROUND, read_image_file

    grey = np.tile(np.linspace(0, 255, 8).round().astype(np.uint8), (8, 1))
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    want = read_image_file(tmp_path / "g.png", 8)
    np.testing.assert_allclose(want, grey / 255, atol=1e-6)
    Image.fromarray(grey, mode="L").convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert np.abs(read_image_file(tmp_path / "c.jpg", 8) - want).max() < 0.05  # not all zeros
    rgba = Image.fromarray(grey, mode="L").convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(8) < 4, 0, 255).astype(np.uint8)[None].repeat(8, 0), mode="L"))
    rgba.save(tmp_path / "t.png")
    t = read_image_file(tmp_path / "t.png", 8)
    np.testing.assert_allclose(t[:, :4], round(255 * BACKGROUND) / 255, atol=1e-6)  # transparent: the background
    np.testing.assert_allclose(t[:, 4:], want[:, 4:], atol=1e-6)
    Image.fromarray(grey, mode="L").convert("P").save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image_file(tmp_path / "p.png", 8), want, atol=1 / 255)
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "w.png")  # 16 bits
    np.testing.assert_allclose(read_image_file(tmp_path / "w.png", 8), want, atol=1e-4)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        read_image_file(tmp_path / "bad.png", 8)


def test_the_mask_world_space_code_reaches_the_written_files(sim, tmp_path) -> None:
    """A mask in MNI space (sform code 4) keeps that code in the run's mask and the encoded volumes; betas files
    with a mask but no affine warn that the output has no geometry."""
    import nibabel as nib

    from modaflow.modalities.fmri.data import save_mask
    from modaflow.modalities.fmri.sampling import _write_voxels

    root = write_bids(sim, tmp_path / "b", runs=1)
    img = nib.Nifti1Image(sim.mask.astype(np.uint8), sim.affine)
    img.set_sform(sim.affine, code=4)
    img.set_qform(sim.affine, code=4)
    nib.save(img, root / "mask.nii.gz")
    td = load_bids(root, noise_model="ols")
    assert td.space_code == 4
    run = tmp_path / "run"
    run.mkdir()
    save_mask(td, run / "mask.nii.gz")
    out = _write_voxels(tmp_path / "enc.nii.gz", np.ones((2, td.responses.shape[1]), np.float32), run)
    for written in (nib.load(run / "mask.nii.gz"), nib.load(out)):
        assert int(written.header["sform_code"]) == int(written.header["qform_code"]) == 4
        np.testing.assert_allclose(written.affine, sim.affine)
    save_betas(tmp_path / "betas.h5", TrialData(td.responses, td.stim_id, td.images, "x", None, td.mask, None))
    with pytest.warns(UserWarning, match=r"betas.h5: a 'mask' without its 'affine'"):
        load_betas(tmp_path / "betas.h5")


def test_bids_other_events_are_nuisance_regressors(sim, tmp_path) -> None:
    """Events with stim_id n/a (responses) enter the GLM as their own regressor: a response-locked signal
    added to every voxel lies in the design's span, so with OLS the trials' betas are those without it
    (to float error), while leaving the rows out lets it leak into them. In scanner units: percent signal change
    would divide by the run mean, which the added signal moves."""
    import nibabel as nib
    import pandas as pd
    from nilearn.glm.first_level import make_first_level_design_matrix

    root = write_bids(sim, tmp_path / "clean", runs=1)
    want = load_bids(root, noise_model="ols", scaling="none")
    events_path = next(root.rglob("*_events.tsv"))
    ev = pd.read_csv(events_path, sep="\t")
    bold = next(root.rglob("*_bold.nii.gz"))
    img = nib.load(bold)
    n_scans = img.shape[3]
    responses = pd.DataFrame({"onset": ev["onset"].to_numpy()[::3] + 1.3, "duration": 0.5, "trial_type": "response",
                              "stim_id": "n/a"})
    mixed = pd.concat([ev, responses]).sort_values("onset", kind="stable")
    mixed.to_csv(events_path, sep="\t", index=False, na_rep="n/a")
    modelled = load_bids(root, noise_model="ols", scaling="none")  # the clean BOLD, the responses modelled
    np.testing.assert_array_equal(modelled.stim_id, want.stim_id)  # the response rows are no trials
    frame_times = np.arange(n_scans) * sim.cfg.tr
    x = make_first_level_design_matrix(frame_times, responses[["onset", "duration", "trial_type"]], hrf_model="spm",
                                       drift_model=None)["response"].to_numpy()
    data = np.asarray(img.dataobj, np.float64)
    scale = 3.0 * np.abs(data[sim.mask]).std()
    moved = nib.Nifti1Image((data + scale * x).astype(np.float32), img.affine, img.header)
    nib.save(moved, bold)
    got = load_bids(root, noise_model="ols", scaling="none")
    err = np.abs(got.responses - modelled.responses).max()
    assert err < 1e-4 * np.abs(modelled.responses).max()  # float32 BOLD: the signal is removed to rounding
    # LSS (one model per trial, each with the nuisance regressor) removes it the same way
    lss_moved = load_bids(root, "lss", noise_model="ols", scaling="none")
    nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine, img.header), bold)
    lss_clean = load_bids(root, "lss", noise_model="ols", scaling="none")
    assert np.abs(lss_moved.responses - lss_clean.responses).max() < 1e-4 * np.abs(lss_clean.responses).max()
    assert not np.allclose(lss_clean.responses, modelled.responses)  # and it is not LSA
    nib.save(moved, bold)
    events_path.write_text(ev.to_csv(sep="\t", index=False))  # the responses left out of the model
    leaked = load_bids(root, noise_model="ols", scaling="none")
    assert np.abs(leaked.responses - want.responses).max() > max(0.05 * np.abs(want.responses).max(), 1000 * err)
    minus = mixed.assign(stim_id=[-1] + list(mixed["stim_id"].iloc[1:]))  # -1 is no "n/a": an id out of range
    minus.to_csv(events_path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(ValueError, match=r"_events.tsv: stim_id must index the .* images of .*; data row 1 holds -1"):
        load_bids(root)
    mixed.assign(stim_id="n/a").to_csv(events_path, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"_events.tsv: no stimulus events \(every stim_id is n/a\)"):
        load_bids(root)
    mixed.assign(stim_id=["cat"] + list(mixed["stim_id"].iloc[1:])).to_csv(events_path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(ValueError, match=r"_events.tsv: column 'stim_id' has missing or non-numeric values \(data rows \[1\]\)"):
        load_bids(root)


def test_bids_bad_inputs_name_the_file(sim, bids_root, tmp_path) -> None:
    import nibabel as nib

    bad_shape = tmp_path / "mask_shape.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 6, 3), np.uint8), sim.affine), bad_shape)
    with pytest.raises(ValueError, match=r"mask_shape.nii.gz: mask shape .* of .*_bold.nii.gz"):
        load_bids(bids_root, mask=bad_shape, max_runs=1)
    bad_affine = tmp_path / "mask_affine.nii.gz"
    nib.save(nib.Nifti1Image(sim.mask.astype(np.uint8), np.diag([3.0, 3.0, 3.0, 1.0])), bad_affine)
    with pytest.raises(ValueError, match=r"mask_affine.nii.gz: mask affine does not match that of .*_bold.nii.gz"):
        load_bids(bids_root, mask=bad_affine, max_runs=1)
    root = write_bids(sim, tmp_path / "ev", runs=1)
    events = next(root.rglob("*_events.tsv"))
    text = events.read_text().splitlines()
    events.write_text("\n".join(["duration\ttrial_type\tstim_id"] + ["\t".join(l.split("\t")[1:]) for l in text[1:]]))
    with pytest.raises(ValueError, match="_events.tsv: events need the column 'onset'"):
        load_bids(root)
    events.write_text("\n".join(["onset\ttrial_type\tstim_id"] + ["\t".join(l.split("\t")[:1] + l.split("\t")[2:])
                                                                   for l in text[1:]]))
    with pytest.raises(ValueError, match="_events.tsv: events need the column 'duration'"):
        load_bids(root)
    for stim_id, message in (("3.5", "'stim_id' must hold whole stimulus indices; data row 2 holds 3.5"),
                             (str(len(sim.images)), f"stim_id must index the {len(sim.images)} images of .*stimuli.npy; "
                                                    "data row 2 holds 120")):
        events.write_text("\n".join(text[:2] + [f"5.0\t1.0\tstimulus\t{stim_id}"]))
        with pytest.raises(ValueError, match=r"_events.tsv: .*" + message):
            load_bids(root)
    events.write_text("\n".join(text[:2] + ["5.0\t\tstimulus\t3"]))
    with pytest.raises(ValueError, match="'duration' has missing"):
        load_bids(root)
    nan_root = write_bids(sim, tmp_path / "nan", runs=1)
    bold = next(nan_root.rglob("*_bold.nii.gz"))
    img = nib.load(bold)
    data = np.asarray(img.dataobj).copy()
    data[np.argwhere(sim.mask)[0][0], np.argwhere(sim.mask)[0][1], np.argwhere(sim.mask)[0][2], 5] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), bold)
    with pytest.raises(ValueError, match="NaN"):
        load_bids(nan_root)
    assert json.loads(next(bids_root.rglob("*_bold.json")).read_text())["RepetitionTime"] == 1.0


def test_bids_stimuli_in_0_255_are_scaled_and_a_corrupt_npy_is_named(sim, tmp_path) -> None:
    root = write_bids(sim, tmp_path / "u8", runs=1)
    np.save(root / "stimuli.npy", np.round(sim.images * 255).astype(np.uint8))
    td = load_bids(root, stimulus_size=sim.images.shape[-1])
    np.testing.assert_allclose(td.images, sim.images[td.image_ids], atol=0.5 / 255 + 1e-6)
    # only the images the run shows are read: an unreadable one it never shows passes
    unshown = np.setdiff1d(np.arange(len(sim.images)), td.image_ids)
    assert unshown.size and len(td.image_ids) < len(sim.images)
    floats = sim.images.copy()
    floats[unshown[0]] = np.nan
    np.save(root / "stimuli.npy", floats)
    np.testing.assert_array_equal(load_bids(root, stimulus_size=sim.images.shape[-1]).images, sim.images[td.image_ids])
    (root / "stimuli.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(ValueError, match=r"stimuli.npy: not a readable .npy stimulus images"):
        load_bids(root)
    (root / "stimuli.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"stimuli.npy: the file is empty"):
        load_bids(root)


def test_images01_reads_the_usual_encodings_and_refuses_the_ambiguous_ones() -> None:
    x = np.linspace(0, 1, 2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    u8 = np.round(x * 255).astype(np.uint8)
    np.testing.assert_allclose(images01(u8, "s"), u8 / 255.0, rtol=1e-6)  # 8-bit
    np.testing.assert_allclose(images01(u8.astype(np.float64), "s"), u8 / 255.0, rtol=1e-6)  # 0..255 as floats
    np.testing.assert_array_equal(images01(x, "s"), x)  # already in [0, 1]
    binary = (x > 0.5).astype(np.int64)
    np.testing.assert_array_equal(images01(binary, "s"), binary)  # 0/1 integers: binary, not 0 and 1/255
    over = x.copy()
    over[0, 0, 0] = 1.0005  # resampling overshoot: clipped, the rest untouched
    np.testing.assert_array_equal(images01(over, "s"), np.clip(over, 0, 1))
    rgb = np.stack([x, np.zeros_like(x), np.ones_like(x)], -1)
    np.testing.assert_allclose(images01(rgb, "s"), 0.299 * x + 0.114, rtol=1e-6)  # BT.601 luminance
    for bad, message in ((x * 1.5, r"must lie in \[0, 1\] or in 0..255; got range \[0, 1.5\]"),
                         (x - 0.5, r"must lie in \[0, 1\]"), (np.where(x > 0.5, np.nan, x), "NaN/Inf"),
                         (u8.astype(np.int32) * 2, r"8-bit \(0..255\); got range \[0, 510\]"),
                         (np.zeros((0, 4, 4)), "no stimulus images")):
        with pytest.raises(ValueError, match=r"^stim.npy: .*" + message):
            images01(bad, "stim.npy")


def _td(sim) -> TrialData:
    return TrialData(sim.betas, sim.stim_id.astype(np.int64), sim.images, "sim", sim.test_stimuli, sim.mask, sim.affine)


@pytest.mark.parametrize("name", ["betas.h5", "betas_npy"])
def test_betas_round_trip_hdf5_and_npy(sim, tmp_path, name) -> None:
    path = save_betas(tmp_path / name, _td(sim))
    back = load_betas(path)
    np.testing.assert_array_equal(back.responses, sim.betas)
    np.testing.assert_array_equal(back.stim_id, sim.stim_id)
    np.testing.assert_array_equal(back.images, sim.images)
    np.testing.assert_array_equal(back.mask, sim.mask)


def test_betas_read_only_the_stimuli_trials_show_a_chunk_at_a_time_resized(sim, tmp_path, monkeypatch) -> None:
    """An NSD-style file: RGB uint8 stimuli, more images than trials show (one of them unreadable as a stimulus),
    test ids into the whole array. Only the shown images are read; they come out as the obvious whole-array
    conversion (images01, then each image resized alone) gives them, ids renumbered in the file's order."""
    import h5py
    from skimage.transform import resize

    from modaflow.modalities.fmri import data as D

    rng = np.random.default_rng(0)
    S, used = 300, np.sort(rng.choice(300, 60, replace=False))
    rgb = rng.integers(0, 256, (S, 24, 24, 3)).astype(np.uint8)
    stim_id = np.repeat(used, 2)
    responses = rng.standard_normal((len(stim_id), 7)).astype(np.float32)
    with h5py.File(tmp_path / "nsd.h5", "w") as fh:
        fh["responses"], fh["stim_id"], fh["test_stimuli"] = responses, stim_id, used[:10]
        fh.create_dataset("stimuli", data=rgb, chunks=(1, 24, 24, 3))
    monkeypatch.setattr(D, "CHUNK_VALUES", 24 * 24 * 3 * 7)  # 7 images a chunk: many chunks, sparse and dense reads
    got = load_betas(tmp_path / "nsd.h5", stimulus_size=16)
    want = np.stack([resize(im, (16, 16), anti_aliasing=True) for im in D.images01(rgb[used], "rgb")])
    np.testing.assert_allclose(got.images, want, atol=1e-5)
    np.testing.assert_array_equal(got.stim_id, np.repeat(np.arange(60), 2))
    np.testing.assert_array_equal(got.test_stimuli, np.arange(10))
    np.testing.assert_array_equal(got.responses, responses)
    np.testing.assert_allclose(load_betas(tmp_path / "nsd.h5").images, D.images01(rgb[used], "rgb"), atol=1e-6)
    # an image no trial shows is never read: NaN there passes, NaN in a shown one is refused by name
    grey = rng.random((S, 12, 12)).astype(np.float32)
    grey[np.setdiff1d(np.arange(S), used)[0]] = np.nan
    np.save(tmp_path / "stimuli.npy", grey)
    np.save(tmp_path / "responses.npy", responses)
    np.save(tmp_path / "stim_id.npy", stim_id)
    np.testing.assert_array_equal(load_betas(tmp_path).images, grey[used])
    grey[used[3]] = np.nan
    np.save(tmp_path / "stimuli.npy", grey)
    with pytest.raises(ValueError, match=r"stimuli\): stimulus images hold NaN/Inf"):
        load_betas(tmp_path)
    np.save(tmp_path / "stimuli.npy", rgb[:, :, :20])
    with pytest.raises(ValueError, match=r"stimuli\): stimuli must be square; got \(24, 20\) \(crop them square first\)"):
        load_betas(tmp_path)
    np.save(tmp_path / "stimuli.npy", rgb[:, :, :, :2])
    with pytest.raises(ValueError, match=r"stimuli must be \(S, H, W\) greyscale or \(S, H, W, 3\) RGB images; got shape"):
        load_betas(tmp_path)
    np.save(tmp_path / "stimuli.npy", grey)
    np.save(tmp_path / "stim_id.npy", stim_id + 300)
    with pytest.raises(ValueError, match=r"stim_id must index the 300 stimuli; got range \[30\d, 59\d\]"):
        load_betas(tmp_path)
    np.save(tmp_path / "stim_id.npy", stim_id)
    np.save(tmp_path / "responses.npy", responses[:1])  # the responses' own errors come before any image is read
    with pytest.raises(ValueError, match=r"responses must be \(N trials, V voxels\) with N >= 2"):
        load_betas(tmp_path)
    with h5py.File(tmp_path / "group.h5", "w") as fh:  # an entry of the wrong kind is named, not skipped
        fh["responses"], fh["stimuli"] = responses, rgb
        fh.create_group("stim_id")
    with pytest.raises(ValueError, match=r"group.h5: 'stim_id' is an HDF5 group; expected a dataset"):
        load_betas(tmp_path / "group.h5")
    # rows in any order, repeated: each read once, given back as asked
    np.testing.assert_array_equal(D.stimulus_images(grey, "g", rows=np.array([5, 0, 5, 2])), grey[[5, 0, 5, 2]])


def test_stimulus_images_one_chunk_equals_many_and_keeps_the_encodings_scale(monkeypatch) -> None:
    """The 0..255 / [0, 1] decision is the whole selection's, not a chunk's: a dark chunk of a 0..255 float array
    (all its values <= 2) is still divided by 255."""
    from modaflow.modalities.fmri import data as D

    arr = np.random.default_rng(1).uniform(0, 255, (20, 8, 8)).astype(np.float32)
    arr[:10] = arr[:10] / 255 * 2  # dark images first
    whole = D.stimulus_images(arr, "a", 6)
    monkeypatch.setattr(D, "CHUNK_VALUES", 64 * 3)
    np.testing.assert_allclose(D.stimulus_images(arr, "a", 6), whole, atol=1e-6)
    np.testing.assert_allclose(D.stimulus_images(arr, "a"), D.images01(arr, "a"), atol=1e-7)
    np.testing.assert_allclose(D.stimulus_images(arr, "a", rows=np.array([1, 2, 15])), D.images01(arr, "a")[[1, 2, 15]],
                               atol=1e-7)


def test_betas_bad_inputs(sim, tmp_path) -> None:
    import h5py

    with h5py.File(tmp_path / "counts.h5", "w") as fh:
        fh["responses"], fh["stimuli"] = sim.betas, sim.images[:7]
    with pytest.raises(ValueError, match="different counts"):
        load_betas(tmp_path / "counts.h5")
    nan = sim.betas.copy()
    nan[:, 3] = np.nan
    with h5py.File(tmp_path / "nan.h5", "w") as fh:
        fh["responses"], fh["stimuli"], fh["stim_id"] = nan, sim.images, sim.stim_id
    with pytest.raises(ValueError, match="1 of .* voxels hold NaN"):
        load_betas(tmp_path / "nan.h5")
    with h5py.File(tmp_path / "ids.h5", "w") as fh:
        fh["responses"], fh["stimuli"], fh["stim_id"] = sim.betas, sim.images, sim.stim_id[:-1]
    with pytest.raises(ValueError, match="different counts"):
        load_betas(tmp_path / "ids.h5")
    with pytest.raises(FileNotFoundError, match="expected an .h5"):
        load_betas(tmp_path / "missing.h5")
    folder = save_betas(tmp_path / "corrupt_npy", _td(sim))
    (folder / "stim_id.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match=r"corrupt_npy/stim_id.npy: not a readable .npy stim_id"):
        load_betas(folder)
    for name, extra, message in (
        ("test_ids.h5", {"test_stimuli": np.array([0, len(sim.images)])}, r"test_ids.h5: test_stimuli must be integer ids "
                                                                           r"of the 120 stimuli; .*range \[0, 120\]"),
        ("affine.h5", {"affine": np.eye(3)}, r"affine.h5: affine must be a finite 4 x 4 .* got shape \(3, 3\)"),
    ):
        with h5py.File(tmp_path / name, "w") as fh:
            fh["responses"], fh["stimuli"], fh["stim_id"] = sim.betas, sim.images, sim.stim_id
            for key, value in extra.items():
                fh[key] = value
        with pytest.raises(ValueError, match=message):
            load_betas(tmp_path / name)


def test_prepare_zscores_with_training_statistics_and_averages_repeats(sim) -> None:
    prep = prepare(_td(sim))
    np.testing.assert_allclose(prep.train_x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(prep.train_x.std(0), 1.0, atol=1e-4)
    s = prep.test_ids[0]
    raw = sim.betas[sim.stim_id == s]
    np.testing.assert_allclose(prep.test_x[0], ((raw - prep.mean) / prep.std).mean(0), atol=1e-5)
    assert prep.test_trials.shape == (20, 3, prep.train_x.shape[1])
    uneven = _td(sim)
    first = np.flatnonzero(uneven.stim_id == s)
    keep = np.ones(len(uneven.stim_id), bool)
    keep[first[1:]] = False  # stimulus s now shown once: NaN rows in its trials, its mean is its one trial
    cut = prepare(TrialData(uneven.responses[keep], uneven.stim_id[keep], uneven.images, "sim", uneven.test_stimuli))
    assert cut.test_trials.shape == prep.test_trials.shape and np.isnan(cut.test_trials[0, 1:]).all()
    np.testing.assert_allclose(cut.test_x[0], cut.test_trials[0, 0])
    np.testing.assert_array_equal(prep.test_img, sim.images[prep.test_ids])


def test_training_repeats_are_separate_trials_and_never_cross_the_split(sim) -> None:
    assert SMALL.train_repeats == 3  # the default: NSD shows every image 3 times
    counts = np.bincount(sim.stim_id, minlength=len(sim.images))
    train = np.setdiff1d(np.arange(len(sim.images)), sim.test_stimuli)
    assert (counts[train] == 3).all() and (counts[sim.test_stimuli] == 3).all()
    prep = prepare(_td(sim))
    np.testing.assert_array_equal(prep.test_ids, sim.test_stimuli)
    assert prep.train_x.shape[0] == 3 * len(train)
    # without a given test set, every stimulus repeated: a random fraction is held out, not all
    td = TrialData(sim.betas, sim.stim_id.astype(np.int64), sim.images, "sim")
    prep2 = prepare(td, seed=0, test_fraction=0.1)
    assert len(prep2.test_ids) == 12 and prep2.train_x.shape[0] == len(sim.betas) - 3 * 12
    single = simulate(SMALL.replace(train_repeats=1))
    assert len(single.betas) == 100 + 20 * 3
    np.testing.assert_array_equal(prepare(TrialData(single.betas, single.stim_id.astype(np.int64), single.images,
                                                    "sim")).test_ids, single.test_stimuli)


def test_betas_stimulus_ids_must_be_whole_numbers_and_one_per_trial(sim, tmp_path) -> None:
    import h5py

    half, nan = sim.stim_id.astype(np.float64), sim.stim_id.astype(np.float64)
    half[0], nan[3] = 2.5, np.nan  # were truncated to 2 / wrapped to int64's minimum
    whole_float_test = sim.test_stimuli.astype(np.float64)  # MATLAB writes doubles: whole ones are fine
    for name, arrays, message in (
        ("half.h5", {"stim_id": half}, r"half.h5 \(stim_id\): stimulus indices must be whole numbers; entry 0 holds 2.5$"),
        ("nan.h5", {"stim_id": nan}, r"nan.h5 \(stim_id\): stimulus indices must be whole numbers; entry 3 holds nan$"),
        ("test.h5", {"stim_id": sim.stim_id, "test_stimuli": whole_float_test + 0.4},
         r"test.h5 \(test_stimuli\): stimulus indices must be whole numbers; entry 0 holds "),
        ("column.h5", {"stim_id": sim.stim_id[:, None]},
         rf"column.h5: stim_id must be one id per trial, shape \({len(sim.betas)},\); got shape \({len(sim.betas)}, 1\)$"),
        ("betas_key.h5", {"betas": sim.betas}, r"betas_key.h5: no 'responses' array .* it holds \['betas', 'stimuli'\]"),
    ):
        with h5py.File(tmp_path / name, "w") as fh:
            if "betas" not in arrays:
                fh["responses"] = sim.betas
            fh["stimuli"] = sim.images
            for key, value in arrays.items():
                fh[key] = value
        with pytest.raises(ValueError, match=message):
            load_betas(tmp_path / name)
    with h5py.File(tmp_path / "doubles.h5", "w") as fh:
        fh["responses"], fh["stimuli"] = sim.betas, sim.images
        fh["stim_id"], fh["test_stimuli"] = sim.stim_id.astype(np.float64), whole_float_test
    td = load_betas(tmp_path / "doubles.h5")
    np.testing.assert_array_equal(td.stim_id, sim.stim_id)
    np.testing.assert_array_equal(td.test_stimuli, sim.test_stimuli)


def test_bids_test_stimuli_with_fractions_are_refused(sim, bids_root, tmp_path) -> None:
    import shutil

    root = shutil.copytree(bids_root, tmp_path / "frac")
    np.save(root / "test_stimuli.npy", np.array([0.5, 3.0]))  # was truncated to [0, 3]
    with pytest.raises(ValueError, match=r"frac/test_stimuli.npy: stimulus indices must be whole numbers; entry 0 "
                                         r"holds 0.5$"):
        load_bids(root)


def test_bids_with_several_subjects_is_refused_and_a_subject_folder_reads_the_shared_files(sim, bids_root, tmp_path) -> None:
    import shutil

    root = shutil.copytree(bids_root, tmp_path / "two")
    func = root / "sub-02" / "func"
    func.mkdir(parents=True)
    for f in (root / "sub-01" / "func").iterdir():
        if not f.name.endswith("_bold.json"):  # sub-02 inherits its TR from ROOT/task-sim_bold.json
            shutil.copy(f, func / f.name.replace("sub-01", "sub-02"))
    (root / "task-sim_bold.json").write_text(json.dumps({"RepetitionTime": 1.1}))
    with pytest.raises(ValueError, match=rf"^{root}: runs of 2 subjects \(sub-01, sub-02\); a run trains one subject "
                                         rf"\(finetune adds another\): pass bids:{root}/sub-01 "):
        load_bids(root)  # was: both subjects' trials pooled as one brain's
    one = load_bids(root / "sub-02")  # stimuli.npy, test_stimuli.npy, mask.nii.gz and the TR sidecar from ROOT
    ref = load_bids(bids_root, t_r=1.1)
    np.testing.assert_array_equal(one.responses, ref.responses)
    np.testing.assert_array_equal(one.image_ids[one.test_stimuli], sim.test_stimuli)
    assert one.source == str(root / "sub-02")
