"""Run a study: one search per family, the best trial of each trained with seeds 0..N-1,
each final run measured on the test split; all of it found again by tags on resume.

MLflow layout (all in the job's experiment; MLflow nests one level, and searches already
use it for their trials, so a study links by tags instead):

- the study run: ``unitune.role=study``, ``unitune.study_id=<id>``; its artifacts are the
  report (study.md, study.csv, runs.csv, plots/), its metrics the headline numbers;
- each family's search parent: ``unitune.study_id``, ``unitune.family``;
- each final run: ``unitune.role=final``, ``unitune.study_id``, ``unitune.family``,
  ``unitune.seed``, and (from ``unitune train``) ``unitune.source_run`` = the best trial.

In the UI: filter the runs table with ``tags.`unitune.study_id` = '<id>'``.

Resume: a family's search counts as done when its parent is tagged with the study and
``unitune.state=completed``; a final run when it is FINISHED with the study, family and
seed tags. Anything else is run again (an interrupted search continues from its Ray Tune
state through ``run_search(resume=True)``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import yaml

from unitune import cluster, export
from unitune import tags as T
from unitune.config import JobSpec, apply_overrides
from unitune.errors import UserError
from unitune.search.driver import run_search
from unitune.search.report import bound_warnings
from unitune.study.plan import Family, StudyPlan
from unitune.tracking import Tracker
from unitune.train.run import train

TIME_KEY = "train_time_s"


@dataclass
class SearchOutcome:
    family: str
    search_id: str
    parent_run_id: str
    best_trial: str
    best_run_id: str
    best_value: float
    params: dict
    trial_epochs: int
    wall_s: float
    at_bounds: list[str] = field(default_factory=list)  # best values at the edge of their range
    best_label: str = ""  # the best trial's name in the search's table (t03)


@dataclass
class FinalRun:
    family: str
    seed: int
    run_id: str
    metrics: dict  # the run's last value of every metric (test_* included)
    curve: list[dict] = field(default_factory=list)  # [{"epoch", metric, "train_time_s"}], epoch 0 first


@dataclass
class StudyResult:
    study_id: str
    run_id: str
    searches: dict[str, SearchOutcome]
    finals: list[FinalRun]
    wall_s: float


def _find_study(tracker: Tracker, experiment: str, base_id: str, resume: bool) -> tuple[str, str | None]:
    """(study id, run id or None): a new study takes the first free id, a resumed one is the
    newest unfinished study with this key.

    Raises:
        UserError: ``resume`` and no unfinished study of this job.
    """
    k, unfinished, study_id = 1, None, base_id
    while True:
        study_id = base_id if k == 1 else f"{base_id}-{k}"
        run = tracker.find_run(experiment, {T.ROLE: "study", T.STUDY: study_id})
        if run is None:
            break
        if tracker.run_status(run) != "FINISHED":
            unfinished = (study_id, run)
        k += 1
    if resume:
        if unfinished is None:
            raise UserError(
                f"--resume: no interrupted study of experiment {experiment!r} with this job, "
                f"spaces and seeds (study id {base_id}) in {tracker.uri}; run without --resume"
            )
        return unfinished
    if unfinished is not None:
        print(
            f"unitune: study {unfinished[0]} did not finish; `--resume` continues it. Starting a new study {study_id}.",
            file=sys.stderr,
        )
    return study_id, None


def run_study(
    plan: StudyPlan,
    *,
    resume: bool = False,
    address: str | None = None,
    verbose: bool = True,
    command: str | None = None,
    out=print,
) -> StudyResult:
    """Run (or resume) the study of ``plan``; write its report to the study run.

    ``command``: the command line, quoted in the report.

    Raises:
        UserError: unreachable store or cluster, nothing to resume, a search without a
            finished trial.
        KeyboardInterrupt: the study run is then KILLED (``unitune.state=interrupted``).
    """
    from unitune.study.report import write_report

    job = plan.job
    address = address if address is not None else job.ray.address
    tracker = Tracker(job.tracking.uri, job.tracking.artifact_location)
    tracker.check(address)
    experiment = job.experiment
    study_id, run_id = _find_study(tracker, experiment, f"{job.name}-study-{plan.study_key}", resume)
    started_ray = cluster.init_ray(address)
    started = time.monotonic()
    if run_id is None:
        run_id = tracker.start_run(
            experiment,
            study_id,
            tags={
                T.ROLE: "study",
                T.STUDY: study_id,
                T.STATE: "running",
                T.JOB_FILE: str(job.source or ""),
                T.REFERENCE_FAMILY: plan.reference.name,
                "mlflow.note.content": (
                    f"unitune study {study_id}: filter the runs with tags.`{T.STUDY}` = '{study_id}'"
                ),
            },
        )
        tracker.log_params(
            run_id,
            {
                "families": ",".join(f.name for f in plan.families),
                "seeds": plan.seeds,
                "metric": plan.metric,
                "mode": plan.mode,
                "target": plan.target,
                "final_epochs": plan.final_epochs,
                **{f"space.{f.name}": str(f.path) for f in plan.families},
            },
        )
    else:
        print(f"unitune: resuming study {study_id}", file=sys.stderr)
        tracker.reopen_run(run_id)
        tracker.set_tags(run_id, {T.STATE: "running"})
    state, status = "failed", "FAILED"
    try:
        searches: dict[str, SearchOutcome] = {}
        finals: list[FinalRun] = []
        for family in plan.families:
            searches[family.name] = _search(tracker, plan, family, study_id, address, resume, verbose, out)
            for warning in searches[family.name].at_bounds:
                print(f"unitune: warning: {family.name}: {warning}", file=sys.stderr)
            finals += _final_runs(tracker, plan, family, searches[family.name], study_id, out)
        result = StudyResult(study_id, run_id, searches, finals, time.monotonic() - started)
        write_report(tracker, plan, result, command=command, out=out)
        state, status = "completed", "FINISHED"
        return result
    except (KeyboardInterrupt, SystemExit):
        state, status = "interrupted", "KILLED"
        raise KeyboardInterrupt from None
    finally:
        tracker.set_tags(run_id, {T.STATE: state})
        tracker.end_run(run_id, status)
        if started_ray:
            cluster.shutdown_ray()


def _search(
    tracker: Tracker,
    plan: StudyPlan,
    family: Family,
    study_id: str,
    address: str | None,
    resume: bool,
    verbose: bool,
    out,
) -> SearchOutcome:
    """The family's finished search (found by its tags), else run (or continue) it."""
    job = plan.job
    tags = {T.ROLE: "search", T.STUDY: study_id, T.FAMILY: family.name, T.STATE: "completed"}
    parent_id = tracker.find_run(job.experiment, tags)
    if parent_id is not None:
        out(f"study {study_id}: search of {family.name} done already (parent run {parent_id})")
    else:
        out(f"study {study_id}: searching {family.name} ({family.path})")
        result = None
        # Tagged when the parent starts: a search that ends in an error is still the study's.
        links = {T.STUDY: study_id, T.FAMILY: family.name}
        if resume:
            try:
                result = run_search(job, family.space, address=address, verbose=verbose, resume=True, tags=links)
            except UserError as exc:
                if not str(exc).startswith("--resume:"):
                    raise
        if result is None:
            result = run_search(job, family.space, address=address, verbose=verbose, tags=links)
        parent_id = result.parent_run_id
        if result.interrupted:  # Ctrl-C / SIGTERM inside the search: the study stops, resumable
            print(
                "unitune: study interrupted; continue it with  unitune study JOB [same options] --resume",
                file=sys.stderr,
            )
            raise KeyboardInterrupt
    return _outcome(tracker, plan, family, parent_id)


