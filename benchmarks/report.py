"""Reports of benchmark runs: ``report.md`` beside ``results.json``, PNG plots (matplotlib,
Agg backend, imported lazily) and a plain-text table for the terminal."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modaflow.core.io import atomic_write, atomic_write_text

from .harness import BenchResult, Metric

__all__ = ["format_metric", "results_table", "write_report", "plot_curves", "plot_scatter", "plot_loss"]


def format_metric(value: Metric | None) -> str:
    """``0.0123`` -> ``"0.0123"``; ``{"mean", "ci95"}`` -> ``"0.0123 ± 0.0004"``."""
    if value is None:
        return "n/a"
    if isinstance(value, Mapping):
        return f"{value['mean']:.4g} ± {value['ci95']:.2g}"
    return f"{value:.4g}"


def _rows(result: BenchResult) -> list[tuple[str, str, str]]:
    rows = [("metric", k, format_metric(v)) for k, v in result.metrics.items()]
    for base, metrics in result.baselines.items():
        rows += [(f"baseline {base}", k, format_metric(v)) for k, v in metrics.items()]
    rows += [("timing", k, format_metric(v)) for k, v in result.timings.items()]
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    else:
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def results_table(results: Sequence[BenchResult]) -> str:
    """One plain-text table of every metric, baseline and timing of ``results``."""
    rows = [(r.modality, kind, name, val) for r in results for kind, name, val in _rows(r)]
    return _table(("modality", "kind", "name", "value"), rows, markdown=False)


def write_report(result: BenchResult, out_dir: str | Path) -> Path:
    """Write ``out_dir/report.md``: run metadata, tables and the plots; returns its path."""
    out_dir = Path(out_dir)
    hw, ver = result.hardware, result.versions
    lines = [
        f"# modaflow benchmark: {result.modality} ({result.profile})",
        "",
        f"- seed: {result.seed}",
        f"- commit: `{result.commit}`",
        f"- hardware: {hw.get('cpu')} ({hw.get('cores')} cores, {hw.get('torch_threads')} torch threads), GPU: {hw.get('gpu') or 'none'}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()),
        "",
        "## Metrics",
        "",
        _table(("name", "value"), [(k, format_metric(v)) for k, v in result.metrics.items()], markdown=True),
        "",
    ]
    if result.baselines:
        lines += ["## Baselines (same run, same data and seeds)", ""]
        rows = [(b, k, format_metric(v)) for b, ms in result.baselines.items() for k, v in ms.items()]
        lines += [_table(("baseline", "name", "value"), rows, markdown=True), ""]
    lines += ["## Timings", "", "Seconds (`_s`) and ratios (`_ratio`) measured in this run.", ""]
    lines += [_table(("name", "value"), [(k, format_metric(v)) for k, v in result.timings.items()], markdown=True), ""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    if result.plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})\n" for p in result.plots]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _pyplot():
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("benchmark plots need matplotlib: pip install modaflow[bench]") from e
    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_curves(
    path: str | Path,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    log: bool = True,
) -> Path:
    """Line plot of ``name -> (x, y)`` (log-log when ``log``); non-positive y are dropped
    on log axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (x, y) in curves.items():
        pts = [(a, b) for a, b in zip(x, y) if b is not None and (not log or b > 0)]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=name)
    if log:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, Path(path))


def plot_scatter(path: str | Path, real: Any, fake: Any, title: str) -> Path:
    """First two coordinates of real (held-out) vs generated samples, ``(N, D)`` each."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, data, name in ((axes[0], real, "held-out data"), (axes[1], fake, "samples")):
        ax.scatter(data[:, 0], data[:, 1], s=2, alpha=0.5)
        ax.set_title(name)
        ax.set_aspect("equal")
    fig.suptitle(title)
    return _save(fig, Path(path))


def plot_loss(path: str | Path, losses: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str) -> Path:
    """Training loss ``name -> (steps, losses)`` on a log y axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (steps, vals) in losses.items():
        ax.plot(steps, vals, label=name, lw=1)
    ax.set_yscale("log")
    ax.set(title=title, xlabel="step", ylabel="loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, Path(path))
