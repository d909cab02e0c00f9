"""Time-series modality: the TimeFlow network and its decomposition, the random masks, the
samplers' conditioning, and the CLI end to end (train on a CSV, sample with the scaling
undone, forecast, evaluate, finetune) with its bad-input errors."""

import itertools
import json

import numpy as np
import pytest
import torch

from modaflow.benchmarks.cli import main
from modaflow.core.config import ConfigError
from modaflow.core.training import TrainerArgs
from modaflow.modalities.timeseries import recipe as R
from modaflow.modalities.timeseries import tasks
from modaflow.modalities.timeseries.models import TimeFlowNet, TimeFlowNetConfig, moving_average
from modaflow.modalities.timeseries.sampling import condition
from modaflow.modalities.timeseries.training import random_masks


def test_moving_average_matches_a_slow_loop_with_replicated_edges() -> None:
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    k, pad = 5, 2
    padded = torch.cat([x[:, :1].expand(-1, pad, -1), x, x[:, -1:].expand(-1, pad, -1)], dim=1)
    slow = torch.stack([padded[:, j : j + k].mean(1) for j in range(9)], dim=1)
    torch.testing.assert_close(moving_average(x, k), slow)
    torch.testing.assert_close(moving_average(x, 1), x)


def test_output_is_the_sum_of_trend_seasonal_and_residual_parts() -> None:
    net = TimeFlowNet(TimeFlowNetConfig(channels=3, length=12, d_model=16, layers=2, heads=2)).double()
    x, t = torch.randn(4, 12, 3, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    cond = condition(torch.randn(4, 12, 3, dtype=torch.float64), torch.ones(4, 12, 3, dtype=torch.float64))
    parts = net.components(x, t, cond)
    assert parts["trend"].shape == (2, 4, 12, 3) and parts["season"].shape == (2, 4, 12, 3)
    torch.testing.assert_close(net(x, t, cond), parts["trend"].sum(0) + parts["season"].sum(0) + parts["residual"])
    # the trend part of each layer is a gated map of a moving average: smoother than the seasonal part
    assert parts["trend"].diff(dim=2).abs().mean() < parts["season"].diff(dim=2).abs().mean()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 12, 3\)"):
        net(torch.randn(4, 12, 2, dtype=torch.float64), t)
    with pytest.raises(ValueError, match=r"cond must have shape \(B, 12, 6\)"):
        net(x, t, cond[..., :4])


def test_random_masks_draw_the_three_tasks() -> None:
    g = torch.Generator().manual_seed(0)
    m = random_masks((4000, 24, 3), 0.25, 0.25, 12, g)
    observed = m.sum(dim=(1, 2))
    uncond = observed == 0
    prefix = (m[:, :, :1] == m).all(dim=(1, 2)) & (m.diff(dim=1) <= 0).all(dim=(1, 2)) & (m[:, 0, 0] == 1)
    assert abs(uncond.float().mean().item() - 0.5) < 0.03
    horizon = 24 - m[prefix][:, :, 0].sum(1)
    assert horizon.min() >= 1 and horizon.max() <= 12
    scattered = ~uncond & ~prefix
    assert abs(scattered.float().mean().item() - 0.25) < 0.03
    rate = 1 - m[scattered].mean()
    assert abs(rate.item() - 0.5) < 0.03  # missing rate ~ U(0.1, 0.9)


def _csv(path, n: int = 150, channels: int = 2, offset: float = 100.0) -> str:
    t = np.arange(n)
    cols = [offset + 10 * np.sin(0.3 * t + k) + k for k in range(channels)]
    header = "time," + ",".join(f"c{k}" for k in range(channels))
    rows = "\n".join(f"{i}," + ",".join(f"{c[i]:.6f}" for c in cols) for i in range(n))
    path.write_text(header + "\n" + rows + "\n")
    return str(path)


