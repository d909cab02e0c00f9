"""The MRI recipe end to end at 16^3 through the CLI: train (Lightning, core fit), sample to
NIfTI, evaluate, finetune, distil into a flow map and sample it in 2 steps; config errors
name the field, and options the recipe would ignore are refused."""

import json
import re

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monai")

from modaflow.benchmarks.cli import main  # noqa: E402
from modaflow.core.config import ConfigError  # noqa: E402
from modaflow.modalities.mri import MODALITY  # noqa: E402
from modaflow.modalities.mri.recipe import MRIConfig  # noqa: E402

TINY = ["--data", "embedded", "--size", "16", "--n-train", "4", "--n-test", "4", "--batch-size", "2",
        "--accelerator", "cpu"]


def test_train_sample_finetune_distill_through_the_cli(tmp_path) -> None:
    run = tmp_path / "run"
    assert main(["train", "mri", *TINY, "--target", "velocity", "--max-steps", "2", "--log-every", "1",
                 "--out", str(run)]) == 0
    recipe = json.loads((run / "recipe.json").read_text())
    assert recipe["modality"] == "mri" and recipe["config"]["target"] == "velocity"
    assert (run / "checkpoints" / "last.safetensors").is_file()

    out = tmp_path / "samples"
    assert main(["sample", "mri", "--ckpt", str(run), "--n", "2", "--steps", "3", "--out", str(out)]) == 0
    files = sorted(out.glob("*.nii.gz"))
    assert len(files) == 2
    img = nib.load(str(files[0]))
    assert img.shape == (16, 16, 16) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert np.isfinite(np.asarray(img.dataobj)).all()

    fine = tmp_path / "fine"
    assert main(["finetune", "mri", "--ckpt", str(run), "--data", "embedded", "--data-seed", "3",
                 "--max-steps", "1", "--accelerator", "cpu", "--out", str(fine)]) == 0
    assert (fine / "checkpoints" / "last.safetensors").is_file()

    fm = tmp_path / "fm"
    assert main(["distill", "mri", "--teacher", str(run), "--max-steps", "1", "--batch-size", "2",
                 "--teacher-steps", "1", "--accelerator", "cpu", "--precision", "32-true", "--out", str(fm)]) == 0
    saved = json.loads((fm / "distill.json").read_text())
    assert saved["teacher"] == str(run.resolve()) and saved["trainer"]["accelerator"] == "cpu"
    # a resumed flow map keeps its student; a flow map is neither a teacher nor finetuned
    assert main(["distill", "mri", "--teacher", str(run), "--student", "linear", "--max-steps", "2", "--out",
                 str(fm)]) == 2
    assert json.loads((fm / "distill.json").read_text()) == saved  # nothing rewritten
    assert main(["distill", "mri", "--teacher", str(fm), "--out", str(tmp_path / "fm2")]) == 2
    assert main(["finetune", "mri", "--ckpt", str(fm), "--data", "embedded", "--out", str(tmp_path / "ftfm")]) == 2
    assert not (tmp_path / "ftfm").exists() and not (tmp_path / "fm2").exists()
    one = tmp_path / "one.nii.gz"
    assert json.loads((fm / "recipe.json").read_text()) == recipe  # the teacher's recipe (written atomically)
    assert not [p.name for p in fm.iterdir() if p.name.endswith(".tmp")]
    assert main(["sample", "mri", "--ckpt", str(fm), "--n", "1", "--steps", "2", "--solver", "flowmap",
                 "--out", str(one)]) == 0
    assert nib.load(str(one)).shape == (16, 16, 16)
    from modaflow.modalities.mri.evaluation import FLOW_MAP_STEPS, _steps

    cfg = MRIConfig()  # without --steps a flow map takes its few steps, not the teacher recipe's DDIM count
    assert _steps(None, cfg, "flowmap") == FLOW_MAP_STEPS == 4 and _steps(None, cfg, "ddim") == cfg.steps
    assert _steps(2, cfg, "flowmap") == 2


