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

import sys
import time
from typing import TYPE_CHECKING

from ray.tune import Callback

from unitune.config import SearchSpaceSpec
from unitune.record import State, trial_label
from unitune.search.cleanup import drop_checkpoints
from unitune.search.record import Recorder
from unitune.search.trial import FAILED_KEY, error_message
from unitune.terminal import duration, num

if TYPE_CHECKING:
    from rich.live import Live

_LIVE: DriverCallback | None = None
# How the table shows a state (the record's names are longer than a column should be).
STATE_TEXT = {
    State.COMPLETED: "[green]completed[/]",
    State.STOPPED_BY_ASHA: "[yellow]stopped[/]",
    State.FAILED: "[red]failed[/]",
    State.INTERRUPTED: "[magenta]interrupted[/]",
    "RUNNING": "[cyan]running[/]",
    "PENDING": "pending",
}


def live_callback() -> DriverCallback:
    """The driver's callback of the search running in this process."""
    if _LIVE is None:
        raise RuntimeError("no unitune search is running in this process")
    return _LIVE


def short(name: str) -> str:
    """``loss.margin`` -> ``margin`` (column headers)."""
    return name.rsplit(".", 1)[-1]


fmt = num


def sort_key(mode: str):
    """Best first by a row's best value (``mode`` max or min); rows without one last."""
    sign = -1 if mode == "max" else 1

    def key(row: dict):
        best = row.get("best")
        if isinstance(best, (int, float)) and best == best:
            return (False, sign * best, row["name"])
        return (True, 0.0, row["name"])

    return key


