"""Statistics of a study: mean ± std over seeds, Student-t 95% intervals, seed-paired
differences and verdicts that never overstate. Pure Python (no numpy, Ray or MLflow).

Method (also in docs/study.md): for a family's N final runs (seeds 0..N-1), the mean, the
sample standard deviation (N − 1 in the denominator) and the two-sided t interval
``mean ± t_{0.975, N−1} · std / √N``. A comparison of family A against the reference
family B pairs their runs by seed (same seed = same initial weights and data order),
takes the differences ``d_s = A_s − B_s`` and gives the same t interval over the d_s
(a paired t interval). A comparison is *resolved* when that interval excludes 0; each
comparison is read on its own (no correction for several comparisons).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
SAME = 1e-9  # values closer than this (relative to their size, at least 1) are equal


@dataclass(frozen=True)
class Interval:
    """n values: their mean, sample std and the t interval of the mean (NaN when n < 2)."""

    n: int
    mean: float
    std: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) for x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` >= 1 degrees of freedom (bisection on
    :func:`t_cdf` to 1e-12).

    Raises:
        ValueError: ``p`` not in (0, 1) or ``df`` < 1.
    """
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1 (got p={p}, df={df})")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean, sample std and the two-sided t interval of the mean of ``values``.

    One value: std and interval NaN. Zero spread (the values equal within :data:`SAME`,
    so float rounding of equal differences counts as none): std 0 and an interval of width
    0 (see :func:`verdict`).

    Raises:
        ValueError: no values, or a non-finite one.
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("interval: no values")
    if not all(math.isfinite(v) for v in xs):
        raise ValueError(f"interval: non-finite value in {xs}")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(n, mean, math.nan, math.nan, math.nan)
    if max(xs) - min(xs) <= SAME * max(1.0, max(abs(v) for v in xs)):
        # Equal values up to rounding (260.7 − 257.6 and 263.7 − 260.6 differ in the last
        # bits): no spread, not an interval of width 1e-14 that would "resolve" anything.
        return Interval(n, mean, 0.0, mean, mean)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> Interval:
    """The t interval of the mean of ``a[s] − b[s]`` over the seeds ``s`` both have.

    Raises:
        ValueError: the two share no seed.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("paired_difference: the two families share no seed")
    return interval([a[s] - b[s] for s in seeds], confidence)


def signed(value: float, digits: int = 1) -> str:
    """``+3.1`` / ``−0.4`` (a real minus sign) / ``0.0``."""
    text = f"{abs(value):.{digits}f}"
    if float(text) == 0.0:
        return text
    return ("+" if value > 0 else "\u2212") + text


def verdict(name: str, reference: str, diff: Interval, metric: str, mode: str = "max", digits: int = 1) -> str:
    """One line for the comparison ``name − reference`` that never overstates, e.g.
    ``unified − vlc: +3.1 RSUM, 95% CI −0.4 to +6.6 over 3 seeds: not resolved``.

    Resolved only with at least 2 paired seeds, some spread, and an interval that excludes
    0; then the better family (by ``mode``) is named. Zero spread with a nonzero difference
    is not resolved: the seeds did not vary the result, so the interval measures no noise.
    """
    head = f"{name} \u2212 {reference}: {signed(diff.mean, digits)} {metric}"
    seeds = f"{diff.n} seed{'s' if diff.n != 1 else ''}"
    if diff.n < 2:
        return f"{head} over {seeds}: no interval from one seed: not resolved"
    # A nonzero bound is never shown as 0.0: "CI 0.0 to +6.6: resolved" would read as a
    # contradiction, "CI 0.0 to +6.6: not resolved" would hide which side of 0 it lies on.
    ci_digits = digits
    while ci_digits < 6 and any(v != 0.0 and float(f"{abs(v):.{ci_digits}f}") == 0.0 for v in (diff.low, diff.high)):
        ci_digits += 1
    ci = f"95% CI {signed(diff.low, ci_digits)} to {signed(diff.high, ci_digits)} over {seeds}"
    if diff.std == 0.0:
        if diff.mean == 0.0:
            return f"{head}, identical on every seed ({seeds}): no difference"
        return f"{head}, the same on every seed ({seeds}; no spread, so no interval): not resolved"
    if diff.low > 0.0 or diff.high < 0.0:
        higher = name if diff.low > 0.0 else reference
        lower = reference if higher == name else name
        better = higher if mode == "max" else lower
        return f"{head}, {ci}: resolved, {better} better"
    return f"{head}, {ci}: not resolved"
