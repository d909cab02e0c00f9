"""MRI targets, networks and samplers: MedForj's inversion formulas in float64, the
DataPredictor against the core conversions, DDIM from an oracle, DDIM = Euler on the linear
path (the distillation teacher), the MONAI UNet wrappers and the GPU options on CPU."""

import pytest
import torch

pytest.importorskip("monai")

from modaflow.core.discrete import ddpm_grid, solve_ddim  # noqa: E402
from modaflow.core.ode import solve_ode  # noqa: E402
from modaflow.core.parametrizations import convert  # noqa: E402
from modaflow.core.paths import DiscreteVPPath  # noqa: E402
from modaflow.core.tensors import expand_t  # noqa: E402
from modaflow.modalities.mri import targets as TG  # noqa: E402
from modaflow.modalities.mri.distill import LinearPathStudent, LinearPathTeacher, _student, _two_time  # noqa: E402
from modaflow.modalities.mri.gpu import VARIANTS, time_steps  # noqa: E402
from modaflow.modalities.mri.models import TwoTimeUNet3D, UNet3D, UNetConfig, apply_gpu_options  # noqa: E402

DDPM = DiscreteVPPath.linear(1000)


def _draw(path, gen, B=5):
    x1 = torch.randn(B, 1, 3, 4, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(B, 1, 3, 4, 2, generator=gen, dtype=torch.float64)
    k = torch.tensor([1, 10, 500, 999, 1000])
    t = (1.0 - k.double() / 1000) if isinstance(path, DiscreteVPPath) else torch.rand(B, generator=gen, dtype=torch.float64)
    a, s = expand_t(path.alpha(t), x1), expand_t(path.sigma(t), x1)
    return x1, eps, t, a, s, a * x1 + s * eps


@pytest.mark.parametrize("target", TG.TARGETS)
def test_medforj_inversions_are_exact_in_float64(target, gen) -> None:
    path = TG.make_path(target)
    x1, eps, t, a, s, x_t = _draw(path, gen)
    y = TG.medforj_target(target, x1, eps, a, s)
    x1_hat, eps_hat = TG.medforj_to_data_noise(target, y, x_t, a, s)
    torch.testing.assert_close(x1_hat, x1, atol=1e-10, rtol=0)
    torch.testing.assert_close(eps_hat, eps, atol=1e-10, rtol=0)


def test_targets_match_the_published_formulas(gen) -> None:
    x1, eps, t, a, s, x_t = _draw(DDPM, gen)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64), 0)
    torch.testing.assert_close(a[:, 0, 0, 0, 0] ** 2, abar[torch.tensor([0, 9, 499, 998, 999])])
    torch.testing.assert_close(TG.medforj_target("velocity", x1, eps, a, s), abar.new_tensor(1) * (a * eps - s * x1))
    torch.testing.assert_close(TG.medforj_target("flow", x1, eps, a, s), eps - x1)
    with pytest.raises(ValueError, match="target must be one of"):
        TG.medforj_target("score", x1, eps, a, s)


@pytest.mark.parametrize("target", TG.TARGETS)
def test_data_predictor_agrees_with_the_core_conversion(target, gen) -> None:
    path = TG.make_path(target)
    x1, eps, t, a, s, x_t = _draw(path, gen)
    oracle = TG.medforj_target(target, x1, eps, a, s)
    wrapped = TG.DataPredictor(lambda x, tt: oracle, target, path)  # a "network" returning the exact target
    out = wrapped(x_t, t)
    kind = TG.core_kind(target)
    expected = {"data": x1, "noise": eps, "velocity": x1 - eps}[kind]
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
    if kind != "data":  # the core turns it into the data estimate exactly too
        torch.testing.assert_close(convert(out, kind, "data", x_t, t, path), x1, atol=1e-9, rtol=0)


def test_ddim_from_an_oracle_lands_on_the_data_point(gen) -> None:
    x_star = torch.randn(1, 1, 4, 4, 4, generator=gen, dtype=torch.float64)
    for target in ("sample", "velocity", "flow"):
        path = TG.make_path(target)

        def net(x, t):  # exact target for data concentrated at x_star
            a, s = expand_t(path.alpha(t), x), expand_t(path.sigma(t), x)
            eps = (x - a * x_star) / s
            return TG.medforj_target(target, x_star.expand_as(x), eps, a, s)

        model = TG.DataPredictor(net, target, path)
        x0 = torch.randn(3, 1, 4, 4, 4, generator=gen, dtype=torch.float64)
        out = solve_ddim(model, "data", path, x0, ddpm_grid(path, 8, dtype=torch.float64)).x
        torch.testing.assert_close(out, x_star.expand_as(out), atol=1e-9, rtol=0)


def test_ddim_equals_euler_on_the_linear_path_of_the_teacher(gen) -> None:
    """The distillation teacher: DDIM (eta = 0) on the DDPM grid is exactly Euler on the
    linear path at the matching times tau = alpha / (alpha + sigma)."""
    w = torch.randn(1, 1, 3, 3, 3, generator=gen, dtype=torch.float64)

    def model(x, t):  # any smooth data predictor
        return torch.tanh(x * w) * expand_t(0.5 + t, x)

    x0 = torch.randn(2, 1, 3, 3, 3, generator=gen, dtype=torch.float64)
    grid = ddpm_grid(DDPM, 10, dtype=torch.float64)
    ddim = solve_ddim(model, "data", DDPM, x0, grid).x
    a, s = DDPM.alpha(grid), DDPM.sigma(grid)
    tau = a / (a + s)
    teacher = LinearPathTeacher(model, "data", DDPM)
    euler = solve_ode(teacher, x0 / (a[0] + s[0]), tau, method="euler").x
    torch.testing.assert_close(euler * (a[-1] + s[-1]), ddim, atol=1e-9, rtol=0)


