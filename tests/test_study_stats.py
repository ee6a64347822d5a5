"""unitune.study.stats against scipy.stats, plain loops and hand-worked examples (the\nprocedure's error rates: tests/test_study_simulation.py)."""

import math

import numpy as np
import pytest
from scipy import stats as sp

from unitune.ranks import QueryRanks
from unitune.study.stats import (
    Comparison,
    Decision,
    Outcomes,
    bootstrap_weights,
    compare,
    holm,
    interval,
    per_query,
    signed,
    spending,
    t_quantile,
    verdict,
)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 29, 200])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(df, p):
    assert t_quantile(p, df) == pytest.approx(sp.t.ppf(p, df), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("values", [[258.7, 251.2, 266.1], [1.0, 3.0], [10.5, 9.75, 11.0, 10.0, 12.25],
                                    [-3.0, 4.0, 0.5, 2.0]])
def test_interval_matches_scipy(values):
    got = interval(values)
    mean, sem = sum(values) / len(values), sp.sem(values)
    low, high = sp.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
    assert got.n == len(values)
    assert got.mean == pytest.approx(mean)
    assert got.std == pytest.approx(sp.tstd(values))
    assert (got.low, got.high) == (pytest.approx(low), pytest.approx(high))


def test_two_seeds_by_hand():
    # mean 2, std sqrt(2), t(0.975, 1) = tan(0.475 pi) = 12.7062: 2 +- 12.7062 * sqrt(2) / sqrt(2)
    got = interval([1.0, 3.0])
    t1 = math.tan(0.475 * math.pi)
    assert got.std == pytest.approx(math.sqrt(2))
    assert (got.low, got.high) == (pytest.approx(2 - t1), pytest.approx(2 + t1))


def test_zero_variance_and_one_value():
    flat = interval([5.0, 5.0, 5.0])
    assert (flat.mean, flat.std, flat.low, flat.high) == (5.0, 0.0, 5.0, 5.0)
    one = interval([7.0])
    assert one.mean == 7.0 and math.isnan(one.std) and math.isnan(one.low)
    with pytest.raises(ValueError):
        interval([])
    with pytest.raises(ValueError):
        interval([1.0, math.nan])


def test_equal_differences_up_to_float_rounding_have_no_spread():
    # Every seed differs by exactly 3.1 in decimal; in floats the three differences differ in
    # their last bits (std ~1.6e-14), which gave a "95% CI +3.1 to +3.1: resolved".
    a, b = {0: 270.7, 1: 263.7, 2: 236.7}, {0: 267.6, 1: 260.6, 2: 233.6}
    assert len({a[s] - b[s] for s in a}) > 1   # the floats are not equal
    d = interval([a[s] - b[s] for s in a])
    assert d.std == 0.0 and d.mean == pytest.approx(3.1)
    assert interval([0.1, 0.1, 0.1]).std == 0.0
    # a real spread, however small against the values, is still one
    assert interval([258.7, 258.7 + 1e-4]).std == pytest.approx(sp.tstd([258.7, 258.7 + 1e-4]))




def ranks_of(item_ranks, caption_ranks, captions_per_item=2, clusters=None):
    n = len(item_ranks)
    return QueryRanks(np.arange(100, 100 + n), np.arange(n) if clusters is None else np.asarray(clusters),
                      np.asarray(item_ranks), np.repeat(np.arange(n), captions_per_item), np.asarray(caption_ranks))


def plain_rsum(item_ranks, caption_ranks):
    out = 0.0
    for ranks in (item_ranks, caption_ranks):
        for k in (1, 5, 10):
            out += 100.0 * sum(1 for r in ranks if r <= k) / len(ranks)
    return out


def test_outcomes_recompute_the_metric_and_a_resample_of_clusters():
    rng = np.random.default_rng(0)
    items, captions = rng.integers(1, 30, 12), rng.integers(1, 30, 24)
    got = Outcomes.from_ranks(ranks_of(items, captions), "rsum")
    assert got.value()[0] == pytest.approx(plain_rsum(items, captions))
    assert Outcomes.from_ranks(ranks_of(items, captions), "r5_t2i").value()[0] == pytest.approx(
        100.0 * np.mean(captions <= 5))
    assert Outcomes.from_ranks(ranks_of(items, captions), "meanr_i2t").value()[0] == pytest.approx(np.mean(items))
    # a resample: item 3 twice, item 7 three times, the others once, item 0 not at all
    w = np.ones(12)
    w[[3, 7, 0]] = [2, 3, 0]
    picked = [i for i in range(12) for _ in range(int(w[i]))]
    dup_items = [items[i] for i in picked]
    dup_captions = [captions[2 * i + c] for i in picked for c in range(2)]
    assert got.value(w[None, :])[0] == pytest.approx(plain_rsum(dup_items, dup_captions))


def test_clusters_move_together():
    # items 0 and 1 form one group (cluster 0): a resample takes both or neither
    items, captions = [1, 20, 3, 4], [1, 1, 20, 20, 2, 9, 30, 1]
    got = Outcomes.from_ranks(ranks_of(items, captions, clusters=[0, 0, 1, 2]), "rsum")
    assert got.sums.shape[0] == 3 and list(got.counts[:, 0]) == [2, 1, 1] and list(got.counts[:, 1]) == [4, 2, 2]
    w = np.array([[2.0, 0.0, 1.0]])
    assert got.value(w)[0] == pytest.approx(plain_rsum([1, 20, 1, 20, 4], [1, 1, 20, 20] * 2 + [30, 1]))


def test_influence_is_the_derivative_of_the_metric_in_the_weights():
    rng = np.random.default_rng(1)
    got = Outcomes.from_ranks(ranks_of(rng.integers(1, 15, 10), rng.integers(1, 15, 20)), "rsum")
    eps = 1e-6
    for c in (0, 4, 9):
        w = np.ones((1, 10))
        w[0, c] += eps
        assert (got.value(w)[0] - got.value()[0]) / eps == pytest.approx(got.influence()[c], rel=1e-4, abs=1e-6)
    assert got.influence().sum() == pytest.approx(0.0, abs=1e-9)


def test_only_means_over_queries_are_compared_per_query():
    assert per_query("rsum") and per_query("r10_i2t") and per_query("meanr_t2i")
    assert not per_query("medr_i2t") and not per_query("train_loss")


def runs(rng, shift=0.0, seeds=3, n=40):
    out = {}
    for s in range(seeds):
        base = rng.integers(1, 12, 3 * n) - (shift > 0) * rng.integers(0, 2, 3 * n)
        base = np.maximum(base, 1)
        out[(0, s)] = Outcomes.from_ranks(ranks_of(base[:n], base[n:]), "rsum")
    return out


def test_compare_parts_against_their_definitions():
    rng = np.random.default_rng(2)
    a, b = runs(rng, shift=1.0), runs(rng)
    weights = bootstrap_weights(40, 4000, seed=0)
    got = compare("a", "b", a, b, weights)
    d = [a[u].value()[0] - b[u].value()[0] for u in sorted(a)]
    assert got.mean == pytest.approx(np.mean(d))
    assert got.se_runs == pytest.approx(sp.sem(d))
    assert got.seed_only.low == pytest.approx(sp.ttest_rel([a[u].value()[0] for u in sorted(a)],
                                                           [b[u].value()[0] for u in sorted(b)]).confidence_interval().low)
    # the bootstrap part against the delta method (the sum of squared mean influence values)
    psi = np.array([a[u].influence() - b[u].influence() for u in sorted(a)])
    delta = float((psi.mean(axis=0) ** 2).sum())
    noise = float(((psi - psi.mean(axis=0)) ** 2).sum()) / (3 * 2)
    assert got.se_queries**2 == pytest.approx(max(0.0, delta - noise), rel=0.15, abs=0.5)
    assert got.se == pytest.approx(math.hypot(got.se_runs, got.se_queries))
    assert got.p == pytest.approx(2 * sp.t.sf(abs(got.mean) / got.se, got.df))
    assert 2 <= got.df <= 39


def test_identical_runs_and_one_pair():
    rng = np.random.default_rng(3)
    a = runs(rng)
    weights = bootstrap_weights(40, 200)
    same = compare("a", "b", a, dict(a), weights)
    assert same.identical and same.mean == 0.0 and same.p == 1.0
    line = verdict(holm([same])[0], "RSUM")
    assert line.endswith("no difference") and "identical outcomes" in line
    one = compare("a", "b", {(0, 0): a[(0, 0)]}, runs(rng, seeds=1), weights)
    assert not math.isfinite(one.se)
    assert verdict(holm([one])[0], "RSUM").endswith("unknown with one pair: not resolved")
    with pytest.raises(ValueError, match="share no"):
        compare("a", "b", {(0, 5): a[(0, 0)]}, a, weights)


def test_search_repeats_are_the_top_level():
    rng = np.random.default_rng(4)
    a = {(r, s): o for r in range(2) for s, o in enumerate(runs(rng, shift=1.0, seeds=2).values())}
    b = {(r, s): o for r in range(2) for s, o in enumerate(runs(rng, seeds=2).values())}
    got = compare("a", "b", a, b, bootstrap_weights(40, 500))
    per_repeat = [np.mean([a[(r, s)].value()[0] - b[(r, s)].value()[0] for s in range(2)]) for r in range(2)]
    assert got.repeats == 2 and got.units == 4
    assert got.se_runs == pytest.approx(sp.sem(per_repeat))


def test_spending_shares():
    assert spending([1 / 3, 2 / 3, 1.0]) == pytest.approx([1 / 9, 3 / 9, 5 / 9])
    assert spending([1.0]) == [1.0]
    for bad in ([0.5, 0.5, 1.0], [0.5, 0.9]):
        with pytest.raises(ValueError):
            spending(bad)


def fake(name, p, mean=5.0, se=1.0):
    return Comparison(name, "ref", mean, se, 10.0, p, se, 0.0, interval([1.0, 2.0]), 3, 1)


def test_holm_steps_down_and_stops():
    got = holm([fake("a", 0.04), fake("b", 0.01), fake("c", 0.03)], 1.0)
    # sorted: b 0.01 <= 0.05/3 resolved; c 0.03 > 0.05/2: stop; a not resolved although 0.04 <= 0.05
    assert [d.resolved for d in got] == [False, True, False]
    assert [d.level for d in got] == pytest.approx([0.05, 0.05 / 3, 0.05 / 2])
    got = holm([fake("a", 0.04), fake("b", 0.01), fake("c", 0.02)], 1.0)
    assert [d.resolved for d in got] == [True, True, True]
    # a share of alpha at this look; a comparison resolved at an earlier look stays resolved
    got = holm([fake("a", 0.2), fake("b", 0.004)], 1 / 9, already={"a": 3})
    assert got[0].resolved and got[0].resolved_at == 3
    assert got[1].level == pytest.approx(0.05 / 9) and got[1].resolved


def test_verdict_lines():
    resolved = Decision(fake("vlc", 0.001, mean=12.0, se=2.0), True, 0.01, 7.0)
    assert verdict(resolved, "RSUM") == (
        "vlc \u2212 ref: +12.0 RSUM, CI +5.0 to +19.0 (99.0%, 3 paired runs): resolved, vlc better")
    assert verdict(resolved, "MdR", mode="min").endswith("resolved, ref better")
    open_ = Decision(fake("vlc", 0.3, mean=-2.0, se=2.0), False, 0.025, 4.6)
    assert verdict(open_, "RSUM") == ("vlc \u2212 ref: \u22122.0 RSUM, CI \u22126.6 to +2.6 (97.5%, 3 paired "
                                      "runs): not resolved (resolvable here: beyond \u00b14.6)")
    near = Decision(fake("a", 0.04, mean=3.02, se=1.0), True, 0.05, 3.0)
    assert "CI +0.02 to +6.02" in verdict(near, "RSUM")
    assert (signed(3.14), signed(-0.4), signed(0.01)) == ("+3.1", "\u22120.4", "0.0")
