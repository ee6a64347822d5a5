"""A finished trial's checkpoints are deleted once its record is closed.

A trial's checkpoint exists for one reason: to continue the trial after its process died or
the search was interrupted. Once the trial is completed, stopped by ASHA or failed (its MLflow
run and Optuna trial closed by the recorder), nothing reads it again: a resumed search does
not rerun finished trials, and `unitune export` / `unitune study` read the trial's values from
MLflow. Interrupted trials keep theirs.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

PREFIX = "checkpoint_"


def drop_checkpoints(trial) -> int:
    """Delete the ``checkpoint_*`` folders of a Tune ``trial`` in its storage (local or remote).

    Returns the number of folders deleted; a storage error is logged, never raised (the search
    goes on, the checkpoint just stays).
    """
    from pyarrow.fs import FileSelector, FileType

    try:
        fs, root = trial.storage.storage_filesystem, trial.storage.trial_fs_path
        entries = fs.get_file_info(FileSelector(root, allow_not_found=True))
        folders = [e.path for e in entries if e.type == FileType.Directory and e.base_name.startswith(PREFIX)]
        for path in folders:
            fs.delete_dir(path)
        return len(folders)
    except Exception as exc:  # noqa: BLE001 - disk housekeeping must not stop a search
        log.warning("could not delete the checkpoints of trial %s: %s", getattr(trial, "trial_id", "?"), exc)
        return 0
