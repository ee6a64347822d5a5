"""SIGINT (Ctrl-C) and SIGTERM (``unitune stop``, a scheduler's kill) of a running search.

Ray Tune's own SIGINT handler is switched off (``TUNE_DISABLE_SIGINT_HANDLER``): it ends
``Tuner.fit()`` as if the search were done and prints advice for Ray's API. Here the first
signal

1. marks the record at once (the parent and every running trial ``interrupted``, KILLED),
   so it is right even if a SIGKILL follows a few seconds later;
2. asks Tune to stop gracefully (Tune's SIGUSR1 handler: it saves its experiment state, so
   ``--resume`` continues from the last checkpoints).

Further signals while closing are acknowledged and ignored, so a second Ctrl-C cannot cut
the record short. The command exits 128 + the signal number (130, 143). If the stop takes
longer than :data:`GRACE_S` (a SIGTERM sent to the whole process group also ends the local
Ray, and Ray's client then waits a minute for it), the driver exits with that code anyway:
the record was marked in step 1 and Tune's last saved state is what ``--resume`` continues.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 30.0
# What ``signal.signal`` takes and returns (None: a handler not installed from Python).
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _DropRayAdvice(logging.Filter):
    """Ray Tune's "Resume experiment with: Tuner.restore(...)" is not a unitune user's command."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "Tuner.restore" not in text and "Stop signal received" not in text


class Interrupt:
    """Context manager installing the handlers; ``signal`` is the first signal caught.

    Args:
        on_first: called once, from the handler, on the first signal (mark the record).
        resume_hint: the command that continues the search, printed on the first signal.
    """

    def __init__(self, on_first: Callable[[], None], resume_hint: str | None = None):
        self.on_first = on_first
        self.resume_hint = resume_hint
        self.signal: int | None = None
        self._previous: dict[int, Handler] = {}
        self._filter = _DropRayAdvice()

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal) if self.signal is not None else 0

    def __enter__(self) -> Interrupt:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        logging.getLogger("ray.tune.tune").addFilter(self._filter)
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        logging.getLogger("ray.tune.tune").removeFilter(self._filter)

    def _deadline(self) -> None:
        threading.Event().wait(GRACE_S)
        print(
            f"unitune: Ray did not stop within {GRACE_S:.0f} s; exiting (the record is closed)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(self.exit_code)

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None:
            print("unitune: still closing the search record; it will be resumable", file=sys.stderr, flush=True)
            return
        self.signal = signum
        name = signal.Signals(signum).name
        print(
            f"unitune: {name} received: closing the search record (trials interrupted, resumable)",
            file=sys.stderr,
            flush=True,
        )
        try:
            self.on_first()
        except Exception as exc:  # noqa: BLE001 - the final close at the driver's end retries
            print(f"unitune: could not mark the record yet: {exc}", file=sys.stderr, flush=True)
        if self.resume_hint:
            print(f"unitune: resume with  {self.resume_hint}", file=sys.stderr, flush=True)
        threading.Thread(target=self._deadline, daemon=True, name="unitune-interrupt-deadline").start()
        if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            signal.raise_signal(signal.SIGUSR1)  # Tune's graceful stop
        else:
            raise KeyboardInterrupt  # before Tune's loop: end the driver right here
