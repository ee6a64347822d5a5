"""The record of searches, trials, studies and final runs in MLflow, read as typed records.

MLflow's tags are unitune's data model (names in :mod:`unitune.tags`); this module owns how
they are read, as Optuna's storage hides its tables: roles and states as enums, one query
per question, and the one rule for "the best trial". It is the only code that asks MLflow's
search API (through :class:`unitune.tracking.Tracker`, still the only module that imports
MLflow); the summary, ``unitune results``, ``unitune export``, the driver's parent run and
the live table read through it.

    rec = Record(tracker)
    rec.find_search(ref, experiment) -> (SearchRecord, trial run id | None)   # SEARCH of the CLI
    rec.searches(experiment=None, **tags) -> [SearchRecord]       # newest first
    rec.trials(search, metrics=()) -> [TrialRecord]               # start order, scored on metrics
    rec.study(study_id, experiment) -> StudyRecord                 # its run, searches, final runs
    rec.runs(experiment, role, **tags) -> [RunRecord]             # oldest first
    best(trials, metric, mode) -> TrialRecord | None ; ranked(trials, metric, mode) -> [TrialRecord]
    counts(trials) -> {State: n} ; trial_epochs(trials) -> int

**The best trial** (:func:`best`): of the trials whose state is *finished* (completed or
stopped by ASHA: their epochs ran to the end the search gave them), the one with the best
score on the metric, NaN never best; ties go to a completed trial, then to the earlier one.
A per-epoch metric scores a trial by its best logged epoch (epoch 0, the model before
training, included), a convergence metric by its final value. Failed trials are never the
best, even when an epoch before the failure scored higher (their configuration does not
train to the end); running and interrupted ones neither (their record is not final).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from unitune import tags as T
from unitune.choices import METRICS
from unitune.errors import UserError
from unitune.tracking import Tracker, param_value


class Role(StrEnum):
    """``unitune.role`` of a run."""

    SEARCH = "search"  # a search's parent run
    TRIAL = "trial"  # one trial of a search (a child of the parent)
    STUDY = "study"  # a study's run (its report)
    FINAL = "final"  # a study's final training run of one family and seed


class State(StrEnum):
    """``unitune.state`` of a trial (and of a search or study run): the state machine of
    :mod:`unitune.tags`."""

    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED_BY_ASHA = "stopped_by_asha"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def status(self) -> str:
        """The MLflow status that goes with it (``tags.STATUS_OF_STATE``)."""
        return T.STATUS_OF_STATE[self.value]

    @property
    def done(self) -> bool:
        """Final: the trial is never trained again."""
        return self.value in T.DONE_STATES

    @property
    def finished(self) -> bool:
        """Final with a result (completed or stopped by ASHA): what :func:`best` picks from."""
        return self.value in T.FINISHED_STATES


ENDED = (State.COMPLETED, State.STOPPED_BY_ASHA, State.FAILED, State.INTERRUPTED)  # counted per search


def _state(text: str | None) -> State | None:
    try:
        return State(text) if text is not None else None
    except ValueError:
        return None


def trial_label(number: int) -> str:
    """``t03``: how the terminal, the summary, ``results``, ``export`` and the plots name
    Optuna trial 3."""
    return f"t{number:02d}"


@dataclass
class RunRecord:
    """Any unitune run: its id, name, tags and MLflow status."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    tags: dict[str, str]
    start_time: int
    end_time: int | None

    @property
    def role(self) -> Role | None:
        text = self.tags.get(T.ROLE)
        return Role(text) if text in tuple(Role) else None

    @property
    def state(self) -> State | None:
        return _state(self.tags.get(T.STATE))

    @property
    def wall_s(self) -> float:
        """Seconds from the run's start to its end (to its start while it runs)."""
        return ((self.end_time or self.start_time) - self.start_time) / 1000.0