def test_evaluate_returns_every_metric(tmp_path) -> None:
    from modaflow.core.training import TrainerArgs

    cfg = MRIConfig(size=16, n_train=4, n_test=4, target="flow",
                    fm=MRIConfig().fm.replace(max_steps=1, batch_size=2))
    MODALITY.train(cfg, TrainerArgs(accelerator="cpu"), tmp_path / "r", progress=False)
    m = MODALITY.evaluate(tmp_path / "r", None, 2, 2, "ddim", 0)
    for key in ("fid3d", "fid3d_real", "fid3d_noise", "fid3d_blank", "ms_ssim", "ms_ssim_real", "hist_w1", "hist_w1_real",
                "hf_ratio", "hf_ratio_real", "tissue_p.gm", "tissue_ml.wm", "tissue_ml_real.csf", "seconds_per_volume"):
        assert np.isfinite(m[key]), key
    assert 0 < m["tissue_p.gm"] <= 1
    assert m["fid3d_real_at_n.q05"] <= m["fid3d_real_at_n.mean"] <= m["fid3d_real_at_n.q95"]
    with pytest.raises(ValueError, match="needs --n >= 2"):
        MODALITY.evaluate(tmp_path / "r", None, 1, 2, "ddim", 0)
    with pytest.raises(ValueError, match="not a flow map"):
        MODALITY.sample(tmp_path / "r", 1, 2, "flowmap", tmp_path / "x", 0)
    assert m["device"] == ("cuda:0" if __import__("torch").cuda.is_available() else "cpu")


def _sampling_run(tmp_path):
    from modaflow.core.training import TrainerArgs

    cfg = MRIConfig(size=16, n_train=4, n_test=4, target="velocity", fm=MRIConfig().fm.replace(max_steps=1, batch_size=2))
    MODALITY.train(cfg, TrainerArgs(accelerator="cpu"), tmp_path / "r", progress=False)
    return tmp_path / "r"


def test_sample_options_choose_the_device_and_the_gpu_settings(tmp_path, capsys) -> None:
    import torch

    from modaflow.modalities.mri.sampling import SampleOptions, on_device

    run = _sampling_run(tmp_path)
    # on the CPU, bf16 and channels-last are ignored: the same volumes as the plain float32 sampler
    assert main(["sample", "mri", "--ckpt", str(run), "--n", "1", "--steps", "2", "--device", "cpu", "--bf16",
                 "--channels-last", "--out", str(tmp_path / "a.nii.gz")]) == 0
    assert main(["sample", "mri", "--ckpt", str(run), "--n", "1", "--steps", "2", "--device", "cpu", "--no-bf16",
                 "--out", str(tmp_path / "b.nii.gz")]) == 0
    a, b = (np.asarray(nib.load(str(tmp_path / f)).dataobj) for f in ("a.nii.gz", "b.nii.gz"))
    np.testing.assert_array_equal(a, b)
    model, autocast, channels_last = on_device(torch.nn.Conv3d(1, 1, 3), SampleOptions(device="cpu"))
    assert next(model.parameters()).device.type == "cpu" and autocast is None and not channels_last
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: cuda was asked for, but torch sees no GPU"):
            on_device(torch.nn.Conv3d(1, 1, 3), SampleOptions(device="cuda"))
    capsys.readouterr()
    assert main(["sample", "mri", "--ckpt", str(run), "--device", "tpu", "--out", str(tmp_path / "c")]) == 2
    assert "--device" in capsys.readouterr().err


@pytest.mark.gpu
def test_sampling_on_the_gpu_in_bf16_channels_last_follows_the_float32_cpu_sampler(tmp_path) -> None:
    import torch

    from modaflow.modalities.mri.evaluation import load_generator
    from modaflow.modalities.mri.sampling import SampleOptions, draw_noise, generate, on_device

    run = _sampling_run(tmp_path)
    cfg, model, kind, path, solver = load_generator(run, "ddim")
    noise = draw_noise(2, cfg.source.shape, 0)
    cpu = generate(model, kind, path, noise, 4, solver)
    gpu_model, autocast, channels_last = on_device(model, SampleOptions(device="cuda"))
    assert autocast is torch.bfloat16 and channels_last
    gpu = generate(gpu_model, kind, path, noise, 4, solver, autocast=autocast, channels_last=channels_last)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32
    assert (gpu - cpu).abs().max().item() < 0.1  # bf16 network, float32 sampler state


