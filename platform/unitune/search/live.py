"""The driver's Tune callback: every trial event to the :class:`Recorder` (the one writer of
the record) and to the live trials table on the terminal.

How a trial ended is read from what Tune saw, not written by the scheduler: a trial that
completes after its last report at the budget's final epoch is ``completed``; one that
completes earlier was stopped by ASHA (the only thing that stops a trial early while the
search runs); one that errors is ``failed``; a trial that reported :data:`FAILED_KEY`
failed of its job. Trials still running when the search is interrupted are closed by the
driver as ``interrupted``.

Ray Tune pickles its callbacks into its experiment state and gives the pickled ones back on
``Tuner.restore``; this callback pickles as a reference to the driver's live callback
(:func:`live_callback`), so a resumed search drives this process's recorder.
"""

from __future__ import annotations

import math
import sys
import time

from ray.tune import Callback

from unitune.config import SearchSpaceSpec
from unitune.search.record import Recorder
from unitune.search.trial import FAILED_KEY, error_message

REFRESH_S = 10.0
_LIVE: DriverCallback | None = None


def live_callback() -> DriverCallback:
    """The driver's callback of the search running in this process."""
    if _LIVE is None:
        raise RuntimeError("no unitune search is running in this process")
    return _LIVE


def short(name: str) -> str:
    """``loss.margin`` -> ``margin`` (column headers)."""
    return name.rsplit(".", 1)[-1]


def fmt(value) -> str:
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.4g}"
    return "-" if value is None else str(value)


class DriverCallback(Callback):
    """Tune hooks → recorder + table. ``num_trials`` is the planned total (the counter's
    denominator); ``verbose=False`` prints nothing."""

    def __init__(self, recorder: Recorder, space: SearchSpaceSpec, verbose: bool = True):
        global _LIVE
        self.recorder = recorder
        self.metric = recorder.setup.metric
        self.params = list(space.params)
        self.num_trials = space.num_trials
        self.max_epochs = recorder.budget
        self.verbose = verbose
        self.rows: dict[str, dict] = {}
        self._last_print = 0.0
        self._started = time.monotonic()
        _LIVE = self

    def __reduce__(self):
        return (live_callback, ())

    # -- Tune hooks ---------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.recorder.start(trial.trial_id, trial.config)
        self._row(trial)["state"] = "RUNNING"
        self._event(f"trial {self._name(trial)} started: {self._params_text(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.recorder.result(trial.trial_id, trial.config, result)
        row = self._row(trial)
        if FAILED_KEY not in result:
            row["epoch"] = result.get("epoch")
            row["value"] = result.get(self.metric)
            row["best"] = result.get("best_value")
        if self.verbose and time.monotonic() - self._last_print > REFRESH_S:
            self.print_table()

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epoch = last.get("epoch")
        if self.recorder.interrupting:
            return   # the driver closes what the interruption cut short
        if FAILED_KEY in last:
            state = self.recorder.finish(trial.trial_id, trial.config, "failed", last=last,
                                         error=str(last[FAILED_KEY]))
        elif epoch is not None and epoch >= self.max_epochs:
            state = self.recorder.finish(trial.trial_id, trial.config, "completed", last=last)
        else:
            state = self.recorder.finish(trial.trial_id, trial.config, "stopped_by_asha", last=last)
        self._row(trial)["state"] = state
        what = {"completed": "completed", "stopped_by_asha": f"stopped by ASHA at epoch {fmt(epoch)}",
                "failed": f"failed: {last.get(FAILED_KEY)}"}.get(state, state)
        value = "" if state == "failed" else f": {self.metric}={fmt(last.get(self.metric))}"
        self._event(f"trial {self._name(trial)} {what}{value}")

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.recorder.interrupting:
            return
        try:
            reason = error_message(trial.get_error())
        except Exception:  # noqa: BLE001 - the error file may be gone
            reason = "trial raised an error"
        self.recorder.finish(trial.trial_id, trial.config, "failed", last=trial.last_result, error=reason)
        self._row(trial)["state"] = "failed"
        self._event(f"trial {self._name(trial)} failed: {reason}")

    def on_experiment_end(self, trials, **info):
        if self.verbose:
            self.print_table()

    # -- table ----------------------------------------------------------------------
    def _name(self, trial) -> str:
        rec = self.recorder.runs.get(trial.trial_id)
        return f"t{rec.number:02d}" if rec is not None else trial.trial_id

    def _row(self, trial) -> dict:
        return self.rows.setdefault(trial.trial_id, {"config": trial.config, "state": "PENDING",
                                                     "name": self._name(trial)})

    def _params_text(self, config: dict) -> str:
        return ", ".join(f"{short(k)}={fmt(config[k])}" for k in self.params if k in config)

    def _elapsed(self) -> str:
        s = int(time.monotonic() - self._started)
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"

    def _event(self, text: str) -> None:
        if self.verbose:
            print(f"[unitune {self._elapsed()}] {text}", file=sys.stderr, flush=True)

    def print_table(self) -> None:
        """One line per trial: name, state, searched params, epoch, metric, best so far."""
        self._last_print = time.monotonic()
        heads = ["trial", "state", *map(short, self.params), "epoch", self.metric, "best"]
        lines = []
        for row in self.rows.values():
            cfg = row["config"]
            lines.append([row["name"], row["state"], *(fmt(cfg.get(k)) for k in self.params),
                          fmt(row.get("epoch")), fmt(row.get("value")), fmt(row.get("best"))])
        widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h) for i, h in enumerate(heads)]
        out = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines]
        done = sum(r["state"] not in ("PENDING", "RUNNING") for r in self.rows.values())
        search_id = self.recorder.setup.search_id
        print(f"--- {search_id}: {done}/{self.num_trials} trials done, {self._elapsed()} elapsed ---\n"
              + "\n".join(out), file=sys.stderr, flush=True)
