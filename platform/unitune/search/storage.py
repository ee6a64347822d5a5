"""Where a search keeps its state: Ray Tune's (what ``--resume`` continues from) and the
Optuna study's (``optuna.db`` beside a local MLflow store, or the database named by
``UNITUNE_OPTUNA_STORAGE``).

``search.storage`` unset: ``.unitune/tune`` in the working directory. Set: a path (on the
cluster's shared filesystem for a submitted search) or a URI that Ray Tune's storage layer
(pyarrow) accepts, such as ``s3://bucket/unitune`` or ``gs://...``. Light at import.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from unitune.errors import UserError
from unitune.locks import file_lock
from unitune.stores import local_path, sqlite_lock, sqlite_uri
from unitune.tracking import Tracker

if TYPE_CHECKING:
    import optuna

DEFAULT_TUNE_DIR = ".unitune/tune"
# The Optuna studies' database on a server set-up (a SQLAlchemy URL, e.g.
# postgresql+psycopg://user:pw@db:5432/optuna): one storage for every driver, so the search
# ids it allocates are unique across machines. `unitune submit` forwards it (UNITUNE_*).
OPTUNA_STORAGE_ENV = "UNITUNE_OPTUNA_STORAGE"
# How long an Optuna write waits for another writer of the same sqlite file (two searches
# of one directory); pysqlite's default is 5 s.
SQLITE_WAIT_S = 60


def tune_storage(storage: str | None) -> str:
    """The storage path or URI for ``search.storage`` (absolute for a local path)."""
    if storage and "://" in storage:
        return storage
    return str(Path(storage or DEFAULT_TUNE_DIR).expanduser().resolve())


def check_tune_storage(storage: str | None) -> None:
    """Refuse a ``search.storage`` that Tune could not write, before anything starts.

    A local path: its nearest existing directory must be a writable directory (a write
    probe). A URI: pyarrow must know its scheme (its credentials are checked by Tune).

    Raises:
        UserError: names ``search.storage``, the path or URI and the reason.
    """
    where = tune_storage(storage)
    if "://" in where:
        if where.startswith("file://"):
            where = where[len("file://") :]
        else:
            try:
                import pyarrow.fs

                pyarrow.fs.FileSystem.from_uri(where)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"search.storage: {storage}: not a storage URI Ray Tune accepts ({reason})") from None
            return
    path = Path(where)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"search.storage: {path}: {existing} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".unitune-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"search.storage: {path}: not writable ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"search.storage: {path}: not writable")


def optuna_storage_url(tracking_uri: str) -> str:
    """The ``UNITUNE_OPTUNA_STORAGE`` database URL when set (a server set-up: the MLflow
    server's PostgreSQL, see docs/cluster.md), else ``sqlite:///<dir>/optuna.db`` beside a
    sqlite/file MLflow store, else in the cwd."""
    if os.environ.get(OPTUNA_STORAGE_ENV):
        return os.environ[OPTUNA_STORAGE_ENV]
    local = local_path(tracking_uri) if urlparse(tracking_uri).scheme in ("sqlite", "file") else None
    return sqlite_uri((local.parent if local is not None else Path.cwd()) / "optuna.db")


def open_storage(tracker: Tracker) -> optuna.storages.RDBStorage:
    """The Optuna storage of a store's searches (created once, under a lock)."""
    import optuna

    url = optuna_storage_url(tracker.uri)
    engine = {"connect_args": {"timeout": SQLITE_WAIT_S}} if url.startswith("sqlite:") else None
    lock = sqlite_lock(url)
    if lock is None:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    with file_lock(lock):
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
