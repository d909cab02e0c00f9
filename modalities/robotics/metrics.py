"""Success statistics for paired rollouts.

- Wilson score interval of a success rate (Wilson 1927; Brown, Cai & DasGupta 2001, eq. 4):
  centre ``(p̂ + z²/2n) / (1 + z²/n)``, half width ``z √(p̂(1−p̂)/n + z²/4n²) / (1 + z²/n)``.
- Exact McNemar test of paired binary outcomes (McNemar 1947): with ``b`` episodes that
  only the steered policy solved and ``c`` that only the base solved, ``p = min(1, 2 ·
  P[Bin(b + c, 1/2) ≤ min(b, c)])``.
- Paired bootstrap interval of the difference of success rates (percentile method,
  resampling episodes with their pairs).
- PushT score (Chi et al. 2023, arXiv 2303.04137): mean over episodes of the episode's
  max coverage / 0.95, clipped to 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["wilson_interval", "mcnemar_exact", "paired_bootstrap", "pusht_score", "success_summary", "paired_summary"]

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """``(low, high)`` of the Wilson score interval for ``k`` successes out of ``n``."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1; got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(base: Sequence[bool], steered: Sequence[bool]) -> dict[str, float]:
    """Exact two-sided McNemar test on paired outcomes; ``{"b", "c", "p_value"}`` with ``b``
    = steered-only successes and ``c`` = base-only successes."""
    x, y = np.asarray(base, bool), np.asarray(steered, bool)
    if x.shape != y.shape:
        raise ValueError(f"paired outcomes must have the same length; got {x.shape} and {y.shape}")
    b, c = int((~x & y).sum()), int((x & ~y).sum())
    n = b + c
    if n == 0:
        return {"b": 0, "c": 0, "p_value": 1.0}
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0**n
    return {"b": b, "c": c, "p_value": min(1.0, 2.0 * tail)}


def paired_bootstrap(base: Sequence[float], steered: Sequence[float], n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """``(mean difference, low, high)`` of ``steered − base`` with a percentile bootstrap
    interval over episodes (pairs resampled together)."""
    x, y = np.asarray(base, float), np.asarray(steered, float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired outcomes must be non-empty and of the same length; got {x.shape} and {y.shape}")
    d = y - x
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    boots = d[idx].mean(1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def pusht_score(max_coverage: Sequence[float], threshold: float = 0.95) -> float:
    """Mean of per-episode ``min(1, max coverage / threshold)``."""
    c = np.asarray(max_coverage, float)
    if c.size == 0:
        raise ValueError("pusht_score needs at least one episode")
    return float(np.clip(c / threshold, 0.0, 1.0).mean())


def success_summary(success: Sequence[bool]) -> dict[str, float]:
    """``{"rate", "low", "high", "k", "n"}`` with the Wilson 95% interval."""
    s = np.asarray(success, bool)
    k, n = int(s.sum()), int(s.size)
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n, "low": lo, "high": hi, "k": k, "n": n}


def paired_summary(base: Sequence[bool], steered: Sequence[bool], seed: int = 0) -> dict[str, float]:
    """Difference ``steered − base`` with its paired bootstrap 95% interval and McNemar p."""
    diff, lo, hi = paired_bootstrap(np.asarray(base, float), np.asarray(steered, float), seed=seed)
    return {"diff": diff, "diff_low": lo, "diff_high": hi, **mcnemar_exact(base, steered)}
