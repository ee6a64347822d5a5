"""Statistics of a study: per-family intervals, paired per-query comparisons, Holm's
correction, sequential looks, and verdicts that never overstate. numpy and scipy.stats only
(no Ray, no MLflow): the simulation test runs the whole procedure thousands of times.

The method (docs/study.md says it for users):

- **Units.** A family's final runs are indexed by (search repeat r, training seed s). Two
  families are paired on the units both have: the same seed means the same initial weights
  and data order, and every run ranks the same test queries against the same gallery.
- **Estimate.** ``d_u`` = metric(A_u) − metric(B_u) per paired unit; the difference is their
  mean (over seeds, then over repeats: the design is balanced).
- **Variance, two levels.** *Runs*: the spread of the per-unit differences over seeds
  (``var(d_s) / S``, S − 1 degrees of freedom), or with R ≥ 2 search repeats over the
  repeats' mean differences (``var(d̄_r) / R``, R − 1 d.f.; it contains the seeds' spread).
  *Queries*: a paired bootstrap of the test set — :data:`RESAMPLES` resamples of its
  clusters (an item with its captions, or a group of items sharing captions) with
  replacement, the same resample for every run of both families — of the mean difference
  with the runs held fixed. The two add up (slightly conservative: the seed × query noise
  is counted in both), and the interval is Student's t with Welch–Satterthwaite degrees of
  freedom: with few seeds and a large spread between them it is as wide as the seed-only
  t interval (2 d.f. at 3 seeds: t = 4.30), with a small spread it narrows to the queries'.
  A percentile two-level bootstrap is not used: with 3 seeds it treats 3 values as the
  population of seeds and under-covers (its false-alarm rate is well above 5% in
  tests/test_study_simulation.py).
- **Several comparisons.** Every family against the reference, Holm's step-down over them.
- **Sequential seeds.** Looks after each round of seeds, at most ``looks`` pre-declared
  (``study.seeds`` then more up to ``study.max_seeds``). Each look spends a share of
  ``alpha`` (:func:`spending`: ``f_k² − f_{k−1}²`` at information fraction f = seeds /
  max_seeds); by the union bound the chance of any false claim over all looks and
  comparisons stays at most ``alpha``. A comparison once resolved stays resolved; stopping
  early (every comparison closed, or the budget) only spends less.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import special

CONFIDENCE = 0.95
ALPHA = 1.0 - CONFIDENCE
RESAMPLES = 2000  # bootstrap resamples of the test set's clusters
SAME = 1e-9  # values closer than this (relative to their size, at least 1) are equal
RECALL_KS = (1, 5, 10)
DIRECTIONS = ("i2t", "t2i")


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


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` > 0 degrees of freedom (scipy.stats.t)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0 (got p={p}, df={df})")
    return float(special.stdtrit(df, p))  # scipy.stats.t.ppf without its per-call overhead


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean, sample std and the two-sided t interval of the mean of ``values``.

    One value: std and interval NaN. Zero spread (the values equal within :data:`SAME`,
    so float rounding of equal differences counts as none): std 0 and an interval of width 0.

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
    if _no_spread(xs):
        return Interval(n, mean, 0.0, mean, mean)
    std = float(np.std(xs, ddof=1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


def _no_spread(xs: Sequence[float]) -> bool:
    # Equal values up to rounding (260.7 − 257.6 and 263.7 − 260.6 differ in the last bits):
    # no spread, not an interval of width 1e-14 that would "resolve" anything.
    return max(xs) - min(xs) <= SAME * max(1.0, max(abs(v) for v in xs))


# --- per-query outcomes -------------------------------------------------------------------


# Metrics that are means over queries, so a resample of queries recomputes them exactly:
# metric -> [(direction, k or None for the mean rank, coefficient)].
def _terms(metric: str) -> list[tuple[str, int | None, float]]:
    if metric == "rsum":
        return [(d, k, 100.0) for d in DIRECTIONS for k in RECALL_KS]
    for d in DIRECTIONS:
        for k in RECALL_KS:
            if metric == f"r{k}_{d}":
                return [(d, k, 100.0)]
        if metric == f"meanr_{d}":
            return [(d, None, 1.0)]
    raise ValueError(f"{metric}: not a mean over queries (rsum, r<k>_<dir>, meanr_<dir> are)")


def per_query(metric: str) -> bool:
    """Whether ``metric`` can be compared query by query (a mean over queries)."""
    try:
        _terms(metric)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Outcomes:
    """One run's per-query outcomes, summed per cluster for ``metric``.

    sums: [num_clusters, num_terms] the cluster's sum of each term's per-query value
    (an indicator rank <= k, or the rank); counts: [num_clusters, 2] its queries per
    direction; terms: as :func:`_terms`.
    """

    metric: str
    sums: np.ndarray
    counts: np.ndarray
    key: tuple  # what must be equal for two runs to be paired: the queries and clusters
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_ranks(cls, ranks, metric: str) -> Outcomes:
        """From a ``unitune.ranks.QueryRanks``."""
        terms = _terms(metric)
        clusters, item_cluster = np.unique(ranks.item_clusters, return_inverse=True)
        caption_cluster = item_cluster[ranks.caption_items]
        where = {"i2t": (item_cluster, ranks.item_ranks), "t2i": (caption_cluster, ranks.caption_ranks)}
        sums = np.zeros((len(clusters), len(terms)))
        for j, (d, k, _) in enumerate(terms):
            cluster, rank = where[d]
            value = (rank <= k).astype(float) if k is not None else rank.astype(float)
            np.add.at(sums[:, j], cluster, value)
        counts = np.zeros((len(clusters), 2))
        for j, d in enumerate(DIRECTIONS):
            np.add.at(counts[:, j], where[d][0], 1.0)
        key = (tuple(ranks.item_ids.tolist()), tuple(ranks.caption_items.tolist()), tuple(item_cluster.tolist()))
        return cls(metric, sums, counts, key)

    def value(self, weights: np.ndarray | None = None) -> np.ndarray:
        """The metric under cluster ``weights`` [B, num_clusters] (None: the test set as it is)."""
        memo = id(weights)  # a study reuses one weights array for every run and look
        if memo not in self._memo:
            w = np.ones((1, len(self.sums))) if weights is None else weights
            totals = w @ self.sums  # [B, terms]
            queries = w @ self.counts  # [B, 2]
            out = np.zeros(len(w))
            for j, (d, _, coef) in enumerate(_terms(self.metric)):
                out += coef * totals[:, j] / queries[:, DIRECTIONS.index(d)]
            self._memo[memo] = (weights, out)  # the array is kept so its id stays its own
        return self._memo[memo][1]

    def influence(self) -> np.ndarray:
        """[num_clusters] each cluster's first-order effect on the metric (its influence
        value: the metric under weights w is ``value() + sum((w - 1) * influence())`` to
        first order; the values sum to 0)."""
        if "influence" in self._memo:
            return self._memo["influence"]
        totals, queries = self.sums.sum(axis=0), self.counts.sum(axis=0)
        out = np.zeros(len(self.sums))
        for j, (d, _, coef) in enumerate(_terms(self.metric)):
            n = queries[DIRECTIONS.index(d)]
            out += coef * (self.sums[:, j] - totals[j] / n * self.counts[:, DIRECTIONS.index(d)]) / n
        self._memo["influence"] = out
        return out


def bootstrap_weights(num_clusters: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """[resamples, num_clusters] multiplicities of a with-replacement resample of clusters."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_clusters, np.full(num_clusters, 1.0 / num_clusters), size=resamples).astype(float)


