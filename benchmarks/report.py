"""Reports of benchmark runs: ``report.md`` beside ``results.json``, PNG plots (matplotlib,
Agg backend, imported lazily) and a plain-text table for the terminal."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modaflow.core.io import atomic_write, atomic_write_text

from .harness import BenchResult, Metric

__all__ = ["format_metric", "results_table", "write_report", "overview_tables", "write_overview", "plot_curves", "plot_scatter",
           "plot_loss"]


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


def _metadata(result: BenchResult) -> list[str]:
    """The seed, commit, hardware and versions of a run as Markdown list items."""
    hw, ver = result.hardware, result.versions
    return [f"- seed: {result.seed}", f"- commit: `{result.commit}`",
            f"- hardware: {hw.get('cpu')} ({hw.get('cores')} cores, {hw.get('torch_threads')} torch threads), "
            f"GPU: {hw.get('gpu') or 'none'}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items())]


def write_report(result: BenchResult, out_dir: str | Path) -> Path:
    """Write ``out_dir/report.md``: run metadata, tables and the plots; returns its path."""
    out_dir = Path(out_dir)
    lines = [
        f"# modaflow benchmark: {result.modality} ({result.profile})",
        "",
        *_metadata(result),
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


OVERVIEW_PLOTS = 2
"""Plots of each modality shown in the overview (the first ones its benchmark lists)."""


def _wall(result: BenchResult) -> str:
    secs = result.timings.get("total_s")
    if secs is None:
        return "n/a"
    return f"{secs:.1f} s" if secs < 60 else f"{secs / 60:.1f} min"


def _overview_rows(results: Sequence[BenchResult]) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """``(summary rows, goal rows)`` of :func:`overview_tables`."""
    summary = [(r.modality, _wall(r), str(len(r.metrics)), str(len(r.baselines)), str(len(r.plots)),
                f"{r.modality}/report.md") for r in results]
    goals = [(r.modality, k.removeprefix("goal."), format_metric(v)) for r in results for k, v in r.metrics.items()
             if k.startswith("goal.")]
    return summary, goals


_SUMMARY_HEADER = ("modality", "wall time", "metrics", "baselines", "plots", "report")
_GOAL_HEADER = ("modality", "goal measure", "value")


def overview_tables(results: Sequence[BenchResult], problems: Mapping[str, str]) -> str:
    """Plain text for the terminal after ``bench all``: one row per modality (wall time, how
    much it measured, where its report is), each ``goal.*`` metric, and the modalities that
    did not run (``problems``: name -> why)."""
    summary, goals = _overview_rows(results)
    parts = [_table(_SUMMARY_HEADER, summary, markdown=False)] if summary else []
    if goals:
        parts.append(_table(_GOAL_HEADER, goals, markdown=False))
    parts += [f"{name}: {why}" for name, why in problems.items()]
    return "\n\n".join(parts)


def write_overview(results: Sequence[BenchResult], out_dir: str | Path, profile: str,
                   problems: Mapping[str, str]) -> Path:
    """Write ``out_dir/report.md`` of a ``bench all`` run whose modality ``m`` wrote its own
    report to ``out_dir/m/``: run metadata, one summary row per modality, the ``goal.*``
    metrics, the modalities that did not run (``problems``: name -> why) and each modality's
    first :data:`OVERVIEW_PLOTS` plots with a link to its report. Returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# modaflow benchmark: every modality ({profile})", ""]
    if results:  # one process ran them all: the first result's metadata is every one's
        total = sum(r.timings.get("total_s", 0.0) for r in results)
        lines += [*_metadata(results[0]), f"- wall time of the benchmarks: {total / 60:.1f} min", ""]
    summary, goals = _overview_rows(results)
    rows = [(*r[:-1], f"[{r[-1]}]({r[-1]})") for r in summary]
    lines += ["## Summary", "", _table(_SUMMARY_HEADER, rows, markdown=True), ""]
    if goals:
        lines += ["## Goal measures", "",
                  "The quantities each modality's goals are stated in, as measured here; its report says "
                  "what each is compared with.", "", _table(_GOAL_HEADER, goals, markdown=True), ""]
    if problems:
        lines += ["## Did not run", ""] + [f"- {name}: {why}" for name, why in problems.items()] + [""]
    for r in results:
        lines += [f"## {r.modality}", "", f"Full report: [{r.modality}/report.md]({r.modality}/report.md)", ""]
        lines += [f"![{r.modality} {Path(p).stem}]({r.modality}/{p})\n" for p in r.plots[:OVERVIEW_PLOTS]]
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