def _outcome(tracker: Tracker, plan: StudyPlan, family: Family, parent_id: str) -> SearchOutcome:
    """The search's best trial by the study metric, its cost (trial-epochs, wall time) and
    the warnings of ``unitune search`` for best values at the edge of their range."""
    parent = tracker.client.get_run(parent_id)
    search_id = parent.data.tags[T.SEARCH]
    trials = export.finished_trials(tracker, parent, search_id, [plan.metric])
    best = export.select(trials, None, plan.metric, plan.mode, search_id)
    children = tracker.search_runs(plan.job.experiment, {T.SEARCH: search_id, T.ROLE: "trial"})
    trial_epochs = sum(int(r.data.tags.get(T.EPOCHS_RUN, 0) or 0) for r in children)
    info = parent.info
    wall = ((info.end_time or info.start_time) - info.start_time) / 1000.0
    return SearchOutcome(
        family.name,
        search_id,
        parent_id,
        best.trial_id,
        best.run_id,
        best.values[plan.metric],
        best.params,
        trial_epochs,
        wall,
        bound_warnings({"best": {"params": best.params}}, family.space),
        next((r.info.run_name.split()[0] for r in children if r.info.run_id == best.run_id), best.trial_id),
    )


def final_job(tracker: Tracker, plan: StudyPlan, family: Family, search: SearchOutcome, seed: int) -> JobSpec:
    """The best trial as ``unitune export`` writes it, for ``seed`` and the final epochs."""
    base = tracker.read_text(search.parent_run_id, T.BASE_JOB_ARTIFACT)
    if base is None:
        raise UserError(f"search {search.search_id}: parent run {search.parent_run_id} has no {T.BASE_JOB_ARTIFACT}")
    trial = export.Trial(search.best_trial, search.best_run_id, "completed", search.params, {})
    exported = export.final_job(yaml.safe_load(base), trial)
    return apply_overrides(
        exported,
        {
            "seed": seed,
            "train.epochs": plan.final_epochs,
            "name": f"{plan.job.name}-{family.name}-seed{seed}",
            "tracking.experiment": plan.job.experiment,
        },
    )


def _final_runs(
    tracker: Tracker, plan: StudyPlan, family: Family, search: SearchOutcome, study_id: str, out
) -> list[FinalRun]:
    runs = []
    for seed in range(plan.seeds):
        tags = {T.ROLE: "final", T.STUDY: study_id, T.FAMILY: family.name, T.SEED: seed}
        found = [r for r in tracker.search_runs(plan.job.experiment, tags) if r.info.status == "FINISHED"]
        if found:
            run_id = found[0].info.run_id
            out(f"study {study_id}: {family.name} seed {seed} done already (run {run_id})")
        else:
            out(
                f"study {study_id}: training {family.name} seed {seed} for {plan.final_epochs} epochs "
                f"(best trial {search.best_label or search.best_trial} of {search.search_id})"
            )
            result = train(final_job(tracker, plan, family, search, seed))
            run_id = result["run_id"]
            tracker.set_tags(run_id, tags)
        runs.append(
            FinalRun(family.name, seed, run_id, tracker.get_metrics(run_id), read_curve(tracker, run_id, plan.metric))
        )
    return runs


def read_curve(tracker: Tracker, run_id: str, metric: str) -> list[dict]:
    """``[{"epoch": e, metric: v, "train_time_s": t}, ...]`` of a run, epoch 0 included."""
    times = dict(tracker.metric_history(run_id, TIME_KEY))
    return [
        {"epoch": step, metric: value, TIME_KEY: times.get(step, 0.0 if step == 0 else float("nan"))}
        for step, value in tracker.metric_history(run_id, metric)
    ]