class DriverCallback(Callback):
    """Tune hooks → recorder + terminal. ``num_trials`` is the planned total (the counter's
    denominator); ``verbose=False`` prints nothing.

    On a terminal the trials table is redrawn in place (rich), with elapsed time and an ETA
    above it, and the events scroll above the table; elsewhere (a file, a pipe, CI) each event
    is one plain line and the table is printed once, at the end. The final table is sorted by
    the study metric, best first. ``steps`` (a :class:`unitune.progress.StepProgress`) adds
    the running trial's in-epoch progress bar (a search that runs one trial at a time).
    """

    def __init__(self, recorder: Recorder, space: SearchSpaceSpec, verbose: bool = True, steps=None):
        global _LIVE
        from rich.console import Console

        self.recorder = recorder
        self.metric = recorder.setup.metric
        self.mode = recorder.setup.mode
        self.params = list(space.params)
        self.num_trials = space.num_trials
        self.max_epochs = recorder.budget
        self.verbose = verbose
        self.steps = steps
        self.rows: dict[str, dict] | None = {}  # None: closed
        self._started = time.monotonic()
        self.console = Console(file=sys.stderr, highlight=False)
        if not self.console.is_terminal:
            self.console.width = max(self.console.width, 160)  # a log file: no wrapped columns
        self._live: Live | None = None
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

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epoch = last.get("epoch")
        if self.recorder.interrupting:
            return  # the driver closes what the interruption cut short
        if FAILED_KEY in last:
            state = self.recorder.finish(
                trial.trial_id, trial.config, State.FAILED, last=last, error=str(last[FAILED_KEY])
            )
        elif epoch is not None and epoch >= self.max_epochs:
            state = self.recorder.finish(trial.trial_id, trial.config, State.COMPLETED, last=last)
        else:
            state = self.recorder.finish(trial.trial_id, trial.config, State.STOPPED_BY_ASHA, last=last)
        self._row(trial)["state"] = state
        drop_checkpoints(trial)
        what = {
            State.COMPLETED: State.COMPLETED,
            State.STOPPED_BY_ASHA: f"stopped by ASHA at epoch {fmt(epoch)}",
            State.FAILED: f"failed: {last.get(FAILED_KEY)}",
        }.get(state, state)
        value = "" if state == State.FAILED else f": {self.metric} {fmt(last.get(self.metric))}"
        self._event(f"trial {self._name(trial)} {what}{value}{self._progress_text()}")

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.recorder.interrupting:
            return
        try:
            reason = error_message(trial.get_error())
        except Exception:  # noqa: BLE001 - the error file may be gone
            reason = "trial raised an error"
        self.recorder.finish(trial.trial_id, trial.config, State.FAILED, last=trial.last_result, error=reason)
        self._row(trial)["state"] = State.FAILED
        drop_checkpoints(trial)
        self._event(f"trial {self._name(trial)} failed: {reason}{self._progress_text()}")

    def on_experiment_end(self, trials, **info):
        self.close()

    # -- terminal -------------------------------------------------------------------
    def close(self) -> None:
        """The final table, sorted by the metric (once; also when the search is interrupted)."""
        if not self.verbose or self.rows is None:
            return
        if self._live is not None:
            self._live.update(self.render(final=True), refresh=True)
            self._live.stop()
            self._live = None
        elif self.rows:
            self.console.print(self.render(final=True))
        self.rows = None  # closed

    def _name(self, trial) -> str:
        rec = self.recorder.runs.get(trial.trial_id)
        return trial_label(rec.number) if rec is not None else trial.trial_id

    def _row(self, trial) -> dict:
        if self.rows is None:
            return {}
        return self.rows.setdefault(
            trial.trial_id, {"config": trial.config, "state": "PENDING", "name": self._name(trial)}
        )

    def _params_text(self, config: dict) -> str:
        return ", ".join(f"{short(k)} {fmt(config[k])}" for k in self.params if k in config)

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def _done(self) -> int:
        return sum(r["state"] not in ("PENDING", "RUNNING") for r in (self.rows or {}).values())

    def eta(self) -> float | None:
        """Seconds left: the mean wall time per finished trial so far times the trials left."""
        done = self._done()
        if done == 0:
            return None
        return self._elapsed() / done * max(0, self.num_trials - done)

    def headline(self) -> str:
        return (
            f"{self.recorder.setup.search_id}: {self._done()}/{self.num_trials} trials done, "
            f"{duration(self._elapsed())} elapsed, ETA {duration(self.eta())}"
        )

    def _progress_text(self) -> str:
        if self.console.is_terminal:
            return ""  # the headline above the table says it
        return f" ({self._done()}/{self.num_trials} done, ETA {duration(self.eta())})"

    def _event(self, text: str) -> None:
        if not self.verbose or self.rows is None:
            return
        if self.console.is_terminal and self._live is None:
            from rich.live import Live

            self._live = Live(
                get_renderable=self.render,
                console=self.console,
                refresh_per_second=2,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        prefix = f"[unitune {duration(self._elapsed())}] "
        self.console.print(prefix + text, markup=False, highlight=False, soft_wrap=True)

    def render(self, final: bool = False):
        """The trials table (and the running trial's progress bar); best first when final."""
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        # Headers wrap at their underscores (warmup / epochs): the table fits 80 columns.
        heads = ["trial", "state", *(short(p).replace("_", " ") for p in self.params), "epoch", self.metric, "best"]
        table = Table(
            title=self.headline(),
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            padding=(0, 0),  # the box's blank column separator is the gap: 8 trials fit 80 columns
            caption="stopped = stopped early by ASHA" if final else None,
            caption_justify="left",
        )
        rows = list((self.rows or {}).copy().values())  # the refresh thread reads while Tune adds
        if final:
            rows.sort(key=sort_key(self.mode))
        cells = [
            [
                row["name"],
                STATE_TEXT.get(row["state"], row["state"]),
                *(fmt(row["config"].get(k)) for k in self.params),
                fmt(row.get("epoch")),
                fmt(row.get("value")),
                fmt(row.get("best")),
            ]
            for row in rows
        ]
        for i, head in enumerate(heads):
            # Values are never cut: a column is as wide as its widest value (headers wrap instead).
            widest = max((len(Text.from_markup(r[i]).plain) for r in cells), default=0)
            table.add_column(head, justify="left" if i < 2 else "right", min_width=widest)
        for r in cells:
            table.add_row(*r)
        bar = self.steps.renderable() if (self.steps is not None and not final) else None
        return Group(table, bar) if bar is not None else table
