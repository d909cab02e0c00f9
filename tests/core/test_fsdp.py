"""FSDP (``TrainerArgs(strategy="fsdp")``: FSDP2 through Lightning's ModelParallelStrategy) on two
CPU ranks (gloo): training, the EMA and the checkpoints equal those of DDP bit for bit, for a
fresh run and for a resumed one, and the checkpoint holds whole tensors that load on one device.

The 2-rank jobs run this file as a script in a subprocess (see tests/core/test_ddp.py for why).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from modaflow.core.config import ConfigError
from modaflow.core.training import TrainerArgs
from modaflow.core.training.sharding import gather, reshard_optimizer_state, shard_like, shard_units


def _model():
    from modaflow.core.nn import ResidualMLP, ResidualMLPConfig

    torch.manual_seed(0)
    return ResidualMLP(ResidualMLPConfig(dim=2, hidden=16, depth=2, time_embed_dim=8))


def _worker(out: Path, strategy: str, steps: int) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from modaflow.core.training import FlowMatchingConfig, FlowMatchingModule, fit

    torch.set_num_threads(1)
    cfg = FlowMatchingConfig(lr=1e-2, ema_decay=0.9, log_every=1, ckpt_every=3, max_steps=steps, grad_clip=1.0)
    module = FlowMatchingModule(_model(), None, cfg)
    data = torch.randn(192, 2, generator=torch.Generator().manual_seed(1)) + 2.0  # 3 steps of 2 x 32 per epoch
    loader = DataLoader(TensorDataset(data), batch_size=32, shuffle=False)
    fit(module, loader, out, TrainerArgs(accelerator="cpu", devices=2, strategy=strategy), progress=False)


def _launch(jobs: list[tuple[Path, str, int]]) -> None:
    """Run the 2-rank jobs at once; kill a job's process group if it hangs."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("LOCAL_RANK", None)
    procs = [subprocess.Popen([sys.executable, __file__, str(out), strategy, str(steps)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for out, strategy, steps in jobs]
    for proc, job in zip(procs, jobs):
        try:
            log, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
            raise AssertionError(f"the 2-rank job {job} hung:\n" + log[-3000:]) from None
        assert proc.returncode == 0, f"{job}:\n" + log[-3000:]


def _checkpoint(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def test_fsdp_equals_ddp_bitwise_fresh_and_resumed(tmp_path):
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    _launch([(fsdp, "fsdp", 3), (ddp, "ddp", 3)])
    a, b = _checkpoint(fsdp), _checkpoint(ddp)
    assert sorted(a) == sorted(b) and any(k.startswith("optimizer.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights, EMA and Adam's moments, whole

    init = _model().state_dict()
    assert not torch.equal(init["out.weight"], a["model.out.weight"])  # it trained

    _launch([(fsdp, "fsdp", 6), (ddp, "ddp", 6)])  # resume: the whole moments are cut into shards again
    a, b = _checkpoint(fsdp), _checkpoint(ddp)
    assert all(torch.equal(a[k], b[k]) for k in a)

    from modaflow.core.training import EMA, load_checkpoint

    model = _model()  # the FSDP checkpoint in the single-device layout
    ema = EMA(model)
    ckpt = load_checkpoint(fsdp / "checkpoints" / "last.safetensors", model, ema=ema)
    assert ckpt.step == 6 and torch.equal(model.state_dict()["out.weight"], a["model.out.weight"])


def test_shard_units_are_list_children_inner_first():
    inner = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
    outer = nn.ModuleList([nn.Sequential(nn.Linear(2, 2), nn.Sequential(inner)), nn.Linear(2, 2)])
    model = nn.Sequential(outer, nn.Linear(2, 2))
    units = shard_units(model)
    assert units == [inner[0], outer[0], outer[1]]  # no parameter-free ReLU, no top-level layer; inner first


def test_a_nested_network_that_names_forward_methods_is_a_unit():
    class Net(nn.Module):  # e.g. FMLM's DiT inside its flow map, called directly by the loss
        fsdp_forward_methods = ("parts",)

        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])
            self.out = nn.Linear(2, 2)

    net = Net()
    wrapper = nn.Sequential(net)
    assert shard_units(wrapper) == [net.blocks[0], net]
    assert shard_units(net) == [net.blocks[0]]  # the root is sharded last by apply_fsdp, not as a unit


def test_fsdp_arguments_and_refusals():
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = TrainerArgs(strategy="fsdp", devices=4, num_nodes=2).trainer_kwargs()["strategy"]
    assert isinstance(strategy, ModelParallelStrategy)
    assert strategy._data_parallel_size == 8 and strategy._tensor_parallel_size == 1
    assert TrainerArgs(strategy="fsdp").to_dict()["strategy"] == "fsdp"  # run configs keep the name
    for sharded in ("fsdp_cpu_offload", "FSDP_cpu_offload", "deepspeed_stage_2"):  # EMA / checkpoints would see shards
        with pytest.raises(ConfigError, match="TrainerArgs.strategy: expected 'ddp', 'fsdp'"):
            TrainerArgs(strategy=sharded)
    with pytest.raises(ConfigError, match="TrainerArgs.devices: expected an integer count"):
        TrainerArgs(strategy="fsdp", devices="auto")


def test_plain_tensors_pass_through():
    x = torch.randn(3, 2)
    assert shard_like(x, torch.zeros(3, 2)) is x
    assert gather({"a": [x, (x,)], "b": 1})["a"][1][0] is x
    opt = torch.optim.Adam([nn.Parameter(torch.ones(3))])
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[opt.param_groups[0]["params"][0]].items()}
    reshard_optimizer_state(opt)
    after = opt.state[opt.param_groups[0]["params"][0]]
    assert all(torch.equal(before[k], after[k]) for k in before)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
