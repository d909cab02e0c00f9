"""fmri modality end to end on a tiny simulation: train the three stages, sample both
directions to files, evaluate, finetune a new subject, the ODE run backwards, the smoke
benchmark, and the bad inputs of the CLI entry points."""

import numpy as np
import pytest
import torch

from modaflow.core.config import ConfigError
from modaflow.core.training import FlowMatchingConfig, TrainerArgs
from modaflow.modalities.fmri import MODALITY, FMRIConfig, SampleOptions
from modaflow.modalities.fmri.models import build_xfm
from modaflow.modalities.fmri.neuroflow import NeuroFlow
from modaflow.modalities.fmri.recipe import build_path
from modaflow.modalities.fmri.simulate import SimConfig

SIM = SimConfig(n_stimuli=120, n_test=20, trials_per_run=30, volume=(6, 6, 3))


def _cfg(**kw) -> FMRIConfig:
    """Tiny sizes; the simulator's options on simulated data, else its images' size (files the tests write from it)."""
    fm = FlowMatchingConfig(lr=2e-3, max_steps=30, batch_size=64, ema_decay=0.9, log_every=5, ckpt_every=30)
    source = {"sim": SIM} if kw.get("data", "simulated") == "simulated" else {"stimulus_size": SIM.image_size}
    return FMRIConfig(latent=8, ae_hidden=32, ae_steps=30, vae_hidden=32, vae_steps=30, xfm_hidden=32,
                      xfm_depth=1, steps=4, n_candidates=10, fm=fm, **{**source, **kw})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fmri_run")
    summary = MODALITY.train(_cfg(), TrainerArgs(accelerator="cpu"), out, progress=False)
    assert summary["xfm"]["steps"] == 30 and np.isfinite(summary["xfm"]["final_loss"])
    return out


def test_run_folder_holds_every_stage(run_dir) -> None:
    for name in ("recipe.json", "visual_ae.safetensors", "neurovae.safetensors", "stats.safetensors",
                 "checkpoints/last.safetensors", "mask.nii.gz", "features.safetensors"):
        assert (run_dir / name).is_file(), name


def test_sample_encode_writes_nifti_on_the_mask_and_decode_reads_it_back(run_dir, tmp_path) -> None:
    import nibabel as nib

    enc = MODALITY.sample(run_dir, 5, 4, "euler", tmp_path / "enc.nii.gz", 0, options=SampleOptions(direction="encode"))
    img, mask = nib.load(enc), nib.load(run_dir / "mask.nii.gz")
    assert img.shape == mask.shape + (5,) and np.allclose(img.affine, mask.affine)
    assert img.header["qform_code"] > 0 and np.allclose(img.get_qform(), mask.affine)  # viewers that read the qform
    assert img.header.get_xyzt_units()[0] == "mm"
    assert (np.asarray(img.dataobj)[np.asarray(mask.dataobj) == 0] == 0).all()
    dec = MODALITY.sample(run_dir, 0, 4, "euler", tmp_path / "dec.npy", 0,
                          options=SampleOptions(direction="decode", input=str(enc)))
    imgs = np.load(dec)
    assert imgs.shape == (5, 16, 16) and imgs.min() >= 0 and imgs.max() <= 1
    png = MODALITY.sample(run_dir, 3, 2, "heun", tmp_path / "grid.png", 0, options=SampleOptions())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.save(tmp_path / "stim.npy", imgs[:2])
    enc2 = MODALITY.sample(run_dir, 0, 4, "euler", tmp_path / "enc.npy", 0,
                           options=SampleOptions(direction="encode", input=str(tmp_path / "stim.npy")))
    assert np.load(enc2).shape == (2, int(np.asarray(mask.dataobj).sum()))


def test_voxels_of_a_run_without_a_mask_round_trip_through_nifti(tmp_path) -> None:
    from modaflow.modalities.fmri.sampling import _write_voxels, read_responses

    raw = np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32)  # (N, V); tmp_path holds no mask
    for name in ("v.nii.gz", "v.nii"):
        np.testing.assert_array_equal(read_responses(_write_voxels(tmp_path / name, raw, tmp_path), tmp_path, 7), raw)
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((7, 2, 1, 3), np.float32), np.eye(4)), tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match=r"bad.nii.gz: the run has no mask .* must be the \(V, 1, 1, N\) image"):
        read_responses(tmp_path / "bad.nii.gz", tmp_path, 7)


def test_sample_bad_inputs(run_dir, tmp_path) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match=r"expected responses \(N, "):
        MODALITY.sample(run_dir, 0, 2, None, tmp_path / "o.npy", 0, options=SampleOptions(input=str(tmp_path / "wrong.npy")))
    with pytest.raises(ValueError, match="decoding writes .png or .npy"):
        MODALITY.sample(run_dir, 2, 2, None, tmp_path / "o.txt", 0, options=SampleOptions())
    nan_images = np.full((2, 16, 16), 0.5, np.float32)
    nan_images[1, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan_images)
    with pytest.raises(ValueError, match=r"nan.npy: stimulus images hold NaN/Inf"):
        MODALITY.sample(run_dir, 0, 2, None, tmp_path / "o.npy", 0,
                        options=SampleOptions(direction="encode", input=str(tmp_path / "nan.npy")))
    import nibabel as nib

    mask = nib.load(run_dir / "mask.nii.gz")
    off_grid = np.diag([3.0, 3.0, 3.0, 1.0])
    for name, shape, affine in (("shape.nii.gz", (5, 6, 3, 2), mask.affine), ("affine.nii.gz", mask.shape + (2,), off_grid)):
        nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), tmp_path / name)
        with pytest.raises(ValueError, match=rf"{name}: shape .* / affine do not match the run's mask .*mask.nii.gz"):
            MODALITY.sample(run_dir, 0, 2, None, tmp_path / "o.npy", 0, options=SampleOptions(input=str(tmp_path / name)))
    with pytest.raises(ConfigError, match="direction"):
        SampleOptions(direction="sideways")
    with pytest.raises(ConfigError, match="FMRIConfig.data"):
        FMRIConfig(data="nsd")