@dataclass
class SearchRecord(RunRecord):
    """A search's parent run: its id and the objectives it declared (params ``metric``,
    ``mode``, ``objectives``)."""

    params: dict[str, str] = field(default_factory=dict)

    @property
    def search_id(self) -> str:
        return self.tags[T.SEARCH]

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """``[(metric, mode), ...]``, the first the search metric."""
        if self.params.get("objectives"):
            return [(m, d) for m, d in (item.split(":", 1) for item in self.params["objectives"].split(","))]
        return [(self.metric, self.mode)]

    @property
    def metric(self) -> str:
        return self.params.get("metric", "rsum")

    @property
    def mode(self) -> str:
        return self.params.get("mode") or METRICS.get(self.metric, "max")


@dataclass
class TrialRecord(RunRecord):
    """A trial's child run: sampled values, state, and its scores on the metrics asked for.

    ``values``: metric -> score (a per-epoch metric's best logged epoch, a convergence
    metric's final value; absent when the trial logged none); ``curves``: metric ->
    ``[(epoch, value), ...]`` of the per-epoch metrics asked for; ``metrics``: the latest
    value of every metric (infinities restored)."""

    params: dict = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def trial_id(self) -> str:
        return self.tags.get(T.TRIAL, self.run_id)

    @property
    def number(self) -> int | None:
        """The Optuna trial number (``unitune.optuna_trial``)."""
        text = self.tags.get(T.OPTUNA_TRIAL, "")
        return int(text) if text.isdigit() else None

    @property
    def label(self) -> str:
        """``t03`` (the Optuna trial number), else the trial id."""
        return trial_label(self.number) if self.number is not None else self.trial_id

    @property
    def epochs_run(self) -> int:
        """Epochs the trial trained: its ``unitune.epochs_run`` tag, else (while it runs) its
        last logged epoch of a metric asked for, else 0."""
        text = self.tags.get(T.EPOCHS_RUN)
        if text is not None and text.lstrip("-").isdigit():
            return int(text)
        return max((c[-1][0] for c in self.curves.values() if c), default=0)

    @property
    def stopped_at_epoch(self) -> str | None:
        return self.tags.get(T.STOP_EPOCH)

    @property
    def error(self) -> str | None:
        return self.tags.get(T.ERROR)

    @property
    def finished(self) -> bool:
        """Completed or stopped by ASHA, and closed (not RUNNING in MLflow)."""
        return self.state is not None and self.state.finished and self.status != "RUNNING"

    def best_epoch(self, metric: str) -> int | None:
        """The epoch of the trial's best logged value of a per-epoch ``metric`` asked for."""
        curve = self.curves.get(metric) or []
        pick = max if METRICS.get(metric, "max") == "max" else min
        return pick(curve, key=lambda sv: sv[1])[0] if curve else None


@dataclass
class StudyRecord:
    """A study's run, its searches (family -> newest search of that family) and its final runs."""

    run: RunRecord
    searches: dict[str, SearchRecord]
    finals: list[RunRecord]


def best(trials: Sequence[TrialRecord], metric: str, mode: str) -> TrialRecord | None:
    """The best trial by the one rule (module docstring), or None when no finished trial
    has a score on ``metric``."""
    top = ranked(trials, metric, mode)
    return top[0] if top and _eligible(top[0], metric) else None


def ranked(trials: Sequence[TrialRecord], metric: str, mode: str) -> list[TrialRecord]:
    """``trials`` best first: :func:`best`'s candidates in its order, then every other trial
    (failed, running, interrupted, or without a score) by its score, NaN last; ties keep
    the trials' order."""
    sign = 1.0 if mode == "max" else -1.0

    def key(item: tuple[int, TrialRecord]):
        i, t = item
        value = t.values.get(metric, math.nan)
        scored = math.isfinite(value) or math.isinf(value)
        return (not _eligible(t, metric), not scored, -sign * value if scored else 0.0, t.state != State.COMPLETED, i)

    return [t for _, t in sorted(enumerate(trials), key=key)]


def _eligible(trial: TrialRecord, metric: str) -> bool:
    value = trial.values.get(metric, math.nan)
    return trial.finished and not math.isnan(value)


