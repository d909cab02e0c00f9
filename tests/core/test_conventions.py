"""Time-convention converters: float64 round trips, and each foreign formula builds the same
x_t (and velocity) as the modaflow path from the same (x_data, noise)."""

import math

import pytest
import torch

from modaflow.core import conventions as cv
from modaflow.core.paths import DiscreteVPPath, LinearPath, StochasticInterpolant, VPCosinePath

F64 = torch.float64
T = 1000


@pytest.fixture
def pair(gen):
    """(x_data, eps), each (6, 3), float64."""
    return torch.randn(6, 3, generator=gen, dtype=F64), torch.randn(6, 3, generator=gen, dtype=F64)


def test_round_trips_in_float64(gen) -> None:
    t = torch.rand(50, generator=gen, dtype=F64) * 0.98 + 0.01
    pairs = [
        (lambda t: cv.time_to_ddpm_step(t, T), lambda k: cv.ddpm_step_to_time(k, T)),
        (lambda t: cv.time_to_ddpm_index(t, T), lambda i: cv.ddpm_index_to_time(i, T)),
        (lambda t: cv.time_to_rflow_timestep(t, T), lambda s: cv.rflow_timestep_to_time(s, T)),
        (cv.time_to_diffusers_sigma, cv.diffusers_sigma_to_time),
        (lambda t: cv.time_to_diffusers_timestep(t, T), lambda s: cv.diffusers_timestep_to_time(s, T)),
    ]
    for fwd, back in pairs:
        torch.testing.assert_close(back(fwd(t)), t, rtol=0, atol=1e-14)
    for path in [LinearPath(), VPCosinePath(), DiscreteVPPath.cosine(100), StochasticInterpolant(LinearPath(), 0.5)]:
        torch.testing.assert_close(cv.edm_sigma_to_time(cv.time_to_edm_sigma(t, path), path), t, rtol=0, atol=1e-12)
    v = torch.randn(4, 3, generator=gen, dtype=F64)
    assert torch.equal(cv.diffusers_flow_output_to_velocity(cv.velocity_to_diffusers_flow_output(v)), v)
    assert torch.equal(cv.rflow_velocity_to_velocity(cv.velocity_to_rflow_velocity(v)), v)


def test_ends_and_python_numbers() -> None:
    assert cv.ddpm_step_to_time(0, T).item() == 1.0 and cv.ddpm_step_to_time(T, T).item() == 0.0
    assert cv.ddpm_index_to_time(T - 1, T).item() == 0.0 and cv.ddpm_index_to_time(0, T).item() == 1 - 1 / T
    assert cv.ddpm_step_to_time(3, T).dtype == F64  # Python numbers become float64
    assert cv.ddpm_step_to_time(torch.tensor([3]), T).dtype == F64  # integer tensors too
    assert cv.edm_sigma_to_time(0.0, LinearPath()).item() == 1.0
    assert cv.edm_sigma_to_time(math.inf, VPCosinePath()).item() == 0.0
    with pytest.raises(ValueError, match="num_steps"):
        cv.ddpm_step_to_time(1, 0)


@pytest.mark.parametrize("path", [DiscreteVPPath.linear(T), DiscreteVPPath.cosine(T)], ids=repr)
def test_ddpm_step_and_index_build_the_same_x_t(path, pair) -> None:
    x, eps = pair
    abar = path.alphas_cumprod  # abar_1..abar_T == MONAI/diffusers alphas_cumprod[0..T-1]
    for k in [1, 7, 500, T]:
        ho = abar[k - 1].sqrt() * x + (1 - abar[k - 1]).sqrt() * eps  # Ho et al. eq. 4
        t = cv.ddpm_step_to_time(k, T).expand(6)
        torch.testing.assert_close(path.sample(eps, x, t).x_t, ho, rtol=1e-12, atol=1e-12)
        i = k - 1  # MONAI DDPMScheduler.add_noise: alphas_cumprod[i] ** 0.5 * x + ...
        monai = abar[i].sqrt() * x + (1 - abar[i]).sqrt() * eps
        t_i = cv.ddpm_index_to_time(i, T).expand(6)
        torch.testing.assert_close(path.sample(eps, x, t_i).x_t, monai, rtol=1e-12, atol=1e-12)


def test_monai_rflow_builds_the_same_x_t_and_velocity(pair) -> None:
    x, eps = pair
    tau = torch.tensor([0.0, 1.0, 250.0, 500.5, 999.0, 1000.0], dtype=F64)
    timepoints = 1 - tau / T  # RFlowScheduler.add_noise
    monai_x = timepoints[:, None] * x + (1 - timepoints[:, None]) * eps
    s = LinearPath().sample(eps, x, cv.rflow_timestep_to_time(tau, T))
    torch.testing.assert_close(s.x_t, monai_x, rtol=0, atol=1e-14)
    torch.testing.assert_close(cv.rflow_velocity_to_velocity(x - eps), s.dx_t)  # MONAI's target
    # MONAI's step x + v (tau - tau_next)/T is an Euler step of our ODE from t to t_next:
    t, t_next = cv.rflow_timestep_to_time(tau[2], T), cv.rflow_timestep_to_time(tau[1], T)
    torch.testing.assert_close(s.x_t[2] + (x - eps)[2] * (tau[2] - tau[1]) / T,
                               s.x_t[2] + s.dx_t[2] * (t_next - t))


def test_diffusers_flow_match_builds_the_same_x_t_and_velocity(pair) -> None:
    x, eps = pair
    sigma = torch.tensor([0.0, 0.1, 0.33, 0.5, 0.9, 1.0], dtype=F64)
    dif_x = (1 - sigma[:, None]) * x + sigma[:, None] * eps
    s = LinearPath().sample(eps, x, cv.diffusers_sigma_to_time(sigma))
    torch.testing.assert_close(s.x_t, dif_x, rtol=0, atol=1e-14)
    torch.testing.assert_close(cv.diffusers_timestep_to_time(sigma * T, T), cv.diffusers_sigma_to_time(sigma))
    torch.testing.assert_close(cv.diffusers_flow_output_to_velocity(eps - x), s.dx_t)


@pytest.mark.parametrize(
    "path", [LinearPath(), VPCosinePath(), DiscreteVPPath.linear(T), StochasticInterpolant(VPCosinePath(), 0.3)], ids=repr
)
def test_edm_sigma_builds_the_same_x_t(path, pair) -> None:
    x, eps = pair
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95], dtype=F64)
    sigma_edm = cv.time_to_edm_sigma(t, path)
    x_edm = x + sigma_edm[:, None] * eps  # EDM: x = y + sigma n
    x_t = path.alpha(t)[:, None] * x + path.sigma(t)[:, None] * eps
    torch.testing.assert_close(cv.edm_x_to_path_x(x_edm, t, path), x_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cv.path_x_to_edm_x(x_t, t, path), x_edm, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cv.edm_sigma_to_time(sigma_edm, path), t, rtol=0, atol=1e-12)


def test_edm_closed_forms_agree_with_bisection(gen) -> None:
    class Linear2(LinearPath):  # same path, not the exact type: forces bisection
        pass

    class Cos2(VPCosinePath):
        pass

    s = torch.exp(torch.randn(20, generator=gen, dtype=F64) * 2)
    torch.testing.assert_close(cv.edm_sigma_to_time(s, Linear2()), cv.edm_sigma_to_time(s, LinearPath()), rtol=0, atol=1e-14)
    torch.testing.assert_close(cv.edm_sigma_to_time(s, Cos2()), cv.edm_sigma_to_time(s, VPCosinePath()), rtol=0, atol=1e-14)
