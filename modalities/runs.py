"""Run folders shared by every modality.

``modaflow train <modality> --out OUT`` leaves::

    OUT/recipe.json                 {"modality": name, "config": <recipe config>}, written first
    OUT/config.json                 the flow-matching / trainer / model configs (core fit)
    OUT/checkpoints/last.safetensors (+ last.json)   weights, EMA, optimiser, step
    OUT/metrics.csv                 step, loss

so ``sample``, ``evaluate`` and ``finetune`` rebuild the model from ``recipe.json`` alone.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from modaflow.core.config import Config, ConfigError
from modaflow.core.io import atomic_write_text
from modaflow.core.training import EMA, CheckpointError, checkpoint_path, load_checkpoint

__all__ = ["RECIPE_FILE", "RESUMABLE", "absolute_source", "save_recipe", "load_recipe", "load_weights"]

RECIPE_FILE = "recipe.json"
C = TypeVar("C", bound=Config)


RESUMABLE: frozenset[str] = frozenset({"max_steps", "log_every", "ckpt_every"})
"""Recipe fields that may change when training resumes in a run folder (how long, how often)."""


def _absolute(path: str) -> str:
    p = Path(path).expanduser()
    return str(p.resolve()) if path and p.exists() else path


def absolute_source(data: str, prefixes: Collection[str] = (), names: Collection[str] = ()) -> str:
    """``--data`` as a run stores it: a path to an existing file or folder, bare or after one of
    ``prefixes`` (``bids:``, ``nwb:``, ...), made absolute with ``~`` expanded, so that ``sample``,
    ``evaluate`` and ``finetune`` find it from any working directory (stored as typed, a relative
    path broke them everywhere but in the folder training ran from). A dataset of ``names``, or
    anything that names no existing path, stays as it is."""
    if data in names:
        return data
    kind, sep, rest = data.partition(":")
    if sep and kind in prefixes:
        return f"{kind}:{_absolute(rest)}"
    return _absolute(data)


def _same_source(stored: object, new: object) -> bool:
    """Whether a recipe's stored ``data`` (relative, written before :func:`absolute_source`)
    names the same path as ``new`` from the working directory of this rerun."""
    if not isinstance(stored, str) or not isinstance(new, str):
        return False
    kind, sep, rest = stored.partition(":")
    return new in (_absolute(stored), f"{kind}:{_absolute(rest)}" if sep else None)


def _differences(old: object, new: object, where: str = "") -> list[str]:
    """Dotted names of the leaves where two ``to_dict`` trees differ, ignoring :data:`RESUMABLE`."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in _differences(old.get(k), new.get(k), f"{where}.{k}" if where else k)]
    return [] if old == new or where.rsplit(".", 1)[-1] in RESUMABLE else [where]


def save_recipe(out_dir: str | Path, modality: str, cfg: Config, absent: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir/recipe.json`` atomically; returns its path.

    A folder that already holds a run is never overwritten with another one: another
    modality's recipe, or a trained run (a checkpoint) whose recipe differs in more than
    :data:`RESUMABLE`, raises :class:`ConfigError` before anything is written, so a rerun
    that would fail (a model that no longer fits the checkpoint) or mix two runs (new data
    on old weights) leaves the trained run usable. A stored recipe's missing fields read as
    ``absent`` says (what :func:`load_recipe` reads them as), else as their defaults."""
    path = Path(out_dir) / RECIPE_FILE
    config = cfg.to_dict()
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e}); move it away or choose another --out") from None
        found = old.get("modality") if isinstance(old, dict) else None
        if found != modality:
            raise ConfigError(f"{path}: {Path(out_dir)} holds a run of modality {found!r}, not {modality!r}; "
                              "choose another --out")
        stored_config = old.get("config")
        if absent and isinstance(stored_config, dict):
            stored_config = {**absent, **stored_config}
        try:  # fields the stored recipe lacks (written by an older version) read as load_recipe reads them
            stored = type(cfg).from_dict(stored_config).to_dict()
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}; choose another --out") from None
        stored = json.loads(json.dumps(stored))
        if stored.get("data") != config.get("data") and _same_source(stored.get("data"), config.get("data")):
            stored["data"] = config["data"]  # a run that stored its path relative, resumed from the same folder
        changed = _differences(stored, json.loads(json.dumps(config)))
        if changed and checkpoint_path(out_dir).is_file():
            shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
            raise ConfigError(f"{path}: {Path(out_dir)} holds a trained {modality} run whose recipe differs in {shown}; "
                              "resuming it with these settings would break or mix the two runs. Choose another --out, "
                              f"or start from it with 'modaflow finetune {modality} --ckpt {out_dir}'")
    text = json.dumps({"modality": modality, "config": config}, indent=2, sort_keys=True)
    atomic_write_text(path, text + "\n")
    return path


def load_recipe(ckpt_dir: str | Path, modality: str, cfg_cls: type[C],
                inert: Callable[[dict], dict[str, Any]] | None = None, absent: Mapping[str, Any] | None = None) -> C:
    """The recipe config of the run folder ``ckpt_dir``; errors name the file and say what
    was expected (a missing file, another modality's run, bad fields).

    ``inert(config)``: for a recipe that a later version's validation refuses, the fields
    that never affected a trained run (options it accepted and ignored) as ``{"section.field":
    default}``; where the stored value differs, it is read as the default, with a warning,
    so that older runs still load. Any other refusal is raised as before.

    ``absent``: values of top-level fields for a recipe written before they existed, where the
    new default would change what an older run computes (read as the behaviour it was trained with)."""
    path = Path(ckpt_dir) / RECIPE_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: not found; --ckpt must be a run folder written by 'modaflow train {modality}'")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("modality") != modality:
        found = data.get("modality") if isinstance(data, dict) else None
        raise ConfigError(f"{path}: a run of modality {found!r}, expected {modality!r}")
    config = data.get("config")
    if absent and isinstance(config, dict):
        config = {**absent, **config}
    try:
        return cfg_cls.from_dict(config)
    except ConfigError as e:
        error = ConfigError(f"{path}: {e}")
    if inert is None or not isinstance(config, dict):
        raise error
    reset = []
    for name, default in inert(config).items():
        section, field = name.split(".")
        if isinstance(config.get(section), dict) and field in config[section] and config[section][field] != default:
            config[section][field] = default
            reset.append(name)
    try:
        cfg = cfg_cls.from_dict(config) if reset else None
    except ConfigError:
        cfg = None
    if cfg is None:
        raise error
    warnings.warn(f"{path}: {', '.join(reset)} had no effect on this run (the {modality} recipe never read them); "
                  "read as their defaults", stacklevel=2)
    return cfg


def load_weights(ckpt_dir: str | Path, model: nn.Module, use_ema: bool = True) -> int:
    """Load ``ckpt_dir/checkpoints/last.safetensors`` into ``model`` (its EMA weights when
    ``use_ema`` and the checkpoint has them); returns the checkpoint's step."""
    path = checkpoint_path(ckpt_dir)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; has training written one yet?")
    ema = EMA(model) if use_ema else None
    ckpt = load_checkpoint(path, model, ema=ema if use_ema else None)
    if ema is not None:
        ema.copy_to(model)
    return ckpt.step
