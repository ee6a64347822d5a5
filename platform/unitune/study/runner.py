"""Run a study: R searches per family (sampler seeds space.seed .. + R - 1), the best trial
of each trained with seeds in rounds (``unitune.study.sequential``: a round more only for the
families whose comparison with the reference is open), each final run measured on the test
split with its per-query ranks; all of it found again by tags on resume.

MLflow layout (all in the job's experiment; MLflow nests one level, and searches already
use it for their trials, so a study links by tags instead):

- the study run: ``unitune.role=study``, ``unitune.study_id=<id>``; its artifacts are the
  report (study.md, study.csv, runs.csv, plots/), its metrics the headline numbers;
- each family's search parent: ``unitune.study_id``, ``unitune.family``, ``unitune.search_repeat``;
- each final run: ``unitune.role=final``, ``unitune.study_id``, ``unitune.family``,
  ``unitune.search_repeat``, ``unitune.seed``, ``unitune.source_run`` = the best trial, and
  the artifact ``test_ranks.csv``.

In the UI: filter the runs table with ``tags.`unitune.study_id` = '<id>'``.

Resume: a family's search counts as done when its parent is tagged with the study, family,
repeat and ``unitune.state=completed``; a final run when it is FINISHED with the study,
family, repeat and seed tags. Anything else is run again (an interrupted search continues
from its Ray Tune state through ``run_search(resume=True)``); the rounds are decided again
from the same runs, so the study continues at its round.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from unitune import cluster, record
from unitune import tags as T
from unitune.errors import UserError
from unitune.record import Record, Role
from unitune.search.driver import run_search
from unitune.search.report import bound_warnings
from unitune.study.finals import FinalRun, Finals, SearchOutcome, final_job, read_curve
from unitune.study.plan import Family, StudyPlan
from unitune.study.report import write_report
from unitune.study.sequential import Look, run_looks
from unitune.tracking import Tracker

__all__ = ["FinalRun", "SearchOutcome", "StudyResult", "final_job", "read_curve", "run_study"]


@dataclass
class StudyResult:
    study_id: str
    run_id: str
    searches: dict[str, list[SearchOutcome]]  # per family, one per search repeat
    finals: list[FinalRun]
    wall_s: float
    looks: list[Look] = field(default_factory=list)  # the comparisons after each round of seeds
    outcomes: dict = field(default_factory=dict)  # family -> (repeat, seed) -> stats.Outcomes


def _find_study(tracker: Tracker, experiment: str, base_id: str, resume: bool) -> tuple[str, str | None]:
    """(study id, run id or None): a new study takes the first free id, a resumed one is the
    newest unfinished study with this key.

    Raises:
        UserError: ``resume`` and no unfinished study of this job.
    """
    k, unfinished, study_id = 1, None, base_id
    while True:
        study_id = base_id if k == 1 else f"{base_id}-{k}"
        run = Record(tracker).run(experiment, Role.STUDY, {T.STUDY: study_id})
        if run is None:
            break
        if run.status != "FINISHED":
            unfinished = (study_id, run.run_id)
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
                "max_seeds": plan.max_seeds,
                "search_repeats": plan.search_repeats,
                "budget_minutes": plan.budget_minutes,
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
        searches: dict[str, list[SearchOutcome]] = {}
        for family in plan.families:
            searches[family.name] = []
            for repeat in range(plan.search_repeats):
                search = _search(tracker, plan, family, repeat, study_id, address, resume, verbose, out)
                searches[family.name].append(search)
                for warning in search.at_bounds:
                    print(f"unitune: warning: {family.name}: {warning}", file=sys.stderr)
        finals = Finals(tracker, plan, searches, study_id, out)
        looks = run_looks(
            plan.reference.name,
            [f.name for f in plan.families[1:]],
            plan.rounds,
            train=finals.train,
            outcomes=finals.outcomes,
            more_time=lambda: _more_time(plan, started, finals.round_seconds),
        )
        for look in looks:
            out(f"study {study_id}: after {look.seeds} seeds: {len(look.open())} comparison(s) open")
        wall = time.monotonic() - started
        result = StudyResult(study_id, run_id, searches, finals.runs(), wall, looks, finals.outcomes())
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


def _more_time(plan: StudyPlan, started: float, rounds: list[float]) -> bool:
    """Whether another round of seeds fits ``study.budget_minutes`` (estimated as long as the
    last round; the clock starts when this command started)."""
    if plan.budget_minutes is None:
        return True
    last = rounds[-1] if rounds else 0.0
    return (time.monotonic() - started + last) / 60.0 <= plan.budget_minutes


def _search(
    tracker: Tracker,
    plan: StudyPlan,
    family: Family,
    repeat: int,
    study_id: str,
    address: str | None,
    resume: bool,
    verbose: bool,
    out,
) -> SearchOutcome:
    """The family's finished search of sampler seed ``space.seed + repeat`` (found by its
    tags), else run (or continue) it."""
    job = plan.job
    links = {T.STUDY: study_id, T.FAMILY: family.name, T.SEARCH_REPEAT: repeat}
    found = Record(tracker).run(job.experiment, Role.SEARCH, {**links, T.STATE: "completed"})
    parent_id = found.run_id if found is not None else None
    label = f"{family.name}" + (f" (search {repeat}, sampler seed {family.space.seed + repeat})" if repeat else "")
    space = family.space.model_copy(update={"seed": family.space.seed + repeat}) if repeat else family.space
    if parent_id is not None:
        out(f"study {study_id}: search of {label} done already (parent run {parent_id})")
    else:
        out(f"study {study_id}: searching {label} ({family.path})")
        result = None
        # Tagged when the parent starts: a search that ends in an error is still the study's.
        if resume:
            try:
                result = run_search(job, space, address=address, verbose=verbose, resume=True, tags=links)
            except UserError as exc:
                if not str(exc).startswith("--resume:"):
                    raise
        if result is None:
            result = run_search(job, space, address=address, verbose=verbose, tags=links)
        parent_id = result.parent_run_id
        if result.interrupted:  # Ctrl-C / SIGTERM inside the search: the study stops, resumable
            print(
                "unitune: study interrupted; continue it with  unitune study JOB [same options] --resume",
                file=sys.stderr,
            )
            raise KeyboardInterrupt
    return _outcome(tracker, plan, family, parent_id, repeat)


def _outcome(tracker: Tracker, plan: StudyPlan, family: Family, parent_id: str, repeat: int = 0) -> SearchOutcome:
    """The search's best trial by the study metric (``unitune.record.best``, the rule of the
    summary, ``results`` and ``export``), its cost (trial-epochs, wall time) and the
    warnings of ``unitune search`` for best values at the edge of their range.

    Raises:
        UserError: the search has no finished trial with a score on the metric.
    """
    rec = Record(tracker)
    search = rec.search_run(parent_id)
    trials = rec.trials(search, [plan.metric])
    best = record.best(trials, plan.metric, plan.mode)
    if best is None:
        seen = ", ".join(f"{n} {state}" for state, n in record.counts(trials).items() if n) or "no trial runs"
        raise UserError(f"search {search.search_id} has no finished trial with a {plan.metric} value ({seen})")
    return SearchOutcome(
        family.name,
        search.search_id,
        parent_id,
        best.trial_id,
        best.run_id,
        best.values[plan.metric],
        best.params,
        record.trial_epochs(trials),
        search.wall_s,
        bound_warnings({"best": {"params": best.params}}, family.space),
        best.label,
        repeat,
    )