# --- one comparison -----------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """``name − reference`` on their paired units.

    mean: the estimate; se: its standard error (runs and queries); df: Welch–Satterthwaite
    degrees of freedom; p: two-sided p-value; se_runs / se_queries: the two parts;
    seed_only: the seed-only t interval (95%, unadjusted) of the per-unit differences;
    units: how many paired runs; identical: every paired run gave the same outcome on every
    query (the families trained the same configurations).
    """

    name: str
    reference: str
    mean: float
    se: float
    df: float
    p: float
    se_runs: float
    se_queries: float
    seed_only: Interval
    units: int
    repeats: int
    identical: bool = False

    def half_width(self, level: float) -> float:
        """Half the two-sided interval at nominal error ``level`` (``t · se``)."""
        if self.se == 0.0 or not math.isfinite(self.df):
            return 0.0 if self.se == 0.0 else math.inf
        return t_quantile(1.0 - level / 2.0, self.df) * self.se


def compare(
    name: str,
    reference: str,
    a: Mapping[tuple[int, int], Outcomes],
    b: Mapping[tuple[int, int], Outcomes],
    weights: np.ndarray,
) -> Comparison:
    """Compare family ``a`` (``name``) with ``b`` (``reference``); keys are (repeat, seed).

    Raises:
        ValueError: no shared unit, or two paired runs ranked different queries.
    """
    units = sorted(set(a) & set(b))
    if not units:
        raise ValueError(f"{name} and {reference} share no (repeat, seed) run")
    for u in units:
        if a[u].key != b[u].key:
            raise ValueError(f"{name} and {reference}: the runs of repeat {u[0]} seed {u[1]} ranked different queries")
    diffs = {u: float(a[u].value()[0] - b[u].value()[0]) for u in units}
    seed_only = interval(list(diffs.values()))
    repeats = sorted({r for r, _ in units})
    top = (
        [float(np.mean([diffs[u] for u in units if u[0] == r])) for r in repeats]
        if len(repeats) >= 2
        else list(diffs.values())
    )
    mean = float(np.mean(top))
    made = functools.partial(
        Comparison, name, reference, mean, seed_only=seed_only, units=len(units), repeats=len(repeats)
    )
    if all(np.array_equal(a[u].sums, b[u].sums) for u in units):
        return made(se=0.0, df=math.inf, p=1.0, se_runs=0.0, se_queries=0.0, identical=True)
    # Queries: the paired bootstrap of the seed-averaged difference, runs held fixed.
    v_queries = float(np.var(np.mean([a[u].value(weights) - b[u].value(weights) for u in units], axis=0), ddof=1))
    if len(top) < 2:  # one run pair: the spread between runs is unknown, no interval is honest
        return made(se=math.inf, df=math.nan, p=1.0, se_runs=math.inf, se_queries=math.sqrt(v_queries))
    v_runs = 0.0 if _no_spread(top) else float(np.var(top, ddof=1)) / len(top)
    # The run x query noise is in both parts; its share of the bootstrap part (from the
    # residuals of the per-run, per-cluster influence values) is taken out once.
    psi = np.array([a[u].influence() - b[u].influence() for u in units])  # [U, clusters]
    residual = psi - psi.mean(axis=0)
    n_units, n_clusters = psi.shape
    v_noise = float((residual**2).sum()) / (n_units * (n_units - 1))
    v_cross = max(0.0, v_queries - v_noise)
    total = v_runs + v_cross
    if total == 0.0:  # no measured noise: nothing is resolved
        return made(se=0.0, df=math.inf, p=1.0, se_runs=0.0, se_queries=0.0)
    df = _degrees_of_freedom(v_runs, len(top) - 1, v_cross, n_clusters - 1)
    se = math.sqrt(total)
    p = float(2.0 * special.stdtr(df, -abs(mean) / se))  # two-sided, Student's t
    return made(se=se, df=df, p=p, se_runs=math.sqrt(v_runs), se_queries=math.sqrt(v_cross))


def _degrees_of_freedom(v_runs: float, df_runs: int, v_cross: float, df_cross: int) -> float:
    """Welch–Satterthwaite degrees of freedom of ``v_runs + v_cross``, with the runs' part at
    its upper 90% confidence bound (``df · v / chi2(0.1, df)``): with 2 or 3 seeds its
    estimate is so noisy that the plain formula is liberal (tests/test_study_simulation.py).
    Between ``df_runs`` (the runs dominate) and ``df_cross`` (the queries do)."""
    if v_runs == 0.0:
        return float(df_cross)
    upper = v_runs * df_runs / float(special.chdtri(df_runs, 0.9))  # chi2.ppf(0.1, df)
    total = upper + v_cross
    return total**2 / (upper**2 / df_runs + v_cross**2 / df_cross)


# --- looks and Holm -----------------------------------------------------------------------


def spending(fractions: Sequence[float]) -> list[float]:
    """The share of ``alpha`` each look may spend: ``f_k² − f_{k−1}²`` for looks at
    information fractions ``f`` (seeds so far / ``max_seeds``; the last is 1). Later looks,
    with more seeds, get more; the shares add up to 1, so by the union bound a true null is
    claimed at some look with probability at most ``alpha`` whatever the looks' correlation.
    One look: all of it."""
    f = [0.0, *fractions]
    if any(b <= a for a, b in zip(f, f[1:])) or abs(f[-1] - 1.0) > 1e-12:
        raise ValueError(f"spending: fractions must increase to 1 (got {list(fractions)})")
    return [b * b - a * a for a, b in zip(f, f[1:])]


@dataclass(frozen=True)
class Decision:
    """One comparison's verdict at a look: resolved (stays so), the nominal level it was
    tested at and the half-width of the interval at that level (the smallest difference it
    could resolve)."""

    comparison: Comparison
    resolved: bool
    level: float
    detectable: float
    resolved_at: int | None = None  # units when it was resolved


def holm(
    comparisons: Sequence[Comparison],
    share: float = 1.0,
    *,
    alpha: float = ALPHA,
    already: Mapping[str, int] | None = None,
) -> list[Decision]:
    """Holm's step-down over ``comparisons`` at one look: the j-th smallest p-value is tested
    at ``share · alpha / (m − j + 1)`` (``share``: this look's part of :func:`spending`).
    ``already``: names resolved at an earlier look (with their units then), counted as
    rejected first. Returned in the order of ``comparisons``.
    """
    already = dict(already or {})
    m = len(comparisons)
    order = sorted(range(m), key=lambda i: (comparisons[i].name not in already, comparisons[i].p))
    out: dict[int, Decision] = {}
    stop = False
    for j, i in enumerate(order):
        c = comparisons[i]
        level = share * alpha / (m - j)
        detect = c.half_width(level)
        if c.name in already:
            out[i] = Decision(c, True, level, detect, already[c.name])
            continue
        ok = not stop and c.se > 0.0 and math.isfinite(c.se) and c.p <= level
        stop = stop or not ok
        out[i] = Decision(c, ok, level, detect, c.units if ok else None)
    return [out[i] for i in range(m)]


# --- lines --------------------------------------------------------------------------------


def signed(value: float, digits: int = 1) -> str:
    """``+3.1`` / ``−0.4`` (a real minus sign) / ``0.0``."""
    text = f"{abs(value):.{digits}f}"
    if float(text) == 0.0:
        return text
    return ("+" if value > 0 else "\u2212") + text


def _digits(values: Sequence[float], digits: int) -> int:
    # A nonzero bound is never shown as 0.0: "CI 0.0 to +6.6: resolved" would read as a
    # contradiction, "CI 0.0 to +6.6: not resolved" would hide which side of 0 it lies on.
    while digits < 6 and any(v != 0.0 and float(f"{abs(v):.{digits}f}") == 0.0 for v in values):
        digits += 1
    return digits


def verdict(decision: Decision, metric: str, mode: str = "max", digits: int = 1) -> str:
    """One line per comparison that never overstates, e.g. ``vlc − unified: +3.1 RSUM,
    CI −0.4 to +6.6 (98.8%, 6 seeds × 514 clusters): not resolved (detectable ±7.0)``."""
    c = decision.comparison
    head = f"{c.name} \u2212 {c.reference}: {signed(c.mean, digits)} {metric}"
    runs = f"{c.units} paired run{'s' if c.units != 1 else ''}"
    if c.identical:
        return f"{head}, identical outcomes on every query of every run ({runs}): no difference"
    if not math.isfinite(c.se):
        return f"{head} over {runs}: the spread between runs is unknown with one pair: not resolved"
    if c.se == 0.0:
        return f"{head}, the same on every run and query resample ({runs}; no spread, no interval): not resolved"
    half = decision.detectable
    low, high = c.mean - half, c.mean + half
    d = _digits((low, high), digits)
    ci = f"CI {signed(low, d)} to {signed(high, d)} ({100 * (1 - decision.level):.1f}%, {runs})"
    if decision.resolved:
        higher = c.name if c.mean > 0 else c.reference
        lower = c.reference if higher == c.name else c.name
        better = higher if mode == "max" else lower
        return f"{head}, {ci}: resolved, {better} better"
    return f"{head}, {ci}: not resolved (resolvable here: beyond \u00b1{half:.{digits}f})"
