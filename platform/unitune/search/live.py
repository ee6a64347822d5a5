"""The driver's Tune callback and scheduler: a live trials table, each trial's MLflow run closed.

Tune calls these hooks in the driver process. ``on_trial_complete`` fires for trials
that ran their whole budget, for trials ASHA stopped and for trials that ended early
otherwise; :class:`StopTaggingASHA` tags a run ``stopped_by_asha`` the moment ASHA
decides, so the three are told apart (a trial ending early without that tag is
``interrupted``). ``on_trial_error`` fires for failed ones. Both close the child run with
its terminal state, since a stopped trial's process is killed before it could do so itself.
"""

from __future__ import annotations

import math
import sys
import time

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from unitune.config import SearchSpaceSpec
from unitune.search.trial import (
    DONE_STATES, STATE_TAG, STOP_EPOCH_TAG, TrialSetup, child_run, error_message, finalize_trial,
)

REFRESH_S = 10.0


def short(name: str) -> str:
    """``loss.margin`` -> ``margin`` (column headers)."""
    return name.rsplit(".", 1)[-1]


def fmt(value) -> str:
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.4g}"
    return "-" if value is None else str(value)


class StopTaggingASHA(ASHAScheduler):
    """``ASHAScheduler`` that tags the trial's MLflow run when it stops a trial early
    (``unitune.state=stopped_by_asha``, ``unitune.stopped_at_epoch``)."""

    def __init__(self, setup: TrialSetup, **kwargs):
        super().__init__(**kwargs)
        self.ctx = setup

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        epoch = result.get(self._time_attr)
        if decision == TrialScheduler.STOP and epoch is not None and epoch < self._max_t:
            run_id = child_run(self.ctx, trial.trial_id, {})
            self.ctx.tracker.set_tags(run_id, {STATE_TAG: "stopped_by_asha", STOP_EPOCH_TAG: int(epoch)})
        return decision


class SearchCallback(Callback):
    """Prints trial events and a table every ``REFRESH_S`` seconds; finalizes MLflow runs."""

    def __init__(self, setup: TrialSetup, space: SearchSpaceSpec, verbose: bool = True):
        self.ctx = setup
        self.params = list(space.params)
        self.max_epochs = setup.job.train.epochs
        self.verbose = verbose
        self.rows: dict[str, dict] = {}
        self._last_print = 0.0
        self._started = time.monotonic()

    # -- Tune hooks ---------------------------------------------------------------
    def setup(self, **info):
        self._started = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial)["state"] = "RUNNING"
        self._event(f"trial {trial.trial_id} started: {self._params_text(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        row["epoch"] = result.get("epoch")
        row["value"] = result.get(self.ctx.metric)
        row["best"] = result.get("best_value")
        if self.verbose and time.monotonic() - self._last_print > REFRESH_S:
            self.print_table()

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epoch = last.get("epoch")
        run_id = child_run(self.ctx, trial.trial_id, trial.config)
        tracker = self.ctx.tracker
        tag = tracker.run_tags(run_id).get(STATE_TAG)
        if tag in DONE_STATES and tracker.run_status(run_id) != "RUNNING":
            state = tag  # closed before a resume: its record stands
        else:
            if epoch is not None and epoch >= self.max_epochs:
                state = "completed"
            else:
                state = "stopped_by_asha" if tag == "stopped_by_asha" else "interrupted"
            finalize_trial(self.ctx, run_id, state, stop_epoch=int(epoch) if epoch else None)
        self._row(trial)["state"] = state
        what = {"completed": "completed", "stopped_by_asha": f"stopped by ASHA at epoch {fmt(epoch)}",
                "interrupted": f"ended early at epoch {fmt(epoch)}"}.get(state, state)
        self._event(f"trial {trial.trial_id} {what}: {self.ctx.metric}={fmt(last.get(self.ctx.metric))}")

    def on_trial_error(self, iteration, trials, trial, **info):
        try:
            reason = error_message(trial.get_error())
        except Exception:  # noqa: BLE001 - the error file may be gone; the tag holds it too
            reason = "trial raised an error"
        last = trial.last_result or {}
        run_id = child_run(self.ctx, trial.trial_id, trial.config)
        if self.ctx.tracker.run_status(run_id) == "RUNNING":
            finalize_trial(self.ctx, run_id, "failed", stop_epoch=last.get("epoch"), error=reason)
        self._row(trial)["state"] = "failed"
        self._event(f"trial {trial.trial_id} failed: {self.ctx.tracker.run_tags(run_id).get('unitune.error')}")

    def on_experiment_end(self, trials, **info):
        if self.verbose:
            self.print_table()

    # -- table ----------------------------------------------------------------------
    def _row(self, trial) -> dict:
        return self.rows.setdefault(trial.trial_id, {"config": trial.config, "state": "PENDING"})

    def _params_text(self, config: dict) -> str:
        return ", ".join(f"{short(k)}={fmt(config[k])}" for k in self.params if k in config)

    def _event(self, text: str) -> None:
        if self.verbose:
            elapsed = time.monotonic() - self._started
            print(f"[unitune {elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)

    def print_table(self) -> None:
        """One line per trial: id, state, searched params, epoch, metric, best so far."""
        self._last_print = time.monotonic()
        heads = ["trial", "state", *map(short, self.params), "epoch", self.ctx.metric, "best"]
        lines = []
        for trial_id, row in self.rows.items():
            cfg = row["config"]
            lines.append([trial_id, row["state"], *(fmt(cfg.get(k)) for k in self.params),
                          fmt(row.get("epoch")), fmt(row.get("value")), fmt(row.get("best"))])
        widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h) for i, h in enumerate(heads)]
        out = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines]
        done = sum(r["state"] not in ("PENDING", "RUNNING") for r in self.rows.values())
        print(f"--- {self.ctx.search_id}: {done}/{len(self.rows)} trials done ---\n" + "\n".join(out),
              file=sys.stderr, flush=True)
