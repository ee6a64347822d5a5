"""Convergence speed of one trial from its validation curve (pure functions, no Ray).

A curve is the list of per-epoch results a trial reported, oldest first; each result is
a dict holding at least ``epoch`` (1-based), the metric, and ``train_time_s`` (seconds of
training inside the trial up to that epoch, queue time excluded).

"Reaching" a value means ``>=`` it for ``mode="max"`` and ``<=`` it for ``mode="min"``.
NaN values (a diverged epoch) never reach anything and are never the best.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

KEYS = ("epochs_to_target", "seconds_to_target", "epochs_to_90pct_best",
        "normalized_auc", "best_value", "best_epoch")


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


def normalized_auc(values: Sequence[float], mode: str) -> float:
    """Area under the curve over the epochs run, divided by (epochs × own best value).

    ``Σ_e v_e / (n · best)`` for ``max`` and ``n · best / Σ_e v_e`` for ``min``: 1.0 when the
    trial sat at its best from its first epoch, smaller the slower it got there. A
    scale-free speed measure for metrics that are positive (RSUM, recall, loss).
    NaN when the curve is empty, holds a NaN, or the best is not positive.
    """
    _check_mode(mode)
    idx = best_index(values, mode)
    if idx is None or any(math.isnan(float(v)) for v in values):
        return math.nan
    best, total, n = float(values[idx]), float(sum(values)), len(values)
    if best <= 0 or total <= 0:
        return math.nan
    return total / (n * best) if mode == "max" else n * best / total


def convergence_summary(curve: Sequence[dict], metric: str, mode: str, target: float | None,
                        time_key: str = "train_time_s") -> dict[str, float]:
    """Convergence-speed metrics of one trial.

    Returns a dict with :data:`KEYS`:
        epochs_to_target: epoch at which ``metric`` first reached ``target`` (inf if never;
            NaN when no target is set).
        seconds_to_target: ``time_key`` at that epoch (inf if never; NaN without target).
        epochs_to_90pct_best: first epoch reaching 90% of the trial's own best
            (``>= 0.9·best`` for max, ``<= best/0.9`` for min; NaN without a best).
        normalized_auc: :func:`normalized_auc` of the curve.
        best_value, best_epoch: the best value and the epoch it was reported at (NaN if none).

    Results without ``metric`` (epochs without evaluation) are skipped.

    Raises:
        ValueError: ``mode`` is not "max" or "min".
    """
    _check_mode(mode)
    points = [r for r in curve if r.get(metric) is not None]
    values = [float(r[metric]) for r in points]
    epochs = [float(r.get("epoch", i + 1)) for i, r in enumerate(points)]
    out = dict.fromkeys(KEYS, math.nan)
    if target is not None:
        hit = first_reaching(values, float(target), mode)
        out["epochs_to_target"] = epochs[hit] if hit is not None else math.inf
        out["seconds_to_target"] = (float(points[hit].get(time_key, math.nan))
                                    if hit is not None else math.inf)
    idx = best_index(values, mode)
    if idx is not None:
        best = values[idx]
        out["best_value"], out["best_epoch"] = best, epochs[idx]
        near = 0.9 * best if mode == "max" else best / 0.9
        hit90 = first_reaching(values, near, mode) if best > 0 else None
        out["epochs_to_90pct_best"] = epochs[hit90] if hit90 is not None else math.nan
    out["normalized_auc"] = normalized_auc(values, mode)
    return out
