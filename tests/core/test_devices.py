"""core.devices: the device a command's network runs on."""

import pytest
import torch

from modaflow.core.devices import pick_device


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: cuda was asked for, but torch sees no GPU"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda; got 'tpu'"):
        pick_device("tpu")
