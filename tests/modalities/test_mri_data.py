"""MRI data: NIfTI / BIDS discovery and checks on small files the tests write, the MONAI
pipeline (canonical orientation, spacing, brain-centred FOV, [-1, 1]), augmentation (per
worker and rank, reproducible), subject-wise splits, the embedded cohort and NIfTI output."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("monai")

from modaflow.modalities.mri import nifti as N  # noqa: E402
from modaflow.modalities.mri import transforms as T  # noqa: E402
from modaflow.modalities.mri.cohort import make_cohort  # noqa: E402
from modaflow.modalities.mri.data import MRIDataModule, SourceSpec, VolumeSet, build_dataset, load_volumes, split_files  # noqa: E402
from modaflow.modalities.mri import data as D  # noqa: E402
from modaflow.modalities.mri.sampling import write_volumes  # noqa: E402


def phantom(shape=(24, 28, 22), centre=(12, 14, 11), radii=(8, 10, 7)) -> np.ndarray:
    """An ellipsoidal 'brain' (three shells: CSF-, GM-, WM-like) on a dark background."""
    g = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt(sum(((x - c) / a) ** 2 for x, c, a in zip(g, centre, radii)))
    img = np.full(shape, 2.0, dtype=np.float32)
    img[r < 1.0] = 30.0
    img[r < 0.8] = 60.0
    img[r < 0.5] = 100.0
    return img


def save(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


# ---------------------------------------------------------------- reading and checks


def test_round_trip_keeps_data_and_affine(tmp_path) -> None:
    data = np.random.default_rng(0).standard_normal((6, 7, 8)).astype(np.float32)
    aff = np.array([[-1.5, 0, 0, 10], [0, 1.5, 0, -20], [0, 0, 1.5, 5], [0, 0, 0, 1.0]])
    N.write_volume(tmp_path / "v.nii.gz", data, aff)
    vol = N.read_volume(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, aff)


def test_truncated_and_corrupt_files_name_the_file(tmp_path) -> None:
    good = save(tmp_path / "good.nii.gz", phantom())
    raw = good.read_bytes()
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(N.NiftiError, match="trunc.nii.gz.*truncated or corrupt"):
        N.read_volume(trunc)
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"not a nifti file at all" * 20)
    with pytest.raises(N.NiftiError, match="junk.nii.*not a readable NIfTI"):
        N.read_volume(junk)
    gz = tmp_path / "badheader.nii.gz"
    gz.write_bytes(gzip.compress(b"\x00" * 400))
    with pytest.raises(N.NiftiError, match="badheader.nii.gz"):
        N.read_volume(gz)
    with pytest.raises(N.NiftiError, match="missing.nii.*not found"):
        N.read_volume(tmp_path / "missing.nii")


def test_4d_is_rejected_unless_the_4th_axis_is_1(tmp_path) -> None:
    p = save(tmp_path / "bold.nii.gz", np.zeros((6, 6, 6, 3), np.float32))
    with pytest.raises(N.NiftiError, match=r"bold.nii.gz: expected a 3-D volume, got shape \(6, 6, 6, 3\)"):
        N.read_volume(p)
    q = save(tmp_path / "single.nii.gz", phantom()[..., None])
    assert N.read_volume(q).data.shape == (24, 28, 22)


def test_nan_voxels_are_rejected_or_read_as_background_and_inf_always_rejected(tmp_path) -> None:
    data = phantom()
    data[3, 4, 5] = np.nan
    data[0, 0, :] = np.nan  # outside the 'brain', as masked FSL / SPM outputs
    p = save(tmp_path / "nan.nii.gz", data)
    with pytest.raises(N.NiftiError, match=r"nan.nii.gz: 23 NaN voxel\(s\) of 14784; .*--nan background"):
        N.read_volume(p)
    vol = N.read_volume(p, nan="background")
    want = np.where(np.isnan(data), np.nanmin(data), data)
    np.testing.assert_array_equal(vol.data, want)  # the smallest finite intensity, 2.0, everything else as read
    assert vol.data[0, 0, 0] == 2.0
    data[1, 1, 1] = np.inf
    with pytest.raises(N.NiftiError, match="inf.nii.gz: 1 Inf voxel"):
        N.read_volume(save(tmp_path / "inf.nii.gz", data), nan="background")
    with pytest.raises(N.NiftiError, match=r"all_nan.nii.gz: 14784 NaN voxel\(s\) of 14784; expected finite intensities$"):
        N.read_volume(save(tmp_path / "all_nan.nii.gz", np.full_like(data, np.nan)), nan="background")
    spec = SourceSpec(data=f"folder:{tmp_path / 'f'}", spacing=(3.0, 3.0, 3.0), fov=(16, 16, 16), nan="background")
    for i in range(2):
        save(tmp_path / "f" / f"s{i}.nii.gz", np.where(np.isnan(data) | np.isinf(data), np.nan, data))
    assert np.isfinite(build_dataset(spec, "train")[0].numpy()).all()  # through the whole pipeline


def test_oblique_affine_rejected_or_resampled(tmp_path) -> None:
    a = np.radians(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot * 2.0
    p = save(tmp_path / "obl.nii.gz", phantom(), aff)
    assert N.obliquity_deg(aff) == pytest.approx(20.0)
    with pytest.raises(N.NiftiError, match="obl.nii.gz: oblique affine \\(20.0 degrees"):
        N.read_volume(p)
    vol = N.read_volume(p, oblique="resample")
    assert N.obliquity_deg(vol.affine) < 1e-6
    np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, :3], axis=0), [2.0, 2.0, 2.0])
    assert vol.data.max() > 90  # the WM core survived resampling


def test_anisotropic_voxels(tmp_path) -> None:
    p = save(tmp_path / "thick.nii.gz", phantom(), np.diag([1.0, 1.0, 6.0, 1.0]))
    with pytest.raises(N.NiftiError, match=r"thick.nii.gz: voxels \[1.0, 1.0, 6.0\] mm are too anisotropic"):
        N.read_volume(p)
    assert N.read_volume(p, max_anisotropy=8.0).data.shape == (24, 28, 22)
    from modaflow.modalities.mri.recipe import MRIConfig, source_of  # the recipe (and so the CLI) passes it on

    assert source_of(MRIConfig(data=f"folder:{tmp_path}", max_anisotropy=8.0)).max_anisotropy == 8.0
    # mildly anisotropic data is resampled to isotropic voxels by the pipeline
    q = save(tmp_path / "aniso.nii.gz", phantom(), np.diag([2.0, 2.0, 3.0, 1.0]))
    out = T.preprocess_transforms((2.0, 2.0, 2.0), (16, 16, 16))({"image": str(q)})["image"]
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out.affine)[:3, :3], axis=0), [2.0, 2.0, 2.0])


def test_bids_discovery_and_empty_datasets(tmp_path) -> None:
    root = tmp_path / "bids"
    save(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", phantom())
    save(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii", phantom())
    save(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T2w.nii.gz", phantom())
    save(root / "sub-03" / "func" / "sub-03_task-rest_bold.nii.gz", phantom())
    found = N.find_bids(root)
    assert [p.name for p in found] == ["sub-01_T1w.nii.gz", "sub-02_ses-1_T1w.nii"]
    assert N.find_source(f"bids:{root}") == found
    save(root / "sub-01" / "anat" / "sub-01_ce-gadolinium_T1w.nii.gz", phantom())  # contrast-enhanced: left out
    with pytest.warns(UserWarning, match=r"1 contrast-enhanced T1w image\(s\) \(ce- entity\) left out"):
        assert N.find_bids(root) == found
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(N.NiftiError, match="empty.*empty BIDS dataset: no sub-\\* folders"):
        N.find_bids(empty)
    (empty / "sub-01" / "anat").mkdir(parents=True)
    with pytest.raises(N.NiftiError, match="1 subject\\(s\\) but no"):
        N.find_bids(empty)
    with pytest.raises(N.NiftiError, match="no .nii or .nii.gz files"):
        N.find_folder(empty)
    with pytest.raises(N.NiftiError, match="expected 'embedded', 'bids:/path' or 'folder:/path'"):
        N.parse_source("nifti:/x")


def test_bids_broken_links_raise_and_hidden_files_are_skipped(tmp_path) -> None:
    """A DataLad / git-annex T1w whose content was never fetched is a broken link: it was dropped without a word
    (a subject fewer); macOS ``._*`` resource forks were taken for images and failed to read."""
    root = tmp_path / "bids"
    save(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", phantom())
    (root / "sub-01" / "anat" / "._sub-01_T1w.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "sub-02" / "anat").mkdir(parents=True)
    (root / "sub-02" / "anat" / "sub-02_T2w.nii.gz").symlink_to("../../.git/annex/objects/missing-T2w")  # not used
    assert [p.name for p in N.find_bids(root)] == ["sub-01_T1w.nii.gz"]
    link = root / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    link.symlink_to("../../.git/annex/objects/missing")
    with pytest.raises(N.NiftiError, match=r"sub-02/anat/sub-02_T1w.nii.gz: a broken link \(DataLad / git-annex "
                                           r"content not fetched\? 'datalad get' it\)"):
        N.find_bids(root)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "._a.nii").write_bytes(b"\x00\x05\x16\x07")
    save(tmp_path / "f" / "a.nii", phantom())
    assert [p.name for p in N.find_folder(tmp_path / "f")] == ["a.nii"]


def test_a_home_relative_source_is_expanded(tmp_path, monkeypatch) -> None:
    """``--data bids:~/ds``: the shell does not expand ``~`` after ``bids:``; it was a 'not a folder' error."""
    monkeypatch.setenv("HOME", str(tmp_path))
    save(tmp_path / "ds" / "sub-01" / "anat" / "sub-01_T1w.nii.gz", phantom())
    save(tmp_path / "flat" / "a.nii.gz", phantom())
    assert N.find_source("bids:~/ds") == [tmp_path / "ds" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"]
    assert N.find_source("folder:~/flat") == [tmp_path / "flat" / "a.nii.gz"]


def test_split_files_is_disjoint_and_complete(tmp_path) -> None:
    files = [tmp_path / f"s{i:02d}.nii" for i in range(11)]
    train, test = split_files(files, "train"), split_files(files, "test")
    assert sorted(train + test) == sorted(files) and not set(train) & set(test)
    assert [f.name for f in test] == ["s04.nii", "s09.nii"]
    assert split_files(files[:2], "test") == [files[1]]


def test_bids_split_keeps_every_subject_on_one_side(tmp_path) -> None:
    """Sessions of one subject never land on both sides (they did with every 5th file: sub-03's second session was
    held out, its first trained on). Every 5th subject is held out; a plain folder still splits every 5th file."""
    root = tmp_path / "bids"
    two_sessions = {"01", "03", "05"}
    for sub in ("01", "02", "03", "04", "05", "06", "07"):
        if sub in two_sessions:
            for ses in ("1", "2"):
                (root / f"sub-{sub}" / f"ses-{ses}" / "anat").mkdir(parents=True)
                (root / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_T1w.nii.gz").touch()
        else:
            (root / f"sub-{sub}" / "anat").mkdir(parents=True)
            (root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz").touch()
    files = N.find_bids(root)
    assert len(files) == 10
    train, test = split_files(files, "train"), split_files(files, "test")
    assert sorted(train + test) == files and not set(train) & set(test)
    assert [f.name for f in test] == ["sub-05_ses-1_T1w.nii.gz", "sub-05_ses-2_T1w.nii.gz"]  # the 5th subject
    assert {D.subject_of(f) for f in train}.isdisjoint({D.subject_of(f) for f in test})
    # the subject folder counts where a file name lacks the entity; a flat folder of BIDS-named files groups too
    odd = root / "sub-08" / "ses-1" / "anat" / "scan_T1w.nii.gz"
    odd.parent.mkdir(parents=True)
    odd.touch()
    assert D.subject_of(odd) == "08" and D.subject_of(tmp_path / "sub-08" / "a.nii") is None
    flat = [tmp_path / f"sub-{i // 2:02d}_run-{i % 2}_T1w.nii" for i in range(12)]  # 6 subjects, 2 runs each
    assert [f.name for f in split_files(flat, "test")] == ["sub-04_run-0_T1w.nii", "sub-04_run-1_T1w.nii"]
    assert split_files(files[:2], "test") == [] and split_files(files[:2], "train") == files[:2]  # one subject


def test_rgb_and_complex_voxels_are_rejected_naming_the_file(tmp_path) -> None:
    """RGB voxels crashed inside numpy (a DTypePromotionError naming no file, an abort in the caching threads);
    complex voxels lost their imaginary part without a word."""
    rgb = np.zeros((12, 12, 12), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(N.NiftiError, match=r"rgb.nii.gz: voxel data type .*\(RGB or complex\); expected real-valued"):
        N.read_volume(tmp_path / "rgb.nii.gz")
    c = save(tmp_path / "complex.nii", (phantom() + 1j * phantom()).astype(np.complex64))
    with pytest.raises(N.NiftiError, match=r"complex.nii: voxel data type complex64 \(RGB or complex\)"):
        N.read_volume(c)


def test_a_header_without_orientation_is_rejected(tmp_path) -> None:
    """qform_code = sform_code = 0: nibabel falls back to a bare LAS voxel-size matrix, so the pipeline's
    'orientation to RAS' was a guess about left and right."""
    img = nib.Nifti1Image(phantom(), None)
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(tmp_path / "noorient.nii.gz"))
    with pytest.raises(N.NiftiError, match=r"noorient.nii.gz: qform_code and sform_code are both 0: the header gives "
                                           r"no orientation, so left and right are unknown"):
        N.read_volume(tmp_path / "noorient.nii.gz")
    img.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=2)  # an aligned sform alone is enough
    nib.save(img, str(tmp_path / "aligned.nii.gz"))
    np.testing.assert_allclose(N.read_volume(tmp_path / "aligned.nii.gz").affine, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_a_constant_volume_is_rejected_naming_the_file(tmp_path) -> None:
    """An all-zero (or constant) image has no brain; scaling made it a uniform -1 volume without a word."""
    for name, value in (("zeros.nii.gz", 0.0), ("flat.nii", 7.5)):
        p = save(tmp_path / name, np.full((12, 12, 12), value, np.float32))
        with pytest.raises(N.NiftiError, match=rf"{name}: constant intensity \({value:g} in every voxel\): no brain"):
            N.read_volume(p)
    save(tmp_path / "f" / "a.nii.gz", phantom())
    save(tmp_path / "f" / "b.nii.gz", np.zeros((24, 28, 22), np.float32))
    spec = SourceSpec(data=f"folder:{tmp_path / 'f'}", spacing=(3.0, 3.0, 3.0), fov=(16, 16, 16))
    with pytest.raises(N.NiftiError, match="b.nii.gz: constant intensity"):
        build_dataset(spec, "test")


# ---------------------------------------------------------------- pipeline


def test_otsu_and_brain_mask_recover_a_sphere() -> None:
    g = np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij")
    sphere = sum((x - 10) ** 2 for x in g) < 36
    x = np.where(sphere, 1.0, 0.05) + 0.02 * np.random.default_rng(0).standard_normal(sphere.shape)
    assert 0.1 < T.otsu_threshold(x) < 0.95
    m = T.brain_mask(x)
    from scipy import ndimage

    assert (m & sphere).sum() == sphere.sum()  # the whole sphere is inside
    assert not (m & ~ndimage.binary_dilation(sphere, np.ones((3, 3, 3)))).any()  # closing adds at most a one-voxel rim


def test_pipeline_canonical_orientation_spacing_fov_range(tmp_path) -> None:
    data = phantom(centre=(9, 12, 11))  # off-centre brain
    ras = save(tmp_path / "ras.nii.gz", data, np.diag([2.0, 2.0, 2.0, 1.0]))
    las_aff = np.diag([-2.0, 2.0, 2.0, 1.0])
    las_aff[0, 3] = 2.0 * (data.shape[0] - 1)  # same world positions, x axis stored flipped
    las = save(tmp_path / "las.nii.gz", data[::-1].copy(), las_aff)
    pipe = T.preprocess_transforms((2.0, 2.0, 2.0), (16, 16, 16))
    a, b = pipe({"image": str(ras)})["image"], pipe({"image": str(las)})["image"]
    assert a.shape == (1, 16, 16, 16)
    torch.testing.assert_close(a.as_tensor(), b.as_tensor(), atol=1e-5, rtol=0)
    assert nib.aff2axcodes(np.asarray(b.affine)) == ("R", "A", "S")
    assert float(a.min()) == -1.0 and float(a.max()) == pytest.approx(1.0)
    mask = T.brain_mask(a[0].numpy())
    idx = np.argwhere(mask)
    centre = (idx.min(0) + idx.max(0) + 1) / 2
    np.testing.assert_allclose(centre, [8, 8, 8], atol=1.0)  # the brain sits in the FOV centre


def test_a_head_scanned_with_its_neck_keeps_the_top_of_the_head(tmp_path) -> None:
    """A bright ellipsoid head on a long neck (48 voxels tall in all, 2 mm): the 16-voxel crop keeps the top of the
    head (the neck is cut), where centring on the head-and-neck mask would cut the top of the brain."""
    g = np.meshgrid(np.arange(20.0), np.arange(20.0), np.arange(48.0), indexing="ij")
    head = ((g[0] - 10) / 7) ** 2 + ((g[1] - 10) / 7) ** 2 + ((g[2] - 38) / 7) ** 2 < 1  # z 31..45
    neck = ((g[0] - 10) ** 2 + (g[1] - 10) ** 2 < 9) & (g[2] < 34)
    data = np.where(head | neck, 1.0, 0.02) + 0.01 * np.random.default_rng(0).standard_normal(head.shape)
    path = save(tmp_path / "neck.nii.gz", data, np.diag([2.0, 2.0, 2.0, 1.0]))
    out = T.preprocess_transforms((2.0, 2.0, 2.0), (16, 16, 16))({"image": str(path)})["image"]
    z0 = int(round(float(out.affine[2, 3]) / 2.0))  # the crop's first slice, in source voxels
    top = int(np.argwhere(head)[:, 2].max())
    assert top + T.TOP_MARGIN <= z0 + 16 - 1 <= top + T.TOP_MARGIN + 1  # ends about TOP_MARGIN slices above the head
    assert z0 > 24 - 8  # where centring on the 48-slice head-and-neck mask would start (and end below the head's top)
    assert (out[0, :, :, : 16 - T.TOP_MARGIN - 1] > 0).any(dim=(0, 1)).all()  # tissue in every slice below the margin


def test_augmentation_flip_is_exact_and_shapes_hold() -> None:
    x = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6)
    flip = T.augment_transforms(rotate_deg=0.0, shift_mm=0.0, flip_prob=1.0)
    torch.testing.assert_close(flip({"image": x}), x.flip(1))
    aug = T.augment_transforms()
    aug.set_random_state(0)
    y = aug({"image": x})
    assert y.shape == x.shape and not torch.equal(y, x)


def test_augmentation_shifts_are_in_millimetres() -> None:
    """MedForj's +-5 voxel shifts are at 1 mm: 5 voxels at 1 mm, 0.625 voxel on 8 mm voxels
    (the 24^3 embedded cohort), never 5 voxels there."""
    x = -torch.ones(1, 24, 24, 24)
    x[:, 10:14, 10:14, 10:14] = 1.0
    grid = torch.stack(torch.meshgrid(*[torch.arange(24.0)] * 3, indexing="ij"))

    def centre(v):
        w = (v[0] + 1.0).clamp(min=0.0)
        return (grid * w).sum(dim=(1, 2, 3)) / w.sum()

    c0 = centre(x)
    for spacing, limit in ((1.0, 5.0), (8.0, 0.625)):
        aug = T.augment_transforms(rotate_deg=0.0, spacing=(spacing,) * 3, flip_prob=0.0)
        aug.set_random_state(0)
        moved = max(float((centre(aug({"image": x})) - c0).abs().max()) for _ in range(20))
        assert moved <= limit + 0.05
        assert moved > 0.4 * limit  # it does shift, on the scale of the limit
    assert D.voxel_sizes(SourceSpec(size=24)) == (8.0, 8.0, 8.0)
    assert D.voxel_sizes(SourceSpec(data="folder:/x", spacing=(1.0, 1.0, 2.0), fov=(16, 16, 16))) == (1.0, 1.0, 2.0)


def _identical_volumes(n: int = 4) -> torch.Tensor:
    x = -torch.ones(1, 1, 8, 8, 8)
    x[..., 1:5, 2:7, 3:5] = 1.0  # asymmetric, so every flip, rotation and shift shows
    return x.repeat(n, 1, 1, 1, 1)


def test_augmentations_differ_between_workers_and_repeat_for_a_seed() -> None:
    """Each DataLoader worker held a copy of the same random state, so worker 0 and worker 1 augmented alike (batch
    i comes from worker i % 2; all volumes here are equal, so equal batches mean equal flips, rotations and
    shifts). Now workers and ranks differ, and the same seed gives the same augmentations."""
    ds = VolumeSet(_identical_volumes(), augment=True)

    def batches(seed: int, workers: int = 2, rank: int = 0) -> list[torch.Tensor]:
        if rank == 0:
            loader = MRIDataModule(ds, batch_size=1, seed=seed, num_workers=workers).train_dataloader()
        else:
            loader = D.train_loader(ds, 1, seed, workers, rank=rank)
        out = list(loader)
        del loader  # its persistent workers end here
        return out

    a = batches(0)
    assert len(a) == 4 and not torch.equal(a[0], a[1]) and not torch.equal(a[2], a[3])  # worker 0 vs worker 1
    assert all(torch.equal(x, y) for x, y in zip(a, batches(0)))  # reproducible
    assert not any(torch.equal(x, y) for x, y in zip(a, batches(1)))  # another seed
    assert not any(torch.equal(x, y) for x, y in zip(a, batches(0, rank=1)))  # another DDP rank
    main = batches(0, workers=0)  # no workers: the main process, seeded the same way
    assert not torch.equal(main[0], main[1]) and all(torch.equal(x, y) for x, y in zip(main, batches(0, workers=0)))
    assert not any(torch.equal(x, y) for x, y in zip(main, batches(0, workers=0, rank=1)))


def test_folder_dataset_is_cached_and_loads(tmp_path) -> None:
    for i in range(3):
        save(tmp_path / "f" / f"s{i}.nii.gz", phantom() * (1 + 0.1 * i))
    spec = SourceSpec(data=f"folder:{tmp_path / 'f'}", spacing=(3.0, 3.0, 3.0), fov=(16, 16, 16))
    ds = build_dataset(spec, "train", augment=True)
    assert len(ds) == 2 and ds[0].shape == (1, 16, 16, 16) and ds[0].dtype == torch.float32
    assert load_volumes(spec, "test").shape == (1, 1, 16, 16, 16)


def test_bad_file_in_a_dataset_names_it(tmp_path) -> None:
    save(tmp_path / "f" / "a.nii.gz", phantom())
    bad = phantom()
    bad[0, 0, 0] = np.nan
    save(tmp_path / "f" / "b.nii.gz", bad)
    spec = SourceSpec(data=f"folder:{tmp_path / 'f'}", spacing=(3.0, 3.0, 3.0), fov=(16, 16, 16))
    with pytest.raises(N.NiftiError, match="b.nii.gz: 1 NaN voxel"):
        build_dataset(spec, "test")


def test_a_held_out_split_of_one_volume_is_a_clear_error(tmp_path) -> None:
    from modaflow.modalities.mri.evaluation import FeatureConfig, real_reference
    from modaflow.modalities.mri.recipe import MRIConfig

    for i in range(5):
        save(tmp_path / "f" / f"s{i}.nii.gz", phantom() * (1 + 0.1 * i))
    cfg = MRIConfig(data=f"folder:{tmp_path / 'f'}", spacing=(3.0, 3.0, 3.0), fov=(16, 16, 16))
    with pytest.raises(ValueError, match=r"the held-out split has 1 volume\(s\) \(every 5th subject.*give >= 10 subjects"):
        real_reference(cfg, FeatureConfig(), 0)


def test_an_embedded_held_out_split_of_one_volume_names_n_test() -> None:
    """The message spoke of every 5th subject and '>= 10 subjects (files)' for the embedded cohort too."""
    from modaflow.modalities.mri.evaluation import FeatureConfig, real_reference
    from modaflow.modalities.mri.recipe import MRIConfig

    with pytest.raises(ValueError, match=r"^embedded: the held-out split has 1 volume\(s\) \(n_test\); the Fréchet "
                                         r"distance and the tissue tests need >= 2, so train with --n-test >= 2$"):
        real_reference(MRIConfig(size=16, n_train=2, n_test=1), FeatureConfig(), 0)


def test_bad_files_among_good_ones_end_with_the_error_not_an_abort(tmp_path) -> None:
    """MONAI caches with a thread pool; a file that raised inside it tore the pool down while other workers ran,
    and the process aborted (exit 134) after printing the error. Run in a fresh process to see its exit."""
    import subprocess
    import sys

    for i in range(10):
        save(tmp_path / "f" / f"s{i}.nii.gz", phantom() * (1 + 0.05 * i))
    for name in ("s3.nii.gz", "s7.nii.gz"):
        bad = phantom()
        bad[1, 1, 1] = np.inf
        save(tmp_path / "f" / name, bad)
    code = (f"from modaflow.modalities.mri.data import SourceSpec, build_dataset\n"
            f"build_dataset(SourceSpec(data='folder:{tmp_path / 'f'}', spacing=(3.0, 3.0, 3.0), fov=(16, 16, 16)), "
            f"'train', num_workers=4)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "NiftiError" in run.stderr and "s3.nii.gz: 1 Inf voxel" in run.stderr
    assert "(and 1 more file(s) rejected: ['s7.nii.gz'])" in run.stderr


# ---------------------------------------------------------------- cohort and output


def test_embedded_cohort_is_deterministic_distinct_and_scaled() -> None:
    a = make_cohort(3, 16, "train", 0)
    assert a.shape == (3, 1, 16, 16, 16) and a.dtype == np.float32
    assert a.min() == -1.0 and a.max() == 1.0
    np.testing.assert_array_equal(a, make_cohort(3, 16, "train", 0))
    assert np.abs(a[0] - a[1]).mean() > 0.02
    assert np.abs(make_cohort(1, 16, "test", 0)[0] - a[0]).mean() > 0.02


def test_generated_volumes_are_written_with_a_ras_affine(tmp_path) -> None:
    aff = T.canonical_affine((6.0, 6.0, 6.0), (16, 16, 16))
    x = torch.rand(2, 1, 16, 16, 16) * 2 - 1
    paths = write_volumes(x, aff, tmp_path / "out")
    img = nib.load(str(paths[1]))
    assert img.shape == (16, 16, 16) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(img.header.get_zooms(), (6.0, 6.0, 6.0))
    np.testing.assert_allclose(img.affine @ [7.5, 7.5, 7.5, 1], [0, 0, 0, 1])  # centred on the origin
    np.testing.assert_allclose(np.asarray(img.dataobj), x[1, 0].numpy())
    with pytest.raises(ValueError, match="holds one volume"):
        write_volumes(x, aff, tmp_path / "one.nii.gz")
