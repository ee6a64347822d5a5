"""unitune.study.stats against scipy.stats on fixed inputs and hand-worked examples."""

import math

import pytest
from scipy import stats as sp

from unitune.study.stats import interval, paired_difference, signed, t_quantile, verdict


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


def test_paired_difference_matches_scipy_ttest_rel():
    a = {0: 260.1, 1: 255.3, 2: 262.8}
    b = {0: 257.0, 1: 254.9, 2: 256.2, 7: 100.0}  # seed 7 has no partner: left out
    got = paired_difference(a, b)
    d = [a[s] - b[s] for s in (0, 1, 2)]
    test = sp.ttest_rel([a[s] for s in (0, 1, 2)], [b[s] for s in (0, 1, 2)])
    ci = test.confidence_interval(0.95)
    assert got.n == 3 and got.mean == pytest.approx(sum(d) / 3)
    assert (got.low, got.high) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_zero_variance_and_one_value():
    flat = interval([5.0, 5.0, 5.0])
    assert (flat.mean, flat.std, flat.low, flat.high) == (5.0, 0.0, 5.0, 5.0)
    one = interval([7.0])
    assert one.mean == 7.0 and math.isnan(one.std) and math.isnan(one.low)
    with pytest.raises(ValueError):
        interval([])
    with pytest.raises(ValueError):
        interval([1.0, math.nan])
    with pytest.raises(ValueError, match="no seed"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_verdicts_never_overstate():
    # the example: the interval covers 0
    d = paired_difference({0: 263.0, 1: 258.0, 2: 265.0}, {0: 260.0, 1: 256.5, 2: 260.2})
    line = verdict("unified", "vlc", d, "RSUM")
    assert line.startswith("unified \u2212 vlc: +3.1 RSUM, 95% CI \u2212")
    assert line.endswith("over 3 seeds: not resolved")
    # a clear difference: resolved, and the better family is named (by the metric's mode)
    clear = paired_difference({0: 270.0, 1: 271.0, 2: 269.5}, {0: 250.0, 1: 252.0, 2: 249.0})
    assert verdict("unified", "triplet_hn", clear, "RSUM").endswith("resolved, unified better")
    assert verdict("unified", "triplet_hn", clear, "MdR", mode="min").endswith("resolved, triplet_hn better")
    # zero spread: no interval is claimed
    same = paired_difference({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})
    assert verdict("a", "b", same, "RSUM").endswith("(2 seeds; no spread, so no interval): not resolved")
    assert verdict("a", "b", paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}), "RSUM").endswith(
        "no difference")
    assert verdict("a", "b", paired_difference({0: 3.0}, {0: 1.0}), "RSUM").endswith(
        "over 1 seed: no interval from one seed: not resolved")
    assert (signed(3.14), signed(-0.4), signed(0.01)) == ("+3.1", "\u22120.4", "0.0")


def test_equal_differences_up_to_float_rounding_have_no_spread():
    # Every seed differs by exactly 3.1 in decimal; in floats the three differences differ in
    # their last bits (std ~1.6e-14), which gave a "95% CI +3.1 to +3.1: resolved".
    a, b = {0: 270.7, 1: 263.7, 2: 236.7}, {0: 267.6, 1: 260.6, 2: 233.6}
    assert len({a[s] - b[s] for s in a}) > 1   # the floats are not equal
    d = paired_difference(a, b)
    assert d.std == 0.0 and d.mean == pytest.approx(3.1)
    assert verdict("a", "b", d, "RSUM") == \
        "a \u2212 b: +3.1 RSUM, the same on every seed (3 seeds; no spread, so no interval): not resolved"
    assert interval([0.1, 0.1, 0.1]).std == 0.0
    # a real spread, however small against the values, is still one
    assert interval([258.7, 258.7 + 1e-4]).std == pytest.approx(sp.tstd([258.7, 258.7 + 1e-4]))


def test_a_bound_near_zero_is_shown_with_its_sign():
    # 2 seeds, differences 11.7362 and 13.7362: the interval's low end is +0.03 (scipy), which
    # one decimal would show as "0.0" next to "resolved"
    a, b = {0: 111.7362, 1: 113.7362}, {0: 100.0, 1: 100.0}
    low, high = sp.ttest_rel([a[0], a[1]], [b[0], b[1]]).confidence_interval(0.95)
    assert 0.0 < low < 0.05
    line = verdict("a", "b", paired_difference(a, b), "RSUM")
    assert line == f"a \u2212 b: +12.7 RSUM, 95% CI +{low:.2f} to +{high:.2f} over 2 seeds: resolved, a better"
    # just below 0: not resolved, and the low end keeps its minus sign (not "0.0")
    a = {0: 111.6762, 1: 113.6762}
    low, high = sp.ttest_rel([a[0], a[1]], [b[0], b[1]]).confidence_interval(0.95)
    assert -0.05 < low < 0.0
    line = verdict("a", "b", paired_difference(a, b), "RSUM")
    assert line == f"a \u2212 b: +12.7 RSUM, 95% CI \u2212{-low:.2f} to +{high:.2f} over 2 seeds: not resolved"
