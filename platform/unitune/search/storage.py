"""Where Ray Tune keeps a search's state (what ``--resume`` continues from).

``search.storage`` unset: ``.unitune/tune`` in the working directory. Set: a path (on the
cluster's shared filesystem for a submitted search) or a URI that Ray Tune's storage layer
(pyarrow) accepts, such as ``s3://bucket/unitune`` or ``gs://...``. Light at import.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from unitune.errors import UserError

DEFAULT_TUNE_DIR = ".unitune/tune"


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
            where = where[len("file://"):]
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
