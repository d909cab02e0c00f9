"""Summaries of repeated measurements: the mean and its 95% Student-t interval, as the
benchmarks and the modalities' ``evaluate`` report metrics over repeats (seeds)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

__all__ = ["mean_ci95"]

# Student t quantiles t_{0.975, df} for df = 1..30; larger df use a Cornish-Fisher expansion.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
)


def _t975_large(df: int) -> float:
    """t_{0.975, df} for df > 30 from the normal quantile z = 1.959964 (Abramowitz & Stegun
    26.7.5, three terms; error < 1e-4 there)."""
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) + (
        3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z
    ) / (384 * df**3)


def mean_ci95(values: Iterable[float]) -> dict[str, float]:
    """``{"mean", "ci95", "n"}``: the mean and the half width of its 95% Student-t interval
    (``t_{0.975, n-1} s / sqrt(n)``; 0 for one value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_ci95 needs at least one value")
    n = len(vals)
    half = 0.0
    if n > 1:
        t = _T975[n - 2] if n - 1 <= len(_T975) else _t975_large(n - 1)
        half = t * statistics.stdev(vals) / math.sqrt(n)
    return {"mean": statistics.fmean(vals), "ci95": half, "n": n}
