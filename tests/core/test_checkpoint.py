"""Safetensors + JSON checkpoints: exact round trips, atomic writes, clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from modaflow.core.config import ConfigError
from modaflow.core.nn import ResidualMLP, ResidualMLPConfig
from modaflow.core.training import EMA, CheckpointError, FlowMatchingConfig, load_checkpoint, read_checkpoint, save_checkpoint
from modaflow.core.training import checkpoint as checkpoint_module


def _trained(depth: int = 2, hidden: int = 16, steps: int = 3, seed: int = 0):
    """A small class-conditional model, its EMA and AdamW after a few steps."""
    torch.manual_seed(seed)
    model = ResidualMLP(ResidualMLPConfig(dim=2, hidden=hidden, depth=depth, time_embed_dim=8, num_classes=2))
    ema = EMA(model, decay=0.9)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(steps):
        x, t, c = torch.randn(8, 2), torch.rand(8), torch.randint(0, 3, (8,))
        loss = (model(x, t, c) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
    return model, ema, opt


def _save(path, steps: int = 3, step: int = 7):
    model, ema, opt = _trained(steps=steps)
    save_checkpoint(path, model, step=step, ema=ema, optimizer=opt, config=FlowMatchingConfig(lr=0.01), extra={"note": "hi"})
    return model, ema, opt


def test_round_trip_is_bitwise(tmp_path):
    path = tmp_path / "ck.safetensors"
    model, ema, opt = _save(path)
    fresh, fresh_ema, fresh_opt = _trained(steps=0, seed=1)
    ckpt = load_checkpoint(path, fresh, ema=fresh_ema, optimizer=fresh_opt, config_cls=FlowMatchingConfig)
    assert ckpt.step == 7 and ckpt.config == FlowMatchingConfig(lr=0.01) and ckpt.extra == {"note": "hi"}
    x, t, c = torch.randn(5, 2), torch.rand(5), torch.tensor([0, 1, 2, 0, 1])
    assert torch.equal(fresh(x, t, c), model(x, t, c))
    assert fresh_ema.num_updates == ema.num_updates == 3
    with ema.swapped(model), fresh_ema.swapped(fresh):
        assert torch.equal(fresh(x, t, c), model(x, t, c))
    # the optimiser state came back too: one more identical step keeps them identical
    for m, o in ((model, opt), (fresh, fresh_opt)):
        o.zero_grad()
        m(x, t, c).pow(2).mean().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_directory_means_last_and_tied_weights_are_saved(tmp_path):
    lin = torch.nn.Linear(3, 3, bias=False)
    tied = torch.nn.Sequential(lin, torch.nn.ReLU(), lin)  # one weight under two names
    save_checkpoint(tmp_path, tied, step=1)
    assert (tmp_path / "last.safetensors").is_file() and (tmp_path / "last.json").is_file()
    other = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False), torch.nn.ReLU(), torch.nn.Linear(3, 3, bias=False))
    load_checkpoint(tmp_path, other)
    assert torch.equal(other[0].weight, lin.weight) and torch.equal(other[2].weight, lin.weight)


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    model, _, _ = _save(path, step=3)
    before = path.read_bytes()

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, step=4)
    assert path.read_bytes() == before
    assert read_checkpoint(path).step == 3
    assert sorted(os.listdir(tmp_path)) == ["last.json", "last.safetensors"]  # no temp files left


def test_truncated_or_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "last.safetensors"
    _save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="last.safetensors.*truncated or corrupt"):
        read_checkpoint(path)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="last.safetensors"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="missing.safetensors: checkpoint file not found"):
        read_checkpoint(tmp_path / "missing.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="foreign.safetensors.*not a modaflow checkpoint"):
        read_checkpoint(foreign)


def test_mismatched_model_is_refused_before_loading(tmp_path):
    path = tmp_path / "last.safetensors"
    _save(path)
    deeper, _, _ = _trained(depth=3, steps=0)
    before = {k: v.clone() for k, v in deeper.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"last.safetensors: the model .*missing keys \['blocks.2"):
        load_checkpoint(path, deeper)
    assert all(torch.equal(before[k], v) for k, v in deeper.state_dict().items())  # untouched
    shallow, _, _ = _trained(depth=1, steps=0)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['blocks.1"):
        load_checkpoint(path, shallow)
    wider, wider_ema, _ = _trained(hidden=32, steps=0)
    with pytest.raises(CheckpointError, match=r"shape mismatch .*inp.weight: saved \(16, 2\), expected \(32, 2\)"):
        load_checkpoint(path, wider)
    with pytest.raises(CheckpointError, match="the EMA"):
        load_checkpoint(path, ema=wider_ema)


def _edit_config(path, **changes):
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["config"].update(changes)
    side.write_text(json.dumps(meta))


def test_bad_config_fields_name_file_and_field(tmp_path):
    path = tmp_path / "last.safetensors"
    _save(path)
    _edit_config(path, learning_rate=1.0)
    with pytest.raises(ConfigError, match=r"last.json: .*unknown field\(s\) \['learning_rate'\]"):
        read_checkpoint(path, FlowMatchingConfig)
    _save(path)
    _edit_config(path, lr="fast")
    with pytest.raises(ConfigError, match=r"last.json: FlowMatchingConfig.lr: expected a number"):
        read_checkpoint(path, FlowMatchingConfig)
    _save(path)
    _edit_config(path, ema_decay=1.5)
    with pytest.raises(ConfigError, match="FlowMatchingConfig.ema_decay"):
        read_checkpoint(path, FlowMatchingConfig)


def test_sidecar_from_another_write_falls_back_to_embedded_metadata(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    model, ema, opt = _trained()
    save_checkpoint(a, model, step=1)
    save_checkpoint(b, model, step=2)
    b.with_suffix(".json").write_bytes(a.with_suffix(".json").read_bytes())  # as if the last rename was lost
    with pytest.warns(UserWarning, match="does not belong to"):
        assert read_checkpoint(b).step == 2
    b.with_suffix(".json").unlink()
    with pytest.warns(UserWarning, match="missing"):
        assert read_checkpoint(b).step == 2
    a.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="a.json: not valid JSON"):
        read_checkpoint(a)


def test_missing_parts_are_reported(tmp_path):
    model, ema, opt = _trained()
    path = save_checkpoint(tmp_path / "w.safetensors", model, step=0)
    with pytest.raises(CheckpointError, match="w.safetensors: has no EMA"):
        load_checkpoint(path, ema=ema)
    with pytest.raises(CheckpointError, match="w.safetensors: has no optimizer state"):
        load_checkpoint(path, optimizer=opt)
