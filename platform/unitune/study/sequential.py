"""Seeds where they are needed: a study trains its families in rounds of seeds and looks at
the comparisons after each round (``unitune.study.stats``), adding a round only for the
families whose comparison with the reference is still open.

    looks = run_looks(reference, others, sizes, train=..., outcomes=..., weights=...)

The same function runs a real study (``train`` starts final runs, ``outcomes`` reads their
``test_ranks.csv``) and the simulation test (``train`` draws per-query outcomes), so the
false-alarm rate the test measures is the one of the procedure users get. The looks are
pre-declared (``sizes``: seeds after each round, up to ``study.max_seeds``); a study that
stops early (every comparison closed, or ``study.budget_minutes``) spends less than its
``alpha``, never more.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from unitune.study.stats import ALPHA, RESAMPLES, Decision, Outcomes, bootstrap_weights, compare, holm, spending

Unit = tuple[int, int]  # (search repeat, training seed)


@dataclass(frozen=True)
class Look:
    """The comparisons after a round: ``seeds`` trained so far by the reference."""

    seeds: int
    decisions: list[Decision]

    def open(self) -> list[str]:
        """Families whose comparison can still change: neither resolved nor identical."""
        return [d.comparison.name for d in self.decisions if not d.resolved and not d.comparison.identical]


def sizes(first: int, maximum: int | None) -> list[int]:
    """Seeds after each round: ``first``, then ``first`` more at a time up to ``maximum``
    (the last round may be smaller). ``maximum`` None or <= ``first``: one round."""
    if maximum is None or maximum <= first:
        return [first]
    out = list(range(first, maximum + 1, first))
    if out[-1] != maximum:
        out.append(maximum)
    return out


def run_looks(
    reference: str,
    others: Sequence[str],
    rounds: Sequence[int],
    *,
    train: Callable[[list[str], range], None],
    outcomes: Callable[[], Mapping[str, Mapping[Unit, Outcomes]]],
    resamples: int = RESAMPLES,
    alpha: float = ALPHA,
    more_time: Callable[[], bool] = lambda: True,
) -> list[Look]:
    """Train round by round and look after each; returns the looks made.

    ``train(families, seeds)``: make sure those families have runs for those seeds (a
    resumed study finds them done); ``outcomes()``: every family's runs so far by (repeat,
    seed); ``more_time()``: whether another round fits the budget. The test set's bootstrap
    (``resamples`` resamples of its clusters) is drawn once, seeded: the same for every look.
    """
    shares = spending([size / rounds[-1] for size in rounds])
    resolved: dict[str, int] = {}
    looks: list[Look] = []
    families = [reference, *others]
    for k, size in enumerate(rounds):
        start = 0 if k == 0 else rounds[k - 1]
        train(families, range(start, size))
        runs = outcomes()
        weights = study_weights(runs, resamples)
        comparisons = [compare(name, reference, runs[name], runs[reference], weights) for name in others]
        look = Look(size, holm(comparisons, shares[k], alpha=alpha, already=resolved))
        looks.append(look)
        for decision in look.decisions:
            if decision.resolved and decision.resolved_at is not None:
                resolved.setdefault(decision.comparison.name, decision.resolved_at)
        still_open = look.open()
        if not still_open or k + 1 == len(rounds) or not more_time():
            break
        families = [reference, *still_open]
    return looks


def study_weights(runs: Mapping[str, Mapping[Unit, Outcomes]], resamples: int = RESAMPLES) -> np.ndarray:
    """The study's bootstrap of its test clusters: seeded, so every look and the report draw
    the same resamples."""
    first = next(o for family in runs.values() for o in family.values())
    return _weights(len(first.sums), resamples)


@functools.lru_cache(maxsize=8)
def _weights(clusters: int, resamples: int) -> np.ndarray:
    weights = bootstrap_weights(clusters, resamples, seed=0)
    weights.setflags(write=False)  # shared by every look (and Outcomes' memo of values under it)
    return weights
