"""Benchmark runs: metadata (commit, hardware, versions), the :class:`BenchResult` written
to ``results.json``, confidence intervals, timing, and progress (a bar on a terminal, plain
time-stamped lines in a log file).

``results.json`` (one object; see :meth:`BenchResult.to_dict`)::

    modality  str             profile  str            seed  int
    commit    str             git commit of the code, or "unknown"
    hardware  {cpu, cores, gpu, ...}                   versions  {python, torch, ...}
    metrics   {name: number | {"mean", "ci95", "n"}}  measured for the method
    baselines {baseline name: {metric name: number | {...}}}   measured in the same run
    timings   {name: seconds (keys ending in "_s") or ratio (keys ending in "_ratio")}
    curves    {name: {"xlabel", "ylabel", "series": {label: {"x": [...], "y": [...]}}}}
    plots     [PNG file names beside results.json]
    notes     [str]
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, TypeVar

from modaflow.core.io import atomic_write_text
from modaflow.core.stats import mean_ci95
from modaflow.core.training.quiet import quiet_lightning

__all__ = [
    "BenchResult",
    "Metric",
    "REQUIRED_KEYS",
    "mean_ci95",
    "run_metadata",
    "git_commit",
    "hardware_info",
    "package_versions",
    "median_times",
    "log",
    "progress",
    "stage",
    "default_run_dir",
]

Metric = float | dict[str, float]
"""A number, or ``{"mean": m, "ci95": half_width, "n": repeats}``."""

REQUIRED_KEYS: tuple[str, ...] = (
    "modality", "profile", "seed", "commit", "hardware", "versions", "metrics", "baselines", "timings",
)

_ROOT = Path(__file__).resolve().parents[1]


def git_commit(root: Path = _ROOT) -> str:
    """The commit of the checkout holding the code (``+dirty`` with local changes), or
    ``"unknown"`` when it is not a git checkout or git is missing."""
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", "-C", str(root), *a], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware_info() -> dict[str, Any]:
    """CPU model, logical cores, torch threads, GPU name (or None), platform."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "platform": platform.platform(),
    }


def package_versions() -> dict[str, str | None]:
    """Versions of python, torch, lightning, numpy and modaflow (None if not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "lightning", "numpy", "modaflow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_metadata() -> dict[str, Any]:
    """``{"commit", "hardware", "versions"}`` for the current process."""
    return {"commit": git_commit(), "hardware": hardware_info(), "versions": package_versions()}


@dataclass(frozen=True)
class BenchResult:
    """One benchmark run of one modality and profile (see the module docstring for the
    JSON layout). Build it with :meth:`create`, which fills in the run metadata."""

    modality: str
    profile: str
    seed: int
    commit: str
    hardware: dict[str, Any]
    versions: dict[str, Any]
    metrics: dict[str, Metric]
    baselines: dict[str, dict[str, Metric]]
    timings: dict[str, float]
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, modality: str, profile: str, seed: int, **parts: Any) -> "BenchResult":
        """A result with ``commit``, ``hardware`` and ``versions`` of this process;
        ``parts`` are the other fields (metrics, baselines, timings, curves, plots, notes)."""
        return cls(modality=modality, profile=profile, seed=seed, **run_metadata(), **parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality, "profile": self.profile, "seed": self.seed,
            "commit": self.commit, "hardware": self.hardware, "versions": self.versions,
            "metrics": self.metrics, "baselines": self.baselines, "timings": self.timings,
            "curves": self.curves, "plots": self.plots, "notes": self.notes,
        }  # fmt: skip

    def write(self, out_dir: str | Path) -> Path:
        """Write ``out_dir/results.json`` atomically; returns its path."""
        path = Path(out_dir) / "results.json"
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "BenchResult":
        """Read a ``results.json``; a missing required key is an error naming the file."""
        path = Path(path)
        data = json.loads(path.read_text())
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise ValueError(f"{path}: missing key(s) {missing}")
        return cls(**data)


def median_times(fns: dict[str, Callable[[], Any]], repeats: int, sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Median wall time in seconds of each function over ``repeats`` rounds, after one
    warm-up call each. Rounds interleave the functions, so slow drifts of the machine hit
    all of them alike and their ratios stay fair. ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before each clock read."""
    sync = sync or (lambda: None)
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def profile_calls(step: Callable[[int], Any], warmup: int, calls: int, cuda: bool, rows: int = 30) -> str:
    """Where the time of ``step`` goes: ``step(k)`` for ``k < warmup`` untimed (compilation,
    autotuning), then ``calls`` more under ``torch.profiler``; the operators as a table sorted
    by device time (CUDA when ``cuda``, else CPU)."""
    import torch

    for k in range(warmup):
        step(k)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        torch.cuda.synchronize()
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for k in range(warmup, warmup + calls):
            step(k)
        if cuda:
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=rows)


