"""Classifier-free guidance in one batched forward pass.

A model trained with its condition dropped to a null token some of the time predicts both
the conditional ``v(x, t | c)`` and the unconditional ``v(x, t)`` field. Guidance with scale
``s`` samples with

    v_s = v_uncond + s (v_cond - v_uncond),

(Ho & Salimans 2022, arXiv 2207.12598, eq. 6: ``(1 + w) eps(z, c) - w eps(z)`` with
``s = 1 + w``). ``s = 0`` is unconditional, ``s = 1`` conditional, ``s > 1`` sharpens.
The guided quantity is linear in the prediction, so it applies to any parametrization
(velocity, data, noise, score) and the guided field stays in it.

Both predictions come from ONE forward pass on the batch ``[x, x]`` with times ``[t, t]``
and conditions ``[cond, null_cond]``; the result is split in two halves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .ode import Field

__all__ = ["cfg_field", "ConditionalModel"]

ConditionalModel = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``model(x (B, *D), t (B,), cond (B, ...)) -> prediction (B, *D)``."""


def cfg_field(model: ConditionalModel, cond: Tensor, null_cond: Tensor | int, scale: float | Tensor) -> Field:
    """A field ``(x, t) -> v_uncond + scale (v_cond - v_uncond)`` for the solvers.

    Args:
        model: a conditional network ``model(x, t, cond)``.
        cond: the conditions, ``(B, ...)`` (e.g. class ids ``(B,)`` long), fixed for the solve.
        null_cond: the unconditional token: a tensor like ``cond``, or an int filled into a
            tensor like ``cond`` (e.g. ``num_classes``).
        scale: guidance scale ``s`` (float, or a tensor broadcasting against ``x``).

    The field makes exactly one model call per evaluation, on a batch of ``2B``. With
    ``scale`` 0 or 1 it returns the unconditional or conditional prediction exactly
    (``torch.lerp`` returns its end points exactly).
    """
    if isinstance(null_cond, int):
        null_cond = torch.full_like(cond, null_cond)
    if null_cond.shape != cond.shape:
        raise ValueError(f"null_cond {tuple(null_cond.shape)} must have cond's shape {tuple(cond.shape)}")
    both = torch.cat([cond, null_cond])  # (2B, ...), built once
    B = cond.shape[0]

    def field(x: Tensor, t: Tensor) -> Tensor:
        if x.shape[0] != B:
            raise ValueError(f"x has batch {x.shape[0]} but cond has batch {B}")
        out = model(torch.cat([x, x]), torch.cat([t, t]), both)
        v_cond, v_uncond = out[:B], out[B:]
        return torch.lerp(v_uncond, v_cond, scale)  # Ho & Salimans 2022, eq. 6, s = 1 + w

    return field
