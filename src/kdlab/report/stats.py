"""Seed statistics: mean, sample standard deviation and a Student-t confidence interval; paired
differences against a baseline with a paired t-test, and a Bonferroni note for many of them."""

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

    @property
    def interval(self) -> tuple[float, float]:
        """The two-sided confidence interval (nan, nan) for fewer than two values."""
        return self.mean - self.half_width, self.mean + self.half_width

    def at(self, confidence: float) -> Stat:
        """The same values with the interval at another confidence (e.g. Bonferroni's)."""
        if self.n < 2:
            return self
        t = stats.t.ppf(0.5 + confidence / 2, self.n - 1)
        return Stat(self.mean, self.std, t * self.std / math.sqrt(self.n), self.n)

    @property
    def p_value(self) -> float:
        """Two-sided one-sample t-test of mean 0 (for paired differences: scipy's ttest_rel)."""
        if self.n < 2 or math.isnan(self.mean):
            return math.nan
        if self.std == 0:  # identical differences: no spread to test against
            return math.nan if self.mean == 0 else 0.0
        t = self.mean / (self.std / math.sqrt(self.n))
        return float(2 * stats.t.sf(abs(t), self.n - 1))


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


def bonferroni_note(
    differences: Sequence[tuple[str, Stat]], alpha: float = 0.05, baseline: str = "the baseline"
) -> str | None:
    """One line for m ≥ 2 comparisons with one baseline: the Bonferroni-adjusted level α/m and
    which paired-difference intervals still exclude 0 at confidence 1 − α/m (None for m < 2).

    Each 95 % interval alone excludes 0 by chance in 5 % of true-null comparisons; over m of them
    some will, so the note says which survive the family-wise correction."""
    tested = [(label, d) for label, d in differences if d.n >= 2]
    m = len(tested)
    if m < 2:
        return None
    level = alpha / m

    def excludes_zero(d: Stat) -> bool:
        low, high = d.at(1 - level).interval
        return low > 0 or high < 0

    survivors = [label for label, d in tested if excludes_zero(d)]
    found = ", ".join(survivors) if survivors else "none"
    return (
        f"{m} comparisons with {baseline}: at the Bonferroni-adjusted level {alpha:g}/{m} = "
        f"{level:.3g} ({100 * (1 - level):.4g} % intervals) the differences that still exclude 0: "
        f"{found}"
    )
