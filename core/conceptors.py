"""Conceptors: soft projection matrices fitted on hidden states, their Boolean algebra,
and forward hooks that gate (steer) or record any ``nn.Module``'s output.

**Conceptor** (Jaeger 2014, "Controlling recurrent neural networks by conceptors",
arXiv 1403.3369, eq. 7). For hidden states ``H`` ``(n, d)`` with correlation
``R = HᵀH / n`` and aperture ``α > 0``::

    C = R (R + α⁻² I)⁻¹ = U diag(s / (s + α⁻²)) Uᵀ        (R = U diag(s) Uᵀ)

so ``C`` is symmetric with singular values in ``[0, 1)``. Mean-centred states use
``H - mean(H)`` (the covariance) instead.

**Boolean operations** (Jaeger 2014, Def. 3 / eqs. 43–45)::

    NOT C   = I − C
    C AND B = (C⁻¹ + B⁻¹ − I)⁻¹
    C OR B  = NOT (NOT C AND NOT B)                          (De Morgan)

For singular ``C`` or ``B``, AND uses the general form (Jaeger 2014, Def. 4, eq. 46):
``C AND B = P (Pᵀ (C⁺ + B⁺ − I) P)⁻¹ Pᵀ`` with ``P`` an orthonormal basis of
``range(C) ∩ range(B)`` and ``⁺`` the pseudo-inverse. With conceptors of the correlation
matrices ``R`` and ``Q`` at one aperture, AND is the conceptor of the harmonic combination
``(R⁻¹ + Q⁻¹)⁻¹`` and OR the conceptor of ``R + Q`` (Jaeger 2014, Prop. 9).
Results are symmetrised, ``(M + Mᵀ)/2``, against round-off.

**Steering** (COAST, arXiv 2605.17144): a layer's output ``h`` ``(..., d)`` is gated as
``h ← h Gᵀ`` with ``G = (1 − β) I + β C``, either with one ``C`` for every call of the
layer (global) or with ``C_k`` at the layer's ``k``-th call in a sample (per denoising
step). ``β = 0`` returns the output object untouched (bit-identical).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = [
    "correlation",
    "conceptor_from_correlation",
    "fit_conceptor",
    "NOT",
    "AND",
    "OR",
    "gate_matrix",
    "LayerNotFoundError",
    "get_layer",
    "GateHook",
    "gate_layer",
    "steer_layer",
    "HiddenStateRecorder",
    "record_layers",
]


def _check_square(C: Tensor, name: str) -> None:
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"{name} must be a square matrix (d, d); got shape {tuple(C.shape)}")


def _sym(M: Tensor) -> Tensor:
    return 0.5 * (M + M.transpose(-1, -2))


def correlation(h: Tensor, center: bool = False) -> Tensor:
    """``R = HᵀH / n`` of hidden states ``h`` ``(n, d)`` (or ``(..., d)``, flattened to rows);
    ``center=True`` subtracts the mean row first (the covariance, divided by n)."""
    if h.ndim < 2:
        raise ValueError(f"hidden states must have shape (n, d); got {tuple(h.shape)}")
    H = h.reshape(-1, h.shape[-1])
    if H.shape[0] < 1:
        raise ValueError("hidden states are empty (n = 0)")
    if not torch.isfinite(H).all():
        raise ValueError("hidden states contain NaN or Inf")
    if center:
        H = H - H.mean(dim=0, keepdim=True)
    return _sym(H.T @ H / H.shape[0])


def conceptor_from_correlation(R: Tensor, aperture: float) -> Tensor:
    """``C = R (R + α⁻² I)⁻¹`` (Jaeger 2014, arXiv 1403.3369, eq. 7) of a symmetric positive
    semi-definite ``R`` ``(d, d)``, through its eigendecomposition."""
    _check_square(R, "R")
    if not aperture > 0:
        raise ValueError(f"aperture must be > 0; got {aperture}")
    s, U = torch.linalg.eigh(_sym(R))
    s = s.clamp_min(0)
    return _sym((U * (s / (s + aperture**-2))) @ U.T)


def fit_conceptor(h: Tensor, aperture: float, center: bool = False) -> Tensor:
    """The conceptor ``(d, d)`` of hidden states ``h`` ``(n, d)`` at aperture ``α``."""
    return conceptor_from_correlation(correlation(h, center), aperture)


def NOT(C: Tensor) -> Tensor:
    """``I − C`` (Jaeger 2014, eq. 43)."""
    _check_square(C, "C")
    return _sym(torch.eye(C.shape[0], dtype=C.dtype, device=C.device) - C)


def _range_basis(C: Tensor, tol: float) -> Tensor:
    """Orthonormal basis ``(d, r)`` of the range of symmetric ``C`` (eigenvalues > tol)."""
    s, U = torch.linalg.eigh(_sym(C))
    return U[:, s.abs() > tol]


def AND(C: Tensor, B: Tensor, tol: float | None = None) -> Tensor:
    """``C AND B = (C⁻¹ + B⁻¹ − I)⁻¹`` (Jaeger 2014, eq. 44); for singular arguments the
    general form ``P (Pᵀ(C⁺ + B⁺ − I)P)⁻¹ Pᵀ`` on ``range(C) ∩ range(B)`` (eq. 46).

    ``tol``: eigenvalues at most ``tol`` count as zero (default ``d · eps · 1e3``)."""
    _check_square(C, "C")
    _check_square(B, "B")
    if C.shape != B.shape:
        raise ValueError(f"C and B must have the same shape; got {tuple(C.shape)} and {tuple(B.shape)}")
    d = C.shape[0]
    tol = d * torch.finfo(C.dtype).eps * 1e3 if tol is None else tol
    eye = torch.eye(d, dtype=C.dtype, device=C.device)
    PC, PB = _range_basis(C, tol), _range_basis(B, tol)
    if PC.shape[1] == d and PB.shape[1] == d:  # both invertible: eq. 44
        return _sym(torch.linalg.inv(torch.linalg.inv(C) + torch.linalg.inv(B) - eye))
    # range(C) ∩ range(B) = null space of the two orthogonal-complement projectors' sum
    outside = (eye - PC @ PC.T) + (eye - PB @ PB.T)
    s, U = torch.linalg.eigh(_sym(outside))
    P = U[:, s < 0.5]  # eigenvalues are 0 on the intersection and >= ~sin²(angle) elsewhere
    if P.shape[1] == 0:
        return torch.zeros_like(C)
    inner = P.T @ (torch.linalg.pinv(C, hermitian=True) + torch.linalg.pinv(B, hermitian=True) - eye) @ P
    return _sym(P @ torch.linalg.inv(inner) @ P.T)


def OR(C: Tensor, B: Tensor, tol: float | None = None) -> Tensor:
    """``C OR B = NOT(NOT C AND NOT B)`` (Jaeger 2014, eq. 45, De Morgan)."""
    return NOT(AND(NOT(C), NOT(B), tol))


def gate_matrix(C: Tensor, beta: float) -> Tensor:
    """``G = (1 − β) I + β C`` (COAST, arXiv 2605.17144): ``β = 0`` is the identity, ``β = 1``
    the conceptor itself. ``C`` ``(d, d)`` or per step ``(K, d, d)``."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1]; got {beta}")
    d = C.shape[-1]
    eye = torch.eye(d, dtype=C.dtype, device=C.device)
    return (1.0 - beta) * eye + beta * C