def test_encode_reads_grey_alpha_and_16_bit_pngs(tmp_path) -> None:
    from PIL import Image

    from modaflow.modalities.fmri.sampling import read_images

    grey = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey, mode="L").save(tmp_path / "l.png")
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), mode="LA").save(tmp_path / "la.png")
    deep = grey.astype(np.uint16) * 257  # 0..255 -> 0..65535
    Image.fromarray(deep).save(tmp_path / "i16.png")
    ref = read_images(tmp_path / "l.png", 16)
    np.testing.assert_allclose(ref, grey[None] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(read_images(tmp_path / "la.png", 16), ref)  # was: refused as (1, 16, 16, 2)
    np.testing.assert_allclose(read_images(tmp_path / "i16.png", 16), ref, atol=1e-6)  # was: refused as not 8-bit


def test_evaluate_reports_both_directions_and_the_cycle(run_dir) -> None:
    m = MODALITY.evaluate(run_dir, None, 0, 4, "euler", 0)
    for key in ("enc.voxel_r_median", "enc.frac_ceiling_median", "enc.sample_r_mean", "enc.sample_cosine_mean", "enc.mse",
                "enc.top1_retrieval",
                "dec.pixcorr", "dec.ssim", "dec.twoway_pixels", "dec.twoway_features", "dec.top1_retrieval",
                "cycle.pixcorr", "cycle.latent_rmse"):
        assert np.isfinite(m[key]), key
    assert m["n_test"] == 20 and m["retrieval_candidates"] == 10 and 0 <= m["dec.twoway_pixels"] <= 1
    from modaflow.modalities.fmri.sampling import SampleOptions

    with pytest.raises(ConfigError, match="--direction and --input are options of 'modaflow sample fmri'"):
        MODALITY.evaluate(run_dir, None, 0, 4, "euler", 0, options=SampleOptions(input="x.npy"))


def test_evaluate_refuses_fewer_than_two_test_stimuli_by_name(run_dir, tmp_path) -> None:
    from modaflow.modalities.fmri.data import TrialData, save_betas
    from modaflow.modalities.fmri.simulate import simulate

    sim = simulate(SIM)
    path = save_betas(tmp_path / "one_test.h5", TrialData(sim.betas, sim.stim_id.astype(np.int64), sim.images, "sim",
                                                          sim.test_stimuli[:1]))
    with pytest.raises(ValueError, match=rf"^betas:{path}: evaluation needs at least 2 test stimuli; got 1$"):
        MODALITY.evaluate(run_dir, f"betas:{path}", 0, 4, "euler", 0)
    with pytest.raises(ValueError, match=r"^simulated: evaluation needs at least 2 test stimuli; got 1 \(--n 1 of 20\)$"):
        MODALITY.evaluate(run_dir, None, 1, 4, "euler", 0)
    assert MODALITY.evaluate(run_dir, None, 2, 4, "euler", 0)["n_test"] == 2


def test_config_refuses_flow_matching_fields_the_xfm_never_reads() -> None:
    for field, value, expected in (
        ("parametrization", "data", "velocity \\(NeuroFlow integrates the XFM as a velocity field in both directions\\)"),
        ("path", "vp_cosine", "unset \\('linear'\\): xfm_path sets the bridge's base path"),
        ("coupling", "sinkhorn", "unset \\('independent'\\): the XFM's pairs"),
        ("cond_dropout", 0.1, "unset \\(0.0\\): the XFM is unconditional"),
    ):
        with pytest.raises(ConfigError, match=f"^FMRIConfig.fm.{field}: expected {expected}"):
            FMRIConfig(fm=FlowMatchingConfig(**{field: value}))
    free = FMRIConfig(fm=FlowMatchingConfig(time_sampler="logit_normal", loss_weighting="min_snr"))
    assert (free.fm.time_sampler, free.fm.loss_weighting) == ("logit_normal", "min_snr")  # fields the XFM's training reads


def test_device_option_of_sample_and_evaluate(run_dir, tmp_path) -> None:
    base = MODALITY.evaluate(run_dir, None, 0, 4, "euler", 0)
    on_cpu = MODALITY.evaluate(run_dir, None, 0, 4, "euler", 0, options=SampleOptions(device="cpu"))
    assert {k: v for k, v in on_cpu.items()} == {k: v for k, v in base.items()}  # --device is not --direction/--input
    if not torch.cuda.is_available():
        for call in (lambda: MODALITY.evaluate(run_dir, None, 0, 4, "euler", 0, options=SampleOptions(device="cuda")),
                     lambda: MODALITY.sample(run_dir, 2, 2, None, tmp_path / "o.npy", 0, options=SampleOptions(device="cuda"))):
            with pytest.raises(ValueError, match="cuda was asked for, but torch sees no GPU"):
                call()
    with pytest.raises(ConfigError, match="device"):
        SampleOptions(device="tpu")


@pytest.mark.gpu
def test_sample_and_evaluate_on_cuda_match_the_cpu(run_dir, tmp_path) -> None:
    for direction in ("encode", "decode"):
        cpu = np.load(MODALITY.sample(run_dir, 5, 4, "euler", tmp_path / f"{direction}_cpu.npy", 0,
                                      options=SampleOptions(direction=direction, device="cpu")))
        gpu = np.load(MODALITY.sample(run_dir, 5, 4, "euler", tmp_path / f"{direction}_gpu.npy", 0,
                                      options=SampleOptions(direction=direction, device="cuda")))
        np.testing.assert_allclose(gpu, cpu, atol=1e-3, rtol=0)  # float32 on another device: rounding only
    cpu_m = MODALITY.evaluate(run_dir, None, 0, 4, "euler", 0, options=SampleOptions(device="cpu"))
    gpu_m = MODALITY.evaluate(run_dir, None, 0, 4, "euler", 0, options=SampleOptions(device="cuda"))
    assert abs(gpu_m["enc.voxel_r_median"] - cpu_m["enc.voxel_r_median"]) < 1e-3


def test_one_field_runs_both_ways_the_backward_ode_inverts_the_forward_one() -> None:
    torch.manual_seed(0)
    xfm = build_xfm(6, 32, 2)
    with torch.no_grad():
        for p in xfm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    from modaflow.modalities.fmri.models import AEConfig, NeuroVAE, NeuroVAEConfig, VisualAE

    stats = {k: torch.zeros(6) for k in ("zv_mean", "zn_mean")} | {k: torch.ones(6) for k in ("zv_std", "zn_std")}
    stats |= {"vox_mean": torch.zeros(10), "vox_std": torch.ones(10)}
    nf = NeuroFlow(VisualAE(AEConfig(8, 16, 6)), NeuroVAE(NeuroVAEConfig(10, 16, 6)), xfm, stats, "rk4")
    z = torch.randn(16, 6)
    forward = nf.flow(z, 0.0, 1.0, 40)
    assert (forward - z).abs().max() > 1e-2  # the field moves the points
    torch.testing.assert_close(nf.flow(forward, 1.0, 0.0, 40), z, atol=1e-4, rtol=0)  # RK4 O(h^4) + float32


def test_a_run_resumed_after_its_first_stages_trains_the_rest_as_a_fresh_run(run_dir, tmp_path) -> None:
    import shutil

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("visual_ae.safetensors", "visual_ae.json", "features.safetensors", "features.json"):
        shutil.copy2(run_dir / name, resumed / name)  # as if training had stopped after these two stages
    summary = MODALITY.train(_cfg(), TrainerArgs(accelerator="cpu"), resumed, progress=False)
    assert summary["ae"]["resumed"] and summary["features"]["resumed"] and "resumed" not in summary["neurovae"]
    from safetensors.torch import load_file

    for name in ("neurovae.safetensors", "stats.safetensors", "checkpoints/last.safetensors"):
        a, b = load_file(str(resumed / name)), load_file(str(run_dir / name))
        assert a.keys() == b.keys(), name
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}: {key}")


