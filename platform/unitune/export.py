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
``--trial ID`` exports any finished trial (``t03`` as the summary and ``unitune results``
name it, its trial id or its run id). The best trial is ``unitune.record.best``'s: only
finished trials count (completed or stopped by ASHA), ties go to a completed trial, then to
the earlier one; the search summary and ``unitune results`` name the same trial.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from unitune import tags as T
from unitune.choices import CONVERGENCE_METRICS, METRICS
from unitune.errors import UserError
from unitune.record import Record, SearchRecord, TrialRecord, best, counts
from unitune.stores import DEFAULT_STORE, local_store_path
from unitune.terminal import text_table
from unitune.tracking import Tracker


@dataclass
class Trial:
    trial_id: str
    run_id: str
    state: str
    params: dict
    values: dict  # objective or metric name -> the trial's score on it
    label: str = ""  # t03, as the summary and `unitune results` name it


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
    parser.add_argument("--trial", metavar="ID", help="export this trial (t03, trial id or run id) instead of the best")
    parser.add_argument("--pareto", action="store_true", help="list the Pareto front of a multi-objective search")
    parser.add_argument("--out", metavar="FILE", help="output job file (default: <job name>_final.yaml)")


def run(args: argparse.Namespace) -> int:
    """Write the exported job (or print the Pareto front); 0 on success."""
    uri, experiment = _store(args)
    tracker = Tracker(uri)
    tracker.check()
    record = Record(tracker)
    search, picked_run = record.find_search(args.search, experiment)
    objectives = search.objectives
    metric = args.metric or objectives[0][0]
    mode = _mode_of(metric) if args.metric else objectives[0][1]
    if args.pareto:
        if len(objectives) < 2:
            raise UserError(f"--pareto: search {search.search_id} has one objective ({metric}); drop --pareto")
        print(format_front(_front(record, search), objectives))
        return 0
    trials = _finished(record.trials(search, [metric]), search.search_id)
    trial = pick(trials, args.trial or picked_run, metric, mode, search.search_id)
    base = tracker.read_text(search.run_id, T.BASE_JOB_ARTIFACT)
    if base is None:
        raise UserError(
            f"search {search.search_id}: parent run {search.run_id} has no {T.BASE_JOB_ARTIFACT} "
            "artifact (a search from an older unitune); run the search again"
        )
    job = final_job(yaml.safe_load(base), _as_trial(trial))
    out = Path(args.out or f"{job.name}_final.yaml")
    how = _how(trial, metric, mode)
    _write(out, job, trial, search, how)
    print(f"wrote {out}: trial {trial.label} (run {trial.run_id}) of search {search.search_id}, {how}")
    print(f"next: unitune train {shlex.quote(str(out))}")
    return 0


def _how(trial: TrialRecord, metric: str, mode: str) -> str:
    value = trial.values.get(metric)
    return f"{metric} = {value:.6g} ({mode})" if value is not None else "chosen with --trial"


def _write(out: Path, job, trial: TrialRecord, search: SearchRecord, how: str) -> None:
    header = [
        f"# unitune train {shlex.quote(str(out))}",
        f"# Exported by `unitune export` from trial {trial.label} (MLflow run {trial.run_id}, "
        f"{trial.state}) of search {search.search_id}",
        f"# (parent run {search.run_id}): {how}; train.epochs = train.final_epochs.",
        "# Searched values: " + ", ".join(f"{k}={v}" for k, v in sorted(trial.params.items())),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "\n".join(header) + "\n" + yaml.safe_dump(job.model_dump(mode="json", exclude={"search"}), sort_keys=False)
    )


def pick(trials: list[TrialRecord], ref: str | None, metric: str, mode: str, search_id: str) -> TrialRecord:
    """The finished trial named by ``ref`` (its ``t03`` label, trial id or run id), else the
    best on ``metric`` by the one rule (``unitune.record.best``).

    Raises:
        UserError: ``ref`` is not a finished trial of the search; no finished trial
            logged ``metric``.
    """
    if ref is not None:
        for t in trials:
            if ref in (t.label, t.trial_id, t.run_id):
                return t
        raise UserError(
            f"--trial: {ref} is not a finished trial of search {search_id} "
            f"(finished: {', '.join(t.label for t in trials)})"
        )
    top = best(trials, metric, mode)
    if top is None:
        raise UserError(f"metric {metric!r} was not logged by any finished trial of search {search_id}")
    return top


def _store(args: argparse.Namespace) -> tuple[str, str | None]:
    """(tracking URI, experiment or None) from ``--job``, ``--store`` or the default store.

    Raises:
        UserError: a local store that does not exist (opening it would create an empty one).
    """
    if args.job:
        from unitune.config import load_job  # the job schema (pydantic): not for --help

        job = load_job(args.job)
        uri, experiment, what = job.tracking.uri, job.experiment, f"{args.job}: tracking.uri"
    else:
        uri, experiment = args.store or DEFAULT_STORE, None
        what = "--store" if args.store else "the default store (give --job JOB or --store URI)"
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise UserError(f"{what}: no MLflow store at {path}")
    return uri, experiment


def _mode_of(metric: str) -> str:
    known = {**METRICS, **CONVERGENCE_METRICS}
    if metric not in known:
        raise UserError(f"--metric: unknown metric {metric!r} (one of: {', '.join(known)})")
    return known[metric]


def _finished(trials: list[TrialRecord], search_id: str) -> list[TrialRecord]:
    finished = [t for t in trials if t.finished]
    if not finished:
        seen = ", ".join(f"{n} {s}" for s, n in counts(trials).items() if n) or "no trial runs"
        raise UserError(f"search {search_id} has no finished trial yet ({seen})")
    return finished


def _as_trial(t: TrialRecord) -> Trial:
    return Trial(t.trial_id, t.run_id, t.state or "unknown", t.params, t.values, t.label)


def _front(record: Record, search: SearchRecord) -> list[TrialRecord]:
    """The search's Pareto front as the search summary has it (``unitune.search.report.pareto_front``:
    Optuna's ``best_trials``, scored by each trial's last report), as its finished trials
    with those scores as ``values``.

    Raises:
        UserError: the search's Optuna study is not beside the store.
    """
    # optuna (and matplotlib): only for --pareto
    from unitune.search.report import pareto_front as optuna_front
    from unitune.search.storage import open_storage

    try:
        front = optuna_front(open_storage(record.tracker), search.search_id)
    except KeyError:  # optuna: "Record does not exist."
        raise UserError(
            f"--pareto: search {search.search_id}: no Optuna study of it beside {record.tracker.uri}"
        ) from None
    runs = {t.trial_id: t for t in _finished(record.trials(search), search.search_id)}
    names = [m for m, _ in search.objectives]
    return [
        replace(runs[trial_id], values=dict(zip(names, frozen.values)))
        for frozen in front
        if (trial_id := frozen.user_attrs.get("trial_id")) in runs
    ]


def format_front(front: list[TrialRecord], objectives: list[tuple[str, str]]) -> str:
    heads = ["trial", "run", *(f"{m} ({mode})" for m, mode in objectives), "params"]
    rows = [
        [
            t.label,
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
    from unitune.config import JobSpec, apply_overrides  # the job schema (pydantic): not for --help

    job = apply_overrides(JobSpec.model_validate(base), trial.params)
    return apply_overrides(job, {"train.epochs": job.train.final_epochs, "tracking.source_run": trial.run_id})
