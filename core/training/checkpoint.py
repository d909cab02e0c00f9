"""Checkpoints as safetensors + JSON, written atomically; never pickle.

A checkpoint ``<name>.safetensors`` holds the tensors under prefixed keys: ``model.<name>``
(the model's state dict), ``ema.<key>`` (:meth:`EMA.state_dict`) and ``optimizer.<...>``
(every tensor of the optimiser's state dict). The sidecar ``<name>.json`` holds the rest:
step, config, the optimiser's structure and scalars (tensors replaced by
``{"__tensor__": key}``) and free-form ``extra`` data. The same JSON is also embedded in the
safetensors header, with a random ``checkpoint_id`` in both: if a crash falls between the
two renames, or the sidecar is lost, loading notices the mismatch and uses the embedded copy.

Loading checks everything before touching the model and raises :class:`CheckpointError`
naming the file: missing, truncated or corrupt files, missing/unexpected keys, shape
mismatches, and (through :class:`~modaflow.core.config.ConfigError`) bad config fields.
"""

from __future__ import annotations

import json
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..config import Config, ConfigError
from .sharding import reshard_optimizer_state
from ..io import atomic_write, atomic_write_text
from .ema import EMA

__all__ = ["Checkpoint", "CheckpointError", "save_checkpoint", "read_checkpoint", "apply_checkpoint", "load_checkpoint"]

FORMAT = "modaflow-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model / optimiser."""