@pytest.mark.parametrize("target", ["sample", "velocity", "flow", "rflow"])
def test_flow_map_student_starts_as_the_teacher(target) -> None:
    """The default student (:class:`LinearPathStudent`) at initialisation: ``u(x, s, t)`` equals
    the teacher's linear-path velocity at ``s`` for every ``t`` (zero gap embedding), so
    ``X(s, t, x)`` is one Euler (= DDIM) step of the teacher's ODE."""
    from modaflow.modalities.mri.recipe import MRIConfig, build

    torch.manual_seed(0)
    cfg = MRIConfig(size=16, target=target)
    path, model, _ = build(cfg)
    with torch.no_grad():
        for p in model.parameters():  # MONAI zero-initialises the output conv: make the net non-trivial
            p.add_(0.05 * torch.randn_like(p))
    teacher = LinearPathTeacher(model.eval(), TG.core_kind(target), path)
    fm = _student(cfg)
    assert isinstance(fm.net, LinearPathStudent)
    _two_time(fm).load_one_time(model.net)
    x = torch.randn(3, 1, 16, 16, 16)
    s, t = torch.tensor([0.0, 0.3, 0.8]), torch.tensor([0.5, 0.3, 1.0])
    with torch.no_grad():
        v = teacher(x, s)
        assert float(v.abs().max()) > 0.1
        torch.testing.assert_close(fm.average_velocity(x, s, t), v, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fm(x, s, t), x + (t - s)[:, None, None, None, None] * v, atol=1e-4, rtol=1e-4)
    old = _student(cfg, "linear")  # the earlier student: the teacher's weights, another function on DDPM
    _two_time(old).load_one_time(model.net)
    with torch.no_grad():
        assert torch.allclose(old.average_velocity(x, s, t), v, atol=1e-4) == (target == "rflow")


def test_unet_wrappers_and_gpu_options() -> None:
    cfg = UNetConfig()
    net = UNet3D(cfg)
    x, t = torch.randn(2, 1, 16, 16, 16), torch.tensor([0.2, 0.9])
    y = net(x, t)
    assert y.shape == x.shape
    two = TwoTimeUNet3D(cfg)
    two.load_one_time(net)
    torch.testing.assert_close(two(x, t, t), y)  # the gap embedding starts at zero
    torch.testing.assert_close(two(x, t, torch.ones(2)), y)
    net.train()
    y.sum().backward()
    g = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    apply_gpu_options(net, channels_last=True, activation_checkpointing=True)
    y2 = net(x.contiguous(memory_format=torch.channels_last_3d), t)
    y2.sum().backward()
    torch.testing.assert_close(y2, y, atol=1e-5, rtol=1e-5)
    for a, b in zip(g, (p.grad for p in net.parameters())):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    with pytest.raises(Exception, match="attention_levels"):
        UNetConfig(channels=(8, 16), attention_levels=(False,))


def test_medforj_config_is_the_published_one() -> None:
    c = UNetConfig.medforj()
    assert c.channels == (16, 32, 64, 128, 256) and c.attention_levels == (False,) * 4 + (True,)
    assert c.num_res_blocks == 2 and c.num_head_channels == 8 and c.divisor == 16


def test_resnet_levels_and_checkpointing_chosen_levels() -> None:
    from modaflow.modalities.mri.models import Checkpointed, UNet3D, apply_gpu_options, resnet_levels

    cfg = UNetConfig(channels=(4, 8, 8), attention_levels=(False, False, True), num_res_blocks=1, norm_num_groups=4)
    net = UNet3D(cfg)
    levels = resnet_levels(net)
    # per level: num_res_blocks down + (num_res_blocks + 1) up; the middle block's 2 at the lowest level
    assert sorted(levels.values()) == [0] * 3 + [1] * 3 + [2] * 5
    full_res = net.unet.down_blocks[0].resnets[0]
    assert levels[full_res] == 0 and levels[net.unet.up_blocks[-1].resnets[0]] == 0
    apply_gpu_options(net, channels_last=False, activation_checkpointing=True, checkpoint_levels=(0,))
    assert {m for m in net.modules() if isinstance(m, Checkpointed)} == {m for m, lv in levels.items() if lv == 0}
    x, t = torch.randn(1, 1, 8, 8, 8), torch.rand(1)
    plain = UNet3D(cfg)
    plain.load_state_dict(net.state_dict())  # the same weight names; checkpointing changes no number
    torch.testing.assert_close(net(x, t), plain(x, t))


def test_gpu_step_timing_runs_on_cpu_at_tiny_size() -> None:
    from modaflow.modalities.mri.gpu import CANDIDATES

    for v in VARIANTS + CANDIDATES[1:]:
        r = time_steps(v, UNetConfig(), (16, 16, 16), batch=1, repeats=1, device=torch.device("cpu"), allow_compile=False)
        assert r.train_s_per_volume > 0 and r.sample_s_per_volume > 0 and r.train_peak_gb is None
