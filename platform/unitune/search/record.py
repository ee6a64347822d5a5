"""The one writer of a search's record: each trial's MLflow child run and its Optuna trial.

Trials train and report; Ray Tune hands every report to the driver, and the
:class:`Recorder` here (driven by the driver's Tune callback) is the only code that writes a
trial's record. It

- creates or finds the child run when a trial starts (by trial id; a trial continued under
  a new Tune id after a killed driver is found by its Optuna trial number), reopens an
  interrupted one, and logs the sampled values once;
- tags the run with the Ray nodes it ran on (``unitune.ray_nodes``, in order);
- logs each epoch Tune received exactly once (epochs already in MLflow, e.g. recomputed
  after a restart from an older checkpoint, are skipped), and reports it to the Optuna
  study as an intermediate value with ``step = epoch``;
- moves the run through the state machine of :mod:`unitune.tags` and tells the Optuna
  study the same outcome: completed → COMPLETE, stopped_by_asha → PRUNED (at its last
  step), failed → FAIL (reason as user attribute ``fail_reason``); an interrupted trial's
  Optuna trial stays RUNNING until a resume finishes it.

A record that already reached a final state (before a resume) is never changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import optuna

from unitune import tags as T
from unitune.choices import CONVERGENCE_KEYS
from unitune.record import Record, Role, State, trial_label
from unitune.search.trial import EPOCH_KEY, FAILED_KEY, NODE_KEY, TrialSetup, progress, read_curve

_TUNE_KEYS = {
    "training_iteration",
    "time_total_s",
    "episodes_total",
    "timesteps_total",
    "node_ip",
    "hostname",
    "pid",
    "time_this_iter_s",
    "timestamp",
    "date",
    "time_since_restore",
    "timesteps_since_restore",
    "iterations_since_restore",
    "config",
    "checkpoint_dir_name",
    "done",
    "trial_id",
    "experiment_tag",
    "should_checkpoint",
}


def epoch_metrics(result: dict) -> dict[str, float]:
    """What a trial's report holds for MLflow: its numeric training metrics, without Tune's
    bookkeeping, the running convergence summary (logged once at the end) or ``epoch``
    (the MLflow step)."""
    skip = _TUNE_KEYS | set(CONVERGENCE_KEYS) | {EPOCH_KEY, FAILED_KEY}
    return {
        k: float(v)
        for k, v in result.items()
        if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def run_name(number: int, config: dict, params: list[str]) -> str:
    """``t03 mining=all margin=0.21 gamma=42``: distinct in its first characters."""

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    shown = [f"{p.rsplit('.', 1)[-1]}={fmt(config[p])}" for p in params if p in config][:4]
    return " ".join([trial_label(number), *shown])


def _all_finite(values: list[float | None] | None) -> list[float] | None:
    """``values`` when every one is a finite number, else None."""
    if values is None:
        return None
    finite: list[float] = []
    for v in values:
        if v is None or not math.isfinite(v):
            return None
        finite.append(v)
    return finite


@dataclass
class _Open:
    run_id: str
    number: int
    state: str | None
    logged: set[int] = field(default_factory=set)
    nodes: list[str] = field(default_factory=list)


class Recorder:
    """Owns the child runs and Optuna trials of one search (see the module docstring).

    Args:
        setup: the search's shared trial setup (tracker, search id, parent run, objectives).
        study: the search's Optuna study (the searcher asks it; only this class tells it).
        params: the searched parameter names (run names).
    """

    def __init__(self, setup: TrialSetup, study: optuna.Study, params: list[str]):
        self.setup = setup
        self.study = study
        self.params = params
        self.budget = setup.job.train.epochs
        self.single = len(setup.objectives) == 1
        self.runs: dict[str, _Open] = {}
        self.interrupting = False

    # -- Optuna ------------------------------------------------------------------------
    def optuna_trial(self, trial_id: str) -> optuna.trial.FrozenTrial:
        """The Optuna trial the searcher asked for Tune trial ``trial_id``.

        Raises:
            KeyError: the study has no trial with that ``trial_id`` user attribute.
        """
        for t in reversed(self.study.get_trials(deepcopy=False)):
            if t.user_attrs.get("trial_id") == trial_id:
                return t
        raise KeyError(f"no Optuna trial for Tune trial {trial_id} in study {self.study.study_name}")

    def _tell(self, number: int, state: str, values: list[float | None] | None, reason: str | None) -> None:
        frozen = self.study.get_trials(deepcopy=False)[number]
        if frozen.state.is_finished():
            return
        trial = optuna.trial.Trial(self.study, frozen._trial_id)
        if state == State.FAILED:
            trial.set_user_attr("fail_reason", (reason or "unknown error")[:500])
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
        elif state == State.STOPPED_BY_ASHA:  # its value: the last intermediate value (one objective)
            self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
        elif (finite := _all_finite(values)) is not None:
            self.study.tell(number, finite if not self.single else finite[0])
        else:
            trial.set_user_attr("fail_reason", "no finite value of the objective")
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)

    # -- the trial's run -----------------------------------------------------------------
    def start(self, trial_id: str, config: dict) -> str:
        """A trial (re)starts: its run found or created, RUNNING unless its record is final."""
        tracker, setup = self.setup.tracker, self.setup
        number = self.optuna_trial(trial_id).number
        run_id = self._find({T.TRIAL: trial_id})
        state: str | None  # the run's state tag (None: a run without one)
        if run_id is None:  # continued under a new Tune id after the driver died
            run_id = self._find({T.OPTUNA_TRIAL: number})
            if run_id is not None:
                old = tracker.run_tags(run_id)
                chain = ",".join(filter(None, [old.get(T.PREVIOUS_TRIAL_IDS), old.get(T.TRIAL)]))
                tracker.set_tags(run_id, {T.TRIAL: trial_id, T.PREVIOUS_TRIAL_IDS: chain})
        if run_id is None:
            run_id = tracker.start_run(
                setup.experiment,
                run_name(number, config, self.params),
                tags={
                    T.SEARCH: setup.search_id,
                    T.TRIAL: trial_id,
                    T.OPTUNA_TRIAL: number,
                    T.ROLE: Role.TRIAL,
                    T.STATE: State.RUNNING,
                },
                parent_run_id=setup.parent_run_id,
            )
            state = State.RUNNING
        else:
            state = tracker.run_tags(run_id).get(T.STATE)
            if state not in T.DONE_STATES and state != State.RUNNING:
                T.check_transition(state, State.RUNNING)
                tracker.reopen_run(run_id)
                tracker.set_tags(run_id, {T.STATE: State.RUNNING})
                state = State.RUNNING
            elif state == State.RUNNING and tracker.run_status(run_id) != "RUNNING":
                tracker.reopen_run(run_id)
        if config:
            tracker.log_params(run_id, config)
        logged = {int(step) for step, _ in tracker.metric_history(run_id, EPOCH_KEY)}
        nodes = tracker.run_tags(run_id).get(T.RAY_NODES, "")
        self.runs[trial_id] = _Open(run_id, number, state, logged, nodes.split(",") if nodes else [])
        return run_id

    def _find(self, tags: dict) -> str | None:
        """The run id of this search's run with ``tags``, or None."""
        found = Record(self.setup.tracker).run(self.setup.experiment, None, {T.SEARCH: self.setup.search_id, **tags})
        return found.run_id if found is not None else None

    def _open(self, trial_id: str, config: dict) -> _Open:
        if trial_id not in self.runs:
            self.start(trial_id, config)
        return self.runs[trial_id]

    def result(self, trial_id: str, config: dict, result: dict) -> None:
        """One report of a trial: its epoch logged once, and told to Optuna as a step."""
        rec = self._open(trial_id, config)
        if rec.state != State.RUNNING or FAILED_KEY in result or EPOCH_KEY not in result:
            return
        node = result.get(NODE_KEY)
        if node and rec.nodes[-1:] != [node]:  # where it runs: a retry after a lost node moves it
            rec.nodes.append(node)
            self.setup.tracker.set_tags(rec.run_id, {T.RAY_NODES: ",".join(rec.nodes)})
        epoch = int(result[EPOCH_KEY])
        if epoch in rec.logged:
            return
        self.setup.tracker.log_metrics(rec.run_id, {**epoch_metrics(result), EPOCH_KEY: epoch}, step=epoch)
        rec.logged.add(epoch)
        value = result.get(self.setup.metric)
        if self.single and isinstance(value, (int, float)) and math.isfinite(value):
            frozen = self.study.get_trials(deepcopy=False)[rec.number]
            if not frozen.state.is_finished() and epoch not in frozen.intermediate_values:
                optuna.trial.Trial(self.study, frozen._trial_id).report(float(value), epoch)

    def finish(
        self, trial_id: str, config: dict, state: str, *, last: dict | None = None, error: str | None = None
    ) -> str:
        """Close a trial's record with ``state``; returns the state the record holds (a final
        record from before a resume stands)."""
        rec = self._open(trial_id, config)
        if rec.state in T.DONE_STATES:
            return rec.state
        T.check_transition(rec.state, state)
        tracker, setup = self.setup.tracker, self.setup
        curve = read_curve(tracker, rec.run_id, [setup.metric])
        last_epoch = int(curve[-1]["epoch"]) if curve else 0
        conv = progress(setup, curve)
        tracker.log_metrics(rec.run_id, conv, step=last_epoch)
        new_tags = {T.STATE: state, T.EPOCHS_RUN: last_epoch}
        if state == State.STOPPED_BY_ASHA:
            new_tags[T.STOP_EPOCH] = last_epoch
        if state == State.FAILED:
            new_tags[T.ERROR] = error or "unknown error"
        tracker.set_tags(rec.run_id, new_tags)
        tracker.end_run(rec.run_id, T.STATUS_OF_STATE[state])
        rec.state = state
        if state != State.INTERRUPTED:
            values = [(last or {}).get(m) for m, _ in setup.objectives]
            if curve and setup.metric in curve[-1]:
                values[0] = curve[-1][setup.metric]
            self._tell(rec.number, state, values, error)
        return state

    def interrupt_running(self) -> int:
        """Every run of this search still RUNNING becomes ``interrupted``; returns how many.
        Called on SIGINT/SIGTERM (the record is right even if a SIGKILL follows) and at the end."""
        count = 0
        setup = self.setup
        for run in Record(setup.tracker).trial_runs(setup.search_id, setup.experiment):
            tag = run.tags.get(T.STATE)
            if run.status == "RUNNING" or tag == State.RUNNING:
                trial_id = run.tags.get(T.TRIAL, "")
                rec = self.runs.get(trial_id)
                if rec is not None and rec.state in T.DONE_STATES:
                    continue
                if rec is None:
                    self.runs[trial_id] = rec = _Open(
                        run.run_id, int(run.tags.get(T.OPTUNA_TRIAL, -1)), tag or State.RUNNING
                    )
                if rec.state == State.RUNNING:
                    self.finish(trial_id, {}, State.INTERRUPTED)
                else:
                    setup.tracker.end_run(run.run_id, State.INTERRUPTED.status)
                count += 1
        return count
