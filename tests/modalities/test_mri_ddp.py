"""MRI training on two processes through Lightning's DDP strategy (gloo on the CPU), from the
CLI as a user runs it: both ranks train, rank 0 writes the checkpoint atomically, and the
run restores. (Sharded strategies such as FSDP are refused by ``TrainerArgs``: the EMA and the
checkpoints need whole parameters; see ``SHARDED_STRATEGIES``.)"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from modaflow.modalities.mri.recipe import restore


def test_two_process_ddp_training_from_the_cli(tmp_path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "modaflow.benchmarks.cli", "train", "mri", "--out", str(out),
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
           "--size", "16", "--n-train", "8", "--n-test", "2", "--channels", "8", "16",
           "--attention-levels", "false", "true", "--num-res-blocks", "1", "--norm-num-groups", "4",
           "--batch-size", "2", "--max-steps", "2", "--ckpt-every", "2", "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Starting with 2 processes" in log and "GLOBAL_RANK: 1" in log
    assert (out / "checkpoints" / "last.safetensors").is_file()
    cfg, _, net = restore(out)
    assert cfg.fm.max_steps == 2
    assert all(torch.isfinite(p).all() for p in net.parameters())
