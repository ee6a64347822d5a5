import math
import random

import pytest

from unitune.search.convergence import METRIC_MAX, convergence_summary, normalized_auc


def _curve(values, dt=2.0, start=1, key="rsum"):
    return [{"epoch": e, key: v, "train_time_s": dt * e} for e, v in enumerate(values, start=start)]


def _reference(values, target, mode, budget, scale):
    """Plain loop written independently of the module: scan epochs 1.. one by one."""
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    reach = (lambda v, t: v >= t) if mode == "max" else (lambda v, t: v <= t)
    to_target, best, best_epoch = budget + 1, None, None
    for epoch, v in enumerate(values, start=1):
        if to_target == budget + 1 and reach(v, target):
            to_target = epoch
        if best is None or better(v, best):
            best, best_epoch = v, epoch
    reference = max(best, target) if mode == "max" else min(best, target)
    near = 0.9 * reference if mode == "max" else reference / 0.9
    to_near = next((e for e, v in enumerate(values, start=1) if reach(v, near)), budget + 1)
    total = 0.0
    for v in values:
        total += min(v, scale) / scale if mode == "max" else min(1.0, scale / v)
    return to_target, to_near, total / budget, best, best_epoch


def test_worked_example():
    # 4 of 6 epochs run; RSUM is out of 600; target 250 is first reached at epoch 3.
    got = convergence_summary(_curve([100, 200, 300, 280]), "rsum", "max", target=250, budget=6)
    assert got["epochs_to_target"] == 3
    assert got["seconds_to_target"] == 6.0
    assert got["target_reached"] == 1.0
    assert got["epochs_to_90pct_best"] == 3            # 0.9 * max(300, 250) = 270
    assert got["normalized_auc"] == pytest.approx((100 + 200 + 300 + 280) / (6 * 600))
    assert (got["best_value"], got["best_epoch"]) == (300, 3)


@pytest.mark.parametrize("metric, mode", [("rsum", "max"), ("medr_i2t", "min")])
def test_random_curves_against_plain_loop(metric, mode):
    rng = random.Random(0)
    for _ in range(200):
        values = [rng.uniform(1, 100) for _ in range(rng.randint(1, 8))]
        budget = len(values) + rng.randint(0, 3)
        target = rng.uniform(1, 100)
        scale = METRIC_MAX[metric] if mode == "max" else target  # median rank has no maximum
        got = convergence_summary(_curve(values, key=metric), metric, mode, target, budget=budget)
        to_target, to_near, auc, best, best_epoch = _reference(values, target, mode, budget, scale)
        assert got["epochs_to_target"] == to_target
        reached = to_target <= budget
        assert got["target_reached"] == float(reached)
        if reached:
            assert got["seconds_to_target"] == 2.0 * to_target
        else:
            assert math.isnan(got["seconds_to_target"])
        assert got["epochs_to_90pct_best"] == to_near
        assert got["normalized_auc"] == pytest.approx(auc)
        assert (got["best_value"], got["best_epoch"]) == (best, best_epoch)


def test_asha_stopped_trial_scores_below_the_same_values_run_to_the_budget():
    full = [120.0, 180.0, 210.0, 230.0]
    stopped = full[:2]  # ASHA stopped it after epoch 2, with the same values so far
    for target in (150.0, 500.0):
        a = convergence_summary(_curve(stopped), "rsum", "max", target, budget=4)
        b = convergence_summary(_curve(full), "rsum", "max", target, budget=4)
        assert a["normalized_auc"] < b["normalized_auc"] < 1.0


def test_a_bad_flat_trial_does_not_look_fast():
    # The old definitions gave a flat RSUM-30 trial AUC 1.0 and "90% of best" at epoch 1.
    bad = convergence_summary(_curve([30.0]), "rsum", "max", target=250, budget=4)
    good = convergence_summary(_curve([100.0, 200.0, 260.0, 270.0]), "rsum", "max", target=250, budget=4)
    assert bad["normalized_auc"] == pytest.approx(30 / (4 * 600))
    assert bad["normalized_auc"] < good["normalized_auc"]
    assert bad["epochs_to_90pct_best"] == 5 > good["epochs_to_90pct_best"] == 3  # 0.9 * 270 = 243


def test_never_reached_is_budget_plus_one_and_no_target_is_nan():
    got = convergence_summary(_curve([10, 20]), "rsum", "max", target=500, budget=3)
    assert got["epochs_to_target"] == 4 and got["target_reached"] == 0.0
    assert math.isnan(got["seconds_to_target"]) and math.isfinite(got["epochs_to_target"])
    legacy = convergence_summary(_curve([10, 20]), "rsum", "max", target=500)  # no budget given
    assert legacy["epochs_to_target"] == math.inf
    got = convergence_summary(_curve([10, 20]), "rsum", "max", target=None, budget=2)
    assert math.isnan(got["epochs_to_target"]) and math.isnan(got["target_reached"])
    assert math.isnan(got["epochs_to_90pct_best"]) and got["best_value"] == 20
    assert got["normalized_auc"] == pytest.approx(30 / (2 * 600))  # RSUM has a maximum: no target needed


def test_epoch_zero_counts_for_reaching_not_for_the_area():
    curve = _curve([260.0], start=0) + _curve([270.0, 280.0])
    got = convergence_summary(curve, "rsum", "max", target=250, budget=2)
    assert got["epochs_to_target"] == 0 and got["seconds_to_target"] == 0.0
    assert got["normalized_auc"] == pytest.approx((270 + 280) / (2 * 600))


def test_nan_epochs_and_missing_metric():
    curve = _curve([10, math.nan, 30])
    curve.insert(1, {"epoch": 1.5, "train_time_s": 3.0})  # an epoch without evaluation
    got = convergence_summary(curve, "rsum", "max", target=25, budget=3)
    assert got["epochs_to_target"] == 3 and got["best_epoch"] == 3
    assert got["normalized_auc"] == pytest.approx(40 / (3 * 600))  # the diverged epoch scores 0
    empty = convergence_summary([], "rsum", "max", target=25, budget=3)
    assert empty["epochs_to_target"] == 4 and math.isnan(empty["best_value"])
    assert empty["normalized_auc"] == 0.0


def test_auc_bounds_scale_and_bad_input():
    assert normalized_auc([600, 600, 600], "max", 600) == 1.0
    assert normalized_auc([600, 700], "max", 600, budget=4) == 0.5     # clipped at the maximum
    assert normalized_auc([1, 2, 4], "min", 2) == pytest.approx((1 + 1 + 0.5) / 3)
    assert math.isnan(normalized_auc([1, 2], "max", None))
    with pytest.raises(ValueError, match="budget"):
        normalized_auc([1, 2, 3], "max", 600, budget=2)
    with pytest.raises(ValueError):
        convergence_summary(_curve([1]), "rsum", "up", 1)
