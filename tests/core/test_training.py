"""Flow-matching training: exact loss pieces, EMA, a Gaussian run checked against the exact
velocity, resume = uninterrupted run, and the NaN guard."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from modaflow.core.config import ConfigError
from modaflow.core.gaussian import GaussianOracle
from modaflow.core.nn import ResidualMLP, ResidualMLPConfig
from modaflow.core.parametrizations import PARAMETRIZATIONS, convert, to_data_noise
from modaflow.core.paths import DiscreteVPPath, LinearPath, VPCosinePath, bridge
from modaflow.core.time_samplers import LogitNormalTime, ModeTime, UniformTime
from modaflow.core.training import (
    EMA,
    FlowMatchingConfig,
    FlowMatchingModule,
    NonFiniteLossError,
    TrainerArgs,
    fit,
    load_checkpoint,
    make_loss_weight,
    make_path,
    make_time_sampler,
)

MEAN = torch.tensor([1.0, -0.5])
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]])
CPU = TrainerArgs(accelerator="cpu", devices=1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine spinning
    OpenMP threads slow them down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp(num_classes: int = 0, seed: int = 0) -> ResidualMLP:
    torch.manual_seed(seed)
    return ResidualMLP(ResidualMLPConfig(dim=2, hidden=64, depth=2, time_embed_dim=32, num_classes=num_classes))


def _gaussian_loader(n: int = 8192, batch: int = 256, shuffle: bool = True) -> DataLoader:
    data = GaussianOracle(MEAN, COV, LinearPath()).sample(1.0, n, torch.Generator().manual_seed(1)).float()
    return DataLoader(TensorDataset(data), batch_size=batch, shuffle=shuffle, generator=torch.Generator().manual_seed(2))


def _velocity_error(field, path, t_lo: float = 0.05, t_hi: float = 0.95, n: int = 4000) -> float:
    """Relative L2 error of ``field`` against the exact velocity at exact draws of x_t."""
    oracle = GaussianOracle(MEAN, COV, path)
    g = torch.Generator().manual_seed(5)
    t = t_lo + (t_hi - t_lo) * torch.rand(n, generator=g, dtype=torch.float64)
    x1 = oracle.sample(1.0, n, g)
    x_t = path.sample(torch.randn(n, 2, generator=g, dtype=torch.float64), x1, t).x_t
    with torch.no_grad():
        v = field(x_t.float(), t.float()).double()
    exact = oracle.velocity(x_t, t)
    return float((v - exact).norm() / exact.norm())


# --- config and registries -------------------------------------------------------------


def test_registries_build_the_named_objects():
    assert isinstance(make_path(FlowMatchingConfig(path="vp_cosine")), VPCosinePath)
    ddpm = make_path(FlowMatchingConfig(path="ddpm_cosine", ddpm_steps=50))
    assert isinstance(ddpm, DiscreteVPPath) and ddpm.num_steps == 50
    assert make_time_sampler(FlowMatchingConfig(time_shift=3.0)) == UniformTime(shift=3.0)
    cfg = FlowMatchingConfig(time_sampler="logit_normal", logit_normal_m=0.5, logit_normal_s=2.0)
    assert make_time_sampler(cfg) == LogitNormalTime(m=0.5, s=2.0)
    assert make_time_sampler(FlowMatchingConfig(time_sampler="mode", mode_scale=0.5)) == ModeTime(scale=0.5)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="FlowMatchingConfig.t_max"):
        FlowMatchingConfig(parametrization="score")  # its target is infinite at t = 1
    with pytest.raises(ConfigError, match="FlowMatchingConfig.path"):
        FlowMatchingConfig.from_dict({"path": "ddim"})
    with pytest.raises(ConfigError, match="FlowMatchingConfig.cond_dropout"):
        FlowMatchingConfig(cond_dropout=1.0)
    with pytest.raises(ConfigError, match="TrainerArgs.devices"):
        TrainerArgs(devices=0)
    assert TrainerArgs(strategy="ddp").trainer_kwargs()["strategy"] == "ddp"  # sharded ones: tests/core/test_fsdp.py
    assert TrainerArgs(devices="auto").trainer_kwargs()["devices"] == "auto"


@pytest.mark.parametrize("path", [LinearPath(), VPCosinePath(), DiscreteVPPath.linear(100)], ids=repr)
@pytest.mark.parametrize("kind", PARAMETRIZATIONS)
def test_min_snr_weight_is_the_same_data_loss_for_every_target(path, kind):
    """w_k(t) |pred_k - target_k|^2 == min(SNR, gamma) |x1_hat - x1|^2 for the implied data
    prediction x1_hat (Hang et al. 2023, arXiv 2303.09556), exactly, in float64."""
    cfg = FlowMatchingConfig(parametrization=kind, loss_weighting="min_snr", min_snr_gamma=2.0, t_min=0.05, t_max=0.95)
    weight = make_loss_weight(cfg, path)
    g = torch.Generator().manual_seed(0)
    t = 0.05 + 0.9 * torch.rand(64, generator=g, dtype=torch.float64)
    x1, x0 = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(64, 3, generator=g, dtype=torch.float64)
    x_t = path.sample(x0, x1, t).x_t
    pred = torch.randn(64, 3, generator=g, dtype=torch.float64)
    truth = convert(x1, "data", kind, x_t, t, path)
    x1_hat, _ = to_data_noise(pred, kind, x_t, t, path)
    snr = (path.alpha(t) / path.sigma(t)) ** 2
    lhs = weight(t) * (pred - truth).pow(2).sum(1)
    rhs = torch.clamp(snr, max=2.0) * (x1_hat - x1).pow(2).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-12)
    assert make_loss_weight(FlowMatchingConfig(), path) is None


# --- the loss of one batch -------------------------------------------------------------


def test_batch_forms_and_reproducible_noise():
    module = FlowMatchingModule(_mlp(), None, FlowMatchingConfig(seed=3))
    x1 = torch.randn(16, 2)
    loss = module.compute_loss(x1, step=4)
    assert torch.equal(module.compute_loss((x1,), step=4), loss)
    assert torch.equal(module.compute_loss({"x1": x1}, step=4), loss)
    assert not torch.equal(module.compute_loss(x1, step=5), loss)  # new step, new noise
    assert not torch.equal(FlowMatchingModule(_mlp(), None, FlowMatchingConfig(seed=4)).compute_loss(x1, step=4), loss)
    with pytest.raises(ValueError, match="'x1'"):
        module.compute_loss({"x1": x1, "mask": x1}, step=0)
    with pytest.raises(TypeError, match="batch must be"):
        module.compute_loss("x1", step=0)


def test_target_is_the_conditional_velocity():
    """With a network that returns x1 - x0 exactly (it sees them through the batch's x0) the
    velocity loss on the linear path is zero; a bridge needs x0 in the batch."""

    class Oracle(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return cond  # the test passes the conditional velocity as cond

    module = FlowMatchingModule(Oracle(), bridge(), FlowMatchingConfig())
    x0, x1 = torch.randn(8, 2), torch.randn(8, 2) + 3
    assert module.compute_loss({"x1": x1, "x0": x0, "cond": x1 - x0}, step=0).item() == 0.0
    with pytest.raises(ValueError, match="data source"):
        module.compute_loss(x1, step=0)
    with pytest.raises(ValueError, match="score"):
        FlowMatchingModule(Oracle(), bridge(), FlowMatchingConfig(parametrization="score", t_max=0.99))


def test_cond_dropout_uses_the_null_class():
    cfg = FlowMatchingConfig(cond_dropout=0.3, null_class=5)
    module = FlowMatchingModule(_mlp(num_classes=5), None, cfg)
    cond = torch.randint(0, 5, (20000,))
    dropped = module.drop_cond(cond, torch.Generator().manual_seed(0))
    is_null = dropped == 5
    assert torch.equal(dropped[~is_null], cond[~is_null])
    assert abs(is_null.float().mean().item() - 0.3) < 0.02  # 4.6 standard deviations
    floats = module.drop_cond(torch.ones(1000, 3), torch.Generator().manual_seed(0))
    assert set(floats.sum(1).tolist()) == {0.0, 3.0}
    no_null = FlowMatchingModule(_mlp(num_classes=5), None, FlowMatchingConfig(cond_dropout=0.3))
    with pytest.raises(ValueError, match="null_class"):
        no_null.drop_cond(cond, torch.Generator())


# --- EMA -------------------------------------------------------------------------------


def test_ema_update_swap_and_state():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9, warmup=False)
    start = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], 0.9 * start["weight"] + 0.1 * model.weight)
    trained = model.weight.detach().clone()
    with ema.swapped(model):
        assert torch.equal(model.weight, ema.shadow["weight"])
    assert torch.equal(model.weight, trained)
    other = EMA(torch.nn.Linear(2, 2), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    assert EMA(model, decay=0.999).current_decay() == pytest.approx(0.1)  # warm-up: (1 + 0) / (10 + 0)


# --- training runs ---------------------------------------------------------------------


def test_gaussian_run_learns_the_exact_velocity(tmp_path):
    """600 steps of CFM on 2-D Gaussian data: the EMA velocity is within 15 % (relative L2,
    t in [0.05, 0.95]) of the closed-form marginal velocity (about 5 % in practice)."""
    cfg = FlowMatchingConfig(lr=3e-3, ema_decay=0.99, log_every=50, ckpt_every=1000, max_steps=600)
    module = FlowMatchingModule(_mlp(), None, cfg)
    result = fit(module, _gaussian_loader(), tmp_path, CPU, progress=False)
    assert result.step == 600 and result.start_step == 0 and len(result.history) == 12
    error = _velocity_error(module.velocity_field(use_ema=True), LinearPath())
    assert error < 0.15, error
    assert (tmp_path / "config.json").is_file() and (tmp_path / "metrics.csv").read_text().startswith("step,loss\n50,")
    assert load_checkpoint(result.checkpoint).step == 600


@pytest.mark.parametrize("kind", ["data", "noise"])
def test_data_and_noise_parametrizations_train(tmp_path, kind):
    """The loss on a held-out batch with fixed noise drops well below its value at
    initialisation, and the converted velocity is roughly right mid-path."""
    cfg = FlowMatchingConfig(parametrization=kind, lr=3e-3, ema_decay=0.9, log_every=10, ckpt_every=1000, max_steps=200)
    module = FlowMatchingModule(_mlp(), None, cfg)
    held_out = GaussianOracle(MEAN, COV, LinearPath()).sample(1.0, 4096, torch.Generator().manual_seed(9)).float()
    with torch.no_grad():
        before = module.compute_loss(held_out, step=10**6)
    fit(module, _gaussian_loader(), tmp_path, CPU, progress=False)
    with torch.no_grad():
        after = module.compute_loss(held_out, step=10**6)
    assert after < 0.6 * before, (before, after)
    assert _velocity_error(module.velocity_field(use_ema=False), LinearPath(), 0.3, 0.7) < 0.4


def _resume_run(out, steps, resume, lr_decay="constant"):
    cfg = FlowMatchingConfig(lr=3e-3, ema_decay=0.9, warmup_steps=10, log_every=5, ckpt_every=10, seed=7, max_steps=40,
                             lr_decay=lr_decay)
    module = FlowMatchingModule(_mlp(seed=0), None, cfg)
    loader = _gaussian_loader(n=64 * 5, batch=64, shuffle=False)  # 5 batches an epoch, fixed order
    return module, fit(module, loader, out, CPU, max_steps=steps, resume=resume, progress=False)


@pytest.mark.parametrize("lr_decay", ["constant", "cosine"])
def test_resume_equals_uninterrupted_run_bitwise(tmp_path, lr_decay):
    """20 steps, then 20 more from the checkpoint == 40 steps in one go, bit for bit: the
    noise of step k is a function of (seed, rank, k), weights, EMA, AdamW state and step are
    restored, warm-up and the cosine decay follow the step (the decay ends at cfg.max_steps,
    not where a run stops), and 20 steps are whole epochs of the unshuffled loader
    (with shuffling the data order restarts on resume, so runs agree only statistically)."""
    full, full_result = _resume_run(tmp_path / "full", 40, resume=False, lr_decay=lr_decay)
    _resume_run(tmp_path / "split", 20, resume=False, lr_decay=lr_decay)
    resumed, result = _resume_run(tmp_path / "split", 40, resume=True, lr_decay=lr_decay)
    assert result.start_step == 20 and result.step == 40
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert all(torch.equal(full.ema.shadow[k], resumed.ema.shadow[k]) for k in full.ema.shadow)
    assert result.history == full_result.history and [s for s, _ in result.history] == list(range(5, 41, 5))
    again = fit(resumed, _gaussian_loader(), tmp_path / "split", CPU, max_steps=40, progress=False)
    assert again.start_step == again.step == 40  # nothing left to do
    short = fit(FlowMatchingModule(_mlp(seed=0), None, resumed.cfg), _gaussian_loader(), tmp_path / "short", CPU,
                max_steps=7, progress=False)  # log_every 5: steps 5 and the last one, 7, so a short run has a loss
    assert [s for s, _ in short.history] == [5, 7]


def test_learning_rate_warms_up_then_stays_or_follows_the_cosine():
    """Closed forms: warm-up (k + 1) / W * lr; cosine eq. 5 of Loshchilov & Hutter with T_cur = k - W and
    T_i = max_steps - 1 - W, so the last step runs at exactly lr * lr_final_ratio; later steps stay there."""
    import math

    base = FlowMatchingConfig(lr=2e-3, warmup_steps=4, max_steps=24)
    const = FlowMatchingModule(_mlp(), None, base)
    assert [const.learning_rate(k) for k in range(4)] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3], rel=1e-12)
    assert {const.learning_rate(k) for k in range(4, 40)} == {2e-3}
    cos = FlowMatchingModule(_mlp(), None, base.replace(lr_decay="cosine", lr_final_ratio=0.1))
    assert [cos.learning_rate(k) for k in range(4)] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3], rel=1e-12)
    for k in range(4, 24):
        expected = 2e-4 + (2e-3 - 2e-4) * (1 + math.cos(math.pi * (k - 4) / 19)) / 2
        assert cos.learning_rate(k) == pytest.approx(expected, rel=1e-12)
    assert cos.learning_rate(4) == pytest.approx(2e-3) and cos.learning_rate(13.5) == pytest.approx(1.1e-3)
    assert cos.learning_rate(23) == cos.learning_rate(100) == pytest.approx(2e-4, rel=1e-12)
    lrs = [cos.learning_rate(k) for k in range(4, 24)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # strictly decreasing after the warm-up
    no_warmup = FlowMatchingModule(_mlp(), None, FlowMatchingConfig(lr=1.0, max_steps=3, lr_decay="cosine"))
    assert [no_warmup.learning_rate(k) for k in range(3)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    with pytest.raises(ConfigError, match="lr_final_ratio"):
        FlowMatchingConfig(lr_final_ratio=1.5)


class _NaNData(torch.utils.data.Dataset):
    """Four batches of 8; the one at index ``bad`` is all NaN."""

    def __init__(self, bad: int) -> None:
        self.x = torch.randn(32, 2)
        self.x[8 * bad : 8 * bad + 8] = float("nan")

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def test_sigterm_checkpoints_the_steps_done_and_exits_143(tmp_path):
    """A SIGTERM at step 3 (a scheduler's preemption): the checkpoint holds step 3, not the step-2 one, the exit
    status is 143, not Lightning's 0, and rerunning resumes to the end."""
    import os
    import signal

    from modaflow.core.training import TrainingInterrupted

    cfg = FlowMatchingConfig(ckpt_every=2, log_every=1, max_steps=6)
    module = FlowMatchingModule(_mlp(), None, cfg)
    step = module.training_step

    def kill_at_3(batch, batch_idx):
        out = step(batch, batch_idx)
        if module.steps_done == 2:  # the third step: steps_done counts the finished ones
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    module.training_step = kill_at_3
    with pytest.raises(TrainingInterrupted) as info:
        fit(module, _gaussian_loader(), tmp_path, CPU, progress=False)
    assert info.value.code == 143 and info.value.step == 3
    assert load_checkpoint(tmp_path / "checkpoints" / "last.safetensors").step == 3
    again = fit(FlowMatchingModule(_mlp(), None, cfg), _gaussian_loader(), tmp_path, CPU, progress=False)
    assert again.start_step == 3 and again.step == 6


@pytest.mark.parametrize("check_every", [1, 4])
def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path, check_every):
    """Batch 3 (step 3, 0-based) is NaN. Checked every step it raises at once; checked every
    4 steps it is caught before the step-4 checkpoint would be written. Either way the
    step-2 checkpoint stays and loads."""
    cfg = FlowMatchingConfig(ckpt_every=2, log_every=1, nan_check_every=check_every)
    module = FlowMatchingModule(_mlp(), None, cfg)
    loader = DataLoader(_NaNData(bad=3), batch_size=8, shuffle=False)
    with pytest.raises(NonFiniteLossError, match=r"nan \(not finite\) at step 3.*last good checkpoint .*last.safetensors \(step 2\) is intact"):
        fit(module, loader, tmp_path, CPU, max_steps=8, progress=False)
    fresh = _mlp(seed=1)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors", fresh)
    assert ckpt.step == 2 and all(torch.isfinite(p).all() for p in fresh.parameters())
