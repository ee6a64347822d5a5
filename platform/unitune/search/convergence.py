"""Convergence speed of one run from its validation curve (pure functions, no Ray).

A curve is the list of per-epoch results a run reported, oldest first; each result is a
dict holding at least ``epoch`` (0 = the model before training, then 1-based), the
metric, and ``train_time_s`` (seconds of training inside the run up to that epoch, queue
time excluded).

"Reaching" a value means ``>=`` it for ``mode="max"`` and ``<=`` it for ``mode="min"``.
NaN values (a diverged epoch) never reach anything and are never the best.

Every measure is comparable across the trials of a search, whatever ASHA did to them:

- ``budget`` is the search's full epoch budget (``train.epochs`` of the trials' job). The
  area under the curve is counted over all of it, epochs a stopped trial never ran
  counting 0, so only a trial that ran the whole budget at the metric's maximum scores 1.
- The area is normalised by a value common to all trials: the metric's maximum
  (:data:`METRIC_MAX`, e.g. 600 for RSUM) where it has one, else the target.
- ``epochs_to_90pct_best`` is measured to 90% of ``max(own best, target)``: a trial that
  plateaus early far below the target never gets there, so it cannot look fast.
- A target never reached is **budget + 1** epochs (``epochs_to_target``,
  ``epochs_to_90pct_best``): a finite number that sorts after every reached one and reads
  as "not within the budget"; ``target_reached`` is 0 then (1 when reached) and
  ``seconds_to_target`` NaN (no time exists). Without ``budget`` (an old caller) the
  never-reached value is ``inf``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from unitune.choices import CONVERGENCE_KEYS as KEYS
from unitune.choices import METRIC_MAX


def _check_mode(mode: str) -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")


def _reaches(value: float, target: float, mode: str) -> bool:
    if math.isnan(value):
        return False
    return value >= target if mode == "max" else value <= target


def first_reaching(values: Sequence[float], target: float, mode: str) -> int | None:
    """Index of the first value that reaches ``target``, or None.

    Raises:
        ValueError: ``mode`` is not "max" or "min".
    """
    _check_mode(mode)
    for i, value in enumerate(values):
        if _reaches(float(value), target, mode):
            return i
    return None


def best_index(values: Sequence[float], mode: str) -> int | None:
    """Index of the best non-NaN value (the first one on ties), or None if there is none."""
    _check_mode(mode)
    best = None
    for i, value in enumerate(values):
        value = float(value)
        if math.isnan(value):
            continue
        if best is None or (value > values[best] if mode == "max" else value < values[best]):
            best = i
    return best


def normalized_auc(values: Sequence[float], mode: str, scale: float | None, budget: int | None = None) -> float:
    """Mean over the ``budget`` epochs of each epoch's value relative to ``scale``, in [0, 1].

    Args:
        values: the values of epochs 1, 2, ... (epoch 0, the same model for every trial, is
            not part of the area).
        mode: "max": an epoch scores ``min(v, scale) / scale``; "min": ``min(1, scale / v)``.
            A NaN epoch scores 0.
        scale: a value common to all compared runs (the metric's maximum, or the target).
        budget: epochs of the full budget; epochs past ``len(values)`` score 0. None: the
            epochs given.

    Returns:
        The normalised area; NaN without ``scale`` (or a non-positive one) or without epochs.

    Raises:
        ValueError: a bad ``mode``, or ``budget`` smaller than ``len(values)``.
    """
    _check_mode(mode)
    budget = len(values) if budget is None else int(budget)
    if budget < len(values):
        raise ValueError(f"budget {budget} is smaller than the {len(values)} epochs given")
    if scale is None or not scale > 0 or budget == 0:
        return math.nan
    total = 0.0
    for value in map(float, values):
        if math.isnan(value):
            continue
        if mode == "max":
            total += max(0.0, min(value, scale)) / scale
        else:
            total += 1.0 if value <= scale else scale / value
    return total / budget


def convergence_summary(
    curve: Sequence[dict],
    metric: str,
    mode: str,
    target: float | None,
    time_key: str = "train_time_s",
    *,
    budget: int | None = None,
) -> dict[str, float]:
    """Convergence-speed metrics of one run (see the module docstring for the choices).

    Args:
        curve: per-epoch results (epoch 0 optional); results without ``metric`` are skipped.
        budget: the full epoch budget of the search (or of the final run).

    Returns a dict with :data:`KEYS`:
        epochs_to_target: first epoch whose ``metric`` reached ``target`` (0: the model
            before training already did); ``budget + 1`` if never; NaN without a target.
        seconds_to_target: ``time_key`` at that epoch (0 at epoch 0); NaN if never reached
            or without a target.
        target_reached: 1.0 or 0.0; NaN without a target.
        epochs_to_90pct_best: first epoch reaching 90% of ``max(own best, target)``
            (``<= min(best, target) / 0.9`` for min); ``budget + 1`` if never; NaN without a
            target or without a best.
        normalized_auc: :func:`normalized_auc` over epochs >= 1 with ``scale`` =
            ``METRIC_MAX[metric]`` or else ``target``.
        best_value, best_epoch: the best value and the epoch it was reported at (NaN if none).

    Raises:
        ValueError: ``mode`` is not "max" or "min"; ``budget`` is below the epochs run.
    """
    _check_mode(mode)
    points = [r for r in curve if r.get(metric) is not None]
    values = [float(r[metric]) for r in points]
    epochs = [float(r.get("epoch", i + 1)) for i, r in enumerate(points)]
    trained = [v for v, e in zip(values, epochs) if e >= 1]
    never = float(budget) + 1 if budget is not None else math.inf
    out = dict.fromkeys(KEYS, math.nan)
    idx = best_index(values, mode)
    if idx is not None:
        out["best_value"], out["best_epoch"] = values[idx], epochs[idx]
    if target is not None:
        target = float(target)
        hit = first_reaching(values, target, mode)
        out["target_reached"] = float(hit is not None)
        out["epochs_to_target"] = epochs[hit] if hit is not None else never
        if hit is not None:
            out["seconds_to_target"] = 0.0 if epochs[hit] == 0 else float(points[hit].get(time_key, math.nan))
        if idx is not None:
            best = values[idx]
            reference = max(best, target) if mode == "max" else min(best, target)
            near = 0.9 * reference if mode == "max" else reference / 0.9
            hit90 = first_reaching(values, near, mode) if reference > 0 else None
            out["epochs_to_90pct_best"] = epochs[hit90] if hit90 is not None else never
    scale = METRIC_MAX.get(metric, target)
    out["normalized_auc"] = normalized_auc(trained, mode, scale, budget)
    return out
