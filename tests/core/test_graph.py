"""The solver loop compiles as one graph (no breaks, no host syncs) and CUDA-graph capture
replays to the eager result."""

import pytest
import torch

from modaflow.core.graph import CapturedSampler, compile_sampler
from modaflow.core.ode import solve_ode, time_grid

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class MLP(torch.nn.Module):
    def __init__(self, dim: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], dim=1))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_rk4_loop_compiles_fullgraph_and_matches_eager() -> None:
    field, grid = MLP().eval(), time_grid(4)
    x = torch.randn(8, 4)
    compiled = torch.compile(lambda x: solve_ode(field, x, grid, "rk4").x, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), solve_ode(field, x, grid, "rk4").x, rtol=1e-6, atol=1e-6)


def test_per_sample_grid_compiles_fullgraph() -> None:
    field = MLP().eval()
    grid = torch.stack([time_grid(3), time_grid(3, 0.2, 0.9)] * 3)
    x = torch.randn(6, 4)
    sampler = compile_sampler(field, grid, "heun", mode=None, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(sampler(x), solve_ode(field, x, grid, "heun").x, rtol=1e-6, atol=1e-6)


def test_compile_sampler_rejects_mode_for_other_backends_and_bad_method() -> None:
    with pytest.raises(ValueError, match="mode"):
        compile_sampler(MLP(), time_grid(2), "euler", mode="reduce-overhead", backend="aot_eager")
    with pytest.raises(ValueError, match="method"):
        compile_sampler(MLP(), time_grid(2), "rk45", mode=None, backend="aot_eager")


def test_captured_sampler_on_cpu_raises_or_runs_eager_with_flag() -> None:
    field, grid, x = MLP().eval(), time_grid(3), torch.randn(5, 4)
    with pytest.raises(RuntimeError, match="CUDA"):
        CapturedSampler(field, x, grid, "euler")
    eager = CapturedSampler(field, x, grid, "midpoint", allow_eager=True)
    assert eager.captured is False and eager.nfe == 6
    with torch.no_grad():
        assert torch.equal(eager(x), solve_ode(field, x, grid, "midpoint").x)
    with pytest.raises(ValueError, match="shape"):
        eager(torch.randn(4, 4))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_captured_sampler_replays_the_eager_result(method) -> None:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    field = MLP(16, 64).to(dev).eval()
    grid = time_grid(20, shift=2.0, device=dev)
    sampler = CapturedSampler(field, torch.zeros(32, 16, device=dev), grid, method)
    assert sampler.captured and sampler.nfe == 20 * (1 if method == "euler" else 4)
    for _ in range(2):  # new inputs go through the static buffer on every call
        x = torch.randn(32, 16, device=dev)
        out = sampler(x)
        with torch.no_grad():
            ref = solve_ode(field, x, grid, method).x
        assert torch.equal(out, ref)  # same kernels on the same inputs: bit-identical
        assert out.data_ptr() != sampler(x).data_ptr()  # returns a copy, not the buffer


@pytest.mark.gpu
@cuda
def test_reduce_overhead_compile_matches_eager_on_gpu() -> None:
    dev = torch.device("cuda")
    field = MLP(16, 64).to(dev).eval()
    grid = time_grid(8, device=dev)
    sampler = compile_sampler(field, grid, "heun")
    x = torch.randn(32, 16, device=dev)
    with torch.no_grad():
        ref = solve_ode(field, x, grid, "heun").x
        for _ in range(3):
            torch.testing.assert_close(sampler(x), ref, rtol=1e-4, atol=1e-4)
