"""The one-lease GPU speed script (:mod:`modaflow.benchmarks.gpu_speed`) at tiny sizes on the CPU:
every part writes its numbers, a failing part does not stop the next, bad parts are user errors."""

from __future__ import annotations

import json

import pytest
import torch

from modaflow.benchmarks import gpu_speed


def test_tiny_parts_write_ratios_against_their_baselines(tmp_path, capsys) -> None:
    res = gpu_speed.run_parts(["language", "mri"], tmp_path, tiny=True, compiled=False)
    saved = json.loads((tmp_path / "gpu_speed.json").read_text())
    assert set(saved) >= {"meta", "language", "mri"} and saved["tiny"] is True
    lang = res["language"]["timings"]
    assert lang["train.dense_eager_tokens_per_s"] > 0
    assert lang["train.lowrank_chunked_eager_speedup_ratio"] > 0
    assert not any("compiled" in k for k in lang)  # compiled=False skips them
    mri = res["mri"]["timings"]
    assert mri["mri.stock.train_s_per_volume"] > 0 and mri["mri.stock.sample_s_per_volume"] > 0
    out = capsys.readouterr().out
    assert "[gpu_speed] language dense_eager:" in out and "[gpu_speed] mri stock:" in out  # reported as they finish
    assert "| language | train.dense_eager_tokens_per_s |" in gpu_speed.table(res)


def test_language_profile_names_the_step_operators(tmp_path) -> None:
    res = gpu_speed.run_parts(["language_profile"], tmp_path, tiny=True)
    table = res["language_profile"]["profile"]
    assert "aten::mm" in table or "aten::addmm" in table  # the projections and the head
    assert "Self CPU time total" in table
    assert json.loads((tmp_path / "gpu_speed.json").read_text())["language_profile"]["profile"] == table


def test_mri_profile_and_candidates_parts(tmp_path) -> None:
    res = gpu_speed.run_parts(["mri_profile", "mri_candidates"], tmp_path, tiny=True)
    table = res["mri_profile"]["profile"]
    assert "aten::convolution" in table and "Self CPU time total" in table  # the UNet's 3-D convolutions
    cand = res["mri_candidates"]["metrics"]
    for name in ("compile_cl_ckpt_l01", "compile_cl_b2", "compile_cl_ckpt_b2"):  # tiny: the eager code path
        assert cand[f"gpu_path.{name}.train_time_ratio"] > 0
    assert res["mri_candidates"]["timings"]["mri.compile_cl_b2.train_s_per_volume"] > 0


def test_mri_progress_reports_the_training_step_before_sampling() -> None:
    from modaflow.modalities.mri.gpu import VARIANTS, compare_variants
    from modaflow.modalities.mri.models import UNetConfig

    heard: list[str] = []
    unet = UNetConfig(channels=(4, 8), attention_levels=(False, True), num_res_blocks=1, norm_num_groups=4)
    compare_variants(unet, (8, 8, 8), 1, torch.device("cpu"), variants=VARIANTS[:1], progress=heard.append)
    assert len(heard) == 1 and heard[0].startswith("stock train: first step")


def test_a_failing_part_is_recorded_and_the_next_runs(tmp_path, monkeypatch) -> None:
    def broken(tiny: bool, compiled: bool) -> dict:
        raise RuntimeError("planted")

    monkeypatch.setitem(gpu_speed.PARTS, "toy", broken)
    res = gpu_speed.run_parts(["toy", "language"], tmp_path, tiny=True, compiled=False)
    assert res["toy"]["error"] == "RuntimeError: planted"
    assert "timings" in res["language"]
    assert gpu_speed.main(["--out", str(tmp_path), "--parts", "toy", "--tiny"]) == 1


def test_bad_parts_and_missing_cuda_are_user_errors(tmp_path, capsys) -> None:
    assert gpu_speed.main(["--out", str(tmp_path), "--parts", "toy,nope", "--tiny"]) == 2
    assert "unknown part(s) ['nope']" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert gpu_speed.main(["--out", str(tmp_path), "--parts", "toy"]) == 2
        assert "needs CUDA" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_language_eager_variants_on_gpu(tmp_path) -> None:
    res = gpu_speed.run_parts(["language"], tmp_path, tiny=False, compiled=False)
    assert res["language"]["timings"]["train.lowrank_chunked_eager_speedup_ratio"] > 0


def test_mri_comparison_needs_the_stock_reference_first() -> None:
    from modaflow.modalities.mri.gpu import VARIANTS, compare_variants
    from modaflow.modalities.mri.models import UNetConfig

    with pytest.raises(ValueError, match="stock reference"):
        compare_variants(UNetConfig(), (8, 8, 8), 1, torch.device("cpu"), variants=VARIANTS[1:])


def test_resnet_checkpointing_keeps_outputs_and_gradients_exact() -> None:
    from modaflow.modalities.mri.models import Checkpointed, UNet3D, UNetConfig, apply_gpu_options

    unet = UNetConfig(channels=(4, 8), attention_levels=(False, True), num_res_blocks=1, norm_num_groups=4)
    torch.manual_seed(0)
    plain = UNet3D(unet).double()
    ckpt = UNet3D(unet).double()
    ckpt.load_state_dict(plain.state_dict())
    apply_gpu_options(ckpt, channels_last=False, activation_checkpointing=True)
    apply_gpu_options(ckpt, channels_last=False, activation_checkpointing=True)  # idempotent
    # 2 down, 2 middle, 4 up (num_res_blocks + 1 per up level)
    assert sum(isinstance(m, Checkpointed) for m in ckpt.modules()) == 8
    assert list(ckpt.state_dict()) == list(plain.state_dict())  # same keys: runs restore either way
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 1, 8, 8, 8, generator=g, dtype=torch.float64), torch.rand(2, generator=g, dtype=torch.float64)
    outs = []
    for net in (plain, ckpt):
        net.train()
        y = net(x, t)
        y.square().mean().backward()
        outs.append((y.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
