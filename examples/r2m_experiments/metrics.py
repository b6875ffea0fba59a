"""Per-step measurements of overoptimization: how far the proxy reward has drifted from gold.

Both metrics compare the proxy and gold rewards of the *same* samples (one RL step's n·K
responses), so they are free of the two rewards' different scales:

- `spearman`: rank correlation of proxy and gold (ties get their average rank).
- `discrepancy`: E|z(proxy) − z(gold)|, each z-scored over the step's samples with the
  population std. 0 when the two rank and space the samples identically; about 1.13 (2/√π)
  for independent rewards; 2 at most on average when they are mirror images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

STD_EPS = 1e-12


def zscores(values: Sequence[float]) -> list[float]:
    """(x − mean) / population std; all zeros when the values are (nearly) constant."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    if std < STD_EPS:
        return [0.0] * n
    return [(v - mean) / std for v in values]


def discrepancy(proxy: Sequence[float], gold: Sequence[float]) -> float:
    """E|z(proxy) − z(gold)| over paired samples."""
    _check_paired(proxy, gold)
    return sum(abs(p - g) for p, g in zip(zscores(proxy), zscores(gold), strict=True)) / len(gold)


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            result[i] = (start + end) / 2 + 1
        start = end + 1
    return result


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant (no ranking information)."""
    _check_paired(x, y)
    zx, zy = zscores(x), zscores(y)
    return sum(a * b for a, b in zip(zx, zy, strict=True)) / len(x)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson of the average ranks)."""
    return pearson(ranks(x), ranks(y))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0.0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _check_paired(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty sequences, got {len(a)} and {len(b)}")


# Two-sided 95% quantiles of Student's t for 1–30 degrees of freedom (then ≈ normal).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def interval95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its two-sided 95% t-interval over `values` (seeds); NaN
    entries are dropped, and the half-width is NaN with fewer than two values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean, std = mean_std(finite)
    n = len(finite)
    if n == 1:
        return mean, math.nan
    quantile = _T975[n - 2] if n - 1 <= len(_T975) else 1.960
    return mean, quantile * std / math.sqrt(n)


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
