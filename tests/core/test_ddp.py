"""Two-process DDP on CPU (gloo) through Lightning: ranks end with identical weights.

The test runs this file as a script in a subprocess: Lightning's "ddp" strategy then starts
rank 1 by re-running the same script, and each rank writes its weights to the output folder.
(Running "ddp" inside the pytest process would make Lightning re-launch pytest itself.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STEPS = 6


def _worker(out: Path) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from modaflow.core.nn import ResidualMLP, ResidualMLPConfig
    from modaflow.core.training import FlowMatchingConfig, FlowMatchingModule, TrainerArgs, fit

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ResidualMLP(ResidualMLPConfig(dim=2, hidden=16, depth=2, time_embed_dim=8))
    cfg = FlowMatchingConfig(lr=1e-2, ema_decay=0.9, log_every=1, ckpt_every=3, max_steps=STEPS)
    module = FlowMatchingModule(model, None, cfg)
    data = torch.randn(512, 2, generator=torch.Generator().manual_seed(1)) + 2.0
    loader = DataLoader(TensorDataset(data), batch_size=32, shuffle=False)
    args = TrainerArgs(accelerator="cpu", devices=2, strategy="ddp", precision="32-true")
    result = fit(module, loader, out, args, progress=False)
    state = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in module.ema.state_dict().items()})
    state["last_loss"] = module.last_loss.reshape(1)
    state["step"] = torch.tensor([result.step])
    save_file(state, str(out / f"rank{module.global_rank}.safetensors"))


def test_two_cpu_ranks_agree(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert r0["step"].item() == r1["step"].item() == STEPS
    weights = [k for k in r0 if k.startswith(("model.", "ema."))]
    assert weights and all(torch.equal(r0[k], r1[k]) for k in weights)
    assert not torch.equal(r0["last_loss"], r1["last_loss"])  # each rank saw its own data and noise
    torch.manual_seed(0)
    from modaflow.core.nn import ResidualMLP, ResidualMLPConfig

    init = ResidualMLP(ResidualMLPConfig(dim=2, hidden=16, depth=2, time_embed_dim=8)).state_dict()
    assert not torch.equal(init["out.weight"], r0["model.out.weight"])  # it trained
    saved = load_file(str(tmp_path / "checkpoints" / "last.safetensors"))  # written by rank 0
    assert all(torch.equal(saved[k], r0[k]) for k in weights)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
