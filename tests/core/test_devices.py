"""core.devices: the device a command's network runs on."""

import pytest
import torch

from modaflow.core.devices import check_accelerator, pick_device


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: cuda was asked for, but torch sees no GPU"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda; got 'tpu'"):
        pick_device("tpu")


def test_check_accelerator_refuses_what_this_machine_cannot_give(monkeypatch) -> None:
    for name in ("auto", "cpu", "tpu"):  # left to Lightning
        check_accelerator(name, 8)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("gpu", "cuda", "GPU"):
        with pytest.raises(ValueError, match=f"TrainerArgs.accelerator: {name} was asked for, but torch sees no GPU"):
            check_accelerator(name)
    with pytest.raises(ValueError, match="TrainerArgs.accelerator: mps was asked for, but torch sees no Apple GPU"):
        check_accelerator("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_accelerator("gpu", 2)
    check_accelerator("cuda", "auto")
    with pytest.raises(ValueError, match="TrainerArgs.devices: 4 GPUs per node were asked for, but torch sees 2"):
        check_accelerator("cuda", 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # Lightning's "gpu" is Apple's MPS there
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    check_accelerator("gpu", 1)
    check_accelerator("mps", 1)
    with pytest.raises(ValueError, match="cuda was asked for"):
        check_accelerator("cuda")
