import math
import random

import pytest

from unitune.search.convergence import convergence_summary, normalized_auc


def _curve(values, dt=2.0):
    return [{"epoch": e, "rsum": v, "train_time_s": dt * e} for e, v in enumerate(values, start=1)]


def _reference(values, target, mode):
    """Plain loop written independently of the module: scan epochs one by one."""
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    reach = (lambda v, t: v >= t) if mode == "max" else (lambda v, t: v <= t)
    to_target, best, best_epoch = math.inf, None, None
    for epoch, v in enumerate(values, start=1):
        if to_target == math.inf and reach(v, target):
            to_target = epoch
        if best is None or better(v, best):
            best, best_epoch = v, epoch
    near = 0.9 * best if mode == "max" else best / 0.9
    to_near = next(e for e, v in enumerate(values, start=1) if reach(v, near))
    total = 0.0
    for v in values:
        total += v
    auc = total / (len(values) * best) if mode == "max" else len(values) * best / total
    return to_target, to_near, auc, best, best_epoch


def test_worked_example():
    got = convergence_summary(_curve([100, 200, 300, 280]), "rsum", "max", target=250)
    assert got["epochs_to_target"] == 3
    assert got["seconds_to_target"] == 6.0
    assert got["epochs_to_90pct_best"] == 3          # 0.9 * 300 = 270
    assert got["normalized_auc"] == pytest.approx(880 / (4 * 300))
    assert (got["best_value"], got["best_epoch"]) == (300, 3)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_random_curves_against_plain_loop(mode):
    rng = random.Random(0)
    for _ in range(200):
        values = [rng.uniform(1, 100) for _ in range(rng.randint(1, 8))]
        target = rng.uniform(1, 100)
        got = convergence_summary(_curve(values), "rsum", mode, target)
        to_target, to_near, auc, best, best_epoch = _reference(values, target, mode)
        assert got["epochs_to_target"] == to_target
        assert got["seconds_to_target"] == (2.0 * to_target if to_target != math.inf else math.inf)
        assert got["epochs_to_90pct_best"] == to_near
        assert got["normalized_auc"] == pytest.approx(auc)
        assert (got["best_value"], got["best_epoch"]) == (best, best_epoch)


def test_never_reached_is_inf_and_no_target_is_nan():
    got = convergence_summary(_curve([10, 20]), "rsum", "max", target=500)
    assert got["epochs_to_target"] == math.inf and got["seconds_to_target"] == math.inf
    got = convergence_summary(_curve([10, 20]), "rsum", "max", target=None)
    assert math.isnan(got["epochs_to_target"]) and got["best_value"] == 20


def test_nan_epochs_and_missing_metric():
    curve = _curve([10, math.nan, 30])
    curve.insert(1, {"epoch": 1.5, "train_time_s": 3.0})  # an epoch without evaluation
    got = convergence_summary(curve, "rsum", "max", target=25)
    assert got["epochs_to_target"] == 3 and got["best_epoch"] == 3
    assert math.isnan(got["normalized_auc"])
    empty = convergence_summary([], "rsum", "max", target=25)
    assert empty["epochs_to_target"] == math.inf and math.isnan(empty["best_value"])


def test_auc_bounds_and_bad_mode():
    assert normalized_auc([5, 5, 5], "max") == 1.0
    assert normalized_auc([1, 2, 4], "min") == pytest.approx(3 * 1 / 7)
    assert math.isnan(normalized_auc([-1, 0], "max"))
    with pytest.raises(ValueError):
        convergence_summary(_curve([1]), "rsum", "up", 1)
