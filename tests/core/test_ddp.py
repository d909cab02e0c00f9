"""Two-process DDP on CPU (gloo) through Lightning: ranks end with identical weights, and a
NaN on one rank stops both (no rank left waiting in an all-reduce).

The tests run this file as a script in a subprocess: Lightning's "ddp" strategy then starts
rank 1 by re-running the same script, and each rank writes its results to the output folder.
(Running "ddp" inside the pytest process would make Lightning re-launch pytest itself.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STEPS = 6


class _NaNOnRank1(torch.utils.data.Dataset):
    """On rank 1, every item after the first batch of 32 is NaN (so its step 1 is NaN)."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data, self.fetched = data, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        self.fetched += 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return self.data[i] * float("nan") if rank == 1 and self.fetched > 32 else self.data[i]


def _worker(out: Path, nan: bool) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from modaflow.core.nn import ResidualMLP, ResidualMLPConfig
    from modaflow.core.training import FlowMatchingConfig, FlowMatchingModule, NonFiniteLossError, TrainerArgs, fit

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ResidualMLP(ResidualMLPConfig(dim=2, hidden=16, depth=2, time_embed_dim=8))
    cfg = FlowMatchingConfig(lr=1e-2, ema_decay=0.9, log_every=1, ckpt_every=1 if nan else 3, max_steps=STEPS)
    module = FlowMatchingModule(model, None, cfg)
    data = torch.randn(512, 2, generator=torch.Generator().manual_seed(1)) + 2.0
    dataset = _NaNOnRank1(data) if nan else TensorDataset(data)
    loader = DataLoader(dataset, batch_size=32, shuffle=False)
    args = TrainerArgs(accelerator="cpu", devices=2, strategy="ddp", precision="32-true")
    try:
        result = fit(module, loader, out, args, progress=False)
    except NonFiniteLossError as e:
        (out / f"rank{module.global_rank}.err").write_text(str(e))
        _close()
        return
    state = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in module.ema.state_dict().items()})
    state["last_loss"] = module.last_loss.reshape(1)
    state["step"] = torch.tensor([result.step])
    save_file(state, str(out / f"rank{module.global_rank}.safetensors"))
    _close()


def _close() -> None:
    """Leave at once, the results written: at the interpreter's shutdown gloo's threads were once destroyed still
    joinable ("terminate called without an active exception", status -6, in a loaded CI run), and tearing the process
    group down first (destroy_process_group) hung in another. What the test checks is written before."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _launch(out: Path, mode: str) -> None:
    """Run the 2-rank job; kill its whole process group if it hangs."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen(
        [sys.executable, __file__, str(out), mode], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        raise AssertionError("the 2-rank DDP job hung:\n" + log[-3000:]) from None
    assert proc.returncode == 0, log[-3000:]


def test_two_cpu_ranks_agree(tmp_path):
    _launch(tmp_path, "train")
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


def test_nan_on_one_rank_stops_both(tmp_path):
    _launch(tmp_path, "nan")
    errors = [(tmp_path / f"rank{r}.err").read_text() for r in (0, 1)]
    assert "at step 1" in errors[0] and "on another rank" in errors[0]
    assert "training loss is nan (not finite) at step 1" in errors[1]
    assert all("last good checkpoint" in e and "(step 1) is intact" in e for e in errors)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), nan=sys.argv[2] == "nan")
