"""``fit``: train a :class:`FlowMatchingModule` with Lightning, with our own checkpoints.

Lightning runs the loop (devices, DDP/multi-node, precision, progress bar); its pickle
checkpoints are switched off. Instead a callback writes ``OUT/checkpoints/last.safetensors``
(+ ``last.json``) every ``ckpt_every`` steps and at the end, on rank 0, after checking that
no loss so far was NaN/Inf, so a checkpoint never holds a diverged model. ``fit`` resumes
from that file: weights, EMA, optimiser state and step; Lightning then runs only the
remaining steps, and the module counts steps from the resumed one (``step_offset``).

Files under ``OUT``: ``config.json`` (the run's configs), ``checkpoints/last.*``,
``metrics.csv`` (``step,loss`` every ``log_every`` steps and at the last one, over resumes too).
"""

from __future__ import annotations

import json
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from ..config import Config
from ..io import atomic_write_text
from .checkpoint import Checkpoint, apply_checkpoint, read_checkpoint, save_checkpoint
from .sharding import gather, is_sharded
from .config import FlowMatchingConfig, TrainerArgs
from .module import FlowMatchingModule, NonFiniteLossError

__all__ = ["fit", "FitResult", "checkpoint_path", "TrainingInterrupted"]


class TrainingInterrupted(SystemExit):
    """Training stopped by SIGTERM (a scheduler's preemption or time limit, ``kill``): the
    steps done are checkpointed and the process exits with status 143 (128 + SIGTERM), so that
    a job script sees that it did not finish; rerunning the same command resumes. (Lightning's
    own exception exits with status 0, as if training had completed.) Tested in one process and
    with SIGTERM to rank 0 of two DDP ranks; when every rank is signalled (SLURM), Lightning 2.6's
    own handler broadcasts from each rank and can hang before this is reached."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(128 + int(signal.SIGTERM))
        self.step, self.checkpoint = step, checkpoint


@dataclass(frozen=True)
class FitResult:
    """What a :func:`fit` call did.

    Attributes:
        out_dir: the run folder.
        checkpoint: ``out_dir/checkpoints/last.safetensors``.
        start_step: the step it resumed from (0 for a fresh run).
        step: optimiser steps completed at the end.
        history: ``(step, loss)`` pairs recorded every ``log_every`` steps and at the last one on rank 0,
            including those before a resume.
    """

    out_dir: Path
    checkpoint: Path
    start_step: int
    step: int
    history: tuple[tuple[int, float], ...]


def checkpoint_path(out_dir: str | Path) -> Path:
    """``out_dir/checkpoints/last.safetensors``."""
    return Path(out_dir) / "checkpoints" / "last.safetensors"


def _model_config(module: FlowMatchingModule) -> dict[str, Any] | None:
    cfg = getattr(module.model, "cfg", None)
    return cfg.to_dict() if isinstance(cfg, Config) else None


class _Checkpointer(Callback):
    """Writes checkpoints, config.json and metrics.csv; restores the optimiser on resume."""

    def __init__(self, out_dir: Path, run_config: dict[str, Any], resume: Checkpoint | None,
                 history: list[tuple[int, float]]) -> None:
        self.out_dir, self.run_config, self.resume, self.history = out_dir, run_config, resume, history
        self.saved_step = resume.step if resume is not None else -1

    def on_fit_start(self, trainer: L.Trainer, module: FlowMatchingModule) -> None:
        if self.resume is not None:
            apply_checkpoint(self.resume, optimizer=trainer.optimizers[0])
            self.resume = None  # free the tensors
        if trainer.is_global_zero:
            text = json.dumps(self.run_config, indent=2, sort_keys=True)
            atomic_write_text(self.out_dir / "config.json", text + "\n")

    def on_train_batch_end(self, trainer: L.Trainer, module: FlowMatchingModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step, cfg = module.steps_done, module.cfg
        if (step % cfg.log_every == 0 or step == trainer.max_steps) and module.last_loss is not None:  # the last step too
            self.history.append((step, float(module.last_loss)))
        if step % cfg.ckpt_every == 0:
            self.save(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: FlowMatchingModule) -> None:
        if module.steps_done != self.saved_step:
            self.save(trainer, module)

    def on_exception(self, trainer: L.Trainer, module: FlowMatchingModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and module.steps_done != self.saved_step:
            self.save(trainer, module)  # a preempted job loses no step: the rerun resumes from here

    def save(self, trainer: L.Trainer, module: FlowMatchingModule) -> None:
        module.check_finite_loss()  # never write a model that saw a NaN/Inf loss
        step = module.steps_done
        states = (module.model.state_dict(), module.ema.state_dict(), trainer.optimizers[0].state_dict())
        if is_sharded(module.model):  # FSDP: every rank joins the all-gathers, rank 0 writes whole tensors
            states = gather(states)
        if trainer.is_global_zero:
            model_state, ema_state, optimizer_state = states
            save_checkpoint(
                checkpoint_path(self.out_dir),
                model_state,
                step=step,
                ema=ema_state,
                optimizer=optimizer_state,
                config=module.cfg,
                extra={"history": self.history, "model_config": _model_config(module)},
            )
            rows = "".join(f"{s},{loss!r}\n" for s, loss in self.history)
            atomic_write_text(self.out_dir / "metrics.csv", "step,loss\n" + rows)
        self.saved_step = step


def _warn_config_changes(saved: Config | dict | None, current: FlowMatchingConfig, path: Path) -> None:
    if not isinstance(saved, FlowMatchingConfig):
        return
    old, new = saved.to_dict(), current.to_dict()
    changed = sorted(k for k in new if old.get(k) != new[k])
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        warnings.warn(f"resuming from {path} with a changed {type(current).__name__} ({diffs})", stacklevel=3)


def fit(
    module: FlowMatchingModule,
    train_loader: DataLoader | L.LightningDataModule,
    out_dir: str | Path,
    trainer_args: TrainerArgs | None = None,
    max_steps: int | None = None,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """Train ``module`` until ``max_steps`` optimiser steps (default ``module.cfg.max_steps``).

    Args:
        module: the flow-matching module.
        train_loader: a DataLoader (or LightningDataModule) of batches (see
            :data:`~modaflow.core.training.module.Batch`); it is cycled as needed.
        out_dir: run folder; checkpoints go to ``out_dir/checkpoints``.
        trainer_args: devices / nodes / strategy / precision / accelerator for Lightning.
        max_steps: total steps, counting those already done before a resume.
        resume: continue from ``out_dir/checkpoints/last.safetensors`` if it exists (a fresh
            run otherwise; ``resume=False`` starts over and overwrites it). The data order
            is not restored: the loader starts a new pass (under DDP Lightning's
            DistributedSampler reshuffles from epoch 0), so a resumed run equals an
            uninterrupted one bit for bit only when the resume falls on an epoch boundary of
            an unshuffled single-device loader.
        progress: show Lightning's progress bar.

    Raises:
        NonFiniteLossError: the loss became NaN/Inf; the message names the last good
            checkpoint, which is left intact.
        CheckpointError: the checkpoint to resume from is unreadable or does not fit.
    """
    out, cfg = Path(out_dir), module.cfg
    trainer_args = trainer_args or TrainerArgs()
    total = cfg.max_steps if max_steps is None else max_steps
    ckpt_file = checkpoint_path(out)
    ckpt, history = None, []
    if resume and ckpt_file.exists():
        ckpt = read_checkpoint(ckpt_file, type(cfg))  # FlowMatchingConfig or a subclass (FlowMapConfig)
        _warn_config_changes(ckpt.config, cfg, ckpt_file)
        apply_checkpoint(ckpt, model=module.model, ema=module.ema)
        history = [(int(s), float(v)) for s, v in ckpt.extra.get("history", []) if s <= ckpt.step]
    start = ckpt.step if ckpt is not None else 0
    module.step_offset = start
    if start >= total:
        return FitResult(out, ckpt_file, start, start, tuple(history))
    run_config = {
        "flow_matching": cfg.to_dict(),
        "trainer": trainer_args.to_dict(),
        "model": _model_config(module),
        "max_steps": total,
    }
    callback = _Checkpointer(out, run_config, ckpt, history)
    trainer = L.Trainer(
        **trainer_args.trainer_kwargs(),
        max_steps=total - start,
        enable_checkpointing=False,  # Lightning's checkpoints are pickles; ours are safetensors
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        gradient_clip_val=cfg.grad_clip or None,
        log_every_n_steps=cfg.log_every,
        num_sanity_val_steps=0,
        default_root_dir=out,
        callbacks=[callback],
    )
    try:
        trainer.fit(module, train_loader)
    except NonFiniteLossError as e:
        if callback.saved_step >= 0:
            detail = f"; the last good checkpoint {ckpt_file} (step {callback.saved_step}) is intact"
        else:
            detail = "; no checkpoint had been written yet"
        raise NonFiniteLossError(e.step, e.loss, detail) from e
    except SIGTERMException:
        sys.stderr.write(f"training stopped by SIGTERM after step {callback.saved_step}; checkpoint {ckpt_file}; "
                         f"rerun the same command to resume\n")
        raise TrainingInterrupted(callback.saved_step, ckpt_file) from None
    return FitResult(out, ckpt_file, start, module.steps_done, tuple(history))