class LayerNotFoundError(KeyError):
    """A layer name that the model does not have; the message lists some that it has."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with an error that lists the model's layer names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        shown = names[:40] + (["..."] if len(names) > 40 else [])
        raise LayerNotFoundError(
            f"layer {name!r} not found in {type(model).__name__}; its layers are: {shown}"
        ) from None


class GateHook:
    """A forward hook ``h ← h Gᵀ`` with ``G`` ``(d, d)`` (global) or ``(K, d, d)``: ``G_k`` at the
    hooked layer's ``k``-th call since :meth:`reset` (per denoising step; calls past ``K - 1``
    reuse ``G_{K-1}``). ``transform`` overrides the gate with any ``(h, k) -> h'``."""

    def __init__(self, gate: Tensor | None = None, transform: Callable[[Tensor, int], Tensor] | None = None) -> None:
        if (gate is None) == (transform is None):
            raise ValueError("give exactly one of gate and transform")
        if gate is not None and (gate.ndim not in (2, 3) or gate.shape[-1] != gate.shape[-2]):
            raise ValueError(f"gate must have shape (d, d) or (K, d, d); got {tuple(gate.shape)}")
        self.gate = gate
        self.transform = transform
        self.calls = 0

    def reset(self) -> None:
        """Start counting denoising steps again (call before each new sample)."""
        self.calls = 0

    def __call__(self, module: nn.Module, inputs: object, output: object) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(f"a gate hook needs a layer whose output is a tensor; {type(module).__name__} "
                            f"returned {type(output).__name__}")
        k = self.calls
        self.calls += 1
        if self.transform is not None:
            return self.transform(output, k)
        G = self.gate if self.gate.ndim == 2 else self.gate[min(k, self.gate.shape[0] - 1)]
        if G.shape[-1] != output.shape[-1]:
            raise ValueError(f"gate is {tuple(G.shape)} but the layer's output has width {output.shape[-1]}")
        return output @ G.to(device=output.device, dtype=output.dtype).T  # h ← h Gᵀ on the last axis


@contextmanager
def steer_layer(model: nn.Module, layer: str, hook: GateHook) -> Iterator[GateHook]:
    """Attach ``hook`` to ``model``'s ``layer`` for the ``with`` block, then remove it."""
    module = get_layer(model, layer)
    handle = module.register_forward_hook(hook)
    try:
        yield hook
    finally:
        handle.remove()


@contextmanager
def gate_layer(model: nn.Module, layer: str, C: Tensor, beta: float) -> Iterator[GateHook | None]:
    """Gate ``layer``'s output by ``(1 − β) I + β C`` (``C`` ``(d, d)`` global or ``(K, d, d)``
    per denoising step) inside the ``with`` block. ``β = 0`` attaches nothing, so outputs
    are bit-identical to the unsteered model (yields None)."""
    get_layer(model, layer)  # an unknown name fails even at beta = 0
    if beta == 0.0:
        gate_matrix(C, beta)  # validates beta's range
        yield None
        return
    with steer_layer(model, layer, GateHook(gate=gate_matrix(C, beta))) as hook:
        yield hook


class HiddenStateRecorder:
    """Forward hooks that keep a detached copy of each named layer's output at every call
    (one call per denoising step). ``states[name]`` is a list of ``(B, ..., d)`` tensors."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.modules = {name: get_layer(model, name) for name in layers}
        self.states: dict[str, list[Tensor]] = {name: [] for name in layers}
        self._handles: list = []

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, Tensor):
                self.states[name].append(output.detach().clone())

        return hook

    def clear(self) -> None:
        for v in self.states.values():
            v.clear()

    def __enter__(self) -> "HiddenStateRecorder":
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def record_layers(model: nn.Module, layers: Sequence[str]) -> HiddenStateRecorder:
    """A :class:`HiddenStateRecorder` to use as ``with record_layers(model, names) as rec:``."""
    return HiddenStateRecorder(model, layers)
