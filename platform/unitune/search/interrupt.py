"""SIGINT (Ctrl-C) and SIGTERM (``unitune stop``, a scheduler's kill) of a running search.

Ray Tune's own SIGINT handler is switched off (``TUNE_DISABLE_SIGINT_HANDLER``): it ends
``Tuner.fit()`` as if the search were done and prints advice for Ray's API. Here the first
signal

1. marks the record at once (the parent and every running trial ``interrupted``, KILLED),
   so it is right even if a SIGKILL follows a few seconds later;
2. asks Tune to stop gracefully (Tune's SIGUSR1 handler: it saves its experiment state, so
   ``--resume`` continues from the last checkpoints).

Further signals while closing are acknowledged and ignored, so a second Ctrl-C cannot cut
the record short. The command exits 128 + the signal number (130, 143).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _DropRayAdvice(logging.Filter):
    """Ray Tune's "Resume experiment with: Tuner.restore(...)" is not a unitune user's command."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "Tuner.restore" not in text and "Stop signal received" not in text


class Interrupt:
    """Context manager installing the handlers; ``signal`` is the first signal caught.

    Args:
        on_first: called once, from the handler, on the first signal (mark the record).
    """

    def __init__(self, on_first: Callable[[], None]):
        self.on_first = on_first
        self.signal: int | None = None
        self._previous: dict[int, object] = {}
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

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None:
            print("unitune: still closing the search record; it will be resumable", file=sys.stderr, flush=True)
            return
        self.signal = signum
        name = signal.Signals(signum).name
        print(f"unitune: {name} received: closing the search record (trials interrupted, resumable)",
              file=sys.stderr, flush=True)
        try:
            self.on_first()
        except Exception as exc:  # noqa: BLE001 - the final close at the driver's end retries
            print(f"unitune: could not mark the record yet: {exc}", file=sys.stderr, flush=True)
        if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            signal.raise_signal(signal.SIGUSR1)   # Tune's graceful stop
        else:
            raise KeyboardInterrupt   # before Tune's loop: end the driver right here
