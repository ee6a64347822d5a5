"""Checks that a store can be written, made before Ray starts and before any run exists.

Write probes of local MLflow stores and artifact locations (a file created and removed in
their folder; an existing sqlite file opened for writing, never changed), and a bound on
MLflow's HTTP retries while a server is first asked. No MLflow import: the probes are plain
file operations and the bound is MLflow's own environment variables.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from unitune.errors import UserError, mask_uri, redact, shorten
from unitune.stores import local_path, sqlite_path

CHECK_TIMEOUT_S = 4  # per HTTP request of ``Tracker.check``
CHECK_RETRIES = 1  # urllib3 retries the first time without a pause: <= 2 x 4 s in all


def _probe_folder(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder`` or its nearest existing parent (MLflow creates
    the missing ones). Raises UserError naming ``what`` and the folder."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
    if not parent.is_dir():
        raise UserError(f"{what}: {folder} is under {parent}, which is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent, prefix=".unitune-probe-"):
            pass
    except OSError as exc:
        raise UserError(
            f"{what}: cannot write in {parent}: {exc.strerror or exc}"
            + (" (read-only folder)" if parent == Path.cwd() else "")
        ) from None


def probe_store(uri: str) -> None:
    """Write probe of a local MLflow store (a no-op for servers): a sqlite database must be
    a writable file (or creatable) in a writable folder (sqlite writes its journal there);
    a file store's folder must be writable. Nothing in the store is changed.

    Raises:
        UserError: naming tracking.uri, the path and the reason.
    """
    path = local_path(uri)
    if path is None:
        return
    what = f"tracking.uri {mask_uri(uri)!r}"
    if sqlite_path(uri) is not None:
        if path.is_dir():
            raise UserError(f"{what}: {path} is a folder, not a sqlite database file")
        if not path.parent.is_dir():
            raise UserError(f"{what}: folder {path.parent} does not exist (sqlite does not create it)")
        if path.exists():
            try:
                with open(path, "r+b"):
                    pass
            except OSError as exc:
                raise UserError(f"{what}: {path} is not writable: {exc.strerror or exc} (read-only store)") from None
        _probe_folder(path.parent, what)
    else:
        if path.exists() and not path.is_dir():
            raise UserError(f"{what}: {path} is a file, not an MLflow file-store folder")
        _probe_folder(path, what)


def probe_artifacts(location: str, what: str) -> None:
    """Write probe of a local artifact location (a no-op for remote ones).

    Raises:
        UserError: naming ``what``, the path and the reason.
    """
    path = local_path(location)
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise UserError(f"{what}: {path} is a file, not a folder")
    _probe_folder(path, what)


# How a SQLAlchemy driver is told to give up connecting (seconds), by dialect.
_CONNECT_TIMEOUT_ARG = {"postgresql": "connect_timeout", "mysql": "connect_timeout", "mssql": "timeout"}


def probe_database(uri: str, timeout_s: int = CHECK_TIMEOUT_S) -> None:
    """One connection to a database store (``postgresql://``, ``mysql://``, ``mssql://``, with
    or without ``+driver``), given up after ``timeout_s``; a no-op for any other store. MLflow
    itself retries creating its engine for minutes ("Operation will be retried in 51.1
    seconds"): this answers an unreachable database in seconds, before MLflow is asked.

    Raises:
        UserError: naming tracking.uri (masked) and the driver's reason, on one line.
    """
    dialect = urlparse(uri).scheme.split("+", 1)[0]
    if dialect not in _CONNECT_TIMEOUT_ARG:
        return
    import sqlalchemy  # MLflow's dependency, loaded only for a database store
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(
            uri, poolclass=NullPool, connect_args={_CONNECT_TIMEOUT_ARG[dialect]: timeout_s}
        )
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "unreachable"
        timed_out = "timeout expired" in str(exc) or "timed out" in str(exc)
        reason = f"no answer within {timeout_s} s" if timed_out else first_line(exc)
        raise UserError(f"tracking.uri: database store {mask_uri(uri)!r} cannot be opened: {reason}") from None


@contextlib.contextmanager
def bounded_http(retries: int = CHECK_RETRIES, timeout_s: int = CHECK_TIMEOUT_S):
    """MLflow HTTP requests inside the block: ``retries`` retries without back-off, each
    request at most ``timeout_s``; urllib3's retry warnings are kept quiet."""
    bounds = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    }
    saved = {key: os.environ.get(key) for key in bounds}
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    os.environ.update(bounds)
    pool_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pool_log.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# MLflow's HTTP retries for a search's calls to a tracking server (the driver's record writes,
# the trials' look-ups), so a server restart is waited out: MLflow's own settings, set where a
# search starts unless the environment sets them. urllib3 pauses 0, 4, 8, 16, 32 and 64 s
# (backoff factor 2, plus up to 1 s of jitter each) between the 7 tries of a request: a server
# that refuses connections fails a call after 124-130 s; one that accepts and does not answer
# also waits up to 30 s per try. MLflow's defaults (7 retries, 120 s timeout) wait ~4 min and
# up to 14 min more for a silent server.
SERVER_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def bound_server_retries() -> dict[str, str]:
    """Set :data:`SERVER_RETRIES` in this process's environment where it is unset; returns
    the settings in force (for processes started elsewhere, e.g. trials on other nodes)."""
    for key, value in SERVER_RETRIES.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in SERVER_RETRIES}


# sqlite lets one writer in at a time; MLflow waits 20 s for the lock (its busy_timeout), the
# Optuna storage SQLITE_WAIT_S (unitune.search.storage). Longer means too many writers.
SQLITE_LOCKED = "database is locked"
SQLITE_LOCKED_HINT = (
    "the sqlite database stayed locked by another writer for longer than its wait (several "
    "searches or processes writing one sqlite store); for concurrent searches run an MLflow "
    "server on PostgreSQL (docs/cluster.md) and set tracking.uri to its http:// URL"
)


def sqlite_locked(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it was raised from) is sqlite's "database is locked"."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if SQLITE_LOCKED in str(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def first_line(exc: BaseException) -> str:
    """What went wrong with a store request, masked and on part of one line: a plain reason
    for a refused or silent server, else the first line of the error's text."""
    text = str(exc)
    if SQLITE_LOCKED in text:
        return SQLITE_LOCKED_HINT
    if "NewConnectionError" in text or "Connection refused" in text:
        return "cannot connect (connection refused or host unreachable; is the server running?)"
    if "NameResolutionError" in text or "Name or service not known" in text:
        return "unknown host name"
    if "ReadTimeout" in text or "ConnectTimeout" in text or "timed out" in text:
        return f"no answer within {CHECK_TIMEOUT_S} s, {CHECK_RETRIES + 1} tries"
    lines = text.strip().splitlines()
    return shorten(redact(lines[0]), 200) if lines else type(exc).__name__