def test_a_run_without_the_feature_network_is_told_how_to_add_it(run_dir, tmp_path) -> None:
    import shutil

    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    for name in ("features.safetensors", "features.json"):
        (old / name).unlink()
    with pytest.raises(FileNotFoundError, match=r"features.safetensors: the decoding metrics' feature network is missing "
                                                r"\(a run trained before it existed\); rerun the run's 'modaflow train "
                                                r"fmri .*A run made by 'finetune': copy features.safetensors"):
        MODALITY.evaluate(old, None, 0, 4, "euler", 0)
    with pytest.raises(FileNotFoundError, match=r"features.safetensors: the decoding metrics' feature network is missing"):
        MODALITY.finetune(old, "simulated", tmp_path / "ft", {}, TrainerArgs(accelerator="cpu"), progress=False)
    assert not (tmp_path / "ft").exists()  # refused before anything is written
    summary = MODALITY.train(_cfg(), TrainerArgs(accelerator="cpu"), old, progress=False)  # as the message says
    assert "resumed" not in summary["features"] and summary["ae"]["resumed"] and summary["neurovae"]["resumed"]
    assert (old / "checkpoints/last.safetensors").read_bytes() == (run_dir / "checkpoints/last.safetensors").read_bytes()
    assert np.isfinite(MODALITY.evaluate(old, None, 0, 4, "euler", 0)["dec.top1_retrieval"])


