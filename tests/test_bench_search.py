"""The pure arithmetic of benchmarks/bench_search.py against a hand-computed search."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_search.py"
spec = importlib.util.spec_from_file_location("bench_search", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

# three trials: set-up seconds first, then one entry per epoch run
TRIALS = [
    {"val": [10.0, 20.0], "seconds": [1.0, 2.0, 3.0]},
    {"val": [15.0], "seconds": [0.5, 1.0]},  # stopped after one epoch
    {"val": [5.0, 30.0, 25.0], "seconds": [1.0, 1.0, 1.0, 1.0]},
]
# by hand: after each epoch (trial-epochs, seconds, best so far)
CURVE = [(1, 3.0, 10.0), (2, 6.0, 20.0), (3, 7.5, 20.0), (4, 9.5, 20.0), (5, 10.5, 30.0), (6, 11.5, 30.0)]


def test_anytime_curve_by_hand():
    assert bench.anytime(TRIALS) == CURVE


@pytest.mark.parametrize("threshold, expected", [(20.0, (2, 6.0)), (19.0, (2, 6.0)), (30.0, (5, 10.5)),
                                                 (31.0, (math.inf, math.inf)), (-1.0, (1, 3.0))])
def test_cost_to_reach(threshold, expected):
    assert bench.cost_to_reach(CURVE, threshold) == expected


def test_best_within_a_budget_of_epochs():
    assert [bench.best_at(CURVE, e) for e in (0, 1, 3, 4.5, 5, 100)] == [-math.inf, 10.0, 20.0, 20.0, 30.0, 30.0]


def test_exported_trial_is_the_best_epoch_first_on_ties():
    assert bench.exported(TRIALS) == 2
    assert bench.exported([{"val": [5.0]}, {"val": []}, {"val": [4.0, 5.0]}]) == 0


def test_quartiles_interpolate_and_keep_never_as_inf():
    assert bench.quartiles([4.0, 1.0, 3.0, 2.0]) == (2.5, 1.75, 3.25)  # linear between order statistics
    median, low, high = bench.quartiles([1.0, 2.0, math.inf, math.inf])
    assert (low, median, high) == (1.75, math.inf, math.inf)


def test_a_quantile_between_a_number_and_never_is_inf():
    assert bench.quartiles([3.0, math.inf]) == (math.inf, math.inf, math.inf)  # 25th: a quarter of the way to inf
    assert bench.quartiles([3.0, 3.0, 3.0, math.inf])[:2] == (3.0, 3.0)


def test_markdown_table_shows_each_row_as_median_and_quartiles():
    fam = {
        "family": "demo", "oracle_best": 310.0, "oracle_trials": 12, "budget_epochs": 6, "oracle_test_of_best": 300.0,
        "random_reach_epochs": (35.0, 17.0, 53.0), "within": 2.0,
        "rows": [{"pair": "tpe+asha", "budget": 8, "seeds": 2, "best": (413.3, 411.3, 415.2),
                  "test": (416.8, 416.1, 417.5), "epochs": (24.0, 20.0, 27.0), "seconds": (252.0, 170.0, 334.0),
                  "reach_epochs": (8.0, 6.0, math.inf), "reached": 1}],
        "rank_agreement": [{"epoch": 1, "spearman": 0.8444, "kendall": 0.6871}],
    }
    text = bench.markdown(fam)
    assert "needs **35 [17, 53]** trial-epochs to reach 308.00" in text
    assert "| tpe + asha | 8 | 2 | 413.3 [411.3, 415.2] | 416.8 [416.1, 417.5] | 24 [20, 27] | 252 [170, 334] " \
           "| 8 [6, inf] (1 of 2) |" in text
    assert "| 1 of 6 | 0.844 | 0.687 |" in text