def test_config_errors_name_the_field(tmp_path) -> None:
    with pytest.raises(ConfigError, match="MRIConfig.size"):
        MRIConfig(size=18)
    with pytest.raises(ConfigError, match="MRIConfig.fov"):
        MRIConfig(fov=(30, 32, 32))
    with pytest.raises(ConfigError, match="bids:/path"):
        MRIConfig(data="/some/path")
    with pytest.raises(ConfigError, match="MRIConfig.target"):
        MRIConfig.from_dict({"target": "score"})
    from modaflow.modalities.mri.distill import DistillConfig

    with pytest.raises(ConfigError, match="DistillConfig.loss"):
        DistillConfig(teacher="x", loss="eulerian")
    assert DistillConfig(teacher="x", loss="eulerian", student="linear").student == "linear"
    empty = tmp_path / "bids"
    empty.mkdir()
    from modaflow.core.training import TrainerArgs
    from modaflow.modalities.mri.nifti import NiftiError

    with pytest.raises(NiftiError, match="empty BIDS dataset"):
        MODALITY.train(MRIConfig(data=f"bids:{empty}", fov=(16, 16, 16)), TrainerArgs(accelerator="cpu"),
                       tmp_path / "r", progress=False)


def test_source_fields_the_data_never_reads_are_refused(tmp_path, capsys) -> None:
    """``--size 16`` with ``--data bids:...`` left the volumes at the default 192 x 224 x 192 fov without a word
    (and ``--fov`` with the embedded cohort likewise); now the run is refused before anything is written."""
    bids = tmp_path / "bids"
    assert main(["train", "mri", "--data", f"bids:{bids}", "--size", "16", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert (f"argument --size: MRIConfig.size: read for --data embedded only; the volumes of bids:{bids} are --fov "
            f"(192, 224, 192) voxels of --spacing (1.0, 1.0, 1.0) mm (set those instead; leave it unset)") in err, err
    assert main(["train", "mri", *TINY, "--fov", "16", "16", "16", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "argument --fov: MRIConfig.fov: read for NIfTI sources (bids:/path, folder:/path) only; the embedded " \
           "cohort has 16^3 voxels of 192/size mm" in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # a run trained with it before the refusal still resumes (its recipe stores the value; the data is checked next)
    old = tmp_path / "old"
    old.mkdir()
    stored = MRIConfig(data=f"bids:{bids}", size=16).to_dict()
    (old / "recipe.json").write_text(json.dumps({"modality": "mri", "config": stored}))
    assert main(["train", "mri", "--data", f"bids:{bids}", "--size", "16", "--out", str(old)]) == 2
    assert f"modaflow train: error: {bids}: not a folder (expected a BIDS dataset root)" in capsys.readouterr().err
    # finetune refuses them given on the command line, and carries the checkpoint's own values silently
    run = tmp_path / "run"
    run.mkdir()
    config = MRIConfig(size=16, fm=MRIConfig().fm.replace(max_steps=1)).to_dict()
    (run / "recipe.json").write_text(json.dumps({"modality": "mri", "config": config}))
    assert main(["finetune", "mri", "--ckpt", str(run), "--data", f"folder:{tmp_path}", "--fov", "16", "16", "16",
                 "--n-test", "2", "--out", str(tmp_path / "c")]) == 2
    assert "argument --n-test: MRIConfig.n_test: read for --data embedded only" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    # from the embedded cohort's 12 mm voxels to files, the voxel size must be given (1 mm would zoom 12x)
    assert main(["finetune", "mri", "--ckpt", str(run), "--data", f"folder:{tmp_path}", "--fov", "16", "16", "16",
                 "--out", str(tmp_path / "c")]) == 2
    assert "learnt the embedded cohort's 12 mm voxels; give --spacing for the files (--spacing 12 12 12 keeps its " \
           "field of view of 192 mm)" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_evaluate_refuses_data_of_another_shape_and_tiny_volumes_before_loading_it(tmp_path, monkeypatch) -> None:
    """An embedded 16^3 run evaluated on a BIDS folder preprocessed every file at 192 x 224 x 192 and trained the
    feature net on them (15 min on CPU at 40 x 44 x 36 files) before refusing the shape; an 8^3 run failed in
    MONAI's MS-SSIM with 'larger than 8' (9 to 11 fail too)."""
    from modaflow.modalities.mri import evaluation

    def no_reference(*args, **kwargs):
        raise AssertionError("the real volumes were loaded")

    monkeypatch.setattr(evaluation, "real_reference", no_reference)
    run = _sampling_run(tmp_path)
    data = f"bids:{tmp_path / 'bids'}"
    with pytest.raises(ValueError, match=re.escape(
            f"{data}: its volumes would have shape (192, 224, 192) (the run's fov), not the model's (16, 16, 16); "
            f"evaluate on data of the model's shape, or finetune the run on this data first")):
        MODALITY.evaluate(run, data, 2, 2, "ddim", 0)
    from modaflow.core.training import TrainerArgs

    cfg = MRIConfig(size=8, n_train=2, n_test=2, fm=MRIConfig().fm.replace(max_steps=1, batch_size=2))
    MODALITY.train(cfg, TrainerArgs(accelerator="cpu"), tmp_path / "r8", progress=False)
    with pytest.raises(ValueError, match=re.escape("r8: volumes (8, 8, 8) are too small to evaluate: MS-SSIM needs "
                                                   "every side >= 12 voxels")):
        MODALITY.evaluate(tmp_path / "r8", None, 2, 2, "ddim", 0)


def test_sample_to_one_file_refuses_several_volumes_before_sampling(tmp_path) -> None:
    """``--n 4 --out x.nii.gz`` loaded the run and sampled all four volumes (minutes at full size) before refusing."""
    with pytest.raises(ValueError, match=re.escape("x.nii.gz: a single NIfTI file holds one volume; got --n 2")):
        MODALITY.sample(tmp_path / "no_run_here", 2, 2, None, tmp_path / "x.nii.gz", 0)


UNREAD_OPTIONS = [  # (CLI options, the field refused, part of the message saying what sets it instead)
    (["--loss-weighting", "min_snr"], "fm.loss_weighting", "plain MSE on the target"),
    (["--time-sampler", "logit_normal"], "fm.time_sampler", "applies to --target rflow only"),
    (["--time-shift", "3"], "fm.time_shift", "applies to --target rflow only"),
    (["--path", "vp_cosine"], "fm.path", "--target sets the path"),
    (["--parametrization", "noise"], "fm.parametrization", "--target sets what the UNet predicts"),
    (["--coupling", "exact_ot"], "fm.coupling", "draws its own noise"),
    (["--t-max", "0.9"], "fm.t_max", "draws t itself"),
    (["--cond-dropout", "0.1"], "fm.cond_dropout", "unconditional"),
    (["--timestep-scale", "rflow"], "unet.timestep_scale", "--target sets it"),
    (["--num-train-timesteps", "500"], "unet.num_train_timesteps", "--ddpm-steps"),
]


@pytest.mark.parametrize("options,name,why", UNREAD_OPTIONS, ids=[o[1] for o in UNREAD_OPTIONS])
def test_options_the_recipe_never_reads_are_refused_by_the_cli(tmp_path, capsys, options, name, why) -> None:
    """The MRI build overrides path, parametrization and the UNet's timestep convention, and MedForj's loss never
    reads the weighting, coupling, t range or (for DDPM targets) the time sampler: such options were silently
    ignored; now the run is refused before anything is written."""
    assert main(["train", "mri", *TINY, *options, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"argument {options[0]}: MRIConfig.{name}: expected" in err and why in err, err
    assert not (tmp_path / "run").exists()


def test_unread_fields_raise_config_errors_and_read_ones_are_accepted(tmp_path) -> None:
    import torch

    from modaflow.modalities.mri.models import UNetConfig
    from modaflow.modalities.mri.recipe import build, load_config

    fm = MRIConfig().fm
    with pytest.raises(ConfigError, match=r"MRIConfig.fm.loss_weighting: expected 'none' \(leave it unset\): MedForj"):
        MRIConfig(fm=fm.replace(loss_weighting="min_snr"))
    with pytest.raises(ConfigError, match=r"MRIConfig.fm.time_sampler: expected 'uniform'.*got 'logit_normal'"):
        MRIConfig(target="sample", fm=fm.replace(time_sampler="logit_normal"))
    with pytest.raises(ConfigError, match=r"MRIConfig.unet.num_train_timesteps: expected 1000 or 500 .*ddpm-steps"):
        MRIConfig(unet=UNetConfig(num_train_timesteps=400), fm=fm.replace(ddpm_steps=500))
    # what the target sets may be given as the target sets it; what the recipe reads stays free
    assert MRIConfig(unet=UNetConfig(num_train_timesteps=500), fm=fm.replace(ddpm_steps=500)).fm.ddpm_steps == 500
    MRIConfig(target="rflow", fm=fm.replace(path="linear", parametrization="velocity"),
              unet=UNetConfig(timestep_scale="rflow"))
    MRIConfig(fm=fm.replace(lr=5e-4, warmup_steps=10, lr_decay="cosine", weight_decay=0.01, grad_clip=0.5))
    # rflow trains on the time sampler's t, so there it is read and accepted
    uniform = MRIConfig(size=16, target="rflow")
    shifted = uniform.replace(fm=fm.replace(time_sampler="logit_normal", logit_normal_m=1.0))
    draws = [build(c)[2].draw_time(4096, torch.device("cpu"), torch.float64, torch.Generator().manual_seed(0))
             for c in (uniform, shifted)]
    assert abs(float(draws[0].mean()) - 0.5) < 0.02 and float(draws[1].mean()) < 0.4  # m = 1 favours t near 0
    # a run written before the refusal still loads: the ignored field had no effect on it
    run = tmp_path / "old"
    run.mkdir()
    config = MRIConfig().to_dict()
    config["fm"]["loss_weighting"] = "min_snr"
    (run / "recipe.json").write_text(json.dumps({"modality": "mri", "config": config}))
    with pytest.warns(UserWarning, match="fm.loss_weighting had no effect"):
        assert load_config(run).fm.loss_weighting == "none"
    config["size"] = 18  # a real error still names the file and the field
    (run / "recipe.json").write_text(json.dumps({"modality": "mri", "config": config}))
    with pytest.raises(ConfigError, match=r"recipe.json: MRIConfig.size"):
        load_config(run)


def test_smoke_benchmark_has_metrics_floor_and_few_step_baseline(tmp_path) -> None:
    """The smoke profile end to end: non-empty metrics and baselines, the real-vs-real FD at
    the generated sample size, the flow map beside the undistilled student (Euler steps), and the
    feature space's graded-degradation check with its plot."""
    from modaflow.benchmarks.mri import run

    res = run("smoke", tmp_path, 0)
    m, b = res.metrics, res.baselines
    assert m and b and (tmp_path / "results.json").is_file()
    floor = b["real_vs_real"]
    assert floor["fid3d_real_n2.q05"] <= floor["fid3d_real_n2.mean"] <= floor["fid3d_real_n2.q95"]
    for k in ("velocity.flowmap1.fid3d", "velocity.euler_linear1.fid3d", "goal.fid3d_ratio.flowmap1_over_euler_linear1",
              "velocity.flowmap1.hf_ratio", "fid3d_check.min_spearman", "fid3d_check.ghost_weight.spearman"):
        assert np.isfinite(m[k]), k
    assert -1 <= m["fid3d_check.min_spearman"] <= 1
    assert (tmp_path / "fid3d_check.png").is_file() and "fid3d_check.png" in res.plots
    assert res.timings["velocity.train_volumes_per_s"] > 0 and "velocity.train_reused" not in res.timings
    again = run("smoke", tmp_path, 0).timings  # a rerun into the same folder reuses the trained runs
    assert again["velocity.train_reused"] == 1.0 and again["distill_reused"] == 1.0
    assert "velocity.train_volumes_per_s" not in again and "distill_s" not in again


def test_nifti_pipeline_throughput_at_medforj_size(tmp_path) -> None:
    """The benchmark's file-pipeline rate: NIfTI copies of the 1 mm template through the full
    192 x 224 x 192 pipeline (cached, then augmented), one rate per worker count."""
    from dataclasses import replace

    from modaflow.benchmarks.mri import PROFILES, _file_loader_rates
    from modaflow.modalities.mri.nifti import read_volume

    p = replace(PROFILES["smoke"], loader_files=4, loader_workers=(0,))
    rates = _file_loader_rates(tmp_path, p, 0)
    assert rates["volumes"] == 3  # 4 files: the last one is the held-out split
    assert rates["cache_s_per_volume"] > 0 and rates["w0.volumes_per_s"] > 0
    vol = read_volume(tmp_path / "vol00_T1w.nii.gz")
    assert vol.data.shape == (197, 233, 189) and np.allclose(np.abs(np.diag(vol.affine))[:3], 1.0)  # 1 mm MNI152
    with pytest.raises(ValueError, match="loader_files = 2 leaves 1 training volume"):
        _file_loader_rates(tmp_path / "two", replace(p, loader_files=2), 0)


def test_initialisation_depends_on_the_seed_only() -> None:
    """The UNet's initial weights come from fm.seed, not the global RNG (benchmark targets
    trained one after another start alike)."""
    import torch

    from modaflow.modalities.mri.recipe import build

    cfg = MRIConfig(size=16)
    a = build(cfg)[1]
    torch.randn(1000)  # whatever draws from the global RNG in between
    b = build(cfg.replace(target="sample"))[1]
    c = build(cfg.replace(fm=cfg.fm.replace(seed=1)))[1]
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def test_flow_map_runs_from_before_the_student_field_restore_as_linear(tmp_path) -> None:
    from modaflow.core.training import TrainerArgs
    from modaflow.modalities.mri.distill import DistillConfig, LinearPathStudent, distill, restore_flow_map

    run = tmp_path / "run"
    assert main(["train", "mri", *TINY, "--max-steps", "1", "--out", str(run)]) == 0
    args = TrainerArgs(accelerator="cpu")
    for student in ("teacher", "linear"):
        distill(DistillConfig(teacher=str(run), max_steps=1, batch_size=2, teacher_steps=1, student=student),
                tmp_path / student, args, progress=False)
        assert isinstance(restore_flow_map(tmp_path / student)[1].net, LinearPathStudent) == (student == "teacher")
    saved = json.loads((tmp_path / "linear" / "distill.json").read_text())
    del saved["student"]  # as written before the field existed
    (tmp_path / "linear" / "distill.json").write_text(json.dumps(saved))
    assert not isinstance(restore_flow_map(tmp_path / "linear")[1].net, LinearPathStudent)


def test_a_run_trained_with_activation_checkpointing_restores(tmp_path) -> None:
    """Checkpointing must not rename the weights (it once wrapped blocks, adding ``.block.`` to
    every key, and ``restore`` could not load such a run)."""
    import copy

    import torch

    from modaflow.core.training import TrainerArgs
    from modaflow.modalities.mri.models import Checkpointed, apply_gpu_options
    from modaflow.modalities.mri.recipe import build, restore

    cfg = MRIConfig(size=16, n_train=4, n_test=4, target="flow", activation_checkpointing=True,
                    fm=MRIConfig().fm.replace(max_steps=1, batch_size=2))
    MODALITY.train(cfg, TrainerArgs(accelerator="cpu"), tmp_path / "r", progress=False)
    _, _, model = restore(tmp_path / "r")
    _, trained, _ = build(cfg)
    assert any(isinstance(m, Checkpointed) for m in trained.modules())
    assert list(trained.state_dict()) == list(model.state_dict())
    apply_gpu_options(model, channels_last=False, activation_checkpointing=True)  # the restored, trained weights
    twin = copy.deepcopy(model).train()  # the frozen / EMA copies: their own weights, still checkpointed
    x, t = torch.randn(1, 1, 16, 16, 16), torch.tensor([0.5])
    model.train()
    y = model(x, t)
    assert y.abs().max() > 0  # one training step moved the zero-initialised output layer
    torch.testing.assert_close(twin(x, t), y, rtol=0, atol=0)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.5)
    assert not torch.allclose(twin(x, t), y)  # the copy runs its own weights, not the original's
    assert sum(isinstance(m, Checkpointed) for m in twin.modules()) == sum(isinstance(m, Checkpointed) for m in trained.modules())
    # its distillation trains a checkpointed student, whose weights keep their names: the flow map restores
    from modaflow.modalities.mri.distill import DistillConfig, distill, restore_flow_map

    distill(DistillConfig(teacher=str(tmp_path / "r"), max_steps=1, batch_size=2, teacher_steps=1,
                          trainer=TrainerArgs(accelerator="cpu")), tmp_path / "fm", progress=False)
    assert not any(isinstance(m, Checkpointed) for m in restore_flow_map(tmp_path / "fm")[1].modules())


def test_a_run_on_a_relative_folder_stores_it_absolute_and_reads_it_from_elsewhere(tmp_path, monkeypatch) -> None:
    """``--data folder:vols`` was stored as typed, so evaluate / finetune / distill from another folder failed
    with 'not a folder'."""
    from modaflow.core.training import TrainerArgs
    from modaflow.modalities.mri.data import load_volumes

    g = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (24, 28, 22)], indexing="ij")
    brain = np.where(np.sqrt(((g[0] - 12) / 8) ** 2 + ((g[1] - 14) / 10) ** 2 + ((g[2] - 11) / 7) ** 2) < 1, 60.0, 2.0)
    (tmp_path / "data" / "vols").mkdir(parents=True)
    for i in range(5):
        nib.save(nib.Nifti1Image((brain * (1 + 0.05 * i)).astype(np.float32), np.eye(4)),
                 str(tmp_path / "data" / "vols" / f"s{i}.nii.gz"))
    monkeypatch.chdir(tmp_path / "data")
    cfg = MRIConfig(data="folder:vols", fov=(16, 16, 16), fm=MRIConfig().fm.replace(max_steps=1, batch_size=2))
    MODALITY.train(cfg, TrainerArgs(accelerator="cpu"), tmp_path / "run", progress=False)
    stored = json.loads((tmp_path / "run" / "recipe.json").read_text())["config"]["data"]
    assert stored == f"folder:{tmp_path / 'data' / 'vols'}"
    monkeypatch.chdir(tmp_path)
    assert load_volumes(MRIConfig(data=stored, fov=(16, 16, 16)).source, "test").shape[2:] == (16, 16, 16)


def test_ddpm_with_fewer_steps_is_refused_not_run_over_all_of_them(tmp_path) -> None:
    """``--solver ddpm --steps 4`` sampled all 1000 steps of the path without a word."""
    run = _sampling_run(tmp_path)
    for call in (lambda: MODALITY.sample(run, 1, 4, "ddpm", tmp_path / "x.nii.gz", 0),
                 lambda: MODALITY.evaluate(run, None, 2, 4, "ddpm", 0)):
        with pytest.raises(ValueError, match=re.escape("--steps 4: the ancestral DDPM sampler (--solver ddpm) takes all "
                                                       "1000 steps of the path; use --solver ddim for 4 steps")):
            call()
    assert not (tmp_path / "x.nii.gz").exists()


def test_finetune_on_volumes_of_another_shape_names_the_option_of_its_source(tmp_path) -> None:
    from modaflow.core.training import TrainerArgs

    run = _sampling_run(tmp_path)  # embedded, 16^3
    with pytest.raises(ConfigError, match=re.escape("embedded: volumes of shape (24, 24, 24) do not match the "
                                                    "checkpoint's (16, 16, 16) (set --size to match)")):
        MODALITY.finetune(run, "embedded", tmp_path / "a", {"size": 24}, TrainerArgs(accelerator="cpu"))
    with pytest.raises(ConfigError, match=re.escape("(192, 224, 192) do not match the checkpoint's (16, 16, 16) "
                                                    "(set --fov to match)")):
        MODALITY.finetune(run, f"folder:{tmp_path}", tmp_path / "b", {}, TrainerArgs(accelerator="cpu"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
