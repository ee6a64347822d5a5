"""A cross-process file lock (``filelock``) for work one machine must do once at a time:
creating a sqlite store and running its migrations, allocating a search id."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from filelock import FileLock


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """Hold an exclusive lock on ``path`` (created, with its folder, if needed) for the
    ``with`` block; waits as long as another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield
