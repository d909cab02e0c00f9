"""The modality registry: one explicit table from a modality's name to the module that
defines it, imported only when asked for.

Each modality package ``modaflow.modalities.<name>`` defines a module-level ``MODALITY``
(a :class:`Modality`). The CLI (``modaflow train|sample|evaluate|finetune|bench <name>``)
and the data-card tests reach every modality through :func:`get_modality`, so adding a
modality is: write the package, add one line to :data:`MODALITIES`, add its data cards.

Imports are lazy: a modality whose optional dependencies are missing raises
:class:`ModalityUnavailable` naming the extra to install (``pip install modaflow[mri]``)
only when that modality is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from modaflow.core.config import Config

__all__ = [
    "DatasetInfo",
    "Modality",
    "ModalityCommand",
    "ModalityEntry",
    "MODALITIES",
    "ModalityUnavailable",
    "UnknownNameError",
    "get_modality",
    "modality_names",
    "list_datasets",
]


class UnknownNameError(KeyError):
    """An unknown modality or dataset name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the message as is
        return str(self.args[0])


class ModalityUnavailable(ImportError):
    """A registered modality whose optional dependencies are not installed."""


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset a modality can train on.

    Attributes:
        name: short name used on the command line (``--data NAME``).
        card: id of its data card, ``data_cards/<card>.md``.
        summary: one line for ``modaflow datasets``.
        load: ``load(split, seed) -> torch.utils.data.Dataset`` at the default size the
            card declares (``split`` is one of the card's ``splits``).
    """

    name: str
    card: str
    summary: str
    load: Callable[[str, int], Any]


@dataclass(frozen=True)
class ModalityCommand:
    """A subcommand only one modality has (``modaflow steer robotics ...``).

    Attributes:
        summary: one line for ``--help``.
        config_cls: its options, a :class:`~modaflow.core.config.Config` dataclass whose
            fields become ``--options`` (nested configs flattened, as for ``train``).
        run: ``run(cfg, out_dir) -> dict`` — ``out_dir`` is ``--out`` (None when not
            given); the returned dict is printed as JSON.
    """

    summary: str
    config_cls: type[Config]
    run: Callable[[Config, Path | None], dict]


@dataclass(frozen=True)
class Modality:
    """What a modality package provides so the CLI and benchmarks treat it like any other.

    Attributes:
        name: the registry name (``"toy"``).
        summary: one line.
        datasets: dataset name -> :class:`DatasetInfo`.
        config_cls: the recipe config (a :class:`~modaflow.core.config.Config` dataclass);
            by convention it has a ``data`` field (a dataset name or a file path), which
            ``--data`` sets, and the CLI turns its other fields into ``--options``.
        train: ``train(cfg, trainer_args, out_dir) -> dict`` — fit and write
            ``out_dir/checkpoints/*.safetensors`` and ``out_dir/config.json``; returns a
            summary (steps, final loss).
        sample: ``sample(ckpt_dir, n, steps, solver, out_path, seed) -> Path`` — write ``n``
            samples in the modality's natural file format; returns the path written.
        evaluate: ``evaluate(ckpt_dir, data, n, steps, solver, seed) -> dict[str, float]`` —
            metrics of samples against held-out data (``data=None``: the training dataset).
        finetune: ``finetune(ckpt_dir, data, out_dir, overrides, trainer_args) -> dict`` —
            continue training the checkpoint on new ``data``; ``overrides`` are config
            fields to change. A data shape that does not fit the model is an error.
        bench: ``bench(profile, out_dir, seed) -> BenchResult`` — run the modality's
            benchmark profile and write ``results.json``, ``report.md`` and plots.
        solvers: sampler names ``sample``/``evaluate`` accept (first = default).
        profiles: benchmark profile names ``bench`` accepts.
        sample_options: optional config of modality-specific options of ``sample`` and
            ``evaluate`` (a direction, a conditioning input, a temperature). When set, the
            CLI adds its fields as ``--options`` and calls ``sample(..., seed,
            options=cfg)`` and ``evaluate(..., seed, options=cfg)``.
        commands: subcommands only this modality has, name -> :class:`ModalityCommand`.
        sample_n: the default ``--n`` of ``sample`` and of ``evaluate`` (MRI volumes are
            large, so it asks for a few; points and sequences for thousands).
    """

    name: str
    summary: str
    datasets: dict[str, DatasetInfo]
    config_cls: type[Config]
    train: Callable[..., dict]
    sample: Callable[..., Path]
    evaluate: Callable[..., dict]
    finetune: Callable[..., dict]
    bench: Callable[..., Any]
    solvers: tuple[str, ...]
    profiles: tuple[str, ...] = ("smoke", "quick", "full", "gpu")
    sample_options: type[Config] | None = None
    commands: dict[str, ModalityCommand] = field(default_factory=dict)
    sample_n: tuple[int, int] = (1000, 2000)

    def dataset(self, name: str) -> DatasetInfo:
        """The dataset called ``name``; an unknown name lists the known ones."""
        if name not in self.datasets:
            raise UnknownNameError(
                f"unknown dataset {name!r} for modality {self.name!r}; known: {sorted(self.datasets)}"
            )
        return self.datasets[name]


@dataclass(frozen=True)
class ModalityEntry:
    """Where a modality lives and which extra its optional dependencies come with."""

    module: str
    """Import path of the package defining ``MODALITY``."""
    extra: str | None
    """``pip install modaflow[<extra>]`` installs its dependencies (None: core only)."""


MODALITIES: dict[str, ModalityEntry] = {
    "toy": ModalityEntry("modaflow.modalities.toy", None),
    "timeseries": ModalityEntry("modaflow.modalities.timeseries", "timeseries"),
    "language": ModalityEntry("modaflow.modalities.language", "language"),
    "mri": ModalityEntry("modaflow.modalities.mri", "mri"),
    "fmri": ModalityEntry("modaflow.modalities.fmri", "fmri"),
    "ephys": ModalityEntry("modaflow.modalities.ephys", "ephys"),
    "robotics": ModalityEntry("modaflow.modalities.robotics", "robotics"),
}
"""The registry: modality name -> entry. Explicit on purpose (no discovery, no globals)."""


def modality_names() -> list[str]:
    """Registered modality names, sorted."""
    return sorted(MODALITIES)


def get_modality(name: str) -> Modality:
    """Import and return the modality ``name``.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the known names).
        ModalityUnavailable: an optional dependency is missing (the message names the extra).
    """
    if name not in MODALITIES:
        raise UnknownNameError(f"unknown modality {name!r}; known: {modality_names()}")
    entry = MODALITIES[name]
    try:
        module = importlib.import_module(entry.module)
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        if entry.extra is None or missing == "modaflow" or missing.startswith("modaflow."):
            raise  # a broken modaflow module is a bug, not a missing extra
        raise ModalityUnavailable(
            f"modality {name!r} needs {missing!r}, which is not installed: "
            f"pip install modaflow[{entry.extra}]"
        ) from e
    modality = getattr(module, "MODALITY", None)
    if not isinstance(modality, Modality) or modality.name != name:
        raise TypeError(f"{entry.module}.MODALITY must be a Modality named {name!r}; got {modality!r}")
    return modality


def list_datasets() -> list[tuple[str, DatasetInfo]]:
    """``(modality, dataset)`` for every dataset of every installed modality; modalities
    whose optional dependencies are missing are skipped."""
    rows = []
    for name in modality_names():
        try:
            modality = get_modality(name)
        except ModalityUnavailable:
            continue
        rows += [(name, info) for _, info in sorted(modality.datasets.items())]
    return rows
