"""MRI training on two processes through Lightning's DDP and through modaflow's FSDP path (FSDP2
through Lightning's ModelParallelStrategy), gloo on the CPU, from the CLI as a user runs it:
both ranks train, rank 0 writes the checkpoint atomically, the run restores, and the FSDP run
(with activation checkpointing, as on a GPU) ends with the same whole weights as DDP."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from modaflow.modalities.mri.recipe import restore


def test_two_process_ddp_and_fsdp_training_from_the_cli(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = {}
    for strategy in ("ddp", "fsdp"):
        cmd = [sys.executable, "-m", "modaflow.benchmarks.cli", "train", "mri", "--out", str(tmp_path / strategy),
               "--accelerator", "cpu", "--devices", "2", "--strategy", strategy,
               "--size", "16", "--n-train", "8", "--n-test", "2", "--channels", "8", "16",
               "--attention-levels", "false", "true", "--num-res-blocks", "1", "--norm-num-groups", "4",
               "--batch-size", "2", "--max-steps", "2", "--ckpt-every", "2", "--log-every", "1",
               "--activation-checkpointing"]
        procs[strategy] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for strategy, proc in procs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{strategy}:\n" + log[-3000:]
        assert "Starting with 2 processes" in log and "GLOBAL_RANK: 1" in log
        out = tmp_path / strategy
        assert (out / "checkpoints" / "last.safetensors").is_file()
        cfg, _, net = restore(out)
        assert cfg.fm.max_steps == 2
        assert all(torch.isfinite(p).all() for p in net.parameters())
    ddp, fsdp = (load_file(str(tmp_path / s / "checkpoints" / "last.safetensors")) for s in ("ddp", "fsdp"))
    assert sorted(ddp) == sorted(fsdp)
    for k in ddp:  # the same training; only the order of the gradient reductions differs
        torch.testing.assert_close(fsdp[k], ddp[k], rtol=1e-5, atol=1e-6, msg=k)