@dataclass(frozen=True)
class Checkpoint:
    """The content of one checkpoint, tensors on the CPU.

    Attributes:
        path: the ``.safetensors`` file.
        step: optimiser steps completed when it was written.
        model: the model's state dict.
        ema: :meth:`EMA.state_dict`, or None.
        optimizer: the optimiser's state dict (structure restored, tensors in place), or None.
        config: the config as a typed ``Config`` if ``config_cls`` was given, else the raw
            dict (or None).
        extra: free-form JSON data saved with it (loss history, model config, ...).
    """

    path: Path
    step: int
    model: dict[str, Tensor]
    ema: dict[str, Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    config: Config | dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _resolve(path: str | Path) -> Path:
    """A directory means ``<dir>/last.safetensors``."""
    path = Path(path)
    return path / "last.safetensors" if path.is_dir() else path


def _flatten(obj: Any, key: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-able structure of ``obj`` with its tensors moved into ``tensors`` under ``key``."""
    if isinstance(obj, Tensor):
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _flatten(v, f"{key}.{k}", tensors) for k, v in obj.items()}
        if all(isinstance(k, int) for k in obj):
            return {"__int_keys__": {str(k): _flatten(v, f"{key}.{k}", tensors) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {key!r} of type {type(obj).__name__} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {"__tensor__"}:
        return tensors[obj["__tensor__"]]
    if set(obj) == {"__int_keys__"}:
        return {int(k): _unflatten(v, tensors) for k, v in obj["__int_keys__"].items()}
    if set(obj) == {"__tuple__"}:
        return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    return {k: _unflatten(v, tensors) for k, v in obj.items()}


def _cpu_unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached contiguous CPU tensors; tensors sharing storage (tied weights) are cloned,
    as safetensors refuses shared memory."""
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen and v.numel() else v
        seen.add(ptr)
    return out


def save_checkpoint(
    path: str | Path,
    model: nn.Module | dict[str, Tensor],
    *,
    step: int,
    ema: EMA | dict[str, Tensor] | None = None,
    optimizer: torch.optim.Optimizer | dict[str, Any] | None = None,
    config: Config | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``path`` (``.safetensors``; a directory means ``<dir>/last.safetensors``) and
    its sidecar ``.json``, each atomically. Returns the ``.safetensors`` path. ``model``,
    ``ema`` and ``optimizer`` may also be their state dicts (e.g. gathered from FSDP shards)."""
    path = _resolve(path)
    tensors = {f"model.{k}": v for k, v in (model if isinstance(model, dict) else model.state_dict()).items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in (ema if isinstance(ema, dict) else ema.state_dict()).items()})
    opt_state = optimizer if optimizer is None or isinstance(optimizer, dict) else optimizer.state_dict()
    opt_structure = None if opt_state is None else _flatten(opt_state, "optimizer", tensors)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint_id": uuid.uuid4().hex,
        "step": int(step),
        "config_class": None if config is None else type(config).__name__,
        "config": None if config is None else config.to_dict(),
        "has_ema": ema is not None,
        "optimizer": opt_structure,
        "extra": extra or {},
    }
    text = json.dumps(meta, indent=1, sort_keys=True)
    header = {"format": FORMAT, "meta": text}
    tensors = _cpu_unshared(tensors)
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=header))
    atomic_write_text(path.with_suffix(".json"), text + "\n")
    return path


def _read_meta(path: Path, embedded: str) -> dict[str, Any]:
    """The sidecar JSON if it belongs to ``path``, else the copy embedded in its header."""
    emb = json.loads(embedded)
    side = path.with_suffix(".json")
    if not side.exists():
        warnings.warn(f"{side} is missing; using the metadata embedded in {path}", stacklevel=3)
        return emb
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{side}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("checkpoint_id") != emb.get("checkpoint_id"):
        warnings.warn(
            f"{side} does not belong to {path} (checkpoint ids differ: an interrupted write?); "
            f"using the metadata embedded in {path}",
            stacklevel=3,
        )
        return emb
    if not isinstance(meta.get("step"), int) or meta["step"] < 0:
        raise CheckpointError(f"{side}: field 'step' must be an integer >= 0; got {meta.get('step')!r}")
    return meta


def read_checkpoint(path: str | Path, config_cls: type[Config] | None = None) -> Checkpoint:
    """Read and check a checkpoint without applying it. With ``config_cls`` the config is
    validated into that class (bad fields raise ``ConfigError`` naming the file and field)."""
    path = _resolve(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as e:  # SafetensorError, OSError: truncated, corrupt, unreadable
        raise CheckpointError(f"{path}: not a readable safetensors file, it may be truncated or corrupt ({e})") from None
    if header.get("format") != FORMAT or "meta" not in header:
        raise CheckpointError(f"{path}: a safetensors file but not a modaflow checkpoint (no '{FORMAT}' header)")
    meta = _read_meta(path, header["meta"])
    config = meta.get("config")
    if config_cls is not None and config is not None:
        try:
            config = config_cls.from_dict(config)
        except ConfigError as e:
            raise ConfigError(f"{path.with_suffix('.json')}: {e}") from None

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    opt = meta.get("optimizer")
    try:
        optimizer = None if opt is None else _unflatten(opt, tensors)
    except KeyError as e:
        raise CheckpointError(f"{path}: optimizer tensor {e} listed in the JSON is missing") from None
    return Checkpoint(
        path=path,
        step=int(meta["step"]),
        model=part("model."),
        ema=part("ema.") if meta.get("has_ema") else None,
        optimizer=optimizer,
        config=config,
        extra=meta.get("extra") or {},
    )


def _check_state(path: Path, what: str, saved: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    shapes = [
        f"{k}: saved {tuple(saved[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in saved and saved[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:10]) + (" ..." if len(shapes) > 10 else ""))
    if problems:
        raise CheckpointError(f"{path}: {what} does not match the checkpoint: " + ", ".join(problems))


def apply_checkpoint(
    ckpt: Checkpoint,
    model: nn.Module | None = None,
    ema: EMA | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Load the parts of ``ckpt`` into the given objects, after checking every key and shape."""
    if model is not None:
        _check_state(ckpt.path, "the model", ckpt.model, model.state_dict())
    if ema is not None:
        if ckpt.ema is None:
            raise CheckpointError(f"{ckpt.path}: has no EMA weights")
        _check_state(ckpt.path, "the EMA", ckpt.ema, ema.state_dict())
    if optimizer is not None and ckpt.optimizer is None:
        raise CheckpointError(f"{ckpt.path}: has no optimizer state")
    if model is not None:
        model.load_state_dict(ckpt.model)
    if ema is not None:
        ema.load_state_dict(ckpt.ema)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(ckpt.optimizer)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt.path}: optimizer state does not fit this optimizer ({e})") from None
        reshard_optimizer_state(optimizer)  # whole moments -> this rank's shards under FSDP


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    *,
    ema: EMA | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    config_cls: type[Config] | None = None,
) -> Checkpoint:
    """:func:`read_checkpoint` then :func:`apply_checkpoint`; returns the checkpoint."""
    ckpt = read_checkpoint(path, config_cls)
    apply_checkpoint(ckpt, model, ema, optimizer)
    return ckpt
