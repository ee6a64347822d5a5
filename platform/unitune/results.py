"""A search's trials as a pandas DataFrame, read back from MLflow (as Ray Tune's
``ResultGrid.get_dataframe()`` gives its trials), and searches side by side.

    trials(search=None, *, tracking_uri=DEFAULT_STORE, experiment=None, metric=None) -> DataFrame
    compare(searches, *, tracking_uri=DEFAULT_STORE, experiment=None) -> DataFrame

A search is named as ``unitune export`` names it (``unitune.record.Record.find_search``): a search
id, its parent run id, one of its trials' run ids, an experiment name (its newest search),
or nothing (the newest search in the store). Only the tags of :mod:`unitune.tags` and what
the search logged are read: the parent run's params ``metric`` and ``mode``; each child run's
params (the sampled values), per-epoch metric history and convergence-speed metrics.

``trials`` columns, one row per trial, best first on ``metric`` (default: the search's own)
by the one rule of ``unitune.record`` (``ranked``): the finished trials (completed or
stopped by ASHA) by score, so the first row is the trial ``unitune export`` picks and the
search summary names, then the others (failed, running, interrupted) by score, NaN last:
``run_name trial_id run_id state status``, ``config/<param>`` for each sampled
value, ``best_<metric>`` (best epoch, epoch 0 included), ``best_epoch``, ``last_<metric>``
(the last logged epoch), ``epochs_run`` (the trial's ``unitune.epochs_run`` tag; while it
runs, its last logged epoch), the convergence speed (``epochs_to_target``,
``seconds_to_target``, ``epochs_to_90pct_best``, ``normalized_auc``; NaN until the trial
ends) and ``error``. ``DataFrame.attrs`` holds ``search_id``, ``parent_run_id``,
``experiment``, ``metric`` and ``mode``.

``compare`` columns, one row per search in the order given: ``search_id experiment state
metric mode best best_trial median trials`` (``best``/``median``: the best and the median
``best_<metric>`` of its finished trials, completed or stopped by ASHA, the ones ``unitune
export`` picks from), one count per trial state, ``trial_epochs`` (epochs the trials ran,
summed).
"""

from __future__ import annotations

import math
import statistics

import pandas as pd

from unitune import tags as T
from unitune.choices import CONVERGENCE_METRICS, METRICS
from unitune.errors import UserError
from unitune.record import Record, SearchRecord, State, TrialRecord, best, counts, ranked, trial_epochs
from unitune.stores import DEFAULT_STORE, local_store_path
from unitune.tracking import Tracker

SPEED = tuple(CONVERGENCE_METRICS)  # epochs_to_target seconds_to_target epochs_to_90pct_best normalized_auc
STATES = tuple(str(s) for s in State)  # running completed stopped_by_asha failed interrupted


def trials(
    search: str | None = None,
    *,
    tracking_uri: str = DEFAULT_STORE,
    experiment: str | None = None,
    metric: str | None = None,
) -> pd.DataFrame:
    """The trials of ``search`` (see the module docstring), best first on ``metric``.

    Raises:
        UserError: no such search (or store); ``metric`` is not a per-epoch metric.
    """
    record = _open(tracking_uri)
    found, _ = record.find_search(search, experiment)
    return _trials(record, found, metric)


def compare(searches: list[str], *, tracking_uri: str = DEFAULT_STORE, experiment: str | None = None) -> pd.DataFrame:
    """One row per search of ``searches`` (see the module docstring), in that order.

    Raises:
        UserError: one of them is not a search in the store.
    """
    record = _open(tracking_uri)
    rows = []
    for name in searches:
        search, _ = record.find_search(name, experiment)
        metric, mode = search.metric, search.mode
        found = record.trials(search, [metric])
        top = best(found, metric, mode)
        finished = [t.values[metric] for t in found if t.finished and math.isfinite(t.values.get(metric, math.nan))]
        rows.append(
            {
                "search_id": search.search_id,
                "experiment": record.experiment_name(search.experiment_id),
                "state": search.tags.get(T.STATE),
                "metric": metric,
                "mode": mode,
                "best": top.values[metric] if top is not None else math.nan,
                "best_trial": top.name if top is not None else None,
                "median": float(statistics.median(finished)) if finished else math.nan,
                "trials": len(found),
                **{str(state): n for state, n in counts(found).items()},
                "trial_epochs": trial_epochs(found),
            }
        )
    return pd.DataFrame(rows)


def _open(tracking_uri: str) -> Record:
    """The record of an existing store (a missing local one would be created empty)."""
    path = local_store_path(tracking_uri)
    if path is not None and not path.exists():
        raise UserError(f"no MLflow store at {path} (give --job JOB or --tracking-uri URI)")
    tracker = Tracker(tracking_uri)
    tracker.check()
    return Record(tracker)


def _trials(record: Record, search: SearchRecord, metric: str | None) -> pd.DataFrame:
    metric = metric or search.metric
    if metric not in METRICS:
        raise UserError(
            f"--sort: {metric!r} is not a per-epoch metric (one of: {', '.join(METRICS)}); "
            f"convergence speed sorts by its column: {', '.join(SPEED)}"
        )
    mode = search.mode if metric == search.metric else METRICS[metric]
    rows = [_row(t, metric) for t in ranked(record.trials(search, [metric]), metric, mode)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(
            columns=[
                "run_name",
                "trial_id",
                "run_id",
                "state",
                "status",
                f"best_{metric}",
                "best_epoch",
                f"last_{metric}",
                "epochs_run",
                *SPEED,
                "error",
            ]
        )
    frame.attrs.update(
        search_id=search.search_id,
        parent_run_id=search.run_id,
        experiment=record.experiment_name(search.experiment_id),
        metric=metric,
        mode=mode,
    )
    return frame


def _row(t: TrialRecord, metric: str) -> dict:
    curve = t.curves.get(metric) or []
    return {
        "run_name": t.name,
        "trial_id": t.trial_id,
        "run_id": t.run_id,
        "state": t.tags.get(T.STATE),
        "status": t.status,
        **{f"config/{k}": v for k, v in sorted(t.params.items())},
        f"best_{metric}": t.values.get(metric, math.nan),
        "best_epoch": t.best_epoch(metric),
        f"last_{metric}": curve[-1][1] if curve else math.nan,
        "epochs_run": t.epochs_run,
        **{key: t.metrics.get(key, math.nan) for key in SPEED},
        "error": t.error,
    }


def sort(frame: pd.DataFrame, column: str, mode: str) -> pd.DataFrame:
    """``frame`` sorted on ``column``, best first for ``mode`` (max: descending), NaN last;
    ties keep their order in ``frame`` (from :func:`trials`: the search metric's)."""
    attrs = dict(frame.attrs)
    out = frame.sort_values(
        column,
        ascending=mode == "min",
        na_position="last",
        kind="stable",
        key=lambda s: pd.to_numeric(s, errors="coerce"),
    ).reset_index(drop=True)
    out.attrs.update(attrs)
    return out
