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
evaluated again and replaced."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modaflow.core.io import atomic_write, atomic_write_text

from .harness import git_commit, log

__all__ = ["STORE_DIR", "SCALARS", "save_dataset", "load_dataset"]

STORE_DIR = "datasets"
"""Folder of the stored datasets inside the run folder."""
SCALARS = ("metrics", "baselines", "timings", "curves", "losses", "rows", "sampler_notes", "channels")
"""Keys of a dataset's result that are kept as JSON (everything :func:`_run` and the plots read
besides the arrays)."""
FORMAT = 1
"""Version of the stored layout; another version is evaluated again."""


def _paths(out: Path, ds: str) -> tuple[Path, Path]:
    folder = Path(out) / STORE_DIR
    return folder / f"{ds}.json", folder / f"{ds}.safetensors"


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
    text = json.dumps(meta, indent=1, allow_nan=True) + "\n"  # before any write: a value JSON refuses loses nothing
    meta_path.unlink(missing_ok=True)  # an older JSON never stays beside the new arrays if this is interrupted
    atomic_write(array_path, lambda p: save_file(arrays, str(p)))
    atomic_write_text(meta_path, text)
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
