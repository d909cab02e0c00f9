"""Which device a command runs its network on: ``auto`` (a GPU when torch sees one), ``cpu``
or ``cuda``, with an error that says why when ``cuda`` is asked for and none is visible; the
same check for a Lightning accelerator (:func:`check_accelerator`), made before a run writes anything."""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["DeviceName", "pick_device", "check_accelerator"]

DeviceName = Literal["auto", "cpu", "cuda"]


def pick_device(name: DeviceName) -> torch.device:
    """``torch.device`` for ``name``: ``auto`` is cuda when ``torch.cuda.is_available()``, else cpu."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but torch sees no GPU (torch.cuda.is_available() is False); "
                         "use --device cpu or auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def check_accelerator(accelerator: str, devices: int | str = 1) -> None:
    """Refuse a Lightning ``accelerator`` (and per-node ``devices`` count) this machine cannot give, with a
    ``ValueError`` that says what torch sees; Lightning's own error ("No supported gpu backend found!") would come
    only after a run folder was started. ``gpu`` is CUDA or Apple's MPS, as Lightning reads it; other names
    (``auto``, ``cpu``, ``tpu``, ...) are left to Lightning."""
    name = accelerator.lower()
    if name not in ("gpu", "cuda", "mps"):
        return
    mps = torch.backends.mps.is_available()
    if name == "mps" and not mps:
        raise ValueError("TrainerArgs.accelerator: mps was asked for, but torch sees no Apple GPU "
                         "(torch.backends.mps.is_available() is False); use --accelerator cpu or auto")
    if name == "mps" or (name == "gpu" and mps and not torch.cuda.is_available()):
        return
    if not torch.cuda.is_available():
        raise ValueError(f"TrainerArgs.accelerator: {accelerator} was asked for, but torch sees no GPU (torch "
                         f"{torch.__version__}, torch.cuda.is_available() is False); use --accelerator cpu or auto")
    have = torch.cuda.device_count()
    if isinstance(devices, int) and devices > have:
        raise ValueError(f"TrainerArgs.devices: {devices} GPUs per node were asked for, but torch sees {have} on this "
                         f"machine")
