"""Seed statistics: mean, sample standard deviation and a Student-t confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample standard deviation (ddof = 1); 0 for a single value
    half_width: float  # half width of the two-sided confidence interval; nan for one value
    n: int

    def format(self, scale: float = 1.0, digits: int = 2, spread: str = "std") -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "—"
        value = f"{self.mean * scale:.{digits}f}"
        if self.n < 2:
            return value
        width = self.std if spread == "std" else self.half_width
        return f"{value} ± {width * scale:.{digits}f}"


def describe(values: Sequence[float], confidence: float = 0.95) -> Stat:
    """Mean ± spread of per-seed values; the interval uses Student's t with n − 1 dof."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Stat(math.nan, math.nan, math.nan, 0)
    mean = sum(xs) / n
    if n == 1:
        return Stat(mean, 0.0, math.nan, 1)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    t = stats.t.ppf(0.5 + confidence / 2, n - 1)
    return Stat(mean, std, t * std / math.sqrt(n), n)


def paired_difference(a: dict[int, float], b: dict[int, float], confidence: float = 0.95) -> Stat:
    """Statistics of b − a over the seeds both have (a paired comparison, e.g. KD gain)."""
    seeds = sorted(set(a) & set(b))
    return describe([b[s] - a[s] for s in seeds], confidence)
