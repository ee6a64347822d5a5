"""Where a saved unitune model is: a ``save_model`` directory, a local MLflow model
directory holding one (the pyfunc ``unitune train`` logs, ``unitune.pyfunc``), or a run or
model URI of an MLflow store, downloaded first. ``unitune.models.load_model`` reads its
source through :func:`local_model_dir`; only a URI imports MLflow.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from unitune.errors import UserError, first_line
from unitune.tracking import Tracker

ARTIFACT = "model"  # the save_model directory inside the MLflow model (the pyfunc's artifact)


def local_model_dir(ref: str, tracking_uri: str | None = None, dst: str | None = None) -> Path:
    """The ``save_model`` directory of ``ref``: a run or model URI (``runs:/RUN_ID/model``,
    ``models:/NAME/1``, ``models:/m-...``) downloaded into ``dst``
    (default: a new temporary directory), or a local MLflow model directory (``MLmodel``).

    Raises:
        unitune.errors.UserError: the URI cannot be downloaded, or holds no unitune model.
    """
    path = Path(ref)
    if ":/" in ref and not path.exists():
        import mlflow  # heavy: only a URI is downloaded
        from mlflow.exceptions import MlflowException

        try:
            path = Tracker(tracking_uri or mlflow.get_tracking_uri()).download(
                ref, dst or tempfile.mkdtemp(prefix="unitune-model-")
            )
        except (MlflowException, OSError) as exc:
            raise UserError(f"{ref}: cannot download the model ({first_line(exc)})") from None
    if (path / "MLmodel").is_file():
        flavor = yaml.safe_load((path / "MLmodel").read_text()).get("flavors", {}).get("python_function", {})
        inner = flavor.get("artifacts", {}).get(ARTIFACT, {}).get("path")
        path = path / inner if inner else path
    if not (path / "model.json").is_file():
        raise UserError(f"{ref}: not a unitune model (no model.json, nor an MLflow model holding one)")
    return path
