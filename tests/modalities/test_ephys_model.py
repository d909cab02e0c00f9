"""LangevinFlow and its training: the potential's gradient is exact, the latent dynamics
are the core's integrator, the KL is the closed form, coordinated dropout masks what it
should; the CLI trains, samples, evaluates, finetunes and resumes; the smoke benchmark
reports metrics and baselines."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from modaflow.benchmarks.cli import main
from modaflow.core.config import ConfigError
from modaflow.core.langevin import rollout
from modaflow.modalities.ephys.baselines import LFADS, LFADSConfig
from modaflow.modalities.ephys.models import CoupledOscillatorPotential, LangevinFlow, LangevinFlowConfig, gaussian_kl
from modaflow.modalities.ephys.training import coordinated_dropout, observation_nll, ramp


def test_potential_gradient_is_the_exact_gradient_of_the_energy() -> None:
    pot = CoupledOscillatorPotential(3, 5).double()
    with torch.no_grad():
        pot.log_omega2.copy_(torch.tensor([-0.5, 0.1, 0.7]))
        pot.log_kappa.copy_(torch.tensor([0.3, -1.0, 0.2]))
        pot.tap_logits.copy_(torch.tensor([0.4, -0.2]))
    z = torch.randn(4, 15, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(pot.energy(z).sum(), z)
    torch.testing.assert_close(pot.grad(z), auto, rtol=1e-12, atol=1e-12)
    assert (pot.energy(z) > 0).all()  # omega^2 > 0 and I - N is positive semi-definite
    k = pot.kernel()
    assert k.sum().item() == pytest.approx(1.0) and k[0] == k[2]


def test_dynamics_are_the_core_integrator() -> None:
    cfg = LangevinFlowConfig(latent_channels=2, latent_length=3, dt=0.05)
    model = LangevinFlow(cfg, c_in=4, c_out=6, likelihood="poisson").double()
    z0, v0 = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    noise = torch.randn(9, 3, 6, dtype=torch.float64)
    z, v = model.dynamics(z0, v0, noise)
    ref = rollout(z0, v0, model.potential.grad, 0.05, 9, gamma=model.log_gamma.exp(), temperature=model.log_temperature.exp(),
                  scheme="symplectic_euler", noise=noise)
    torch.testing.assert_close(z, ref.q.transpose(0, 1))
    torch.testing.assert_close(v, ref.p.transpose(0, 1))


def test_forward_shapes_and_kl_closed_form() -> None:
    torch.manual_seed(0)
    x = torch.poisson(torch.ones(5, 12, 4))
    for likelihood, width in (("poisson", 7), ("gaussian", 14)):
        for model in (LangevinFlow(LangevinFlowConfig(), 4, 7, likelihood), LFADS(LFADSConfig(), 4, 7, likelihood)):
            out = model(x)
            assert out.params.shape == (5, 12, width) and out.kl.shape == (5,) and (out.kl >= 0).all()
            det = model.eval()(x, sample=False)
            torch.testing.assert_close(det.params, model(x, sample=False).params)  # no noise: deterministic
    mu, logvar = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(-1))


def test_coordinated_dropout_scores_only_the_dropped_held_in_entries() -> None:
    x = torch.rand(200, 10, 5) + 1.0
    inp, scored = coordinated_dropout(x, n_heldin=3, t_obs=8, rate=0.3, generator=torch.Generator().manual_seed(0))
    assert inp.shape == (200, 10, 3) and (inp[:, 8:] == 0).all()
    dropped = inp[:, :8] == 0
    assert torch.equal(scored[:, :8, :3], dropped)  # held in: scored exactly where dropped
    assert scored[:, :, 3:].all() and scored[:, 8:].all()  # held out and forward bins: always
    torch.testing.assert_close(inp[:, :8][~dropped], x[:, :8, :3][~dropped] / 0.7)
    assert abs(dropped.float().mean().item() - 0.3) < 0.02
    plain, all_scored = coordinated_dropout(x, 3, 8, 0.0)
    assert torch.equal(plain[:, :8], x[:, :8, :3]) and all_scored.all()


def test_observation_nll_and_ramps() -> None:
    x, l = torch.tensor([[[2.0]]]), torch.tensor([[[0.3]]])
    assert observation_nll(l, x, "poisson").item() == pytest.approx(math.exp(0.3) - 0.6)
    mu_lv = torch.tensor([[[0.5, math.log(2.0)]]])
    assert observation_nll(mu_lv, x, "gaussian").item() == pytest.approx(0.5 * (math.log(2.0) + 1.5**2 / 2.0))
    assert [ramp(s, 10, 2.0) for s in (0, 5, 10, 20)] == [0.0, 1.0, 2.0, 2.0] and ramp(0, 0, 2.0) == 2.0


def test_fit_keeps_the_weights_with_the_lowest_validation_loss(tmp_path: Path) -> None:
    from modaflow.core.training import read_checkpoint
    from modaflow.modalities.ephys.lorenz import LorenzConfig, make_lorenz
    from modaflow.modalities.ephys.training import SeqVAEModule, VAETrainConfig, fit_vae

    d = make_lorenz(LorenzConfig(n_conditions=5, trials_per_condition=4, n_neurons=10, bins=10, fp_bins=2), 0)
    torch.manual_seed(0)
    net = LFADS(LFADSConfig(lfads_encoder_hidden=8, generator_hidden=8, factors=3), d.n_heldin, d.n_channels, "poisson")
    cfg = VAETrainConfig(max_steps=8, batch_size=8, val_every=2, val_fraction=0.2, lr=0.05, log_every=2)
    module = SeqVAEModule(net, cfg, d.n_heldin, d.t_obs, "poisson")
    res = fit_vae(module, d, tmp_path, progress=False)
    extra = read_checkpoint(tmp_path / "checkpoints" / "last.safetensors").extra
    losses = [v for _, v in extra["val_history"]]
    assert [s for s, _ in extra["val_history"]] == [2, 4, 6, 8, 8] and extra["best_val_loss"] == min(losses)
    assert res["best_step"] == extra["best_step"]
    assert module.validation_loss(d.x[16:]) == pytest.approx(min(losses), rel=1e-6)  # the saved weights are the best


def _cli(*args: str) -> int:
    return main(list(args))


def test_cli_train_sample_evaluate_finetune_and_resume(tmp_path: Path, capsys) -> None:
    small = ["--n-conditions", "4", "--trials-per-condition", "4", "--n-neurons", "12", "--bins", "12", "--fp-bins", "4",
             "--encoder-hidden", "8", "--d-model", "8", "--heads", "2", "--accelerator", "cpu", "--log-every", "2"]
    run = tmp_path / "run"
    assert _cli("train", "ephys", "--data", "lorenz", "--out", str(run), "--max-steps", "4", *small) == 0
    ckpt = json.loads((run / "checkpoints" / "last.json").read_text())
    assert ckpt["step"] == 4 and ckpt["extra"]["n_channels"] == 12
    assert _cli("sample", "ephys", "--ckpt", str(run), "--out", str(tmp_path / "s.npz"), "--n", "3") == 0
    s = np.load(tmp_path / "s.npz")
    assert s["z"].shape == (3, 16, 16) and s["rates"].shape == (3, 16, 12) and s["true_rates"].shape == (3, 16, 12)
    assert (s["rates"] > 0).all()
    # --device cpu is where auto runs on a machine without a GPU: the same draws
    assert _cli("sample", "ephys", "--ckpt", str(run), "--out", str(tmp_path / "c.npz"), "--n", "3", "--device", "cpu") == 0
    if not torch.cuda.is_available():
        np.testing.assert_array_equal(np.load(tmp_path / "c.npz")["rates"], s["rates"])
    capsys.readouterr()
    assert _cli("evaluate", "ephys", "--ckpt", str(run), "--steps", "2") == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"co_bps", "fp_bps", "rate_r2", "psth_r2"} <= set(metrics) and metrics["n_trials"] == 3
    if not torch.cuda.is_available():
        assert _cli("evaluate", "ephys", "--ckpt", str(run), "--device", "cuda") == 2
        assert "device: cuda was asked for, but torch sees no GPU" in capsys.readouterr().err
    # resume: the same folder continues to 6 steps
    assert _cli("train", "ephys", "--data", "lorenz", "--out", str(run), "--max-steps", "6", *small) == 0
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == 6
    ft = tmp_path / "ft"
    assert _cli("finetune", "ephys", "--ckpt", str(run), "--data", "lorenz", "--out", str(ft), "--max-steps", "2",
                "--data-seed", "1", "--accelerator", "cpu") == 0
    assert json.loads((ft / "checkpoints" / "last.json").read_text())["step"] == 2
    # a dataset with other channels does not fit the checkpoint
    assert _cli("finetune", "ephys", "--ckpt", str(run), "--data", "nitime", "--out", str(tmp_path / "bad"),
                "--accelerator", "cpu") == 2
    assert "trained with n_channels = 12" in capsys.readouterr().err
    assert _cli("train", "ephys", "--data", "mnist", "--out", str(tmp_path / "x")) == 2
    assert "unknown ephys data 'mnist'" in capsys.readouterr().err


@pytest.mark.gpu
def test_posterior_mean_rates_on_the_gpu_match_the_cpu(tmp_path: Path) -> None:
    """With eval_samples = 0 evaluate scores the noise-free posterior mean, which is deterministic: cuda and
    cpu agree to float32 rounding."""
    from modaflow.modalities.ephys.recipe import EphysConfig, EphysOptions, evaluate, train

    cfg = EphysConfig.from_dict({"data": "lorenz", "eval_samples": 0, "train": {"max_steps": 3},
                                 "options": {"n_conditions": 4, "trials_per_condition": 4, "n_neurons": 12, "bins": 12,
                                             "fp_bins": 4}})
    train(cfg, None, tmp_path, progress=False)
    cpu = evaluate(tmp_path, None, 8, None, None, 0, EphysOptions(device="cpu"))
    gpu = evaluate(tmp_path, None, 8, None, None, 0, EphysOptions(device="cuda"))
    for k in ("co_bps", "rate_r2"):
        assert gpu[k] == pytest.approx(cpu[k], rel=1e-4, abs=1e-5)


def test_eeg_training_through_the_recipe(tmp_path: Path) -> None:
    from modaflow.modalities.ephys.recipe import EphysConfig, evaluate, train

    cfg = EphysConfig.from_dict({"data": "spkit", "model": "lfads", "train": {"max_steps": 2, "batch_size": 16},
                                 "lfads": {"lfads_encoder_hidden": 8, "generator_hidden": 8, "factors": 4}})
    res = train(cfg, None, tmp_path, progress=False)
    assert res["steps"] == 2 and math.isfinite(res["final_loss"])
    m = evaluate(tmp_path, None, 5, 1, None, 0)
    assert {"heldout_r2", "heldout_gauss_nll", "forecast_mse"} <= set(m) and m["n_trials"] == 5
    with pytest.raises(ConfigError, match="train.cd_rate|cd_rate"):
        EphysConfig.from_dict({"train": {"cd_rate": 1.0}})


def test_evaluate_on_an_nwb_file_reports_velocity_r2(tmp_path: Path, capsys) -> None:
    from modaflow.modalities.ephys.nwb import write_nwb

    rng = np.random.default_rng(0)
    starts = np.arange(10) * 1.0
    times = [np.sort(rng.uniform(0, 10.0, 150)) for _ in range(6)]
    ts = np.linspace(0, 10, 1001)
    path = write_nwb(tmp_path / "s.nwb", times, [(a, a + 0.9) for a in starts], (ts, np.stack([np.sin(ts), np.cos(ts)], 1)))
    run = tmp_path / "run"
    opts = ["--bins", "30", "--fp-bins", "5", "--outside-trials", "drop", "--encoder-hidden", "8", "--d-model", "8",
            "--heads", "2", "--accelerator", "cpu"]
    assert _cli("train", "ephys", "--data", f"nwb:{path}", "--out", str(run), "--max-steps", "2", *opts) == 0
    capsys.readouterr()
    assert _cli("evaluate", "ephys", "--ckpt", str(run), "--steps", "1") == 0
    m = json.loads(capsys.readouterr().out)
    assert {"co_bps", "fp_bps", "vel_r2"} <= set(m) and "rate_r2" not in m and m["n_trials"] == 2


def test_smoke_benchmark_reports_metrics_baselines_and_plots(tmp_path: Path) -> None:
    from modaflow.benchmarks.ephys import run

    res = run("smoke", tmp_path, seed=0)
    assert {"lorenz.co_bps", "lorenz.rate_r2", "eeg.heldout_r2"} <= set(res.metrics)
    assert {"lfads", "smoothing_glm", "true_rates", "smoothing_ridge"} <= set(res.baselines)
    assert res.baselines["true_rates"]["lorenz.rate_r2"] == 1.0
    assert all((tmp_path / p).is_file() for p in res.plots) and len(res.plots) == 5
    assert (tmp_path / "results.json").is_file() and (tmp_path / "report.md").is_file()
    with pytest.raises(ValueError, match="unknown profile"):
        run("huge", tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            run("gpu", tmp_path)