def counts(trials: Iterable[RunRecord]) -> dict[State, int]:
    """Trials per state, every state of :data:`ENDED` and :attr:`State.RUNNING` present."""
    out = dict.fromkeys((State.RUNNING, *ENDED), 0)
    for t in trials:
        if t.state is not None:
            out[t.state] += 1
    return out


def trial_epochs(trials: Iterable[TrialRecord]) -> int:
    """Epochs the trials trained, summed (what a search spent)."""
    return sum(t.epochs_run for t in trials)


class Record:
    """Reads the record of one MLflow store (see the module docstring)."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    # -- the one caller of MLflow's search API ------------------------------------------
    def _search(self, experiment_ids: list[str], tags: dict, *, newest_first: bool = False, limit: int = 10000):
        return self.tracker.query_runs(experiment_ids, tags, newest_first=newest_first, limit=limit)

    def _experiment_ids(self, experiment: str | None) -> list[str]:
        return self.tracker.experiment_ids(experiment)

    def experiment_name(self, experiment_id: str) -> str:
        return self.tracker.experiment_name(experiment_id)

    # -- queries -----------------------------------------------------------------------
    def runs(self, experiment: str, role: Role | None = None, tags: dict | None = None) -> list[RunRecord]:
        """Runs of ``experiment`` with ``role`` and ``tags`` (tag name -> value), oldest first."""
        return [_run(r) for r in self._search(self._experiment_ids(experiment), _wanted(role, tags))]

    def run(self, experiment: str, role: Role | None = None, tags: dict | None = None) -> RunRecord | None:
        """The oldest run of :meth:`runs`, or None."""
        found = self._search(self._experiment_ids(experiment), _wanted(role, tags), limit=1)
        return _run(found[0]) if found else None

    def searches(self, experiment: str | None = None, tags: dict | None = None) -> list[SearchRecord]:
        """Parent runs of searches (in ``experiment``, or in every experiment), newest first."""
        runs = self._search(self._experiment_ids(experiment), _wanted(Role.SEARCH, tags), newest_first=True)
        return [_search_record(r) for r in runs]

    def trial_runs(self, search: SearchRecord | str, experiment: str | None = None) -> list[RunRecord]:
        """The trial runs of a search (a record, or a search id in ``experiment``), oldest
        first, without their metrics (cheap: one query)."""
        if isinstance(search, SearchRecord):
            return [
                _run(r) for r in self._search([search.experiment_id], _wanted(Role.TRIAL, {T.SEARCH: search.search_id}))
            ]
        return [
            _run(r) for r in self._search(self._experiment_ids(experiment), _wanted(Role.TRIAL, {T.SEARCH: search}))
        ]

    def search_run(self, run_id: str) -> SearchRecord:
        """The search whose parent run is ``run_id``.

        Raises:
            UserError: no such run.
        """
        run = self.tracker.get_run(run_id)
        if run is None:
            raise UserError(f"no run {run_id} in {self.tracker.uri}")
        return _search_record(run)

    def trials(self, search: SearchRecord, metrics: Sequence[str] = ()) -> list[TrialRecord]:
        """The search's trials in start order, scored on ``metrics`` (see :class:`TrialRecord`)."""
        runs = self._search([search.experiment_id], _wanted(Role.TRIAL, {T.SEARCH: search.search_id}))
        return [self._trial(r, metrics) for r in runs]

    def _trial(self, run, metrics: Sequence[str]) -> TrialRecord:
        info, data = run.info, run.data
        latest = self.tracker.get_metrics(info.run_id)
        curves, values = {}, {}
        for name in metrics:
            if name in METRICS:
                curve = [(s, v) for s, v in self.tracker.metric_history(info.run_id, name) if not math.isnan(v)]
                curves[name] = curve
                if curve:
                    values[name] = (max if METRICS[name] == "max" else min)(v for _, v in curve)
            elif name in latest and not math.isnan(latest[name]):
                values[name] = latest[name]
        base = _run(run)
        return TrialRecord(
            **vars(base),
            params={k: param_value(v) for k, v in data.params.items()},
            metrics=latest,
            values=values,
            curves=curves,
        )

    def study(self, study_id: str, experiment: str) -> StudyRecord | None:
        """The study's run (None: no such study), its searches by family (the newest of each)
        and its final runs (oldest first)."""
        run = self.run(experiment, Role.STUDY, {T.STUDY: study_id})
        if run is None:
            return None
        searches: dict[str, SearchRecord] = {}
        for s in self.searches(experiment, {T.STUDY: study_id}):
            searches.setdefault(s.tags.get(T.FAMILY, ""), s)
        return StudyRecord(run, searches, self.runs(experiment, Role.FINAL, {T.STUDY: study_id}))

    def find_search(self, ref: str | None, experiment: str | None) -> tuple[SearchRecord, str | None]:
        """``(search, trial run id or None)`` for SEARCH as the CLI takes it: a parent run id,
        a search id, a trial's run id (that trial), an experiment name (its newest search),
        or None (the newest search of ``experiment``, or of the store).

        Raises:
            UserError: no such search, or the name (or the default) matches searches of
                several experiments.
        """
        uri = self.tracker.uri
        exp_ids = self._experiment_ids(experiment)
        if not exp_ids:
            raise UserError(f"no experiment in {uri}")
        if ref is not None:
            run = self.tracker.get_run(ref)
            role = run.data.tags.get(T.ROLE) if run is not None else None
            if role == Role.SEARCH:
                return _search_record(run), None
            if role == Role.TRIAL:
                return self.search_run(run.data.tags[T.PARENT]), run.info.run_id
            if run is not None:
                raise UserError(f"run {ref} is not a unitune search or trial run")
            parents = [
                _search_record(r)
                for r in self._search(exp_ids, _wanted(Role.SEARCH, {T.SEARCH: ref}), newest_first=True)
            ]
            if len({p.experiment_id for p in parents}) > 1:
                raise UserError(
                    f"search id {ref!r} is ambiguous: it names searches in experiments "
                    f"{self._names(parents)}; give the parent run id"
                )
            if parents:
                return parents[0], None
            exp_id = self.tracker.experiment_named(ref)
            if exp_id is None or exp_id not in exp_ids:
                known = sorted({p.search_id for p in self._all_searches(exp_ids)})
                raise UserError(
                    f"no search {ref!r} in {uri} (not a parent run id, search id or "
                    f"experiment name); searches there: {', '.join(known[:10]) or 'none'}"
                )
            exp_ids = [exp_id]
        parents = self._all_searches(exp_ids)
        if not parents:
            raise UserError(f"no search in {uri}" + (f" (experiment {experiment!r})" if experiment else ""))
        if len({p.experiment_id for p in parents}) > 1:
            raise UserError(
                f"several experiments in {uri} hold searches "
                f"({self._names(parents)}); name one: unitune export EXPERIMENT"
            )
        return parents[0], None

    def _all_searches(self, exp_ids: list[str]) -> list[SearchRecord]:
        return [_search_record(r) for r in self._search(exp_ids, _wanted(Role.SEARCH), newest_first=True, limit=1000)]

    def _names(self, runs: Sequence[RunRecord]) -> str:
        return ", ".join(self.experiment_name(i) for i in sorted({r.experiment_id for r in runs}))


def _wanted(role: Role | None, tags: dict | None = None) -> dict:
    return {**({T.ROLE: role.value} if role is not None else {}), **(tags or {})}


def _run(run) -> RunRecord:
    info = run.info
    return RunRecord(
        run_id=info.run_id,
        name=info.run_name,
        experiment_id=info.experiment_id,
        status=info.status,
        tags=dict(run.data.tags),
        start_time=info.start_time,
        end_time=info.end_time,
    )


def _search_record(run) -> SearchRecord:
    return SearchRecord(**vars(_run(run)), params=dict(run.data.params))