SMALL = ["--window", "12", "--d-model", "16", "--layers", "1", "--heads", "2", "--max-steps", "12",
         "--batch-size", "32", "--log-every", "4", "--accelerator", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ts")
    data = _csv(tmp / "series.csv")
    out = tmp / "run"
    assert main(["train", "timeseries", "--data", data, "--out", str(out), *SMALL]) == 0
    return tmp, out


def test_cli_trains_samples_with_the_scaling_undone_and_evaluates(run_dir, capsys) -> None:
    tmp, out = run_dir
    assert (out / "scaler.json").is_file() and (out / "checkpoints" / "last.safetensors").is_file()
    scaler = json.loads((out / "scaler.json").read_text())
    assert scaler["method"] == "minmax" and scaler["channels"] == ["c0", "c1"]
    assert main(["sample", "timeseries", "--ckpt", str(out), "--out", str(tmp / "s.npy"), "--n", "6", "--steps", "4"]) == 0
    x = np.load(tmp / "s.npy")
    r = R.restore(out)
    want = R.to_raw(r, R.draw(r, 6, 4, None, 0))  # the same seed gives the same noise
    np.testing.assert_allclose(x, want, rtol=1e-6)
    assert x.shape == (6, 12, 2) and 50 < x.mean() < 150  # raw units (offset 100), not [0, 1]
    assert main(["sample", "timeseries", "--ckpt", str(out), "--out", str(tmp / "f.csv"), "--n", "3", "--steps", "4",
                 "--task", "forecast", "--input", str(tmp / "series.csv"), "--horizon", "4"]) == 0
    assert (tmp / "f.csv").read_text().splitlines()[0] == "window,sample,step,c0,c1"
    gaps = tmp / "gaps.csv"  # missing cells in the user's file become the imputation mask
    gaps.write_text("time,c0,c1\n" + "".join(f"{i},{100 + i},{'' if i % 5 == 2 else 90 - i}\n" for i in range(24)))
    assert main(["sample", "timeseries", "--ckpt", str(out), "--out", str(tmp / "imp.npy"), "--n", "2", "--steps", "4",
                 "--task", "impute", "--input", str(gaps)]) == 0
    imp = np.load(tmp / "imp.npy")  # the file's whole series, filled: (samples, T, C)
    assert imp.shape == (2, 24, 2) and np.isfinite(imp).all()
    observed = np.arange(24) % 5 != 2
    np.testing.assert_array_equal(imp[:, :, 0], np.broadcast_to(100 + np.arange(24.0), (2, 24)))  # the file's, exactly
    np.testing.assert_array_equal(imp[:, observed, 1], np.broadcast_to(90 - np.arange(24.0)[observed], (2, 19)))
    assert not np.allclose(imp[0, 12, 1], imp[1, 12, 1])  # row 12 missing: two different draws
    r = R.restore(out)  # the same draws as the windows the model completes (rows 0-11 and 12-23)
    u, m, _ = tasks.conditioning(r, tasks.TimeSeriesOptions(task="impute", input=str(gaps)), 0)
    windows = R.to_raw(r, tasks.complete(r, u, m, 2, 4, None, 0))
    gap = ~observed[12:]  # the filled cells are those draws (the observed ones the file's, above)
    np.testing.assert_allclose(imp[:, 12:, 1][:, gap], windows[1, :, :, 1][:, gap], rtol=1e-12)
    assert main(["sample", "timeseries", "--ckpt", str(out), "--out", str(tmp / "imp.csv"), "--n", "2", "--steps", "4",
                 "--task", "impute", "--input", str(gaps)]) == 0
    table = np.loadtxt(tmp / "imp.csv", delimiter=",", skiprows=1)
    assert (tmp / "imp.csv").read_text().splitlines()[0] == "sample,time,c0,c1"  # the file's time column, by name
    np.testing.assert_array_equal(table[:, :2], np.stack([np.repeat([0, 1], 24), np.tile(np.arange(24), 2)], 1))
    np.testing.assert_allclose(table[:, 2:].reshape(2, 24, 2), imp, rtol=1e-9)
    capsys.readouterr()
    assert main(["evaluate", "timeseries", "--ckpt", str(out), "--n", "4", "--steps", "4", "--task", "impute",
                 "--windows", "3"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) >= {"mse", "mae", "crps"} and scores["crps"] > 0


def test_evaluate_generate_follows_the_protocol_equal_counts_and_repeats(run_dir, capsys) -> None:
    from modaflow.core.stats import mean_ci95
    from modaflow.modalities.timeseries.ts2vec import TS2VecConfig, train_ts2vec

    tmp, out = run_dir
    capsys.readouterr()
    assert main(["evaluate", "timeseries", "--ckpt", str(out), "--n", "20", "--steps", "2", "--repeats", "2",
                 "--disc-iterations", "3", "--pred-iterations", "3", "--ts2vec-iterations", "2"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["n_samples"] == scores["n_real"] == 20 and scores["n_train_windows"] > 20 and scores["repeats"] == 2
    # the same computation by hand: 20 random training windows, seeds 0 and 1 for the encoder and the GRUs
    r = R.restore(out)
    w, _ = R.prepare(r.cfg)
    real_all = r.scaler.transform(w.train, r.cfg.data)
    real = real_all[np.random.default_rng(0).permutation(len(real_all))[:20]]
    fake = r.scaler.from_model(R.draw(r, 20, 2, None, 0))
    x = torch.as_tensor(real_all, dtype=torch.float32)
    reps = [tasks.generation_metrics(real, fake, train_ts2vec(x, TS2VecConfig(iterations=2), k), k, 3, 3,
                                     repeats=2) for k in (0, 1)]
    for m in ("discriminative", "predictive", "context_fid", "correlational", "roughness"):
        want = mean_ci95(rep[m] for rep in reps)
        assert scores[m]["n"] == 2 and scores[m]["mean"] == pytest.approx(want["mean"], rel=1e-5, abs=1e-7), m
        assert scores[m]["ci95"] == pytest.approx(want["ci95"], rel=1e-4, abs=1e-7), m


def test_diffusion_level_is_a_sampling_parameter(run_dir) -> None:
    tmp, out = run_dir
    r = R.restore(out)
    assert r.cfg.method == "timeflow" and r.kind == "velocity"
    noisy = R.draw(r, 6, 4, "em", 0)  # the recipe's g = 0.1
    np.testing.assert_allclose(R.draw(r, 6, 4, "em", 0, diffusion=r.cfg.em_diffusion), noisy)
    # g = 0: Euler–Maruyama without noise is the Euler ODE
    np.testing.assert_allclose(R.draw(r, 6, 4, "em", 0, diffusion=0.0), R.draw(r, 6, 4, "euler", 0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(R.draw(r, 6, 4, "em", 0, diffusion=0.5), noisy)
    assert main(["sample", "timeseries", "--ckpt", str(out), "--out", str(tmp / "g0.npy"), "--n", "6", "--steps", "4",
                 "--solver", "em", "--diffusion", "0"]) == 0
    np.testing.assert_allclose(np.load(tmp / "g0.npy"), R.to_raw(r, R.draw(r, 6, 4, "euler", 0)), rtol=1e-5)
    with pytest.raises(ConfigError, match="diffusion"):
        tasks.TimeSeriesOptions(diffusion=-0.1)


def test_sample_device_option(run_dir, capsys) -> None:
    tmp, out = run_dir
    assert main(["sample", "timeseries", "--ckpt", str(out), "--out", str(tmp / "cpu.npy"), "--n", "4", "--steps", "4",
                 "--device", "cpu"]) == 0
    r = R.restore(out)
    np.testing.assert_allclose(np.load(tmp / "cpu.npy"), R.to_raw(r, R.draw(r, 4, 4, None, 0)), rtol=1e-6)
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert main(["sample", "timeseries", "--ckpt", str(out), "--out", str(tmp / "gpu.npy"), "--device", "cuda"]) == 2
        assert "device: cuda was asked for, but torch sees no GPU" in capsys.readouterr().err


@pytest.mark.gpu
def test_sampling_and_imputing_on_the_gpu_match_the_cpu(run_dir) -> None:
    tmp, out = run_dir
    cpu, gpu = R.restore(out), R.restore(out, "cuda")
    torch.testing.assert_close(R.draw(gpu, 8, 4, "euler", 0).cpu(), R.draw(cpu, 8, 4, "euler", 0), rtol=1e-4, atol=1e-4)
    rng = np.random.default_rng(0)
    u, m = rng.uniform(0, 1, (2, 12, 2)), (rng.random((2, 12, 2)) > 0.5).astype(np.float64)
    for guidance in (False, True):
        torch.testing.assert_close(tasks.complete(gpu, u, m, 2, 4, "euler", 0, guidance).cpu(),
                                   tasks.complete(cpu, u, m, 2, 4, "euler", 0, guidance), rtol=1e-3, atol=1e-3)


def test_stitch_takes_each_step_from_the_first_window_covering_it_and_seen_entries_from_the_file() -> None:
    T, L, C, S = 30, 12, 2, 3  # tiles start at 0, 12 and 18 (the last aligned to the end)
    windows = np.broadcast_to(np.arange(3.0)[:, None, None, None], (3, S, L, C)).copy()  # window w fills w
    seen = np.zeros((3, L, C))
    seen[2, -1, 1] = 1  # row 29, channel 1: the model saw it
    x = -np.arange(T * C, dtype=float).reshape(T, C)
    out = tasks.stitch(windows, seen, x)
    want = np.concatenate([np.zeros((12, C)), np.ones((12, C)), np.full((6, C), 2.0)])
    want[29, 1] = x[29, 1]
    np.testing.assert_array_equal(out, np.broadcast_to(want, (S, T, C)))


def test_file_conditioning_covers_the_tail_and_scores_only_known_hidden_entries(run_dir) -> None:
    tmp, out = run_dir
    r = R.restore(out)  # window L = 12
    path = tmp / "tail.csv"  # 30 rows: 30 mod 12 = 6 tail rows, a gap in row 27 and in row 3
    path.write_text("time,c0,c1\n" + "".join(f"{i},{100 + i},{'' if i in (3, 27) else 90 - i}\n" for i in range(30)))
    opts = tasks.TimeSeriesOptions(task="impute", input=str(path))
    u, m, target = tasks.conditioning(r, opts, 0)
    assert u.shape == (3, 12, 2) and not target.any()  # windows at rows 0, 12 and 18 (aligned to the end)
    assert m[0, 3, 1] == 0 and m[2, 27 - 18, 1] == 0 and m.sum() == 3 * 12 * 2 - 2  # both gaps, nothing else hidden
    np.testing.assert_allclose(r.scaler.transform(np.array([[100 + 29.0, 90 - 29.0]]))[0], u[2, -1])
    u, m, target = tasks.conditioning(r, opts, 0, scoring=True)
    assert target.any() and not (target * m).any()  # scored entries are hidden from the model ...
    assert target[0, 3, 1] == 0 and target[2, 9, 1] == 0  # ... and known: the file's gaps are never scored
    assert np.all(m + target <= 1) and (m + target).sum() == 3 * 12 * 2 - 2
    fore = tasks.TimeSeriesOptions(task="forecast", input=str(tmp / "series.csv"), horizon=4)
    u, m, target = tasks.conditioning(r, fore, 0, scoring=True)  # the file's last 4 steps held out
    series = np.loadtxt(tmp / "series.csv", delimiter=",", skiprows=1)[:, 1:]
    np.testing.assert_allclose(u[0], r.scaler.transform(series[-12:]), rtol=1e-12)
    assert m[0, :8].all() and not m[0, 8:].any() and np.array_equal(target, 1 - m)
    u, m, target = tasks.conditioning(r, fore, 0)  # sampling: the 8 last steps observed, 4 beyond the file
    np.testing.assert_allclose(u[0, :8], r.scaler.transform(series[-8:]), rtol=1e-12)
    assert not u[0, 8:].any() and not target.any()


def test_input_columns_are_matched_by_name(run_dir, capsys) -> None:
    import pandas as pd

    tmp, out = run_dir
    r = R.restore(out)
    df = pd.read_csv(tmp / "series.csv")
    df[["time", "c1", "c0"]].to_csv(tmp / "swapped.csv", index=False)
    fore = tasks.TimeSeriesOptions(task="forecast", input=str(tmp / "series.csv"), horizon=4)
    u, m, _ = tasks.conditioning(r, fore, 0)
    u2, m2, _ = tasks.conditioning(r, fore.replace(input=str(tmp / "swapped.csv")), 0)
    np.testing.assert_array_equal(u2, u)  # reordered by name, not scaled with the other channel's scaler
    df.rename(columns={"c0": "x", "c1": "y"}).to_csv(tmp / "renamed.csv", index=False)
    with pytest.warns(UserWarning, match=r"renamed.csv: channels \['x', 'y'\] do not match the model's \['c0', 'c1'\]"):
        u3, _, _ = tasks.conditioning(r, fore.replace(input=str(tmp / "renamed.csv")), 0)
    np.testing.assert_array_equal(u3, u)  # by position, as the warning says
    imp = tasks.TimeSeriesOptions(task="impute")  # evaluate --data: test windows of that data, channels by name
    own, _, _ = tasks.conditioning(r, imp, 0, scoring=True)
    other, _, _ = tasks.conditioning(r, imp, 0, scoring=True, data=str(tmp / "swapped.csv"))
    np.testing.assert_array_equal(other, own)
    longer = tmp / "longer.csv"
    _csv(longer, n=300)
    assert tasks.conditioning(r, imp, 0, scoring=True, data=str(longer))[0].shape[0] > 0
    assert not np.array_equal(tasks.conditioning(r, imp, 0, scoring=True, data=str(longer))[0][0], own[0])
    # finetune on the columns in another order: the new run models them in the checkpoint's order, by name
    ft = tmp / "ft_swapped"
    assert main(["finetune", "timeseries", "--ckpt", str(out), "--data", str(tmp / "swapped.csv"), "--out", str(ft),
                 *SMALL]) == 0
    assert json.loads((ft / "recipe.json").read_text())["config"]["columns"] == ["c0", "c1"]
    assert json.loads((ft / "scaler.json").read_text())["channels"] == ["c0", "c1"]
    np.testing.assert_array_equal(tasks.conditioning(R.restore(ft), imp, 0, scoring=True)[0], own)
    ft2 = tmp / "ft_swapped_named"  # --columns in the file's order: still the checkpoint's order, by name
    assert main(["finetune", "timeseries", "--ckpt", str(out), "--data", str(tmp / "swapped.csv"), "--columns", "c1",
                 "c0", "--out", str(ft2), *SMALL]) == 0
    assert json.loads((ft2 / "scaler.json").read_text())["channels"] == ["c0", "c1"]
    ft3 = tmp / "ft_same"  # the checkpoint's order: nothing stored, so positional files still work with the new run
    assert main(["finetune", "timeseries", "--ckpt", str(out), "--data", str(tmp / "series.csv"), "--out", str(ft3),
                 *SMALL]) == 0
    assert json.loads((ft3 / "recipe.json").read_text())["config"]["columns"] == []


def test_columns_choose_and_order_the_channels_of_a_file(tmp_path, capsys) -> None:
    """--columns reads only the channels named, in that order: other columns may hold text or gaps."""
    import pandas as pd

    _csv(tmp_path / "base.csv", n=150, channels=3)
    df = pd.read_csv(tmp_path / "base.csv").assign(comment="text", c1=np.nan)
    df.to_csv(tmp_path / "wide.csv", index=False)
    run = tmp_path / "run"
    assert main(["train", "timeseries", "--data", str(tmp_path / "wide.csv"), "--columns", "c2", "c0", "--out",
                 str(run), *SMALL]) == 0
    r = R.restore(run)
    assert r.scaler.channels == ("c2", "c0")
    w, _ = R.prepare(r.cfg)
    base = pd.read_csv(tmp_path / "base.csv")
    np.testing.assert_allclose(w.train[0], base[["c2", "c0"]].to_numpy()[:12])
    assert main(["sample", "timeseries", "--ckpt", str(run), "--task", "forecast", "--input", str(tmp_path / "wide.csv"),
                 "--horizon", "3", "--n", "2", "--steps", "2", "--out", str(tmp_path / "f.npy")]) == 0
    assert np.load(tmp_path / "f.npy").shape[-1] == 2
    capsys.readouterr()
    assert main(["train", "timeseries", "--data", str(tmp_path / "wide.csv"), "--columns", "c0", "c9", "--out",
                 str(tmp_path / "bad"), *SMALL]) == 2
    assert "wide.csv: channel column(s) ['c9'] not found (the run's channels" in capsys.readouterr().err
    assert main(["train", "timeseries", "--data", str(tmp_path / "wide.csv"), "--columns", "c0,c2", "--out",
                 str(tmp_path / "bad"), *SMALL]) == 2
    assert "separate --columns names by spaces" in capsys.readouterr().err
    # a text column before the dates: the dates are still the time column (rows sorted by them)
    stamped = base.assign(id="x", stamp=pd.date_range("2020-01-01", periods=len(base), freq="D").strftime("%Y-%m-%d"))
    stamped = stamped[["id", "stamp", "c0", "c2"]].iloc[::-1]
    stamped.to_csv(tmp_path / "stamped.csv", index=False)
    from modaflow.modalities.timeseries.sources import read_table

    src = read_table(tmp_path / "stamped.csv", columns=("c0", "c2"))
    assert src.time_name == "stamp"
    np.testing.assert_allclose(src.values, base[["c0", "c2"]].to_numpy())
    assert main(["train", "timeseries", "--data", "sines", "--columns", "0", "0", "--out", str(tmp_path / "dup")]) == 2
    assert "columns" in capsys.readouterr().err


def test_conditional_samples_keep_the_observations_and_steering_too(run_dir) -> None:
    tmp, out = run_dir
    r = R.restore(out)
    rng = np.random.default_rng(0)
    u = rng.uniform(0, 1, (3, 12, 2))
    m = (rng.random(u.shape) > 0.5).astype(np.float64)
    for guidance in (False, True):
        x = r.scaler.from_model(tasks.complete(r, u, m, 2, 4, None, 0, guidance))
        assert x.shape == (3, 2, 12, 2)
        np.testing.assert_allclose((x * m[:, None])[..., :], np.broadcast_to((u * m)[:, None], x.shape), atol=1e-6)


def test_guided_imputation_reaches_the_exact_conditional_mean_of_gaussian_windows() -> None:
    # windows of L = 3 steps, C = 1 channel drawn from N(mu, S), the network replaced by the exact velocity: steering
    # (FlowChef through sampling.steered_impute, the path of complete(..., guidance=True)) must move the unobserved
    # steps to E[x_u | x_0 = 2] = mu_u + S_u0 (2 - mu_0) / S_00, away from their prior mean
    from modaflow.core.gaussian import GaussianOracle
    from modaflow.core.paths import LinearPath
    from modaflow.modalities.timeseries.sampling import steered_impute

    mean = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.6, 0.2], [0.6, 1.5, -0.4], [0.2, -0.4, 0.8]], dtype=torch.float64)
    oracle = GaussianOracle(mean, cov, LinearPath())

    class ExactVelocity(torch.nn.Module):
        def forward(self, x, t):
            return oracle.velocity(x.reshape(x.shape[0], 3), t).reshape(x.shape)

    n = 20000
    x0 = torch.randn(n, 3, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = torch.zeros(n, 3, 1, dtype=torch.float64)
    m[:, 0] = 1.0
    y = torch.full((n, 3, 1), 2.0, dtype=torch.float64)
    x = steered_impute(ExactVelocity(), "velocity", LinearPath(), x0, y, m, 50, 1.0)
    assert (x[:, 0, 0] == 2.0).all()
    want = mean[1:] + cov[1:, 0] * (2.0 - mean[0]) / cov[0, 0]  # (0.1, 0.5); the prior mean (-0.5, 0.3) is 0.63 away
    assert (x[:, 1:, 0].mean(0) - want).abs().max().item() < 0.04


def test_draw_at_a_given_nfe_takes_half_as_many_midpoint_steps(run_dir) -> None:
    tmp, out = run_dir
    r = R.restore(out)
    assert main(["sample", "timeseries", "--ckpt", str(out), "--out", str(tmp / "fast.npy"), "--n", "5", "--solver",
                 "midpoint", "--steps", "5", "--shift", "1", "--seed", "3"]) == 0  # 10 NFE on a uniform grid
    np.testing.assert_allclose(np.load(tmp / "fast.npy"), R.to_raw(r, R.draw_nfe(r, 5, 10, "midpoint", 3, shift=1.0)),
                               rtol=1e-6)
    assert r.cfg.shift == 3.0  # the recipe's default is left alone
    for solver, nfe, steps in (("auto", 10, 10), ("em", 10, 10), ("euler", 10, 10), ("midpoint", 10, 5), ("heun", 10, 5),
                               ("rk4", 8, 2)):
        torch.testing.assert_close(R.draw_nfe(r, 3, nfe, solver, 7, shift=2.0), R.draw(r, 3, steps, solver, 7, shift=2.0))
    with pytest.raises(ValueError, match="9 NFE is not a whole number of 'midpoint' steps"):
        R.draw_nfe(r, 3, 9, "midpoint")
    with pytest.raises(ValueError, match="solver must be one of"):
        R.draw_nfe(r, 3, 10, "dopri")


def test_cli_bad_inputs_name_the_file_and_the_problem(run_dir, capsys) -> None:
    tmp, out = run_dir
    wrong = _csv(tmp / "three.csv", channels=3)
    capsys.readouterr()
    assert main(["finetune", "timeseries", "--ckpt", str(out), "--data", wrong, "--out", str(tmp / "ft"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "three.csv: 3 channels" in err and "trained on 2" in err
    assert main(["sample", "timeseries", "--ckpt", str(out), "--out", str(tmp / "x.npy"), "--task", "impute",
                 "--input", wrong]) == 2
    assert "three.csv: 3 channels" in capsys.readouterr().err
    (tmp / "empty.csv").write_text("")
    assert main(["train", "timeseries", "--data", str(tmp / "empty.csv"), "--out", str(tmp / "e"), *SMALL]) == 2
    assert "empty.csv: the file is empty" in capsys.readouterr().err
    short = _csv(tmp / "short.csv", n=10)
    assert main(["train", "timeseries", "--data", short, "--out", str(tmp / "e2"), *SMALL]) == 2
    assert "short.csv: the series has 10 time steps, shorter than the window length 12" in capsys.readouterr().err
    (tmp / "nan.csv").write_text("time,c0,c1\n" + "".join(f"{i},{i},{'nan' if i == 5 else i}\n" for i in range(40)))
    assert main(["train", "timeseries", "--data", str(tmp / "nan.csv"), "--out", str(tmp / "e3"), *SMALL]) == 2
    assert "nan.csv: 1 missing value(s)/NaN, the first in row 5" in capsys.readouterr().err
    (tmp / "inf.csv").write_text("time,c0,c1\n" + "".join(f"{i},{i},{'inf' if i == 5 else i}\n" for i in range(40)))
    assert main(["train", "timeseries", "--data", str(tmp / "inf.csv"), "--out", str(tmp / "e4"), *SMALL]) == 2
    assert "inf.csv: Inf in row 5 (after sorting by time), column 'c1'; expected finite numbers" in capsys.readouterr().err
    (tmp / "five.csv").write_text("time,c0,c1\n" + "".join(f"{i},{100 + i},{90 - i}\n" for i in range(5)))
    assert main(["sample", "timeseries", "--ckpt", str(out), "--out", str(tmp / "f.npy"), "--task", "forecast",
                 "--input", str(tmp / "five.csv"), "--horizon", "4"]) == 2
    assert "five.csv: the series has 5 steps; forecasting needs >= 8" in capsys.readouterr().err
    wide = _csv(tmp / "three_long.csv", n=300, channels=3)
    assert main(["evaluate", "timeseries", "--ckpt", str(out), "--data", wide, "--n", "4", "--repeats", "1"]) == 2
    assert "three_long.csv: 3 channels" in capsys.readouterr().err
    import shutil

    broken = tmp / "broken_run"
    shutil.copytree(out, broken)
    (broken / "scaler.json").write_text("{broken")
    assert main(["sample", "timeseries", "--ckpt", str(broken), "--out", str(tmp / "b.npy"), "--n", "2"]) == 2
    assert "broken_run/scaler.json: not valid JSON" in capsys.readouterr().err
    (broken / "scaler.json").write_text(json.dumps({"method": "minmax", "shift": [0, 0], "scale": [1, 1]}))
    assert main(["sample", "timeseries", "--ckpt", str(broken), "--out", str(tmp / "b.npy"), "--n", "2"]) == 2
    assert "broken_run/scaler.json: the scaler lacks the field 'channels'" in capsys.readouterr().err


def test_conditioning_options_of_another_task_are_refused_not_ignored(run_dir, capsys) -> None:
    tmp, out = run_dir
    capsys.readouterr()
    # --input without --task forecast/impute used to write unconditional samples as if it had conditioned on the file
    assert main(["sample", "timeseries", "--ckpt", str(out), "--out", str(tmp / "gi.npy"), "--n", "2", "--steps", "2",
                 "--input", str(tmp / "series.csv")]) == 2
    assert "TimeSeriesOptions.input: expected empty for --task generate" in capsys.readouterr().err
    assert not (tmp / "gi.npy").exists()
    with pytest.raises(ConfigError, match="TimeSeriesOptions.horizon: expected 0 for --task impute"):
        tasks.TimeSeriesOptions(task="impute", horizon=4)
    with pytest.raises(ConfigError, match="TimeSeriesOptions.horizon: expected 0 for --task generate"):
        tasks.TimeSeriesOptions(horizon=4)
    assert tasks.TimeSeriesOptions(task="forecast", horizon=4, input="x.csv").horizon == 4
    with pytest.raises(ConfigError, match="TimeSeriesOptions.guidance: expected off for --task generate"):
        tasks.TimeSeriesOptions(guidance=True)
    capsys.readouterr()
    assert main(["evaluate", "timeseries", "--ckpt", str(out), "--n", "2", "--steps", "2", "--task", "forecast",
                 "--input", str(tmp / "series.csv"), "--data", str(tmp / "series.csv")]) == 2  # --data was dropped
    assert f"evaluate takes --input ({tmp / 'series.csv'}) or --data ({tmp / 'series.csv'}), not both" in capsys.readouterr().err


def test_a_run_on_a_relative_file_samples_its_test_windows_from_another_directory(run_dir, monkeypatch, capsys) -> None:
    tmp, _ = run_dir
    monkeypatch.chdir(tmp)
    assert main(["train", "timeseries", "--data", "series.csv", "--out", "rel_run", *SMALL, "--max-steps", "2"]) == 0
    recipe = json.loads((tmp / "rel_run" / "recipe.json").read_text())
    assert recipe["config"]["data"] == str((tmp / "series.csv").resolve())
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # forecasting on the run's test windows reads its data file again
    assert main(["sample", "timeseries", "--ckpt", str(tmp / "rel_run"), "--out", "f.npy", "--n", "2", "--steps", "2",
                 "--task", "forecast", "--windows", "3"]) == 0, capsys.readouterr().err
    assert np.load(elsewhere / "f.npy").shape == (3, 2, 12, 2)


def test_finetune_continues_from_the_checkpoint(run_dir) -> None:
    tmp, out = run_dir
    other = _csv(tmp / "other.csv", n=120, offset=-5.0)
    summary = R.finetune(out, other, tmp / "ft2", {"fm": {"max_steps": 4}}, TrainerArgs(accelerator="cpu"), progress=False)
    assert summary["steps"] == 4
    assert json.loads((tmp / "ft2" / "scaler.json").read_text())["shift"][0] < 0  # refitted on the new data


def test_data_prediction_trains_from_the_cli_samples_with_dpm2m_and_stays_data_at_finetune(run_dir, capsys) -> None:
    tmp, _ = run_dir
    data, out = str(tmp / "series.csv"), tmp / "data_run"
    assert main(["train", "timeseries", "--data", data, "--out", str(out), "--prediction", "data", *SMALL]) == 0
    r = R.restore(out)
    assert r.kind == "data" and r.cfg.prediction == "data"
    x = R.draw_nfe(r, 4, 10, "auto", 2)
    torch.testing.assert_close(x, R.draw(r, 4, 10, "dpm2m", 2))  # auto = DPM-Solver++(2M), one evaluation per step
    assert torch.isfinite(x).all()
    y = torch.zeros(4, 12, 2)
    m = torch.zeros(4, 12, 2)
    m[:, :6] = 1.0
    assert torch.isfinite(R.draw(r, 4, 10, None, 2, cond=condition(y, m))).all()  # the conditional network
    capsys.readouterr()
    assert main(["finetune", "timeseries", "--ckpt", str(out), "--data", data, "--out", str(tmp / "ft_data"),
                 "--prediction", "velocity", *SMALL]) == 2
    assert "finetune cannot change prediction ('data'" in capsys.readouterr().err


def test_baselines_train_and_sample_through_the_core(tmp_path) -> None:
    data = _csv(tmp_path / "s.csv", n=150)
    for method, solver, steps in (("linear_fm", "heun", 3), ("ddpm", "ddpm", None), ("ddpm", "ddim", 5)):
        cfg = R.TimeSeriesConfig(data=data, method=method, window=12, d_model=16, layers=1, heads=2)
        cfg = cfg.replace(fm=cfg.fm.replace(max_steps=3, batch_size=16, warmup_steps=0, ddpm_steps=20))
        out = tmp_path / method
        R.train(cfg, TrainerArgs(accelerator="cpu"), out, progress=False)
        x = R.draw(R.restore(out), 5, steps, solver, 0)
        assert x.shape == (5, 12, 2) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="solver 'ddpm' needs the ddpm method"):
        R.draw(R.restore(tmp_path / "linear_fm"), 2, 3, "ddpm", 0)
    # imputing from observations far outside the training range: the DDPM's hard projection clips its clean
    # prediction to that range (model space [-1, 1]), so it cannot feed back an overshoot (uschange, RESULTS.md)
    r = R.restore(tmp_path / "ddpm")
    u = np.full((2, 12, 2), 5.0)  # normalised units: the training range is [0, 1] (min-max)
    m = np.zeros_like(u)
    m[:, :6] = 1.0
    x = tasks.complete(r, u, m, 3, 10, "euler", 0)  # (W, n, L, C) in model space
    torch.testing.assert_close(x[:, :, :6], r.scaler.to_model(u)[:, None, :6].expand(2, 3, 6, 2))
    assert x[:, :, 6:].abs().max().item() <= 1.05  # alpha(1) x1_hat + sigma(1) eps_hat, sigma(1) ~ 0.01


def test_flow_samplers_transport_gaussians_exactly_on_timeflows_stochastic_path() -> None:
    """x1 ~ N(mu, s^2) per entry on TimeFlow's path x_t = t x1 + sigma(t) eps (sigma^2 = (1 - t)^2 + gamma^2,
    gamma = 0.1 sqrt(t (1 - t))): E[x1 | x_t] is closed-form, the marginal velocity follows from it, and the
    probability-flow ODE maps x0 to mu + s x0. Midpoint converges fast; DDIM on the flow's continuous grid
    (x <- alpha(t') x1_hat + sigma(t') eps_hat) is first order."""
    from modaflow.core.parametrizations import convert
    from modaflow.modalities.timeseries.sampling import resolve_solver, run_solver

    path, kind, _ = R.build(R.TimeSeriesConfig(method="timeflow", d_model=16, layers=1, heads=2, window=12), channels=2)
    mu, s = 0.3, 0.5

    class Velocity(torch.nn.Module):
        def forward(self, x, t, cond=None):
            a, sig = t[:, None, None], path.sigma(t)[:, None, None]
            x1_hat = mu + a * s ** 2 / (a ** 2 * s ** 2 + sig ** 2) * (x - a * mu)  # E[x1 | x_t], Gaussian
            return convert(x1_hat, "data", "velocity", x, t, path)

    x0 = torch.randn(256, 12, 2, dtype=torch.float64)
    x = run_solver(Velocity(), "timeflow", kind, path, x0, 400, "midpoint", 1.0, 0.0)
    torch.testing.assert_close(x, mu + s * x0, atol=2e-4, rtol=0)
    err = [float((run_solver(Velocity(), "timeflow", kind, path, x0, k, "ddim", 1.0, 0.0) - mu - s * x0).abs().max())
           for k in (40, 80, 160)]
    assert err[2] < 0.02 and 1.9 < err[0] / err[1] < 2.1 and 1.9 < err[1] / err[2] < 2.1
    ddpm_path, ddpm_kind, _ = R.build(R.TimeSeriesConfig(method="ddpm", d_model=16, layers=1, heads=2, window=12), 2)
    with pytest.raises(ValueError, match="'heun' evaluates the ddpm data model at t = 1"):
        run_solver(Velocity(), "ddpm", ddpm_kind, ddpm_path, x0, 4, "heun", 1.0, 0.0)

    # the same flow predicted as data (prediction = "data"): auto is DPM-Solver++(2M), ahead of DDIM at every size
    data_path, data_kind, _ = R.build(R.TimeSeriesConfig(prediction="data", d_model=16, layers=1, heads=2, window=12), 2)
    assert data_kind == "data" and resolve_solver("timeflow", "auto", data_kind) == "dpm2m"

    class Data(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return convert(Velocity()(x, t), "velocity", "data", x, t, data_path)

    for k in (10, 40, 160):
        dpm = float((run_solver(Data(), "timeflow", data_kind, data_path, x0, k, "auto", 1.0, 0.0) - mu - s * x0).abs().max())
        ddim = float((run_solver(Data(), "timeflow", data_kind, data_path, x0, k, "ddim", 1.0, 0.0) - mu - s * x0).abs().max())
        assert dpm < ddim / 3, (k, dpm, ddim)
    assert dpm < 1e-3


@pytest.mark.parametrize("prediction", ["velocity", "data"])
def test_timeflow_loss_matches_a_slow_per_window_computation(prediction) -> None:
    """The masked loss on the unobserved entries, against a loop over windows and entries: target x1 - x0 for
    velocity, x1 weighted by min(1 / (1 - t)^2, cap) / batch mean for data."""
    from modaflow.modalities.timeseries.training import random_masks

    cfg = R.TimeSeriesConfig(prediction=prediction, weight_cap=20.0, d_model=16, layers=1, heads=2, window=12)
    _, kind, module = R.build(cfg, channels=3)
    assert kind == prediction
    x1 = torch.rand(16, 12, 3, generator=torch.Generator().manual_seed(1))
    loss = module.compute_loss(x1, step=7)
    gen = module._generator(x1.device, 7)  # the draws compute_loss made, in its order
    t = module.time_sampler(16, generator=gen)
    x0, z = torch.randn(x1.shape, generator=gen), torch.randn(x1.shape, generator=gen)
    m = random_masks((16, 12, 3), module.p_forecast, module.p_impute, module.max_horizon, gen)
    terms, weights = [], []
    with torch.no_grad():
        for b in range(16):
            tb = float(t[b])
            gamma = 0.1 * (tb * (1 - tb)) ** 0.5
            x_t = tb * x1[b] + (1 - tb) * x0[b] + gamma * z[b]
            pred = module.model(x_t[None], t[b : b + 1], torch.cat([m[b] * x1[b], m[b]], -1)[None])[0]
            target = x1[b] - x0[b] if prediction == "velocity" else x1[b]
            sq = [float(pred[i, c] - target[i, c]) ** 2 for i in range(12) for c in range(3) if m[b, i, c] == 0]
            terms.append(sum(sq) / max(len(sq), 1))
            weights.append(min(1 / (1 - tb) ** 2, 20.0) if prediction == "data" else 1.0)
    want = sum(w * e for w, e in zip(weights, terms)) / sum(weights)
    assert abs(loss.item() - want) < 1e-5 * want
    with pytest.raises(ConfigError, match="prediction"):
        R.TimeSeriesConfig(method="linear_fm", prediction="data")


def test_training_options_the_method_sets_are_refused_not_ignored(run_dir, capsys) -> None:
    fm = R.TimeSeriesConfig().fm
    for method, change, field in (("timeflow", {"parametrization": "data"}, "fm.parametrization"),
                                  ("linear_fm", {"path": "vp_cosine"}, "fm.path"),
                                  ("ddpm", {"cond_dropout": 0.1}, "fm.cond_dropout"),
                                  ("timeflow", {"loss_weighting": "min_snr"}, "fm.loss_weighting"),
                                  ("timeflow", {"coupling": "exact_ot"}, "fm.coupling")):
        with pytest.raises(ConfigError, match=rf"^TimeSeriesConfig\.{field}: expected .*, got "):
            R.TimeSeriesConfig(method=method, fm=fm.replace(**change))
    R.TimeSeriesConfig(method="linear_fm", fm=fm.replace(coupling="exact_ot"))  # minibatch OT: a linear FM option
    tmp, _ = run_dir
    capsys.readouterr()
    assert main(["train", "timeseries", "--data", str(tmp / "series.csv"), "--out", str(tmp / "refused"), *SMALL,
                 "--parametrization", "data"]) == 2
    assert ("argument --parametrization: TimeSeriesConfig.fm.parametrization: expected unset: the method sets it "
            "(TimeFlow: --prediction") in capsys.readouterr().err
    # a run stored when such options were accepted and ignored still loads, read as the defaults it trained with
    import shutil

    old_run = tmp / "old_recipe_run"
    shutil.copytree(run_dir[1], old_run)
    recipe = json.loads((old_run / "recipe.json").read_text())
    recipe["config"]["fm"].update(parametrization="data", coupling="exact_ot")
    (old_run / "recipe.json").write_text(json.dumps(recipe))
    with pytest.warns(UserWarning, match=r"recipe.json: fm.parametrization, fm.coupling had no effect on this run"):
        r = R.restore(old_run)
    assert r.cfg.fm.parametrization == "velocity" and r.kind == "velocity"
    recipe["config"]["window"] = 0  # anything else refused is still an error naming the file
    (old_run / "recipe.json").write_text(json.dumps(recipe))
    with pytest.raises(ConfigError, match=r"recipe.json: TimeSeriesConfig.window"):
        R.restore(old_run)


def test_flow_methods_train_on_logit_normal_times_and_the_ddpm_on_uniform_steps() -> None:
    from modaflow.core.time_samplers import LogitNormalTime, UniformTime

    assert R.TimeSeriesConfig().fm.time_sampler == "logit_normal"  # the recipe default, not only the benchmark's
    for method, kind in (("timeflow", LogitNormalTime), ("linear_fm", LogitNormalTime), ("ddpm", UniformTime)):
        _, _, module = R.build(R.TimeSeriesConfig(method=method, d_model=16, layers=1, heads=2), channels=3)
        assert type(module.time_sampler) is kind, method
    cfg = R.TimeSeriesConfig(method="timeflow", d_model=16, layers=1, heads=2)
    _, _, module = R.build(cfg.replace(fm=cfg.fm.replace(time_sampler="uniform")), channels=3)
    assert type(module.time_sampler) is UniformTime  # an explicit choice is kept
    t = module.time_sampler(4096, generator=torch.Generator().manual_seed(0))
    _, _, ln = R.build(cfg, channels=3)
    s = ln.time_sampler(4096, generator=torch.Generator().manual_seed(0))
    assert abs(float(s.mean()) - 0.5) < 0.02 and float(((s - 0.5).abs() < 0.25).float().mean()) > 0.6  # mass mid-path
    assert abs(float(((t - 0.5).abs() < 0.25).float().mean()) - 0.5) < 0.03
    assert R.TimeSeriesConfig(method="ddpm").fm.time_sampler == "uniform"  # what recipe.json records


def test_network_initialisation_follows_the_training_seed_not_the_global_rng() -> None:
    cfg = R.TimeSeriesConfig(d_model=16, layers=1, heads=2)
    torch.manual_seed(1)
    a = R.build(cfg, channels=3)[2].model.state_dict()
    state = torch.random.get_rng_state()
    torch.manual_seed(2)
    b = R.build(cfg, channels=3)[2].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(1)
    R.build(cfg, channels=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left as it was
    c = R.build(cfg.replace(fm=cfg.fm.replace(seed=1)), channels=3)[2].model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_gpu_profile_without_cuda_is_a_clear_error(tmp_path) -> None:
    from modaflow.benchmarks import timeseries as B

    with pytest.raises(ValueError, match="profile 'gpu' needs a CUDA device"):
        B.run("gpu", tmp_path / "gpu")
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        B.run("huge", tmp_path / "huge")


def test_real_references_score_test_windows_a_fresh_simulator_draw_and_the_chance_level() -> None:
    from dataclasses import replace

    from modaflow.benchmarks import timeseries as B
    from modaflow.benchmarks import timeseries_eval as E
    from modaflow.modalities.timeseries import metrics as M
    from modaflow.modalities.timeseries.ts2vec import TS2VecConfig, train_ts2vec

    p = replace(B.PROFILES["smoke"], repeats=2, disc_iterations=2, pred_iterations=2)
    for data, fresh_row in (("sines", True), ("stocks", False)):
        cfg = R.TimeSeriesConfig(data=data, n_samples=200)
        w, scaler = R.prepare(cfg)
        real = scaler.transform(w.train)[:40]
        enc = [train_ts2vec(torch.as_tensor(real, dtype=torch.float32), TS2VecConfig(iterations=2), k) for k in range(2)]
        res: dict = {"rows": {}, "baselines": {}}
        train = scaler.transform(w.train)
        E.real_data_rows(p, data, cfg, real, w, scaler, enc, 0, True, lambda x: M.dcr_ratio(train, x, cfg.stride), res)
        assert "real test windows (reference)" in res["rows"]
        test = scaler.transform(w.test)[:40]
        assert res["rows"]["real test windows (reference)"]["dcr_ratio"] == M.dcr_ratio(train, test, cfg.stride)
        label = "fresh simulator draw, 40 windows (reference)"
        assert (label in res["rows"]) == fresh_row == ("real_fresh_draw" in res["baselines"])
        if fresh_row:  # another simulator seed: new windows, scored like a generated row against the same 40
            fresh_w, _ = R.prepare(replace(cfg, data_seed=cfg.data_seed + E.FRESH_SEED))
            fresh = scaler.transform(fresh_w.train)[:40]
            assert fresh.shape == real.shape and not np.allclose(fresh, real)
            assert res["rows"][label]["correlational"]["mean"] == pytest.approx(  # the protocol's 40 / 2 draws, seeds 0, 1
                np.mean([M.correlational_score(real, fresh, subset=20, seed=k) for k in range(2)]))
            assert res["rows"][label]["context_fid"]["n"] == 2
            assert res["rows"][label]["dcr_ratio"] == res["baselines"]["real_fresh_draw"][f"{data}.dcr_ratio"] \
                == M.dcr_ratio(train, fresh, cfg.stride)
        # every set: the discriminative score of random guesses on the held-out 8 + 8 of the 40 + 40 windows
        chance = res["rows"]["a classifier guessing at random (discriminative chance level)"]
        assert chance["discriminative"] == res["baselines"]["discriminative_chance"][f"{data}.discriminative"]
        assert chance["discriminative"] == pytest.approx(M.discriminative_chance(40, 40))
        assert set(chance) == {"nfe", "discriminative"}


@pytest.mark.slow  # trains three tiny models and runs every metric and plot: ~10 s idle, more on a busy machine
def test_gpu_profile_code_path_runs_on_cpu_at_tiny_sizes(tmp_path) -> None:
    from dataclasses import replace

    from modaflow.benchmarks import timeseries as B

    tiny = replace(B.PROFILES["gpu"], datasets=("sines",), n_samples=300, d_model=16, layers=1, train_steps=6,
                   batch_size=32, eval_n=32, repeats=2, disc_iterations=4, pred_iterations=4, ts2vec_iterations=2,
                   curve_nfes=(2,), forecast_windows=2, forecast_samples=3, ddpm_steps=20, tsne=False, device="cpu",
                   threads=1, time_n=8, time_repeats=1)
    res = B.run_profile("gpu", tiny, tmp_path / "tiny", seed=0)
    assert res.metrics and {"linear_fm", "ddpm", "Diffusion-TS (published)"} <= set(res.baselines)
    assert res.timings["sines.timeflow@nfe10.speed_vs_ddpm_ratio"] > 0
    assert res.metrics["sines.timeflow@nfe10.discriminative"]["n"] == 2
    report = (tmp_path / "tiny" / "report.md").read_text()
    import re

    note = next(n for n in res.notes if n.startswith("sampler of each flow row"))
    for method, nfe in itertools.product(("timeflow", "timeflow_x1", "linear_fm"), (10, 100)):
        m = re.search(rf"sines {method}@{nfe}: (\w+), shift (\S+) \(validation context-FID ([^;]+);", note)
        scores = {tuple(k.split("/")): float(v) for k, v in (item.split(": ") for item in m[3].split(", "))}
        default = {"timeflow": "em", "timeflow_x1": "dpm2m", "linear_fm": "euler"}[method]
        assert set(scores) == {(s, a) for s in (default, "midpoint") for a in ("1", "3")}  # every candidate scored
        best = min(scores, key=scores.get)
        assert (m[1], float(m[2])) == (best[0], float(best[1]))  # the lowest validation score wins
        label = {"timeflow": "TimeFlow", "timeflow_x1": "TimeFlow x1-prediction", "linear_fm": "linear FM"}[method]
        assert f"| {label} ({nfe} NFE, {m[1]}, shift {float(m[2]):g}) | {nfe} |" in report
    assert set(res.curves["sines.context_fid_vs_nfe"]["series"]) == {
        "timeflow (em)", "timeflow (midpoint)", "timeflow_x1 (dpm2m)", "timeflow_x1 (midpoint)", "linear_fm (euler)",
        "linear_fm (midpoint)"}
    assert res.timings["sines.timeflow_x1@nfe10.speed_vs_ddpm_ratio"] > 0
    assert {"sines.forecast.crps", "sines.timeflow_x1.forecast.crps"} <= set(res.metrics)
    assert R.restore(tmp_path / "tiny" / "runs" / "sines-timeflow_x1").kind == "data"
    assert "| Diffusion-TS (published) | 500-1000 | 0.006 |" in report
    assert "| fresh simulator draw, 32 windows (reference) |" in report
    assert "| DCR ratio |" in report and res.metrics["sines.timeflow@nfe10.dcr_ratio"] > 0
    for plot in res.plots:
        assert (tmp_path / "tiny" / plot).stat().st_size > 0
    assert {"sines_embeddings.png", "sines_forecast_fan.png", "sines_context_fid_vs_nfe.png"} <= set(res.plots)


def test_training_schedule_of_the_recipe_and_the_benchmark_profiles() -> None:
    """The recipe trains with cosine decay and EMA 0.999 (measured at full size); quick and smoke keep a constant
    learning rate and EMA 0.995 (better at 1200 steps); every method of a profile gets the same schedule."""
    from modaflow.benchmarks import timeseries as B

    fm = R.TimeSeriesConfig().fm
    assert (fm.lr_decay, fm.ema_decay, fm.lr_final_ratio) == ("cosine", 0.999, 0.0)
    for profile, expected in (("full", ("cosine", 0.999)), ("gpu", ("cosine", 0.999)), ("quick", ("constant", 0.995)),
                              ("smoke", ("constant", 0.995))):
        for name in B.MODELS:
            got = B._config(B.PROFILES[profile], "sines", name, 0).fm
            assert (got.lr_decay, got.ema_decay, got.max_steps) == (*expected, B.PROFILES[profile].train_steps)


def test_a_rerun_into_the_same_folder_reuses_finished_datasets_and_only_under_the_same_settings(tmp_path, monkeypatch) -> None:
    """The benchmark keeps each finished dataset in the run folder (numbers as JSON, arrays as safetensors); a rerun
    reuses it (same numbers, tables and plots, no evaluation) unless the profile's sizes or the seed changed, or its
    files cannot be read."""
    import json
    from dataclasses import replace

    from modaflow.benchmarks import timeseries as B
    from modaflow.benchmarks import timeseries_store as S

    p = replace(B.PROFILES["smoke"], n_samples=200, eval_n=24, disc_iterations=3, pred_iterations=3, curve_nfes=(2,),
                forecast_windows=2, forecast_samples=2, ddpm_steps=10, time_n=8, train_steps=4)
    first = B.run_profile("smoke", p, tmp_path, seed=0)
    stored = tmp_path / S.STORE_DIR / "sines.json"
    meta = json.loads(stored.read_text())
    assert meta["key"] == json.loads(json.dumps(B.store_key(p, 0))) and meta["fakes"] == list(
        B.plotted({"TimeFlow 10": 0, "TimeFlow x1-prediction 10": 0, "linear FM 10": 0, "DDPM 10": 0}))
    report = (tmp_path / "report.md").read_text()

    class Evaluated(Exception):
        pass

    def evaluate(*args):
        raise Evaluated

    monkeypatch.setattr(B, "_dataset", evaluate)
    again = B.run_profile("smoke", replace(p, threads=2, tsne=True), tmp_path, seed=0)  # not part of the key
    assert again.metrics == first.metrics and again.baselines == first.baselines and again.curves == first.curves
    assert again.plots == first.plots and all((tmp_path / f).stat().st_size > 0 for f in again.plots)
    assert any(n.startswith("evaluated by an earlier run") and str(stored) in n for n in again.notes)
    new = (tmp_path / "report.md").read_text()
    assert new.split("## Tables per dataset")[1].split("## Metrics")[0] == \
        report.split("## Tables per dataset")[1].split("## Metrics")[0]
    with pytest.raises(Evaluated):  # other metric settings: evaluated again
        B.run_profile("smoke", replace(p, repeats=3), tmp_path, seed=0)
    with pytest.raises(Evaluated):  # another seed
        B.run_profile("smoke", p, tmp_path, seed=1)
    older = json.loads(stored.read_text())  # an evaluation by code before a column existed
    for row in older["rows"].values():
        row.pop("dcr_ratio", None)
    stored.write_text(json.dumps(older))
    with pytest.raises(Evaluated):
        B.run_profile("smoke", p, tmp_path, seed=0)
    stored.write_text(json.dumps(meta))
    B.run_profile("smoke", p, tmp_path, seed=0)  # the stored file as written: reused again
    stored.write_text("[1, 2]")  # JSON, but not the stored layout
    with pytest.raises(Evaluated):
        B.run_profile("smoke", p, tmp_path, seed=0)
    stored.write_text(json.dumps(meta))
    (tmp_path / S.STORE_DIR / "sines.safetensors").write_bytes(b"truncated")
    with pytest.raises(Evaluated):  # unreadable arrays: evaluated again, not an unexplained crash
        B.run_profile("smoke", p, tmp_path, seed=0)


def test_an_interrupted_dataset_continues_after_its_last_finished_stage_with_the_same_numbers(tmp_path, monkeypatch) -> None:
    """A dataset's evaluation is kept stage by stage: a run stopped in its second row, then in its curves, continues
    without training the encoders, choosing samplers, timing or scoring a finished row again, and ends with the numbers
    of a run that was never stopped (same models, seeds and threads); the stage files go once the dataset is stored."""
    import shutil
    from dataclasses import replace

    from modaflow.benchmarks import timeseries as B
    from modaflow.benchmarks import timeseries_eval as E
    from modaflow.benchmarks import timeseries_store as S

    p = replace(B.PROFILES["smoke"], n_samples=200, eval_n=24, disc_iterations=3, pred_iterations=3, curve_nfes=(2,),
                forecast_windows=2, forecast_samples=2, ddpm_steps=10, time_n=8, train_steps=4, repeats=2)
    whole = B.run_profile("smoke", p, tmp_path, seed=0)
    shutil.rmtree(tmp_path / S.STORE_DIR)  # the trained models stay in runs/
    partial_json = tmp_path / S.STORE_DIR / "sines.partial.json"

    class Stopped(Exception):
        pass

    calls = {"generation_metrics": 0, "draw_nfe": 0, "train_ts2vec": 0}

    def counted(name, fn, stop_at=None):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            if stop_at is not None and calls[name] == stop_at:
                raise Stopped
            return fn(*args, **kwargs)
        return wrapper

    real_metrics, real_draw, real_ts2vec, real_curves = B.generation_metrics, B.draw_nfe, B.train_ts2vec, E.curves_vs_nfe
    monkeypatch.setattr(B, "generation_metrics", counted("generation_metrics", real_metrics, stop_at=p.repeats + 1))
    with pytest.raises(Stopped):  # in the second row's scores
        B.run_profile("smoke", p, tmp_path, seed=0)
    kept = json.loads(partial_json.read_text())
    rows = [d for d in kept["done"] if d.startswith("row ")]
    assert kept["done"][0] == "encoders" and len(rows) == 1 and "speed" in kept["done"] and kept["encoders"] == p.repeats + 1
    assert not (tmp_path / S.STORE_DIR / "sines.json").exists()

    for name, fn in (("generation_metrics", real_metrics), ("draw_nfe", real_draw), ("train_ts2vec", real_ts2vec)):
        calls[name] = 0
        monkeypatch.setattr(B, name, counted(name, fn))
    calls["curves"] = 0
    monkeypatch.setattr(E, "curves_vs_nfe", counted("curves", real_curves, stop_at=1))
    with pytest.raises(Stopped):  # in the curves
        B.run_profile("smoke", p, tmp_path, seed=0)
    n_rows = len(B.ROWS)
    assert calls["train_ts2vec"] == 0 and calls["draw_nfe"] == n_rows - 1  # only the rows not yet scored
    assert calls["generation_metrics"] == (n_rows - 1) * p.repeats
    assert "references" in json.loads(partial_json.read_text())["done"]

    for name in calls:
        calls[name] = 0
    monkeypatch.setattr(E, "curves_vs_nfe", counted("curves", real_curves))
    resumed = B.run_profile("smoke", p, tmp_path, seed=0)
    assert calls == {"generation_metrics": 0, "draw_nfe": 0, "train_ts2vec": 0, "curves": 1}
    assert resumed.metrics == whole.metrics and resumed.baselines == whole.baselines and resumed.curves == whole.curves
    assert not partial_json.exists() and not partial_json.with_suffix(".safetensors").exists()
    assert (tmp_path / S.STORE_DIR / "sines.json").exists()


def test_stage_files_under_other_settings_or_unreadable_are_not_continued(tmp_path) -> None:
    import numpy as np

    from modaflow.benchmarks import timeseries_store as S

    key = {"seed": 0, "eval_n": 24}
    row = {"model": "timeflow", "discriminative": 0.1}
    state = S.Partial(done=["encoders", "row TimeFlow (10 NFE)"],
                      scalars={**{k: {} for k in S.PARTIAL_SCALARS}, "rows": {"TimeFlow (10 NFE)": row}},
                      draws={("timeflow", "em", 10, 1.0): np.arange(6.0).reshape(1, 3, 2)},
                      fakes={"TimeFlow 10": ("timeflow", "em", 10, 1.0)}, encoders=[{"w": np.ones((2, 2), np.float32)}])
    S.save_partial(tmp_path, "sines", key, state)
    back = S.load_partial(tmp_path, "sines", key, ("discriminative",))
    assert back.scalars["rows"] == {"TimeFlow (10 NFE)": row} and back.done == state.done and back.fakes == state.fakes and list(back.draws) == list(state.draws)
    np.testing.assert_array_equal(back.draws[("timeflow", "em", 10, 1.0)], state.draws[("timeflow", "em", 10, 1.0)])
    np.testing.assert_array_equal(back.encoders[0]["w"], np.ones((2, 2)))
    assert S.load_partial(tmp_path, "sines", {**key, "seed": 1}, ("discriminative",)) is None
    assert S.load_partial(tmp_path, "sines", key, ("discriminative", "dcr_ratio")) is None  # a column added since
    (tmp_path / S.STORE_DIR / "sines.partial.safetensors").write_bytes(b"truncated")
    assert S.load_partial(tmp_path, "sines", key, ("discriminative",)) is None
    S.clear_partial(tmp_path, "sines")
    assert not list((tmp_path / S.STORE_DIR).iterdir())


def test_conditional_sampling_shows_the_network_its_observed_entries_on_the_path() -> None:
    """TimeFlow's loss scores the unobserved entries only, so the velocity of the observed ones is untrained; the
    sampler used to feed the network the state's drifting observed entries (MuJoCo imputation MSE 2.6e-3 -> 4.3e-4
    once they sit on the path as in training: benchmarks/RESULTS.md)."""
    from modaflow.core.paths import LinearPath, StochasticInterpolant
    from modaflow.modalities.timeseries.sampling import condition, observed_on_path, run_solver

    torch.manual_seed(0)
    x0, y = torch.randn(3, 6, 2, dtype=torch.float64), torch.randn(3, 6, 2, dtype=torch.float64)
    m = (torch.rand(3, 6, 2) > 0.5).double()
    seen = []

    def still(x, t, cond):  # zero velocity: the state stays x0; record what the network is shown
        seen.append((x.clone(), t.clone()))
        return torch.zeros_like(x)

    run_solver(still, "timeflow", "velocity", LinearPath(), x0, 4, "euler", 1.0, 0.0, cond=condition(y, m))
    assert [float(t[0]) for _, t in seen] == [0.0, 0.25, 0.5, 0.75]
    for x, t in seen:  # observed: t y + (1 - t) x0 exactly; unobserved: the state
        tt = t[:, None, None]
        torch.testing.assert_close(x, m * (tt * y + (1 - tt) * x0) + (1 - m) * x0, rtol=0, atol=0)
    path = StochasticInterpolant(LinearPath(), 0.5, shape="sqrt")  # TimeFlow's: sigma(t) the total noise level
    t = torch.full((3,), 0.3, dtype=torch.float64)
    got = observed_on_path(torch.zeros_like(x0), t, condition(y, m), x0, path)
    sigma = float(np.sqrt(0.7 ** 2 + 0.25 * 0.3 * 0.7))
    torch.testing.assert_close(got, m * (0.3 * y + sigma * x0), rtol=1e-12, atol=1e-12)


def test_speed_rows_below_ten_nfe_are_chosen_scored_and_timed_like_every_row(tmp_path) -> None:
    from dataclasses import replace

    import modaflow.benchmarks.timeseries as B

    p = replace(B.PROFILES["smoke"], speed_nfes=(4,))
    assert B.rows_of(p) == B.ROWS + (("TimeFlow x1-prediction", "timeflow_x1", 4),)
    assert B.rows_of(B.PROFILES["smoke"]) == B.ROWS and B.PROFILES["full"].speed_nfes == (6, 8)
    res = B.run_profile("smoke", p, tmp_path, seed=0)
    for m in ("discriminative", "context_fid", "dcr_ratio"):
        assert f"sines.timeflow_x1@nfe4.{m}" in res.metrics
    ratio = res.timings["sines.timeflow_x1@nfe4.speed_vs_ddpm_ratio"]
    assert ratio == res.timings["sines.timeflow_x1@nfe4.samples_per_s"] / res.timings["sines.ddpm@nfe100.samples_per_s"]
    assert any(note.count("sines timeflow_x1@4: ") == 1 for note in res.notes)  # its sampler chosen on validation
    assert "| TimeFlow x1-prediction (4 NFE, " in (tmp_path / "report.md").read_text()
