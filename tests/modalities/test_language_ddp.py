"""FLM training and FMLM distillation on two processes (gloo on the CPU), from the CLI as a user
runs it, through Lightning's DDP and through modaflow's FSDP path (FSDP2 through Lightning's
ModelParallelStrategy): FLM's loss calls the DiT's parts inside ``DiT.apply_parts`` and FMLM's
DiT is nested in its flow map, and both end with the same whole weights as DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from modaflow.modalities.language.recipe import restore

LINES = ["Now is the winter of our discontent", "Made glorious summer by this sun of York;",
         "And all the clouds that lour'd upon our house", "In the deep bosom of the ocean buried."]


def _train(jobs: dict[str, list[str]]) -> None:
    """Run the CLI commands of ``jobs`` at once; each must train on 2 ranks and exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    procs = {name: subprocess.Popen([sys.executable, "-m", "modaflow.benchmarks.cli", "train", "language", *args],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for name, args in jobs.items()}
    for name, proc in procs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}:\n" + log[-3000:]
        assert "Starting with 2 processes" in log and "GLOBAL_RANK: 1" in log, name


def _assert_same_weights(a: Path, b: Path) -> None:
    ddp, fsdp = (load_file(str(run / "checkpoints" / "last.safetensors")) for run in (a, b))
    assert sorted(ddp) == sorted(fsdp)
    for k in ddp:  # the same training; only the order of the gradient reductions differs
        torch.testing.assert_close(fsdp[k], ddp[k], rtol=1e-5, atol=1e-6, msg=k)


def test_flm_and_fmlm_train_the_same_under_fsdp_as_under_ddp(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(10):
        (corpus / f"{i}.txt").write_text("\n\n".join(LINES[(i + k) % 4] for k in range(6)) + "\n")
    shape = ["--block-len", "16", "--dim", "16", "--depth", "2", "--heads", "2", "--batch-size", "4",
             "--log-every", "1", "--accelerator", "cpu", "--devices", "2"]
    _train({s: ["--data", str(corpus), "--method", "flm", "--out", str(tmp_path / f"flm-{s}"), "--strategy", s,
                "--max-steps", "3", "--ckpt-every", "3", *shape] for s in ("ddp", "fsdp")})
    _assert_same_weights(tmp_path / "flm-ddp", tmp_path / "flm-fsdp")
    cfg, _, net = restore(tmp_path / "flm-fsdp")  # whole tensors, single-device layout
    assert cfg.method == "flm" and all(torch.isfinite(p).all() for p in net.parameters())

    teacher = str(tmp_path / "flm-ddp")  # one teacher for both students
    _train({s: ["--data", str(corpus), "--method", "fmlm", "--teacher", teacher, "--out", str(tmp_path / f"fmlm-{s}"),
                "--strategy", s, "--max-steps", "2", "--ckpt-every", "2", *shape] for s in ("ddp", "fsdp")})
    _assert_same_weights(tmp_path / "fmlm-ddp", tmp_path / "fmlm-fsdp")
    cfg, _, net = restore(tmp_path / "fmlm-fsdp")
    assert cfg.method == "fmlm" and all(torch.isfinite(p).all() for p in net.parameters())
