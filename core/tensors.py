"""Small tensor helpers shared by every core module: time broadcasting and input checks."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["expand_t", "as_time", "check_finite", "check_batch"]


def expand_t(t: Tensor, x: Tensor) -> Tensor:
    """Broadcast a time (or per-sample coefficient) of shape ``(B,)`` against ``x`` of
    shape ``(B, *D)`` by appending singleton dimensions: returns shape ``(B, 1, ..., 1)``.

    The one place where ``t`` meets data shapes (DESIGN.md, "One time convention").
    A 0-d ``t`` broadcasts to every sample.
    """
    if t.ndim == 0:
        return t.reshape((1,) * x.ndim)
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"t must have shape (B,) = ({x.shape[0]},) matching x of shape {tuple(x.shape)}; "
            f"got t of shape {tuple(t.shape)}"
        )
    return t.reshape((t.shape[0],) + (1,) * (x.ndim - 1))


def as_time(t: float | Tensor, batch: int, like: Tensor) -> Tensor:
    """Turn a Python float or a tensor into a time tensor of shape ``(batch,)`` with the
    dtype and device of ``like``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},); got {tuple(t.shape)}")
    return t


def check_finite(name: str, x: Tensor) -> Tensor:
    """Raise ``ValueError`` naming ``name`` if ``x`` holds NaN or Inf (a host sync: use it
    at API boundaries, never inside fixed-step solver loops)."""
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); expected finite numbers")
    return x


def check_batch(name: str, x: Tensor, min_ndim: int = 2) -> Tensor:
    """Raise ``ValueError`` naming ``name`` unless ``x`` is batch-first with at least
    ``min_ndim`` dimensions."""
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must be batch-first with at least {min_ndim} dims (B, ...); "
            f"got shape {tuple(x.shape)}"
        )
    return x
