"""``unitune export [SEARCH] [--job JOB | --store URI] [--metric M] [--trial ID] [--pareto] [--out FILE]``.

Picks the best finished trial of a search from MLflow and writes a complete job YAML that
``unitune train`` runs unchanged: the trials' base job (the parent run's
``search_job.yaml``) with the trial's sampled values fixed, no ``search`` block,
``train.epochs`` set to ``train.final_epochs``, and ``tracking.source_run`` naming the
trial's MLflow run (``unitune train`` tags its run ``unitune.source_run`` with it).

Which store: ``--job JOB`` (its ``tracking.uri``; SEARCH defaults to the newest search of
its experiment), else ``--store URI``, else ``sqlite:///mlruns.db`` in the working
directory (the demo's store). SEARCH is a parent run id, a search id, a trial's run id
(that trial is exported) or an experiment name (its newest search).

Which trial: the best by the search's declared metric and mode (parent params ``metric``,
``mode``) or by ``--metric``. A per-epoch metric scores a trial by its best epoch, a
convergence metric by its final value. A Pareto search (parent param ``objectives``)
exports its best point on the first objective; ``--pareto`` lists the front instead (the
search summary's: Optuna's best trials, scored by each trial's last report), and
``--trial`` exports any trial. Only finished trials count (completed or stopped by ASHA).
"""

from __future__ import annotations

import argparse
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from unitune import tags as T
from unitune.errors import UserError
from unitune.tags import FINISHED_STATES
from unitune.terminal import text_table
from unitune.tracking import DEFAULT_STORE, local_store_path, param_value, tag_filter


@dataclass
class Trial:
    trial_id: str
    run_id: str
    state: str
    params: dict
    values: dict  # objective or metric name -> the trial's score on it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "search",
        nargs="?",
        metavar="SEARCH",
        help="parent run id, search id, trial run id or experiment name "
        "(default: the newest search of --job's experiment, or of the store)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--job", metavar="JOB", help="job file whose tracking.uri holds the search")
    where.add_argument("--store", metavar="URI", help=f"MLflow tracking URI (default: {DEFAULT_STORE})")
    parser.add_argument("--metric", metavar="M", help="pick by this metric (default: the search's own)")
    parser.add_argument("--trial", metavar="ID", help="export this trial (trial id or run id) instead of the best")
    parser.add_argument("--pareto", action="store_true", help="list the Pareto front of a multi-objective search")
    parser.add_argument("--out", metavar="FILE", help="output job file (default: <job name>_final.yaml)")


def run(args: argparse.Namespace) -> int:
    """Write the exported job (or print the Pareto front); 0 on success."""
    from unitune.tracking import Tracker

    uri, experiment = _store(args)
    tracker = Tracker(uri)
    tracker.check()
    parent, picked_run = find_search(tracker, args.search, experiment)
    search_id = parent.data.tags[T.SEARCH]
    params = parent.data.params
    objectives = _objectives(params)
    metric = args.metric or objectives[0][0]
    mode = _mode_of(metric) if args.metric else objectives[0][1]
    if args.pareto:
        if len(objectives) < 2:
            raise UserError(f"--pareto: search {search_id} has one objective ({metric}); drop --pareto")
        print(format_front(pareto_front(tracker, parent, search_id, objectives), objectives))
        return 0
    trials = finished_trials(tracker, parent, search_id, [metric])
    trial_ref = args.trial or picked_run
    trial = select(trials, trial_ref, metric, mode, search_id)
    base = tracker.read_text(parent.info.run_id, T.BASE_JOB_ARTIFACT)
    if base is None:
        raise UserError(
            f"search {search_id}: parent run {parent.info.run_id} has no {T.BASE_JOB_ARTIFACT} "
            "artifact (a search from an older unitune); run the search again"
        )
    job = final_job(yaml.safe_load(base), trial)
    out = Path(args.out or f"{job.name}_final.yaml")
    value = trial.values.get(metric)
    how = f"{metric} = {value:.6g} ({mode})" if value is not None else "chosen with --trial"
    header = [
        f"# unitune train {shlex.quote(str(out))}",
        f"# Exported by `unitune export` from trial {trial.trial_id} (MLflow run {trial.run_id}, "
        f"{trial.state}) of search {search_id}",
        f"# (parent run {parent.info.run_id}): {how}; train.epochs = train.final_epochs.",
        "# Searched values: " + ", ".join(f"{k}={v}" for k, v in sorted(trial.params.items())),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "\n".join(header) + "\n" + yaml.safe_dump(job.model_dump(mode="json", exclude={"search"}), sort_keys=False)
    )
    print(f"wrote {out}: trial {trial.trial_id} (run {trial.run_id}) of search {search_id}, {how}")
    print(f"next: unitune train {shlex.quote(str(out))}")
    return 0


