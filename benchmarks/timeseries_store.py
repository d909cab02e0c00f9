"""A finished dataset of the time-series benchmark, kept in the run folder so that a rerun
into the same folder (after an interruption, or with more datasets) evaluates only what is
missing. The ``full`` profile takes hours per dataset on a CPU; without this an interrupted
run would lose every dataset it had finished, while its trained models were already kept.

Layout: ``<out>/datasets/<ds>.json`` (numbers, tables, curves, notes, and the key it was
evaluated under) and ``<out>/datasets/<ds>.safetensors`` (the arrays the plots need: the
real windows, the plotted generated windows, the forecast fan). Both are written
atomically: the old JSON is removed first and the new one written after the arrays, so a
JSON file is present only beside its own arrays. Nothing is unpickled. A stored dataset is
reused only under the same key (the profile's sizes and the seed) and when its rows have
every column the current code reports; otherwise, or when its files cannot be read, it is
evaluated again and replaced.

A dataset being evaluated is also kept stage by stage (:func:`save_partial`), since one
dataset of the ``full`` profile takes hours: ``<out>/datasets/<ds>.partial.json`` and
``.partial.safetensors`` hold what the finished stages produced (the TS2Vec encoders'
weights, the sampler choice of each row, the timing, each scored row with its generated
windows, the reference rows, the curves), written the same atomic way after every stage.
A rerun under the same key continues after the last finished stage
(:func:`load_partial`); the files are removed once the dataset is stored whole."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modaflow.core.io import atomic_write, atomic_write_text

from .harness import git_commit, log

__all__ = ["STORE_DIR", "SCALARS", "PARTIAL_SCALARS", "Partial", "save_dataset", "load_dataset", "save_partial",
           "load_partial", "clear_partial"]

STORE_DIR = "datasets"
"""Folder of the stored datasets inside the run folder."""
SCALARS = ("metrics", "baselines", "timings", "curves", "losses", "rows", "sampler_notes", "channels")
"""Keys of a dataset's result that are kept as JSON (everything :func:`_run` and the plots read
besides the arrays)."""
FORMAT = 2
"""Version of the stored layout and of what its scores mean; another version is evaluated again (2: the
correlational score on the protocol's estimator, commit 9071d6b)."""


PARTIAL_SCALARS = ("metrics", "baselines", "timings", "curves", "losses", "rows", "choice", "speed")
"""Keys of a dataset's result kept as JSON while it is being evaluated (:func:`save_partial`)."""


def _paths(out: Path, ds: str, suffix: str = "") -> tuple[Path, Path]:
    folder = Path(out) / STORE_DIR
    return folder / f"{ds}{suffix}.json", folder / f"{ds}{suffix}.safetensors"


def _write(meta_path: Path, array_path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Arrays, then the JSON; the old JSON is removed first, so a JSON file is only ever
    present beside its own arrays."""
    from safetensors.numpy import save_file

    text = json.dumps(meta, indent=1, allow_nan=True) + "\n"  # before any write: a value JSON refuses loses nothing
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    atomic_write(array_path, lambda p: save_file(arrays, str(p)))
    atomic_write_text(meta_path, text)


def _canonical(key: Mapping[str, Any]) -> Any:
    """``key`` as it reads back from JSON (tuples become lists), for comparison."""
    return json.loads(json.dumps(key, sort_keys=True))


def save_dataset(out: Path, ds: str, res: Mapping[str, Any], key: Mapping[str, Any],
                 fakes: Mapping[str, np.ndarray]) -> Path:
    """Store the finished dataset ``ds`` of a run in ``out``: the :data:`SCALARS` of ``res``,
    ``res["real"]``, ``res["fan"]`` if present, and the generated windows ``fakes`` (label ->
    array; the plotted ones). ``key`` identifies the evaluation settings. Returns the JSON path."""
    from safetensors.numpy import save_file

    meta_path, array_path = _paths(out, ds)
    arrays = {"real": np.ascontiguousarray(res["real"])}
    arrays.update({f"fake/{label}": np.ascontiguousarray(x) for label, x in fakes.items()})
    meta = {"format": FORMAT, "key": _canonical(key), "commit": git_commit(), "fakes": list(fakes)}
    if "fan" in res:
        truth, samples, context = res["fan"]
        arrays.update({"fan/truth": np.ascontiguousarray(truth), "fan/samples": np.ascontiguousarray(samples)})
        meta["fan_context"] = int(context)
    meta.update({k: res[k] for k in SCALARS})
    _write(meta_path, array_path, meta, arrays)
    return meta_path


def load_dataset(out: Path, ds: str, key: Mapping[str, Any], row_fields: tuple[str, ...]) -> dict[str, Any] | None:
    """The dataset ``ds`` stored in ``out`` under ``key``, as the benchmark's per-dataset
    result (with ``reused`` naming the file and its commit); None when nothing is stored, when
    it was evaluated under other settings, when a model's row lacks one of ``row_fields`` (the
    columns the current code reports: an evaluation by older code), or when its files cannot be
    read (each logged)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta_path, array_path = _paths(out, ds)
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays = load_file(str(array_path))
        if not isinstance(meta, dict):
            raise TypeError(f"expected a JSON object, got {type(meta).__name__}")
        stale = meta.get("format") != FORMAT or meta.get("key") != _canonical(key) or any(
            f not in row for row in meta["rows"].values() if "model" in row for f in row_fields)
        if not stale:
            res = {k: meta[k] for k in SCALARS}
            res["real"] = arrays["real"]
            res["fakes"] = {label: arrays[f"fake/{label}"] for label in meta["fakes"]}
            if "fan_context" in meta:
                res["fan"] = (arrays["fan/truth"], arrays["fan/samples"], meta["fan_context"])
            res["channels"] = tuple(res["channels"])
            res["losses"] = {k: tuple(tuple(s) for s in v) for k, v in res["losses"].items()}
            res["reused"] = f"{meta_path} (commit {meta['commit']})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as err:
        log(f"{meta_path}: cannot reuse the stored {ds} ({type(err).__name__}: {err}); evaluating it again")
        return None
    if stale:
        log(f"{meta_path}: stored under other settings, format or columns; evaluating {ds} again")
        return None
    return res


@dataclass
class Partial:
    """What the finished stages of a dataset's evaluation produced (:func:`load_partial`).

    Attributes:
        done: names of the finished stages.
        scalars: the :data:`PARTIAL_SCALARS` of the result.
        draws: generated windows by ``(model, solver, nfe, shift)``, as the rows drew them.
        fakes: the row label of each draw a row produced (label -> key of ``draws``).
        encoders: the TS2Vec encoders' weights (name -> array), one dict per encoder.
    """

    done: list[str]
    scalars: dict[str, Any]
    draws: dict[tuple, np.ndarray] = field(default_factory=dict)
    fakes: dict[str, tuple] = field(default_factory=dict)
    encoders: list[dict[str, np.ndarray]] = field(default_factory=list)


def save_partial(out: Path, ds: str, key: Mapping[str, Any], state: Partial) -> None:
    """Keep the finished stages ``state`` of ``ds`` (evaluated under ``key``) in ``out``."""
    meta_path, array_path = _paths(out, ds, ".partial")
    draw_keys = list(state.draws)
    arrays = {f"draw/{i}": np.ascontiguousarray(state.draws[k]) for i, k in enumerate(draw_keys)}
    for j, weights in enumerate(state.encoders):
        arrays.update({f"encoder/{j}/{name}": np.ascontiguousarray(w) for name, w in weights.items()})
    meta = {"format": FORMAT, "key": _canonical(key), "commit": git_commit(), "done": list(state.done),
            "draws": [list(k) for k in draw_keys], "fakes": {label: draw_keys.index(k) for label, k in state.fakes.items()},
            "encoders": len(state.encoders), **{k: state.scalars[k] for k in PARTIAL_SCALARS}}
    _write(meta_path, array_path, meta, arrays)


def load_partial(out: Path, ds: str, key: Mapping[str, Any], row_fields: tuple[str, ...]) -> Partial | None:
    """The finished stages of ``ds`` kept in ``out`` under ``key``; None when nothing is kept,
    when it was kept under other settings, when a scored row lacks one of ``row_fields`` (kept
    by older code) or when its files cannot be read (each logged)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta_path, array_path = _paths(out, ds, ".partial")
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise TypeError(f"expected a JSON object, got {type(meta).__name__}")
        if meta.get("format") != FORMAT or meta.get("key") != _canonical(key) or any(
                f not in row for row in meta["rows"].values() if "model" in row for f in row_fields):
            log(f"{meta_path}: kept under other settings, format or columns; evaluating {ds} from the start")
            return None
        arrays = load_file(str(array_path))
        draw_keys = [tuple(k) for k in meta["draws"]]
        encoders = [{name.split("/", 2)[2]: w for name, w in arrays.items() if name.startswith(f"encoder/{j}/")}
                    for j in range(meta["encoders"])]
        state = Partial(done=list(meta["done"]), scalars={k: meta[k] for k in PARTIAL_SCALARS},
                        draws={k: arrays[f"draw/{i}"] for i, k in enumerate(draw_keys)},
                        fakes={label: draw_keys[i] for label, i in meta["fakes"].items()}, encoders=encoders)
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, SafetensorError) as err:
        log(f"{meta_path}: cannot continue from it ({type(err).__name__}: {err}); evaluating {ds} from the start")
        return None
    log(f"{meta_path}: continuing {ds} after {len(state.done)} finished stages (commit {meta['commit']})")
    return state


def clear_partial(out: Path, ds: str) -> None:
    """Remove the stage files of ``ds`` (once the whole dataset is stored)."""
    for path in _paths(out, ds, ".partial"):
        path.unlink(missing_ok=True)
