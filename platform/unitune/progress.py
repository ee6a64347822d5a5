"""Progress inside an epoch: the training loop's steps, drawn by the driver.

The loop runs in another process (a Ray Train worker for ``unitune train``, the Tune trial
process in a search): its rank 0 calls a :class:`StepReporter` after every step, which sends
``(epoch, step, steps, samples/s, seconds left)`` at most every :data:`EVERY_S` seconds to a
small Ray actor. The driver's :class:`StepProgress` reads that actor from a thread and draws
a rich progress bar on a terminal; elsewhere (a file, a pipe) it prints a plain line at most
every :data:`PLAIN_EVERY_S` seconds. Epoch summaries sent with :meth:`StepReporter.line`
print above the bar.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from unitune.terminal import duration

if TYPE_CHECKING:
    from rich.live import Live
    from rich.progress import Progress, TaskID

EVERY_S = 0.5  # worker -> actor
PLAIN_EVERY_S = 30.0  # plain progress lines when stdout is not a terminal


class _Board:
    """The latest step of the running epoch, and lines to print (a Ray actor)."""

    def __init__(self) -> None:
        self.state: dict | None = None
        self.lines: list[str] = []

    def update(self, state: dict) -> None:
        self.state = state

    def line(self, text: str) -> None:
        self.lines.append(text)

    def read(self) -> tuple[dict | None, list[str]]:
        lines, self.lines = self.lines, []
        return self.state, lines


class StepReporter:
    """What the loop calls after each step (picklable: it travels to the workers)."""

    def __init__(self, board):
        self.board = board
        self._last = 0.0
        self._epoch = None
        self._first = (0.0, 0, 0)  # time, step, samples of the epoch's first step seen

    def __call__(self, epoch: int, step: int, steps: int, samples: int) -> None:
        now = time.monotonic()
        if epoch != self._epoch:  # rates from the first step on (it includes start-up work)
            self._epoch, self._first = epoch, (now, step, samples)
        if step < steps and now - self._last < EVERY_S:
            return
        self._last = now
        t0, step0, samples0 = self._first
        seconds = now - t0
        done = step - step0
        self.board.update.remote(
            {
                "epoch": epoch,
                "step": step,
                "steps": steps,
                "rate": (samples - samples0) / seconds if done and seconds > 0 else None,
                "left": seconds / done * (steps - step) if done else None,
            }
        )

    def line(self, text: str) -> None:
        self.board.line.remote(text)

    def __getstate__(self):
        return {"board": self.board}

    def __setstate__(self, state):
        self.__init__(state["board"])


class StepProgress:
    """The driver's side: a bar (or plain lines) for ``epochs`` epochs; use as a context
    manager around the run. ``console``: a ``rich.console.Console`` (default: stdout's).
    ``own_display=False``: the caller draws :meth:`renderable` in its own live display
    (the search's trials table)."""

    def __init__(self, epochs: int, console=None, *, own_display: bool = True):
        import ray
        from rich.console import Console

        self.epochs = epochs
        # The stream now, not at write time: the run's stdout goes to the log file meanwhile.
        self.console = console or Console(file=sys.stdout, highlight=False)
        # Without Ray (a run in this process) there is nothing to draw: ``reporter`` is None.
        # A Ray actor handle of _Board (Ray types the calls of ``@ray.method`` methods only).
        self.board: Any | None = ray.remote(num_cpus=0)(_Board).remote() if ray.is_initialized() else None
        self.reporter = StepReporter(self.board) if self.board is not None else None
        self.terminal = self.console.is_terminal
        self.own_display = own_display
        self.state: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="unitune-progress")
        self._bar: tuple[Progress, TaskID] | None = None  # the progress bar and its one task
        self._live: Live | None = None
        self._last_plain = time.monotonic()

    def __enter__(self) -> StepProgress:
        if self.board is None:
            return self
        if self.terminal and self.own_display:
            from rich.live import Live

            self._live = Live(
                get_renderable=self.renderable,
                console=self.console,
                refresh_per_second=4,
                redirect_stdout=False,
                redirect_stderr=False,
                transient=True,
            )
            self._live.start()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.board is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._read()  # the last lines
        if self._live is not None:
            self._live.stop()

    def renderable(self):
        """The bar of the running epoch (``None`` before the first step)."""
        state = self.state
        if state is None:
            return None
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps  {task.fields[rate]}  ETA {task.fields[left]}"),
                console=self.console,
                auto_refresh=False,
            )
            self._bar = bar, bar.add_task("", total=state["steps"], rate="", left="")
        progress, task = self._bar
        progress.update(
            task,
            description=f"epoch {state['epoch']}/{self.epochs}",
            total=state["steps"],
            completed=state["step"],
            rate=_rate(state["rate"]),
            left=duration(state["left"]),
        )
        return progress.get_renderable()

    def _poll(self) -> None:
        while not self._stop.wait(EVERY_S):
            self._read()

    def _read(self) -> None:
        import ray

        if self.board is None:  # the thread runs only with a board
            return
        try:
            state, lines = ray.get(self.board.read.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - Ray shutting down: the bar only stops
            return
        for text in lines:
            self.console.print(text, markup=False, highlight=False)
        if state is None:
            return
        self.state = state
        now = time.monotonic()
        if not self.terminal and state["step"] < state["steps"] and now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            self.console.print(
                f"epoch {state['epoch']}/{self.epochs}: step {state['step']}/{state['steps']}, "
                f"{_rate(state['rate'])}, ETA {duration(state['left'])}",
                markup=False,
            )


def _rate(samples_per_s: float | None) -> str:
    return "- samples/s" if samples_per_s is None else f"{samples_per_s:.0f} samples/s"
