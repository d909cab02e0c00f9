"""Toy modality: data shapes and determinism, and the metrics against slow obvious
references and closed forms."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from modaflow.modalities.toy import data as D
from modaflow.modalities.toy import metrics as M


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("name", D.TOY_DATASETS)
@pytest.mark.parametrize("dim", [2, 3, 8, 64])
def test_shapes_dtype_and_determinism(name: str, dim: int) -> None:
    a = D.make_split(name, dim, 300, "train", seed=5)
    assert a.shape == (300, dim) and a.dtype == torch.float32
    assert torch.equal(a, D.make_split(name, dim, 300, "train", seed=5))
    assert not torch.equal(a, D.make_split(name, dim, 300, "train", seed=6))
    assert not torch.equal(a, D.make_split(name, dim, 300, "test", seed=5))
    assert torch.isfinite(a).all()


def test_gaussian_matches_its_declared_moments() -> None:
    mean, cov = D.gaussian_params(5)
    torch.testing.assert_close(cov, cov.T)
    assert torch.linalg.eigvalsh(cov).min() > 0.19
    x = D.make_split("gaussian", 5, 200_000, "train", seed=0).double()
    torch.testing.assert_close(x.mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.02, rtol=0)


def test_checkerboard_lies_on_black_squares() -> None:
    x = D.make_split("checkerboard", 2, 5000, "train", seed=0)
    assert x.abs().max() <= 2.0
    parity = (torch.floor(x[:, 0]) + torch.floor(x[:, 1])).remainder(2)
    assert (parity == 0).all()


def test_tiling_gives_independent_copies_of_the_2d_shape() -> None:
    x = D.make_split("moons", 5, 4000, "train", seed=0).double()
    assert x.shape == (4000, 5)
    corr = torch.corrcoef(x.T)
    assert corr[0, 2].abs() < 0.06 and corr[1, 3].abs() < 0.06  # different copies
    assert corr[0, 1].abs() > 0.3  # moons' own x-y dependence within a copy


def test_gmm_modes_lie_on_the_embedded_circle() -> None:
    frame = D.orthonormal_frame(8)
    torch.testing.assert_close(frame.T @ frame, torch.eye(2, dtype=torch.float64))
    x = D.make_split("gmm", 8, 4000, "train", seed=0).double()
    radius = (x @ frame).norm(dim=1)  # in-plane radius: 3 up to noise of std 0.35
    assert abs(radius.median().item() - 3.0) < 0.1


def test_bad_names_and_dims_are_errors() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="unknown toy dataset 'spiral'"):
        D.sample_toy("spiral", 10, 2, g)
    with pytest.raises(ValueError, match="dim must lie in"):
        D.sample_toy("moons", 10, 65, g)
    with pytest.raises(ValueError, match="split must be one of"):
        D.make_split("moons", 2, 10, "val", 0)


def test_array_files_round_trip_and_bad_files(tmp_path) -> None:
    x = D.make_split("gmm", 3, 50, "train", seed=0)
    for suffix in (".npy", ".csv"):
        path = D.save_array(tmp_path / f"x{suffix}", x)
        torch.testing.assert_close(D.load_array(path), x, atol=1e-6, rtol=1e-6)
    (tmp_path / "h.csv").write_text("a,b\n1,2\n3,4\n")
    assert D.load_array(tmp_path / "h.csv").shape == (2, 2)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv: the file is empty"):
        D.load_array(tmp_path / "empty.csv")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="nan.npy: expected finite"):
        D.load_array(tmp_path / "nan.npy")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        D.load_array(tmp_path / "missing.npy")


def test_datamodule_batches_are_deterministic() -> None:
    x = D.make_split("moons", 2, 100, "train", seed=0)
    first = [next(iter(D.ToyDataModule(x, batch_size=32, seed=3).train_dataloader())) for _ in range(2)]
    assert first[0].shape == (32, 2)
    assert torch.equal(first[0], first[1])


# ---------------------------------------------------------------- metrics: slow references


def _slow_wp_equal_sizes(u: np.ndarray, v: np.ndarray, p: float) -> float:
    """W_p^p between equal-size 1-D samples: match the sorted values one to one."""
    us, vs = sorted(u), sorted(v)
    return sum(abs(a - b) ** p for a, b in zip(us, vs)) / len(us)


def _slow_energy(x: np.ndarray, y: np.ndarray) -> float:
    def mean_dist(a, b):
        return sum(np.linalg.norm(ai - bj) for ai in a for bj in b) / (len(a) * len(b))

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def _slow_mmd(x: np.ndarray, y: np.ndarray, bandwidths) -> float:
    def k(a, b):
        return sum(math.exp(-np.sum((a - b) ** 2) / (2 * h * h)) for h in bandwidths)

    def mean_k(a, b):
        return sum(k(ai, bj) for ai in a for bj in b) / (len(a) * len(b))

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def test_wasserstein_1d_matches_scipy_for_unequal_sizes(gen) -> None:
    u = torch.randn(4, 137, generator=gen, dtype=torch.float64)
    v = 1.5 * torch.randn(4, 61, generator=gen, dtype=torch.float64) + 0.3
    fast = M.wasserstein_1d(u, v, p=1.0)
    for k in range(4):
        assert fast[k].item() == pytest.approx(scipy.stats.wasserstein_distance(u[k].numpy(), v[k].numpy()), rel=1e-10)


def test_wasserstein_1d_p2_matches_sorted_matching(gen) -> None:
    u = torch.randn(3, 40, generator=gen, dtype=torch.float64)
    v = torch.rand(3, 40, generator=gen, dtype=torch.float64)
    fast = M.wasserstein_1d(u, v, p=2.0)
    for k in range(3):
        assert fast[k].item() == pytest.approx(_slow_wp_equal_sizes(u[k].numpy(), v[k].numpy(), 2.0), rel=1e-10)


def test_sliced_wasserstein_equals_loop_over_projections(gen) -> None:
    x = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(50, 3, generator=gen, dtype=torch.float64) * 0.7 + 0.2
    theta = M.random_directions(16, 3, gen)
    slow = np.mean([_slow_wp_equal_sizes((x @ t).numpy(), (y @ t).numpy(), 2.0) for t in theta]) ** 0.5
    assert M.sliced_wasserstein(x, y, directions=theta) == pytest.approx(slow, rel=1e-10)


def test_sliced_wasserstein_exact_cases(gen) -> None:
    x = torch.randn(200, 4, generator=gen)
    assert M.sliced_wasserstein(x, x.clone(), generator=gen) == 0.0
    # a permutation changes the column order of the projection GEMM, so a point's projection can move by one
    # float64 ulp on some CPUs' kernels (1e-17 on AMD EPYC): zero to rounding
    assert M.sliced_wasserstein(x, x[torch.randperm(200, generator=gen)], generator=gen) == pytest.approx(0.0, abs=1e-12)
    # a translation by c in 1-D moves every quantile by c: W_2 = |c| exactly
    u = torch.randn(100, 1, generator=gen, dtype=torch.float64)
    assert M.sliced_wasserstein(u, u + 0.7, n_projections=4, generator=gen) == pytest.approx(0.7, rel=1e-12)
    # in D dims the translation projects to theta . c: SW_2^2 = |c|^2 E[theta_1^2] = |c|^2 / D
    c = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    x64 = x.double()
    sw = M.sliced_wasserstein(x64, x64 + c, n_projections=20000, generator=gen)
    assert sw**2 == pytest.approx(c.pow(2).sum().item() / 4, rel=0.03)


def test_energy_distance_matches_loops_and_scipy(gen) -> None:
    x = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(25, 3, generator=gen, dtype=torch.float64) + 0.5
    assert M.energy_distance(x, y) == pytest.approx(_slow_energy(x.numpy(), y.numpy()), rel=1e-10)
    u, v = x[:, :1], y[:, :1]
    assert M.energy_distance(u, v) == pytest.approx(scipy.stats.energy_distance(u[:, 0], v[:, 0]) ** 2, rel=1e-10)
    assert M.energy_distance(x, x.clone()) == 0.0


def test_energy_distance_of_shifted_gaussians_matches_closed_form(gen) -> None:
    # X ~ N(0, 1), Y ~ N(d, 1): X - Y ~ N(-d, 2), E|N(m, s^2)| = s sqrt(2/pi) e^{-m^2/2s^2} + m (1 - 2 Phi(-m/s))
    d, s, n = 1.0, math.sqrt(2.0), 4000
    mean_abs_xy = s * math.sqrt(2 / math.pi) * math.exp(-(d**2) / (2 * s**2)) + d * (1 - 2 * scipy.stats.norm.cdf(-d / s))
    exact = 2 * mean_abs_xy - 2 * (2 / math.sqrt(math.pi))  # E|X - X'| = 2 / sqrt(pi)
    x = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64) + d
    # V-statistic bias: + E|X - X'| / n + E|Y - Y'| / n
    expected = exact + 2 * (2 / math.sqrt(math.pi)) / n
    assert M.energy_distance(x, y) == pytest.approx(expected, abs=0.03)


def test_mmd_matches_loops(gen) -> None:
    x = torch.randn(20, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(15, 2, generator=gen, dtype=torch.float64) * 1.3
    bw = (0.5, 2.0)
    assert M.mmd_rbf(x, y, bw) == pytest.approx(_slow_mmd(x.numpy(), y.numpy(), bw), rel=1e-10)
    assert M.mmd_rbf(x, x.clone(), bw) == 0.0
    with pytest.raises(ValueError, match="bandwidths"):
        M.mmd_rbf(x, y, (0.0,))


def test_mmd_of_shifted_gaussians_matches_closed_form(gen) -> None:
    # N(0, s^2 I) vs N(delta, s^2 I), RBF width h: E k(X,X') = (h^2 / (h^2 + 2 s^2))^{D/2} =: c,
    # E k(X,Y) = c exp(-|delta|^2 / (2 (h^2 + 2 s^2))); V-statistic adds (1 - c)(1/n + 1/m).
    dim, n, h = 3, 2000, 1.5
    delta = torch.tensor([1.6, 0.0, -0.8], dtype=torch.float64)
    c = (h**2 / (h**2 + 2)) ** (dim / 2)
    exact = 2 * c * (1 - math.exp(-delta.pow(2).sum().item() / (2 * (h**2 + 2))))
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    y = torch.randn(n, dim, generator=gen, dtype=torch.float64) + delta
    expected = exact + 2 * (1 - c) / n
    assert M.mmd_rbf(x, y, (h,)) == pytest.approx(expected, abs=0.025)  # 0.242; Monte-Carlo std ~0.007


def test_metrics_reject_mismatched_shapes() -> None:
    for f in (M.sliced_wasserstein, M.energy_distance, M.mmd_rbf):
        with pytest.raises(ValueError, match="one D"):
            f(torch.zeros(3, 2), torch.zeros(3, 3))


# ---------------------------------------------------------------- recipe and models

from modaflow.core.config import ConfigError
from modaflow.core.gaussian import GaussianOracle
from modaflow.core.ode import time_grid
from modaflow.core.paths import LinearPath
from modaflow.modalities.toy.models import PlainMLP
from modaflow.modalities.toy.recipe import SOLVERS, ToyConfig, build, generate, load_data, run_sampler


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="ToyConfig.dim"):
        ToyConfig(dim=1)
    with pytest.raises(ConfigError, match="ToyConfig.solver"):
        ToyConfig(solver="rk45")
    with pytest.raises(ConfigError, match="FlowMatchingConfig.lr"):
        ToyConfig.from_dict({"fm": {"lr": 0.0}})
    cfg = ToyConfig.from_dict(ToyConfig(dim=5).to_dict())
    assert cfg == ToyConfig(dim=5)


@pytest.mark.parametrize("kind", ["velocity", "data", "noise"])
def test_run_sampler_follows_the_exact_gaussian_flow(kind: str, gen) -> None:
    """With the oracle's exact prediction of each kind, every sampler lands on the exact
    flow map with its order's accuracy (the stochastic one on the exact law), or refuses
    a time where that kind gives no velocity."""
    mean, cov = D.gaussian_params(3)
    oracle = GaussianOracle(mean, cov, LinearPath())

    def model(x, t):
        x1, x0 = oracle.posterior_means(x, t)
        return {"velocity": oracle.velocity(x, t), "data": x1, "noise": x0}[kind]

    x0 = torch.randn(2000, 3, generator=gen, dtype=torch.float64)
    exact = oracle.flow_map(0.0, 1.0, x0)
    grid = time_grid(32, dtype=torch.float64)
    # measured rms errors at 32 steps: euler/ddim 0.069, heun 3.8e-4, midpoint 8.6e-6, rk4 2.5e-8
    tol = {"euler": 0.08, "ddim": 0.08, "heun": 5e-4, "midpoint": 2e-5, "rk4": 5e-8}
    undefined = {"velocity": (), "data": ("heun", "rk4"), "noise": SOLVERS}[kind]
    for solver in SOLVERS:
        if solver in undefined:
            with pytest.raises(ValueError, match="alpha|sigma"):
                run_sampler(model, kind, oracle.path, x0, grid, solver, 1.0, gen)
            continue
        x = run_sampler(model, kind, oracle.path, x0, grid, solver, 1.0, gen)
        if solver == "em":
            assert oracle.w2_to(x) < 0.15  # Monte-Carlo floor ~0.07 at n = 2000 in 3-D
        else:
            assert (x - exact).pow(2).sum(1).mean().sqrt() < tol[solver], solver


def test_generate_is_deterministic_and_has_the_data_shape() -> None:
    cfg = ToyConfig(dim=3, hidden=8, depth=1, time_embed_dim=4)
    path, model, module = build(cfg)
    assert module.model is model
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)  # the network outputs 0 at initialisation; make it move
    a = generate(model, cfg, path, 16, 3, "rk4", seed=4)
    assert a.shape == (16, 3)
    assert torch.equal(a, generate(model, cfg, path, 16, 3, "rk4", seed=4))
    assert not torch.equal(a, generate(model, cfg, path, 16, 3, "rk4", seed=5))
    with pytest.raises(ValueError, match="solver must be one of"):
        generate(model, cfg, path, 4, 3, "rk45", seed=0)


def test_load_data_checks_the_width_of_a_file(tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(ConfigError, match="x.npy: data has D = 3 columns but the model expects dim = 2"):
        load_data(ToyConfig(data=str(tmp_path / "x.npy")), "train")
    assert load_data(ToyConfig(data="gmm", dim=4, n_test=7), "test").shape == (7, 4)


def test_plain_mlp_shapes() -> None:
    net = PlainMLP(5, width=16, layers=3)
    assert net(torch.zeros(7, 5), torch.zeros(7)).shape == (7, 5)
    assert sum(isinstance(m, torch.nn.Linear) for m in net.modules()) == 3