def _store(args: argparse.Namespace) -> tuple[str, str | None]:
    """(tracking URI, experiment or None) from ``--job``, ``--store`` or the default store.

    Raises:
        UserError: a local store that does not exist (opening it would create an empty one).
    """
    if args.job:
        from unitune.config import load_job

        job = load_job(args.job)
        uri, experiment, what = job.tracking.uri, job.experiment, f"{args.job}: tracking.uri"
    else:
        uri, experiment = args.store or DEFAULT_STORE, None
        what = "--store" if args.store else "the default store (give --job JOB or --store URI)"
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise UserError(f"{what}: no MLflow store at {path}")
    return uri, experiment


def _objectives(params: dict) -> list[tuple[str, str]]:
    """``[(metric, mode), ...]`` the search declared (parent params ``objectives`` or
    ``metric``/``mode``)."""
    if params.get("objectives"):
        return [tuple(item.split(":", 1)) for item in params["objectives"].split(",")]
    return [(params.get("metric", "rsum"), params.get("mode", "max"))]


def _mode_of(metric: str) -> str:
    from unitune.config import CONVERGENCE_METRICS, METRICS

    known = {**METRICS, **CONVERGENCE_METRICS}
    if metric not in known:
        raise UserError(f"--metric: unknown metric {metric!r} (one of: {', '.join(known)})")
    return known[metric]


def find_search(tracker, search: str | None, experiment: str | None):
    """``(parent run, trial run id or None)`` for SEARCH (see the module docstring).

    Raises:
        UserError: no such search, or SEARCH (or the default) matches searches of several
            experiments.
    """
    from mlflow.exceptions import MlflowException

    client = tracker.client
    exp_ids = (
        [tracker.experiment_id(experiment)] if experiment else [e.experiment_id for e in client.search_experiments()]
    )
    if not exp_ids:
        raise UserError(f"no experiment in {tracker.uri}")
    if search is not None:
        try:
            run = client.get_run(search)
        except MlflowException:
            run = None
        if run is not None and run.data.tags.get(T.ROLE) == "search":
            return run, None
        if run is not None and run.data.tags.get(T.ROLE) == "trial":
            return client.get_run(run.data.tags[T.PARENT]), run.info.run_id
        if run is not None:
            raise UserError(f"run {search} is not a unitune search or trial run")
        parents = _searches(client, exp_ids, {T.SEARCH: search})
        if len({p.info.experiment_id for p in parents}) > 1:
            raise UserError(
                f"search id {search!r} is ambiguous: it names searches in experiments "
                f"{_experiment_names(client, parents)}; give the parent run id"
            )
        if parents:
            return parents[0], None
        exp = client.get_experiment_by_name(search)
        if exp is None or exp.experiment_id not in exp_ids:
            known = sorted({p.data.tags.get(T.SEARCH) for p in _searches(client, exp_ids)})
            raise UserError(
                f"no search {search!r} in {tracker.uri} (not a parent run id, search id or "
                f"experiment name); searches there: {', '.join(known[:10]) or 'none'}"
            )
        exp_ids = [exp.experiment_id]
    parents = _searches(client, exp_ids)
    if not parents:
        raise UserError(f"no search in {tracker.uri}" + (f" (experiment {experiment!r})" if experiment else ""))
    if len({p.info.experiment_id for p in parents}) > 1:
        raise UserError(
            f"several experiments in {tracker.uri} hold searches "
            f"({_experiment_names(client, parents)}); name one: unitune export EXPERIMENT"
        )
    return parents[0], None


def _searches(client, exp_ids: list[str], tags: dict | None = None) -> list:
    """Parent runs of searches in ``exp_ids`` (with ``tags``), newest first."""
    return list(
        client.search_runs(
            exp_ids,
            filter_string=tag_filter({T.ROLE: "search", **(tags or {})}),
            order_by=["attributes.start_time DESC"],
            max_results=1000,
        )
    )


def _experiment_names(client, runs) -> str:
    ids = sorted({r.info.experiment_id for r in runs})
    return ", ".join(client.get_experiment(i).name for i in ids)


