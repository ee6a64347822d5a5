"""What the terminal shows a person: unitune's own lines and the warnings that ask something
of the user. What the libraries log (MLflow, Optuna, Ray, alembic: INFO chatter, Ray Tune's
configuration box, Ray's internal tracebacks) goes to one log file per command,
``.unitune/logs/<command>-<UTC time>.log``, whose path the CLI prints once at the end.

    open_log("search")          # before MLflow, Optuna or Ray are imported
    adopt_library_loggers()     # again after importing one (they add their own handlers)
    with to_log(): tuner.fit()  # what a library prints to stdout goes to the file
    close_log() -> Path | None  # the file, if anything was written to it

Light at import: the CLI imports it to build its parser.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

LOG_DIR = Path(".unitune") / "logs"
LIBRARIES = (
    "mlflow",
    "optuna",
    "ray",
    "alembic",
    "sqlalchemy",
    "urllib3",
    "filelock",
    "matplotlib",
    "PIL",
    "transformers",
    "huggingface_hub",
    "py.warnings",
    "torch",
)
# Warnings the libraries log that ask nothing of a unitune user: to the file only.
NOISE = (
    "GetTimeoutError",
    "Failed to send resource request",
    "Reporting training result",
    "experimental",
    "deprecated",
    "Deprecat",
)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_file: logging.FileHandler | None = None
_console: logging.Handler | None = None
_saved_level: int | None = None


class _UserFacing(logging.Filter):
    """Warnings and errors for the terminal: not Python's warnings module (deprecations of
    libraries), nothing in :data:`NOISE`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":
            return False
        text = record.getMessage()
        return not any(n in text for n in NOISE)


def open_log(command: str, directory: Path = LOG_DIR) -> Path:
    """Route every library's log records to a new log file (created on its first record);
    warnings and errors that a user must see stay on stderr. Returns the file's path."""
    global _file, _console, _saved_level
    # MLflow leaves its loggers to the application, and prints no download progress bars.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Nor transformers' "Loading weights" bar (read when transformers is first imported).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    close_log()
    directory = writable_folder(directory.resolve())
    path = directory / f"{command}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid()}.log"
    _file = logging.FileHandler(path, delay=True, encoding="utf-8")
    _file.setFormatter(logging.Formatter(FORMAT))
    _console = logging.StreamHandler(sys.stderr)
    _console.setLevel(logging.WARNING)
    _console.addFilter(_UserFacing())
    _console.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    _saved_level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(_file)
    root.addHandler(_console)
    logging.captureWarnings(True)
    adopt_library_loggers()
    return path


def writable_folder(directory: Path) -> Path:
    """``directory`` if a file can be written there, else ``<tmp>/unitune-logs``: a read-only
    working directory must not stop a command before its own checks name the problem."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return directory
    except OSError:
        fallback = Path(tempfile.gettempdir()) / "unitune-logs"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def adopt_library_loggers() -> None:
    """Take the terminal handlers off the libraries' loggers so their records reach the log
    file (through the root logger). Libraries add them when imported: call after that."""
    if _file is None:
        return
    if "optuna" in sys.modules:
        import optuna

        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
    loggers = [
        logging.getLogger(n)
        for n in list(logging.root.manager.loggerDict)
        if n.split(".")[0] in LIBRARIES or n in LIBRARIES
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            if type(handler) is not logging.FileHandler and not isinstance(handler, logging.NullHandler):
                logger.removeHandler(handler)
        logger.propagate = True


def close_log() -> Path | None:
    """Detach the handlers of :func:`open_log`; the log file's path if it was written."""
    global _file, _console, _saved_level
    if _file is None:
        return None
    root = logging.getLogger()
    root.removeHandler(_file)
    if _console is not None:  # open_log sets both
        root.removeHandler(_console)
    if _saved_level is not None:
        root.setLevel(_saved_level)
    logging.captureWarnings(False)
    path = Path(_file.baseFilename)
    _file.close()
    _file = _console = _saved_level = None
    if not path.exists():
        return None
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def log_stream():
    """The open log file as a text stream (``sys.stderr`` when no log is open)."""
    if _file is None:
        return sys.stderr
    if _file.stream is None:
        _file.stream = _file._open()
    return _file.stream


@contextlib.contextmanager
def to_log():
    """What the libraries print to stdout meanwhile (Ray Tune's configuration box, its
    results directory) goes to the log file."""
    stream = log_stream()
    with contextlib.redirect_stdout(stream):
        try:
            yield
        finally:
            stream.flush()


def num(value) -> str:
    """A number for people: integers without ``.0``; 1 decimal from 100 on, else 3
    significant digits (``445.8``, ``0.391``, ``0.00155``); ``-`` for None."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}"


def duration(seconds: float | None) -> str:
    """``0:01:05`` (h:mm:ss); ``-`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (stdout) is a terminal a progress bar can redraw."""
    stream = stream if stream is not None else sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


def text_table(heads: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A borderless plain-text table (rich's ``Table``): columns two spaces apart, those
    flagged in ``right`` right-aligned; no cell is cut or wrapped and no markup is read."""
    import io

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="")
    for head, flush_right in zip(heads, right):
        table.add_column(Text(head), justify="right" if flush_right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    out = io.StringIO()
    Console(file=out, width=100_000, color_system=None, highlight=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())
