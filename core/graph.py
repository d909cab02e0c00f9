"""GPU fast path for fixed-step sampling: capture the whole solver loop once, replay it.

Small velocity networks are launch-bound on a GPU: ``K`` steps of a 3-layer MLP issue
hundreds of tiny kernels whose launch cost dominates (REFERENCE.md sec. 8 measured a
captured 100-step Euler loop at 0.24x the time of the eager loop on an H200). Because
:func:`modaflow.core.ode.solve_ode` has no host syncs and no branching on tensor values,
the entire loop can be recorded as one CUDA graph (NVIDIA CUDA Programming Guide, "CUDA
Graphs"; ``torch.cuda.graphs``) for a fixed input shape, dtype, device and time grid:

1. warm up a few solves on a side stream (lazy initialisation, cuBLAS workspaces, and the
   caching allocator settle outside the capture);
2. capture one solve reading a static input buffer and writing a static output buffer;
3. each call copies the input into the static buffer, replays the graph and returns a copy
   of the output. Replays run the same kernels on the same memory: results are identical
   to the eager solve.

Capture is inference-only (it runs under ``torch.no_grad()``) and the field must be
deterministic and free of CPU work that depends on tensor values.

On CPU there are no CUDA graphs: :class:`CapturedSampler` raises a ``RuntimeError`` unless
``allow_eager=True``, in which case it runs the same eager solve and says so with
``captured = False``. :func:`compile_sampler` is the portable alternative: it
``torch.compile``s the solve (``mode="reduce-overhead"`` makes inductor use CUDA graphs on
GPU; on CPU it compiles C++ kernels and needs a C++ compiler).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .ode import ODE_METHODS, ODE_STAGES, Field, solve_ode

__all__ = ["CapturedSampler", "compile_sampler"]


def _check_method(method: str) -> None:
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}; got {method!r}")


class CapturedSampler:
    """A fixed-step ODE solve for one input shape, captured as a CUDA graph.

    Args:
        field: velocity field ``(x (B, *D), t (B,)) -> v``; deterministic, no host syncs.
        example: a tensor with the shape, dtype and (CUDA) device of future inputs; its
            values are only used for warm-up and capture.
        grid: the time grid ``(K+1,)`` or ``(B, K+1)``, fixed at capture.
        method: one of :data:`modaflow.core.ode.ODE_METHODS`.
        warmup: eager solves on a side stream before capture (>= 1).
        allow_eager: on a non-CUDA ``example``, run eagerly instead of raising.

    Attributes:
        captured: ``True`` when a CUDA graph was captured, ``False`` in the eager fallback.
        nfe: field evaluations per call.

    Call it with ``x`` of the example's shape, dtype and device; returns ``x`` at the end
    of the grid, ``(B, *D)``, a fresh tensor (not the graph's static buffer).
    """

    def __init__(
        self,
        field: Field,
        example: Tensor,
        grid: Tensor,
        method: str = "euler",
        warmup: int = 3,
        allow_eager: bool = False,
    ) -> None:
        _check_method(method)
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1; got {warmup}")
        self.field, self.method = field, method
        self.shape, self.dtype, self.device = tuple(example.shape), example.dtype, example.device
        self.grid = grid.to(device=example.device, dtype=example.dtype)
        self.nfe = (self.grid.shape[-1] - 1) * ODE_STAGES[method]
        self.captured = example.is_cuda and torch.cuda.is_available()
        if not self.captured:
            if not allow_eager:
                raise RuntimeError(
                    f"CapturedSampler needs a CUDA tensor (CUDA graphs are GPU-only); example is on "
                    f"{example.device}. Pass allow_eager=True to run the same solve eagerly "
                    f"(captured=False), or use compile_sampler(...) on CPU."
                )
            return
        self._static_x = example.detach().clone()
        with torch.no_grad():
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    solve_ode(field, self._static_x, self.grid, method)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._static_out = solve_ode(field, self._static_x, self.grid, method).x

    def __call__(self, x: Tensor) -> Tensor:
        if tuple(x.shape) != self.shape or x.dtype != self.dtype or x.device != self.device:
            raise ValueError(
                f"x must match the captured example: shape {self.shape}, dtype {self.dtype}, device "
                f"{self.device}; got shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
            )
        if not self.captured:
            with torch.no_grad():
                return solve_ode(self.field, x, self.grid, self.method).x
        self._static_x.copy_(x)
        self._graph.replay()
        return self._static_out.clone()


def compile_sampler(
    field: Field,
    grid: Tensor,
    method: str = "euler",
    mode: str | None = "reduce-overhead",
    backend: str = "inductor",
    fullgraph: bool = True,
) -> Callable[[Tensor], Tensor]:
    """``torch.compile`` of ``x -> solve_ode(field, x, grid, method).x``.

    ``mode`` is an inductor mode (``"reduce-overhead"``: CUDA graphs on GPU); with another
    ``backend`` (e.g. ``"aot_eager"``, which needs no compiler) pass ``mode=None``.
    ``fullgraph=True`` makes any graph break or host sync an error instead of a slowdown.
    """
    _check_method(method)
    if backend != "inductor" and mode is not None:
        raise ValueError(f"mode applies to the inductor backend only; got mode={mode!r}, backend={backend!r}")

    def sample(x: Tensor) -> Tensor:
        return solve_ode(field, x, grid, method).x

    if mode is None:
        return torch.compile(sample, backend=backend, fullgraph=fullgraph)
    return torch.compile(sample, backend=backend, mode=mode, fullgraph=fullgraph)
