"""A search's trials as a pandas DataFrame, read back from MLflow (as Ray Tune's
``ResultGrid.get_dataframe()`` gives its trials), and searches side by side.

    trials(search=None, *, tracking_uri=DEFAULT_STORE, experiment=None, metric=None) -> DataFrame
    compare(searches, *, tracking_uri=DEFAULT_STORE, experiment=None) -> DataFrame

A search is named as ``unitune export`` names it (``unitune.export.find_search``): a search
id, its parent run id, one of its trials' run ids, an experiment name (its newest search),
or nothing (the newest search in the store). Only the tags of :mod:`unitune.tags` and what
the search logged are read: the parent run's params ``metric`` and ``mode``; each child run's
params (the sampled values), per-epoch metric history and convergence-speed metrics.

``trials`` columns, one row per trial, best first on ``metric`` (default: the search's own;
NaN last): ``run_name trial_id run_id state status``, ``config/<param>`` for each sampled
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

import pandas as pd

from unitune import tags as T
from unitune.errors import UserError
from unitune.tags import FINISHED_STATES
from unitune.tracking import DEFAULT_STORE

SPEED = ("epochs_to_target", "seconds_to_target", "epochs_to_90pct_best", "normalized_auc")
STATES = tuple(T.STATUS_OF_STATE)  # running completed stopped_by_asha failed interrupted


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
    tracker = _open(tracking_uri)
    from unitune.export import find_search

    parent, _ = find_search(tracker, search, experiment)
    return _trials(tracker, parent, metric)


def compare(searches: list[str], *, tracking_uri: str = DEFAULT_STORE, experiment: str | None = None) -> pd.DataFrame:
    """One row per search of ``searches`` (see the module docstring), in that order.

    Raises:
        UserError: one of them is not a search in the store.
    """
    tracker = _open(tracking_uri)
    from unitune.export import find_search

    rows = []
    for name in searches:
        parent, _ = find_search(tracker, name, experiment)
        frame = _trials(tracker, parent, None)
        a = frame.attrs
        best_col = f"best_{a['metric']}"
        scores = frame.loc[frame["state"].isin(FINISHED_STATES), best_col].astype(float)
        finite = scores[scores.map(math.isfinite)]
        top = frame.loc[finite.idxmax() if a["mode"] == "max" else finite.idxmin()] if len(finite) else None
        rows.append(
            {
                "search_id": a["search_id"],
                "experiment": a["experiment"],
                "state": parent.data.tags.get(T.STATE),
                "metric": a["metric"],
                "mode": a["mode"],
                "best": float(top[best_col]) if top is not None else math.nan,
                "best_trial": top["run_name"] if top is not None else None,
                "median": float(finite.median()) if len(finite) else math.nan,
                "trials": len(frame),
                **{state: int((frame["state"] == state).sum()) for state in STATES},
                "trial_epochs": int(frame["epochs_run"].fillna(0).sum()),
            }
        )
    return pd.DataFrame(rows)


def _open(tracking_uri: str):
    """A tracker on an existing store (a missing local one would be created empty)."""
    from unitune.tracking import Tracker, local_store_path

    path = local_store_path(tracking_uri)
    if path is not None and not path.exists():
        raise UserError(f"no MLflow store at {path} (give --job JOB or --tracking-uri URI)")
    tracker = Tracker(tracking_uri)
    tracker.check()
    return tracker


def _trials(tracker, parent, metric: str | None) -> pd.DataFrame:
    from unitune.config import METRICS
    from unitune.tracking import param_value

    search_id = parent.data.tags[T.SEARCH]
    metric = metric or parent.data.params.get("metric", "rsum")
    if metric not in METRICS:
        raise UserError(
            f"--sort: {metric!r} is not a per-epoch metric (one of: {', '.join(METRICS)}); "
            f"convergence speed sorts by its column: {', '.join(SPEED)}"
        )
    mode = parent.data.params.get("mode") if metric == parent.data.params.get("metric") else None
    mode = mode or METRICS[metric]
    experiment = tracker.client.get_experiment(parent.info.experiment_id).name
    runs = tracker.search_runs(experiment, {T.SEARCH: search_id, T.ROLE: "trial"})
    rows = []
    for run in runs:
        tags = run.data.tags
        history = [
            (step, value) for step, value in tracker.metric_history(run.info.run_id, metric) if not math.isnan(value)
        ]
        pick = max if mode == "max" else min
        best_epoch, best = pick(history, key=lambda sv: sv[1]) if history else (None, math.nan)
        final = tracker.get_metrics(run.info.run_id)
        epochs = tags.get(T.EPOCHS_RUN)
        rows.append(
            {
                "run_name": run.info.run_name,
                "trial_id": tags.get(T.TRIAL),
                "run_id": run.info.run_id,
                "state": tags.get(T.STATE),
                "status": run.info.status,
                **{f"config/{k}": param_value(v) for k, v in sorted(run.data.params.items())},
                f"best_{metric}": best,
                "best_epoch": best_epoch,
                f"last_{metric}": history[-1][1] if history else math.nan,
                "epochs_run": int(epochs) if epochs is not None else (history[-1][0] if history else 0),
                **{key: final.get(key, math.nan) for key in SPEED},
                "error": tags.get(T.ERROR),
            }
        )
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
    frame = sort(frame, f"best_{metric}", mode)
    frame.attrs.update(
        search_id=search_id, parent_run_id=parent.info.run_id, experiment=experiment, metric=metric, mode=mode
    )
    return frame


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