def finished_trials(tracker, parent, search_id: str, metrics: list[str]) -> list[Trial]:
    """The search's finished trials (completed or stopped by ASHA), scored on ``metrics``.

    A per-epoch metric scores a trial by its best logged epoch (direction from
    ``unitune.config.METRICS``), a convergence metric by its final value; a metric the
    trial did not log is absent from ``Trial.values``.

    Raises:
        UserError: the search has no finished trial.
    """
    from unitune.config import METRICS

    runs = tracker.client.search_runs(
        [parent.info.experiment_id],
        filter_string=tag_filter({T.SEARCH: search_id, T.ROLE: "trial"}),
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )
    trials: list[Trial] = []
    states: dict[str, int] = {}
    for run in runs:
        state = run.data.tags.get(T.STATE, "unknown")
        states[state] = states.get(state, 0) + 1
        if state not in FINISHED_STATES or run.info.status == "RUNNING":
            continue
        final = tracker.get_metrics(run.info.run_id)
        values = {}
        for name in metrics:
            if name in METRICS:
                history = [v for _, v in tracker.metric_history(run.info.run_id, name) if not math.isnan(v)]
                if history:
                    values[name] = max(history) if METRICS[name] == "max" else min(history)
            elif name in final and not math.isnan(final[name]):
                values[name] = final[name]
        trials.append(
            Trial(
                run.data.tags.get(T.TRIAL, run.info.run_id),
                run.info.run_id,
                state,
                {k: param_value(v) for k, v in run.data.params.items()},
                values,
            )
        )
    if not trials:
        seen = ", ".join(f"{n} {s}" for s, n in states.items()) or "no trial runs"
        raise UserError(f"search {search_id} has no finished trial yet ({seen})")
    return trials


def select(trials: list[Trial], ref: str | None, metric: str, mode: str, search_id: str) -> Trial:
    """The trial named by ``ref`` (trial id or run id), else the best on ``metric``.

    Ties go to a completed trial, then to the earlier one.

    Raises:
        UserError: ``ref`` is not a finished trial of the search; no finished trial
            logged ``metric``.
    """
    if ref is not None:
        for t in trials:
            if ref in (t.trial_id, t.run_id):
                return t
        raise UserError(
            f"--trial: {ref} is not a finished trial of search {search_id} "
            f"(finished: {', '.join(t.trial_id for t in trials)})"
        )
    scored = [t for t in trials if metric in t.values]
    if not scored:
        raise UserError(f"metric {metric!r} was not logged by any finished trial of search {search_id}")
    sign = 1 if mode == "max" else -1
    order = {id(t): i for i, t in enumerate(trials)}
    return max(scored, key=lambda t: (sign * t.values[metric], t.state == "completed", -order[id(t)]))


def pareto_front(tracker, parent, search_id: str, objectives: list[tuple[str, str]]) -> list[Trial]:
    """The search's Pareto front as the search summary has it (``unitune.search.report.pareto_front``:
    Optuna's ``best_trials``, scored by each trial's last report), with the trials' MLflow runs.

    Raises:
        UserError: the search's Optuna study is not beside the store.
    """
    from unitune.search.report import pareto_front as optuna_front
    from unitune.search.storage import open_storage

    try:
        front = optuna_front(open_storage(tracker), search_id)
    except KeyError:  # optuna: "Record does not exist."
        raise UserError(f"--pareto: search {search_id}: no Optuna study of it beside {tracker.uri}") from None
    runs = {t.trial_id: t for t in finished_trials(tracker, parent, search_id, [])}
    names = [m for m, _ in objectives]
    return [
        Trial(
            trial_id,
            runs[trial_id].run_id,
            runs[trial_id].state,
            runs[trial_id].params,
            dict(zip(names, frozen.values)),
        )
        for frozen in front
        if (trial_id := frozen.user_attrs.get("trial_id")) in runs
    ]


def format_front(front: list[Trial], objectives: list[tuple[str, str]]) -> str:
    heads = ["trial", "run", *(f"{m} ({mode})" for m, mode in objectives), "params"]
    rows = [
        [
            t.trial_id,
            t.run_id,
            *(f"{t.values[m]:.6g}" for m, _ in objectives),
            ", ".join(f"{k}={v}" for k, v in sorted(t.params.items())),
        ]
        for t in front
    ]
    table = text_table(heads, rows, [False] * len(heads))
    return "\n".join([f"Pareto front: {len(front)} trial(s); export one with --trial ID", table])


def final_job(base: dict, trial: Trial):
    """The exported ``JobSpec``: ``base`` with the trial's values, the final budget, the
    source run, no search block.

    Raises:
        UserError: the values do not fit the job (names the key).
    """
    from unitune.config import JobSpec, apply_overrides

    job = apply_overrides(JobSpec.model_validate(base), trial.params)
    return apply_overrides(job, {"train.epochs": job.train.final_epochs, "tracking.source_run": trial.run_id})