T = TypeVar("T")


LOG_EVERY_S = 30.0
"""Least seconds between two plain progress lines of one loop (when stderr is not a terminal)."""


def log(line: str) -> None:
    """One plain line on stderr, time-stamped, flushed (readable in a log file or a job's output)."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def progress(items: Iterable[T], desc: str, total: int | None = None, enable: bool = True) -> Iterator[T]:
    """Iterate with a tqdm progress bar on a terminal; where stderr is not a terminal (a log
    file, a batch job), plain lines instead: one at the start, then ``desc: i/n done`` with the
    elapsed seconds at most every :data:`LOG_EVERY_S` seconds and after the last item."""
    if not enable:
        yield from items
        return
    if sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError as e:  # pragma: no cover - tqdm is in the bench extra
            raise ImportError("progress bars need tqdm: pip install modaflow[bench]") from e
        yield from tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False)
        return
    n = total if total is not None else len(items) if isinstance(items, Sized) else None
    of = f"/{n}" if n is not None else ""
    log(f"{desc}: 0{of} ...")
    start = last = time.perf_counter()
    i = logged = 0
    for i, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= LOG_EVERY_S or i == n:
            log(f"{desc}: {i}{of} done ({now - start:.0f} s)")
            last, logged = now, i
    if logged != i or i == 0:  # an unsized or shorter-than-announced iterable still says it ended
        log(f"{desc}: {i}{of} done ({time.perf_counter() - start:.0f} s)")


@contextlib.contextmanager
def stage(desc: str, timings: dict[str, float] | None = None, key: str = "") -> Iterator[None]:
    """One long step of a benchmark: a line on stderr when it starts and one when it ends, with
    its wall seconds, so that a run writing to a log shows where it is. The seconds also go to
    ``timings[key]`` when ``timings`` is given (``key`` ends in ``_s``, the timings convention)."""
    if timings is not None and not key.endswith("_s"):
        raise ValueError(f"stage {desc!r}: timing key {key!r} must end in '_s' (seconds)")
    log(f"{desc} ...")
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    if timings is not None:
        timings[key] = seconds
    log(f"{desc}: done in {seconds:.1f} s")


def default_run_dir(modality: str, profile: str, root: str | Path = "runs") -> Path:
    """``runs/<YYYYmmdd-HHMMSS>-<modality>-<profile>``."""
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{modality}-{profile}"


class Profile(Protocol):
    """What every benchmark profile dataclass has."""

    device: str
    """``"cpu"`` or ``"cuda"``."""
    threads: int
    """torch threads while it runs (0: leave the setting alone)."""


P = TypeVar("P", bound=Profile)


def select_profile(profiles: Mapping[str, P], name: str) -> P:
    """The profile called ``name``: an unknown name lists the known ones, and a CUDA
    profile on a machine without CUDA says so (both before anything runs)."""
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; known: {sorted(profiles)}")
    p = profiles[name]
    if p.device == "cuda":
        require_cuda(name)
    return p


def require_cuda(profile: str) -> None:
    """Refuse the CUDA profile ``profile`` on a machine where torch sees no GPU (a ValueError naming it)."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"profile {profile!r} needs a CUDA device; none is available (use quick or full on CPU)")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads (0: unchanged), restoring the setting afterwards. Small
    networks run fastest on one thread, and are then not slowed by busy cores."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Benchmarks train quietly through the core's context manager (one definition).
quiet_training = quiet_lightning
