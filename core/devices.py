"""Which device a command runs its network on: ``auto`` (a GPU when torch sees one), ``cpu``
or ``cuda``, with an error that says why when ``cuda`` is asked for and none is visible."""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["DeviceName", "pick_device"]

DeviceName = Literal["auto", "cpu", "cuda"]


def pick_device(name: DeviceName) -> torch.device:
    """``torch.device`` for ``name``: ``auto`` is cuda when ``torch.cuda.is_available()``, else cpu."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but torch sees no GPU (torch.cuda.is_available() is False); "
                         "use --device cpu or auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")