def test_metrics_feature_net_is_trained_apart_from_the_visual_ae(run_dir) -> None:
    from modaflow.modalities.fmri.models import FeatureNet, FeatureNetConfig
    from modaflow.modalities.fmri.neuroflow import load_ae, read_features

    net, extra = read_features(run_dir / "features.safetensors")
    losses = [loss for _, loss in extra["history"]]
    assert losses[-1] < losses[0]  # trained on the stimuli
    img = torch.rand(5, SIM.image_size, SIM.image_size)
    assert net.encode(img).shape == (5, 32 * (SIM.image_size // 4) ** 2)
    assert net.encode(img).shape[1] != load_ae(run_dir / "visual_ae.safetensors").encode(img).shape[1]  # another space
    for size in (15, 25):  # strides that round up: the reconstruction is cropped back to the image
        odd = FeatureNet(FeatureNetConfig(image_size=size))
        assert odd.encode(torch.rand(2, size, size)).shape == (2, 32 * (-(-size // 4)) ** 2)
        assert torch.isfinite(odd.loss(torch.rand(2, size, size)))
    with pytest.raises(ConfigError, match="channels"):
        FeatureNetConfig(channels=3)


def test_bridge_endpoints_are_the_two_latents() -> None:
    for kind in ("linear", "cosine"):
        path = build_path(_cfg(xfm_path=kind, xfm_noise=0.04))
        x0, x1 = torch.randn(4, 3), torch.randn(4, 3)
        torch.testing.assert_close(path.sample(x0, x1, torch.zeros(4)).x_t, x0)
        torch.testing.assert_close(path.sample(x0, x1, torch.ones(4)).x_t, x1)


def test_finetune_trains_a_new_subject_head_on_the_same_xfm(run_dir, tmp_path) -> None:
    out = tmp_path / "subj2"
    sim2 = SIM.replace(volume=(5, 5, 3), sim_seed=7).to_dict()
    summary = MODALITY.finetune(run_dir, "simulated", out, {"sim": sim2, "vae_steps": 30}, TrainerArgs(accelerator="cpu"),
                                progress=False)
    import nibabel as nib

    v1, v2 = (int(np.asarray(nib.load(d / "mask.nii.gz").dataobj).sum()) for d in (run_dir, out))
    assert summary["voxels"] == v2 != v1  # a new subject with another voxel count
    assert np.isfinite(summary["align_rmse"])
    assert 1 <= summary["refit_steps"] <= 30  # early stopping chose the step, then a refit on every training trial:
    assert summary["refit_rows"] == (SIM.n_stimuli - SIM.n_test) * SIM.train_repeats
    for shared in ("checkpoints/last.safetensors", "visual_ae.safetensors", "features.safetensors"):
        assert (out / shared).read_bytes() == (run_dir / shared).read_bytes(), shared
    from modaflow.core.training import read_checkpoint  # the new subject's readout, refit on the shared path

    assert summary["readout"]["stimuli"] == SIM.n_stimuli - SIM.n_test
    import json  # simulated data never reads stimulus_size: the finetuned run's recipe leaves it unset

    assert json.loads((out / "recipe.json").read_text())["config"]["stimulus_size"] == FMRIConfig().stimulus_size
    assert read_checkpoint(out / "neurovae_readout.safetensors").model["bias"].shape == (v2,)
    m = MODALITY.evaluate(out, None, 0, 4, "euler", 0)
    assert np.isfinite(m["dec.pixcorr"]) and np.isfinite(m["enc.voxel_r_median"])
    with pytest.raises(ConfigError, match="finetune cannot change"):
        MODALITY.finetune(run_dir, "simulated", tmp_path / "x", {"latent": 4}, TrainerArgs(accelerator="cpu"))
    small = SIM.replace(image_size=SIM.image_size - 4).to_dict()
    with pytest.raises(ValueError, match=rf"simulated: stimuli are {SIM.image_size - 4} x {SIM.image_size - 4} images, but "
                                         rf"the run .* was trained on {SIM.image_size} x {SIM.image_size}"):
        MODALITY.finetune(run_dir, "simulated", tmp_path / "y", {"sim": small}, TrainerArgs(accelerator="cpu"))
    assert not (tmp_path / "y").exists()  # refused before anything is written


def test_finetune_on_another_subjects_bids_data_reads_its_own_mask_and_tr(run_dir, tmp_path) -> None:
    import json
    import shutil

    import nibabel as nib

    from modaflow.modalities.fmri.bids import write_bids
    from modaflow.modalities.fmri.simulate import simulate

    base = shutil.copytree(run_dir, tmp_path / "base")  # subject A's run, made with --mask A --glm-tr 1.0
    recipe = json.loads((base / "recipe.json").read_text())
    recipe["config"].update(mask=str(run_dir / "mask.nii.gz"), glm_tr=1.0, glm_space="MNI152NLin2009cAsym",
                            glm_confounds=["trans_x"], glm_slice_time_ref=0.5)  # and A's preprocessed-run settings
    (base / "recipe.json").write_text(json.dumps(recipe))
    root = write_bids(simulate(SIM.replace(volume=(5, 5, 3), sim_seed=7, tr=2.0)), tmp_path / "subB", runs=4)
    out = tmp_path / "ft"  # was: A's (6, 6, 3) mask refused against B's (5, 5, 3) BOLD, or B's runs fit with A's TR
    summary = MODALITY.finetune(base, f"bids:{root}", out, {"vae_steps": 30}, TrainerArgs(accelerator="cpu"),
                                progress=False)
    assert summary["voxels"] == int((np.asarray(nib.load(root / "mask.nii.gz").dataobj) > 0).sum())
    saved = json.loads((out / "recipe.json").read_text())["config"]
    assert (saved["mask"], saved["glm_tr"]) == ("", 0.0)
    assert (saved["glm_space"], saved["glm_confounds"], saved["glm_slice_time_ref"]) == ("", [], 0.0)
    other = tmp_path / "other_mask.nii.gz"  # given explicitly, they are still used
    shutil.copy(root / "mask.nii.gz", other)
    MODALITY.finetune(base, f"bids:{root}", tmp_path / "ft2", {"vae_steps": 30, "mask": str(other), "glm_tr": 2.0},
                      TrainerArgs(accelerator="cpu"), progress=False)
    saved = json.loads((tmp_path / "ft2" / "recipe.json").read_text())["config"]
    assert (saved["mask"], saved["glm_tr"]) == (str(other), 2.0)


def test_evaluate_on_bids_data_naming_stimuli_by_file_reads_them_at_the_runs_size(run_dir, tmp_path) -> None:
    """Images of another size under DS/stimuli/ are resized to the visual AE's (the recipe's stimulus_size, 32 by
    default, would not fit a run trained on 16-pixel stimuli)."""
    import pandas as pd
    from PIL import Image

    from modaflow.modalities.fmri.bids import write_bids
    from modaflow.modalities.fmri.simulate import simulate

    sim = simulate(SIM)
    root = write_bids(sim, tmp_path / "ds")
    (root / "stimuli").mkdir()
    for i, im in enumerate(sim.images):
        Image.fromarray((im * 255).round().astype(np.uint8), mode="L").resize((24, 24)).save(root / "stimuli" / f"{i}.png")
    for events in sorted(root.rglob("*_events.tsv")):
        ev = pd.read_csv(events, sep="\t")
        ev.assign(stim_file=[f"./{i}.png" for i in ev["stim_id"]]).drop(columns="stim_id").to_csv(events, sep="\t",
                                                                                                    index=False)
    (root / "stimuli.npy").unlink()
    (root / "test_stimuli.npy").unlink()
    (root / "test_stimuli.txt").write_text("".join(f"{i}.png\n" for i in sim.test_stimuli))
    m = MODALITY.evaluate(run_dir, f"bids:{root}", 0, 4, "euler", 0)
    assert m["n_test"] == len(sim.test_stimuli) and np.isfinite(m["enc.voxel_r_median"])


def test_a_run_from_before_percent_signal_change_keeps_scanner_units(run_dir, tmp_path) -> None:
    """glm_scaling became psc by default; a recipe written before the field existed reads it as none, the scaling
    it was trained with, while a new run gets psc."""
    import json
    import shutil

    from modaflow.modalities.fmri.recipe import FMRIConfig, restore

    old = shutil.copytree(run_dir, tmp_path / "old")
    recipe = json.loads((old / "recipe.json").read_text())
    del recipe["config"]["glm_scaling"]
    (old / "recipe.json").write_text(json.dumps(recipe))
    assert restore(old)[0].glm_scaling == "none" and restore(run_dir)[0].glm_scaling == FMRIConfig().glm_scaling == "psc"


def test_train_refuses_non_square_stimuli_before_writing_anything(tmp_path) -> None:
    from modaflow.modalities.fmri.data import TrialData, save_betas
    from modaflow.modalities.fmri.simulate import simulate

    sim = simulate(SIM)
    wide = np.zeros((len(sim.images), SIM.image_size, SIM.image_size - 4), np.float32)
    path = save_betas(tmp_path / "wide.h5", TrialData(sim.betas, sim.stim_id.astype(np.int64), wide, "sim", sim.test_stimuli))
    with pytest.raises(ValueError, match=r"wide.h5 \(stimuli\): stimuli must be square; got \(16, 12\) \(crop them square first\)"):
        MODALITY.train(_cfg(data=f"betas:{path}"), TrainerArgs(accelerator="cpu"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_smoke_benchmark_has_metrics_baselines_and_plots(tmp_path) -> None:
    res = MODALITY.bench("smoke", tmp_path, 0)
    assert res.metrics and res.baselines
    assert {"ridge_enc_pixels", "ridge_dec_latent", "flow_decode_only", "flow_encode_only", "true_model",
            "neuroflow_linear_bridge"} <= set(res.baselines)  # the other bridge path beside the default cosine
    assert "neuroflow@4.dec.twoway_features" in res.metrics
    # encoding per stimulus source: the digits have enough test stimuli beside a few faces (30 test stimuli in all)
    n_digits = res.metrics["neuroflow@4.enc.digit.n_test_stimuli"]
    assert 20 <= n_digits < 30 and "neuroflow@4.enc.face.n_test_stimuli" not in res.metrics
    digit = {k.rsplit(".", 1)[1]: v for k, v in res.metrics.items() if k.startswith("neuroflow@4.enc.digit.")}
    assert digit["median_r_over_median_ceiling"] == pytest.approx(digit["voxel_r_median"] / digit["noise_ceiling_median"])
    assert digit["noise_ceiling_median"] != res.metrics["neuroflow@4.enc.noise_ceiling_median"]  # its own test subset
    for name in res.plots:
        assert (tmp_path / name).is_file()
    assert (tmp_path / "results.json").is_file() and (tmp_path / "report.md").is_file()


def test_benchmark_without_the_one_direction_flows_resumes_the_trained_stages(tmp_path) -> None:
    from dataclasses import replace

    from modaflow.benchmarks import fmri as B

    p = replace(B.PROFILES["smoke"], one_direction_flows=False)
    first = B._run("smoke-no-flows", p, tmp_path, 0)
    assert "flow_decode_only" not in first.baselines and "flow_encode_only" not in first.baselines
    assert any("one-direction flows were not trained" in n for n in first.notes)
    assert not (tmp_path / "flow_decode_only").exists()
    again = B._run("smoke-no-flows", p, tmp_path, 0)  # the AE, NeuroVAE and XFM files are reused, not retrained
    assert again.metrics == first.metrics
    assert again.notes == first.notes  # e.g. the NeuroVAE's best validation step, read back from its file
    from modaflow.modalities.fmri import recipe
    from modaflow.modalities.fmri.neuroflow import VAE_FILE, read_vae

    _, summary = recipe._stage(tmp_path / "neuroflow" / VAE_FILE, read_vae, lambda: pytest.fail("retrained"))
    assert summary["resumed"] and summary["best_step"] >= 1 and summary["val_history"] and summary["history"]


def test_cli_train_then_sample_both_directions(tmp_path, capsys) -> None:
    from modaflow.benchmarks.cli import main

    run = tmp_path / "run"
    tiny = ["--n-stimuli", "120", "--n-test", "20", "--trials-per-run", "30", "--volume", "5", "5", "3", "--latent", "4",
            "--ae-hidden", "16", "--ae-steps", "5", "--vae-hidden", "16", "--vae-steps", "5", "--xfm-hidden", "16",
            "--xfm-depth", "1", "--max-steps", "5", "--batch-size", "32", "--ckpt-every", "5"]
    assert main(["train", "fmri", "--data", "simulated", "--out", str(run), "--accelerator", "cpu"] + tiny) == 0
    assert main(["sample", "fmri", "--ckpt", str(run), "--direction", "encode", "--n", "3", "--steps", "2",
                 "--out", str(tmp_path / "enc.nii.gz")]) == 0
    assert main(["sample", "fmri", "--ckpt", str(run), "--direction", "decode", "--input", str(tmp_path / "enc.nii.gz"),
                 "--out", str(tmp_path / "dec.png")]) == 0
    assert (tmp_path / "dec.png").is_file()
    assert "wrote" in capsys.readouterr().out


def test_vae_align_pulls_the_neural_latent_onto_the_visual_one(run_dir, tmp_path) -> None:
    from modaflow.modalities.fmri.recipe import load_prepared, restore

    with pytest.raises(ConfigError, match="vae_align"):
        _cfg(vae_align=-1.0)
    _, prep = load_prepared(_cfg())
    x, img = torch.as_tensor(prep.train_x), torch.as_tensor(prep.train_img)
    gaps = {}
    for weight in (0.0, 10.0):
        out = tmp_path / f"align{weight:g}"
        out.mkdir()
        for ext in (".safetensors", ".json"):  # the same visual AE, so only the NeuroVAE objective differs
            (out / f"visual_ae{ext}").write_bytes((run_dir / f"visual_ae{ext}").read_bytes())
        MODALITY.train(_cfg(vae_align=weight), TrainerArgs(accelerator="cpu"), out, progress=False)
        _, nf = restore(out)  # RMSE between standardised neural and visual latents of the training trials
        gaps[weight] = float(((nf.neural_latent(x) - nf.visual_latent(img)) ** 2).mean().sqrt())
    assert gaps[10.0] < 0.8 * gaps[0.0]


def test_neurovae_refit_trains_on_every_training_trial_for_the_chosen_steps(run_dir, tmp_path) -> None:
    """vae_refit (default): the early-stopping run on the fit stimuli chooses k, then a
    NeuroVAE trained on every training trial, held-out stimuli included, for k steps is what
    the run keeps; its file records k and the validation history. Without it the fit run's
    weights are kept and no refit is recorded."""
    from modaflow.modalities.fmri.neuroflow import VAE_FILE, read_vae
    from modaflow.modalities.fmri.recipe import load_prepared, validation_split

    cfg = _cfg()
    _, prep = load_prepared(cfg)
    fit_rows, val_rows = validation_split(prep.train_img, cfg.vae_val_fraction, cfg.fm.seed + 1)
    assert len(val_rows) > 0
    _, extra = read_vae(run_dir / VAE_FILE)
    k = extra["best_step"]
    assert 1 <= k <= cfg.vae_steps and extra["refit_steps"] == k and extra["val_history"]
    assert extra["refit_rows"] == len(prep.train_x) == len(fit_rows) + len(val_rows)
    assert not list(run_dir.glob("neurovae_select*"))  # the selection run's file is gone once the refit is written
    summary = MODALITY.train(_cfg(vae_refit=False), TrainerArgs(accelerator="cpu"), tmp_path, progress=False)
    assert "refit_steps" not in summary["neurovae"] and summary["neurovae"]["best_step"] >= 1
    _, extra = read_vae(tmp_path / VAE_FILE)
    assert "refit_steps" not in extra


def test_validation_split_holds_out_whole_stimuli() -> None:
    from modaflow.modalities.fmri.recipe import validation_split

    imgs = np.random.default_rng(0).random((20, 4, 4)).astype(np.float32)
    rows = np.array([0, 1, 2, 3] * 3 + list(range(4, 20)))  # stimuli 0..3 shown 3 times
    fit, val = validation_split(imgs[rows], 0.25, seed=0)
    assert len(val) and len(fit) + len(val) == len(rows) and not set(fit) & set(val)
    held = {imgs[rows[i]].tobytes() for i in val}
    assert len(held) == 5 and not held & {imgs[rows[i]].tobytes() for i in fit}  # repeats stay together
    assert len(validation_split(imgs, 0.0, 0)[1]) == 0
    with pytest.raises(ConfigError, match="vae_val_fraction"):
        _cfg(vae_val_fraction=1.0)


def test_early_stopping_keeps_the_best_validation_step(tmp_path) -> None:
    from modaflow.modalities.fmri.models import NeuroVAE, NeuroVAEConfig
    from modaflow.modalities.fmri.training import AutoencoderModule, fit_autoencoder, validation_loss

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(64, 12, generator=g), torch.randn(64, 4, generator=g)  # pure noise: validation cannot improve for long
    xv, tv = torch.randn(32, 12, generator=g), torch.randn(32, 4, generator=g)
    vae = NeuroVAE(NeuroVAEConfig(voxels=12, hidden=64, latent=4, dropout=0.0))
    m = AutoencoderModule(vae, 1e-2, 1.0, seed=0, val=(xv, tv), val_every=10)
    s = fit_autoencoder(m, (x, t), 16, 200, TrainerArgs(accelerator="cpu"), tmp_path / "v.safetensors", 0)
    steps = [k for k, _ in s["val_history"]]
    assert steps[-1] == 200 and steps[0] == 10
    assert s["best_val_loss"] == min(v for _, v in s["val_history"])
    assert validation_loss(vae, (xv, tv), 1.0) == pytest.approx(s["best_val_loss"], rel=1e-5)  # the best weights are kept


def test_ema_weights_are_the_ones_validated_and_kept(tmp_path) -> None:
    """Known answer: the kept NeuroVAE weights are the hand-computed moving average
    ``theta_ema <- d_n theta_ema + (1 - d_n) theta``, ``d_n = min(d, (1 + n) / (10 + n))``, of
    the recorded iterates at the best validation step (not the iterate itself), and without
    validation the final average."""
    from modaflow.modalities.fmri.models import NeuroVAE, NeuroVAEConfig
    from modaflow.modalities.fmri.training import AutoencoderModule, fit_autoencoder, validation_loss

    class Recording(AutoencoderModule):
        def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
            self.iterates.append(torch.nn.utils.parameters_to_vector(self.model.parameters()).detach().clone())
            super().on_train_batch_end(outputs, batch, batch_idx)

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(64, 12, generator=g), torch.randn(64, 4, generator=g)
    xv, tv = torch.randn(32, 12, generator=g), torch.randn(32, 4, generator=g)
    with pytest.raises(ValueError, match="ema_decay"):
        AutoencoderModule(NeuroVAE(NeuroVAEConfig(voxels=12, hidden=16, latent=4)), 1e-2, ema_decay=1.0)
    for val in ((xv, tv), None):
        torch.manual_seed(0)
        vae = NeuroVAE(NeuroVAEConfig(voxels=12, hidden=32, latent=4, dropout=0.0))
        avg = torch.nn.utils.parameters_to_vector(vae.parameters()).detach().clone()
        m = Recording(vae, 1e-2, 1.0, seed=0, val=val, val_every=10, ema_decay=0.8)
        m.iterates = []
        s = fit_autoencoder(m, (x, t), 16, 60, TrainerArgs(accelerator="cpu"), tmp_path / "v.safetensors", 0)
        averages = []
        for n, theta in enumerate(m.iterates):
            d = min(0.8, (1 + n) / (10 + n))  # warm-up until n = 35, then 0.8
            avg = d * avg + (1 - d) * theta
            averages.append(avg.clone())
        kept = torch.nn.utils.parameters_to_vector(vae.parameters()).detach()
        step = s.get("best_step", 60)
        torch.testing.assert_close(kept, averages[step - 1], rtol=1e-4, atol=1e-6)
        assert not torch.allclose(kept, m.iterates[step - 1], atol=1e-4)  # the average, not the iterate
        if val is not None:
            assert validation_loss(vae, val, 1.0) == pytest.approx(s["best_val_loss"], rel=1e-5)


def test_lr_schedule_anneals_the_learning_rate_over_the_budget(tmp_path) -> None:
    """Known answer: the learning rate the optimiser used at each step is ``lr * (1 +
    cos(pi s / T)) / 2`` (cosine, SGDR eq. 5 with eta_min = 0), ``lr * (1 - s / T)``
    (linear) or ``lr`` (constant), over the trainer's ``T = max_steps``; the weight decay
    reaches AdamW; bad settings are refused."""
    import math

    from modaflow.modalities.fmri.models import NeuroVAE, NeuroVAEConfig
    from modaflow.modalities.fmri.training import AutoencoderModule, fit_autoencoder, lr_factor

    class Recording(AutoencoderModule):
        def on_train_batch_start(self, batch, batch_idx: int) -> None:
            opt = self.optimizers().optimizer
            self.lrs.append(opt.param_groups[0]["lr"])
            self.wds.append(opt.param_groups[0]["weight_decay"])

    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10) == pytest.approx(0.0) and lr_factor("cosine", 12, 10) == pytest.approx(0.0)
    assert lr_factor("linear", 3, 10) == pytest.approx(0.7) and lr_factor("constant", 7, 10) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor("step", 1, 10)
    with pytest.raises(ValueError, match="schedule"):
        AutoencoderModule(NeuroVAE(NeuroVAEConfig(voxels=12, hidden=16, latent=4)), 1e-2, lr_schedule="step")
    with pytest.raises(ValueError, match="weight_decay"):
        AutoencoderModule(NeuroVAE(NeuroVAEConfig(voxels=12, hidden=16, latent=4)), 1e-2, weight_decay=-1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g)
    T = 20
    expected = {"cosine": [0.5 * (1 + math.cos(math.pi * s / T)) for s in range(T)],
                "linear": [1 - s / T for s in range(T)], "constant": [1.0] * T}
    for schedule, factors in expected.items():
        m = Recording(NeuroVAE(NeuroVAEConfig(voxels=12, hidden=16, latent=4, dropout=0.0)), 1e-2, seed=0,
                      lr_schedule=schedule, weight_decay=0.05)
        m.lrs, m.wds = [], []
        fit_autoencoder(m, (x,), 16, T, TrainerArgs(accelerator="cpu"), tmp_path / f"{schedule}.safetensors", 0)
        assert m.lrs == pytest.approx([1e-2 * f for f in factors], abs=1e-9), schedule
        assert set(m.wds) == {0.05}
    # a refit stopped at step k < T of a T-step schedule follows that schedule's first k rates
    m = Recording(NeuroVAE(NeuroVAEConfig(voxels=12, hidden=16, latent=4, dropout=0.0)), 1e-2, seed=0,
                  lr_schedule="cosine", schedule_steps=T)
    m.lrs, m.wds = [], []
    fit_autoencoder(m, (x,), 16, 7, TrainerArgs(accelerator="cpu"), tmp_path / "refit.safetensors", 0)
    assert m.lrs == pytest.approx([1e-2 * f for f in expected["cosine"][:7]], abs=1e-9)
    with pytest.raises(ValueError, match="schedule_steps"):
        AutoencoderModule(NeuroVAE(NeuroVAEConfig(voxels=12, hidden=16, latent=4)), 1e-2, schedule_steps=0)


def test_cross_trial_targets_pair_each_trial_with_another_trial_of_its_stimulus() -> None:
    """Noise2Noise pairing: every partner shows the same stimulus on a different trial;
    all partners get drawn; a stimulus shown once (or data with no repeats at all) falls
    back to its own trial; the config picks the pairing from identical stimulus images."""
    from modaflow.modalities.fmri.recipe import stimulus_ids, vae_partners
    from modaflow.modalities.fmri.training import CrossTrialDataset, repeat_partners

    stim = np.array([3, 1, 3, 7, 3, 1])  # stimulus 3 three times, 1 twice, 7 once
    p = repeat_partners(stim)
    assert p.shape == (6, 2)
    for i, row in enumerate(p):
        others = row[row >= 0]
        assert set(others) == {j for j in range(6) if j != i and stim[j] == stim[i]}
    assert (p[3] == -1).all()
    assert repeat_partners(np.arange(4)).shape == (4, 0)  # one repeat each: no partners
    x = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 5)  # row i holds the value i
    t = torch.randn(6, 2)
    ds = CrossTrialDataset((x, t), p, seed=0)
    drawn: dict[int, set[int]] = {i: set() for i in range(6)}
    for _ in range(60):
        for i in range(6):
            xi, ti, yi = ds[i]
            assert torch.equal(xi, x[i]) and torch.equal(ti, t[i])
            j = int(yi[0])
            assert stim[j] == stim[i] and (j != i or i == 3)
            drawn[i].add(j)
    assert drawn[0] == {2, 4} and drawn[1] == {5} and drawn[3] == {3}
    single = CrossTrialDataset((x,), repeat_partners(np.arange(6)), seed=0)
    assert all(torch.equal(single[i][1], x[i]) for i in range(6))
    with pytest.raises(ValueError, match="partners"):
        CrossTrialDataset((x,), p[:3], seed=0)
    imgs = np.stack([np.full((2, 2), s, np.float32) for s in stim])
    np.testing.assert_array_equal(stimulus_ids(imgs)[[0, 2, 4]], stimulus_ids(imgs)[0])
    np.testing.assert_array_equal(vae_partners(_cfg(), imgs), p)
    assert vae_partners(_cfg(vae_target="input"), imgs) is None
    with pytest.raises(ConfigError, match="vae_target"):
        _cfg(vae_target="mean")


def test_cross_trial_training_reconstructs_the_partner_not_the_input(tmp_path) -> None:
    """Known answer: with cross-trial targets the step's loss is the NeuroVAE loss against
    the drawn partner trial; partners and ``cross_trial`` must come together."""
    from modaflow.modalities.fmri.models import NeuroVAE, NeuroVAEConfig
    from modaflow.modalities.fmri.training import AutoencoderModule, fit_autoencoder, repeat_partners

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(8, 12, generator=g), torch.randn(8, 4, generator=g)
    y = torch.randn(8, 12, generator=g)
    vae = NeuroVAE(NeuroVAEConfig(voxels=12, hidden=16, latent=4, dropout=0.0))
    m = AutoencoderModule(vae, 1e-2, 1.0, seed=0, cross_trial=True)
    got = m.training_step([x, t, y], 0).detach()
    g2 = torch.Generator().manual_seed(0)  # the module's generator at step 0
    mu, _ = vae.encode(x)
    want = (vae.loss(x, g2, y) + ((mu - t) ** 2).mean()).detach()
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    plain = vae.loss(x, torch.Generator().manual_seed(0)) + ((mu - t) ** 2).mean()
    assert float(got) != pytest.approx(float(plain.detach()))
    stim = np.repeat(np.arange(4), 2)
    with pytest.raises(ValueError, match="go together"):
        fit_autoencoder(AutoencoderModule(vae, 1e-2, 1.0), (x, t), 4, 2, TrainerArgs(accelerator="cpu"),
                        tmp_path / "a.safetensors", 0, partners=repeat_partners(stim))
    with pytest.raises(ValueError, match="NeuroVAE"):
        AutoencoderModule(torch.nn.Linear(2, 2), 1e-2, cross_trial=True)
    s = fit_autoencoder(m, (x, t), 4, 4, TrainerArgs(accelerator="cpu"), tmp_path / "b.safetensors", 0,
                        partners=repeat_partners(stim))
    assert s["steps"] == 4 and np.isfinite(s["final_loss"])


def test_a_run_on_relative_files_stores_them_absolute_and_evaluates_from_elsewhere(tmp_path, monkeypatch) -> None:
    from modaflow.modalities.fmri.data import TrialData, save_betas
    from modaflow.modalities.fmri.simulate import simulate

    sim = simulate(SIM)
    (tmp_path / "data").mkdir()
    save_betas(tmp_path / "data" / "betas.h5", TrialData(sim.betas, sim.stim_id.astype(np.int64), sim.images, "sim",
                                                         sim.test_stimuli))
    monkeypatch.chdir(tmp_path / "data")
    MODALITY.train(_cfg(data="betas:betas.h5"), TrainerArgs(accelerator="cpu"), tmp_path / "run", progress=False)
    monkeypatch.chdir(tmp_path)
    assert MODALITY.evaluate(tmp_path / "run", None, 0, 2, "euler", 0)["n_test"] == SIM.n_test
    import json

    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["config"]["data"] == \
        f"betas:{tmp_path / 'data' / 'betas.h5'}"
    # a run whose recipe names another stimulus size than its visual AE's (a betas run trained before stimulus_size
    # resized arrays) reads its stimuli at the AE's size; encode's .npy input of another size is resized to it
    recipe = json.loads((tmp_path / "run" / "recipe.json").read_text())
    recipe["config"]["stimulus_size"] = 32
    (tmp_path / "run" / "recipe.json").write_text(json.dumps(recipe))
    assert MODALITY.evaluate(tmp_path / "run", None, 0, 2, "euler", 0)["n_test"] == SIM.n_test
    from skimage.transform import resize

    from modaflow.modalities.fmri.sampling import SampleOptions

    big = np.stack([resize(im, (40, 40)) for im in sim.images[:3]]).astype(np.float32)
    np.save(tmp_path / "big.npy", (big * 255).round().astype(np.uint8))
    np.save(tmp_path / "own.npy", sim.images[:3])
    enc = [np.load(MODALITY.sample(tmp_path / "run", 0, 2, "euler", tmp_path / f"{name}_enc.npy", 0,
                                   options=SampleOptions(direction="encode", input=str(tmp_path / f"{name}.npy"))))
           for name in ("big", "own")]
    assert enc[0].shape == enc[1].shape and np.corrcoef(enc[0].ravel(), enc[1].ravel())[0, 1] > 0.95
    # resumed (its feature network removed, as the missing-network error says to do): at the AE's size, not the
    # recipe's default; another size set explicitly is refused, since the AE stage is kept
    for f in ("features.safetensors", "features.json"):
        (tmp_path / "run" / f).unlink()
    old = _cfg(data=f"betas:{tmp_path / 'data' / 'betas.h5'}").replace(stimulus_size=FMRIConfig().stimulus_size)
    MODALITY.train(old, TrainerArgs(accelerator="cpu"), tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "features.json").read_text())["config"]["image_size"] == SIM.image_size
    assert MODALITY.evaluate(tmp_path / "run", None, 0, 2, "euler", 0)["n_test"] == SIM.n_test
    with pytest.raises(ConfigError, match=rf"holds a visual AE trained on 16 x 16 stimuli, which this run resumes; "
                                          rf"--stimulus-size 24 needs a new run folder"):
        MODALITY.train(old.replace(stimulus_size=24), TrainerArgs(accelerator="cpu"), tmp_path / "run", progress=False)


def test_options_the_data_source_never_reads_are_refused_by_name(run_dir, tmp_path) -> None:
    from modaflow.core.config import ConfigError
    from modaflow.modalities.fmri.data import TrialData, save_betas
    from modaflow.modalities.fmri.simulate import simulate

    sim = simulate(SIM)
    path = save_betas(tmp_path / "b.h5", TrialData(sim.betas, sim.stim_id.astype(np.int64), sim.images, "sim",
                                                   sim.test_stimuli))
    args = TrainerArgs(accelerator="cpu")
    with pytest.raises(ConfigError, match=rf"^FMRIConfig: --data betas:{path} never reads --glm-space \(read for bids "
                                          rf"data\), --mask \(read for bids data\); leave them unset$"):
        MODALITY.train(_cfg(data=f"betas:{path}", glm_space="MNI152NLin2009cAsym", mask="m.nii.gz"), args,
                       tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"never reads the simulator options \(read for simulated data\); leave it"):
        MODALITY.train(_cfg(data=f"betas:{path}", sim=SIM), args, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"--data simulated never reads --stimulus-size \(read for bids or betas data\); "
                                          r"leave it unset \(the simulator's stimulus size is --image-size\)"):
        MODALITY.train(_cfg(stimulus_size=64), args, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"never reads --glm-tr \(read for bids data\)"):
        MODALITY.finetune(run_dir, f"betas:{path}", tmp_path / "ft", {"glm_tr": 2.0}, args, progress=False)
    with pytest.raises(ConfigError, match=r"never reads the simulator options"):
        MODALITY.finetune(run_dir, f"betas:{path}", tmp_path / "ft", {"sim": {"sim_seed": 3}}, args, progress=False)
    assert not (tmp_path / "ft").exists()


def test_a_run_stored_with_fm_fields_the_xfm_never_read_still_loads(run_dir, tmp_path) -> None:
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    recipe = json.loads((old / "recipe.json").read_text())
    recipe["config"]["fm"]["path"] = "vp_cosine"  # accepted and ignored before FMRIConfig refused it
    (old / "recipe.json").write_text(json.dumps(recipe))
    with pytest.warns(UserWarning, match="fm.path"):
        base = MODALITY.evaluate(old, None, 0, 4, "euler", 0)
    assert base["enc.voxel_r_median"] == MODALITY.evaluate(run_dir, None, 0, 4, "euler", 0)["enc.voxel_r_median"]
    recipe["config"]["fm"]["parametrization"] = "data"  # that one changed training: refused
    (old / "recipe.json").write_text(json.dumps(recipe))
    with pytest.raises(ConfigError, match="fm.parametrization"):
        MODALITY.evaluate(old, None, 0, 4, "euler", 0)


def test_the_ridge_readout_is_sklearns_per_voxel_ridge_on_the_encoding_paths_features(run_dir, tmp_path) -> None:
    """Encoding through the refit readout equals an independent RidgeCV (penalty per voxel, leave-one-out) fitted on
    phi(XFM(z_vis)) of the training stimuli's mean responses; decoding is the trained NeuroVAE's. A run without
    the field (trained before it) keeps its SGD-trained readout; one whose readout file is missing says how to
    fit it, and training again fits only that."""
    import json
    import shutil

    from sklearn.linear_model import RidgeCV

    from modaflow.core.training import CheckpointError
    from modaflow.modalities.fmri.baselines import ALPHAS, stimulus_means
    from modaflow.modalities.fmri.neuroflow import load_vae
    from modaflow.modalities.fmri.recipe import load_prepared, restore

    cfg, nf = restore(run_dir)
    assert cfg.readout == "ridge" and (run_dir / "neurovae_readout.safetensors").is_file()
    assert cfg.xfm_path == "cosine"  # the default
    _, prep = load_prepared(cfg)
    trained = load_vae(run_dir / "neurovae.safetensors")

    def phi(img):
        with torch.no_grad():
            z = nf.flow(nf.visual_latent(torch.as_tensor(img)), 1.0, 0.0, cfg.steps, cfg.solver)
            return trained.decoder[:-1](z * nf.stats["zn_std"] + nf.stats["zn_mean"]).double().numpy()

    img_u, y_u = stimulus_means(prep.train_img, prep.train_x)
    f = phi(img_u)
    mu, sd = f.mean(0), f.std(0) + 1e-8
    want = RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit((f - mu) / sd, y_u).predict((phi(prep.test_img) - mu) / sd)
    got = nf.encode(torch.as_tensor(prep.test_img), cfg.steps, cfg.solver).numpy()
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())
    x = torch.as_tensor(prep.test_x)
    with torch.no_grad():
        np.testing.assert_array_equal(nf.vae.encode(x)[0].numpy(), trained.encode(x)[0].numpy())  # decoding unchanged
    old = shutil.copytree(run_dir, tmp_path / "old")
    recipe = json.loads((old / "recipe.json").read_text())
    del recipe["config"]["readout"]
    (old / "recipe.json").write_text(json.dumps(recipe))
    (old / "neurovae_readout.safetensors").unlink()
    old_cfg, old_nf = restore(old)
    assert old_cfg.readout == "decoder"
    np.testing.assert_array_equal(old_nf.vae.decoder[-1].weight.detach().numpy(), trained.decoder[-1].weight.detach().numpy())
    # resuming it keeps what it was trained with: the new default readout is refused, the old one kept
    with pytest.raises(ConfigError, match=r"recipe differs in readout"):
        MODALITY.train(_cfg(), TrainerArgs(accelerator="cpu"), old, progress=False)
    MODALITY.train(_cfg(readout="decoder"), TrainerArgs(accelerator="cpu"), old, progress=False)
    assert not (old / "neurovae_readout.safetensors").exists()
    stopped = shutil.copytree(run_dir, tmp_path / "stopped")
    (stopped / "neurovae_readout.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"neurovae_readout.safetensors: the encoding path's ridge readout is missing"):
        restore(stopped)
    assert restore(stopped, readout=False)[1].vae.decoder[-1].weight.shape == trained.decoder[-1].weight.shape
    summary = MODALITY.train(_cfg(), TrainerArgs(accelerator="cpu"), stopped, progress=False)
    assert summary["neurovae"]["resumed"] and not summary["readout"].get("resumed")
    np.testing.assert_allclose(restore(stopped)[1].encode(torch.as_tensor(prep.test_img), cfg.steps).numpy(), got, atol=1e-6)
    assert MODALITY.train(_cfg(), TrainerArgs(accelerator="cpu"), stopped, progress=False)["readout"]["resumed"]
    # a readout is never used with another XFM than it was fitted on: training longer refits it, and a readout
    # fitted on one run is refused by another
    longer = _cfg().replace(fm=_cfg().fm.replace(max_steps=40))
    summary = MODALITY.train(longer, TrainerArgs(accelerator="cpu"), stopped, progress=False)
    assert summary["xfm"]["steps"] == 40 and not summary["readout"].get("resumed")
    assert not np.allclose(restore(stopped)[1].encode(torch.as_tensor(prep.test_img), cfg.steps).numpy(), got, atol=1e-4)
    shutil.copy(run_dir / "neurovae_readout.safetensors", stopped / "neurovae_readout.safetensors")
    with pytest.raises(CheckpointError, match=r"neurovae_readout.safetensors: fitted on another XFM, NeuroVAE, latent "
                                              r"statistics or sampler than this run holds"):
        restore(stopped)
