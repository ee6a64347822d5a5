"""Every MLflow call of unitune: a thin layer over ``mlflow.MlflowClient`` (the rules of
store URIs are ``unitune.stores``). MLflow is imported on first use, so this module is light
to import (the job file's check names a store its workers cannot reach with
:func:`unreachable_store`).

Runs are addressed by explicit run ids; nothing here touches MLflow's global
"active run" state, so a driver and many trial processes can log to the same store.

Non-finite metric values are logged, never dropped. NaN is stored as NaN. An infinite
value is passed to the store as is; the SQL stores replace it with ±1.797e308 (the
largest float, which still sorts after every finite value), so the key is also tagged
``unitune.inf.<key> = +inf|-inf`` and :meth:`Tracker.get_metrics` maps it back to ±inf.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from unitune import tags as T
from unitune.errors import UserError, mask_uri, redact, redact_log_records, shorten
from unitune.locks import file_lock
from unitune.probes import bounded_http, first_line, probe_artifacts, probe_database, probe_store
from unitune.stores import is_server, local_store_with_remote_cluster, resolve_uri, sqlite_lock

if TYPE_CHECKING:
    from mlflow import MlflowClient

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
INF_TAG_PREFIX = T.INF_PREFIX
PARENT_TAG = T.PARENT
EXPERIMENT_KIND_TAG = T.EXPERIMENT_KIND
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
_BATCH = 100  # MLflow's per-request limit on params and tags (metrics: 1000)
# MLflow prints "View run ... at: <tracking URI>/#/..." when a run ends: that URI may hold a
# password, and unitune prints its own (masked) run link.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
redact_log_records()  # MLflow's (and every) log line: credentials in a URI masked


def unreachable_store(uri: str, ray_address: str | None) -> str | None:
    """Why the workers of the Ray cluster at ``ray_address`` could not write to the store
    ``uri`` (``unitune.stores.local_store_with_remote_cluster``), or ``None`` when they can.
    The one message of the job file's check, :meth:`Tracker.check` and ``unitune submit``."""
    if not local_store_with_remote_cluster(uri, ray_address):
        return None
    return (
        f"{shorten(mask_uri(uri), 160)} is a local store that the workers of the remote cluster "
        f"{shorten(mask_uri(ray_address), 80)} cannot reach; use an http(s):// MLflow server "
        "or a shared database"
    )


class Tracker:
    """MLflow tracking store of one search or training run.

    Args:
        uri: tracking URI (``sqlite:///mlruns.db``, ``http://host:5000``, a path).
            Relative sqlite/file paths are resolved against the current directory.
        artifact_location: where new experiments keep artifacts (a path or URI);
            ``None`` lets the store choose. Relative paths resolve like ``uri``.
    """

    def __init__(self, uri: str, artifact_location: str | None = None):
        self.uri = resolve_uri(uri)
        self.artifact_location = resolve_uri(artifact_location) if artifact_location else None
        self._client: MlflowClient | None = None
        self._experiments: dict[str, str] = {}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            lock = sqlite_lock(self.uri)
            if lock is None:
                self._client = MlflowClient(tracking_uri=self.uri)
            else:
                # A fresh sqlite store is created (migrated) by its first user; two processes
                # doing it at once fail ("table ... already exists"): one at a time.
                with file_lock(lock):
                    client = MlflowClient(tracking_uri=self.uri)
                    client.search_experiments(max_results=1)
                self._client = client
        return self._client

    def __getstate__(self) -> dict:
        # Trackers travel to Ray trial processes; the client reconnects there.
        return {
            "uri": self.uri,
            "artifact_location": self.artifact_location,
            "_client": None,
            "_experiments": dict(self._experiments),
        }

    def check(self, ray_address: str | None = None, experiment: str | None = None) -> None:
        """Refuse a store this run could not write to, in seconds and before any run exists.

        In order: a machine-local store with a remote Ray cluster; write probes of a local
        store (the sqlite file and its folder, or the file store's folder) and of a local
        artifact location (``tracking.artifact_location``, and the existing ``experiment``'s
        own location); then one request to the store, with MLflow's HTTP retries bounded
        (``unitune.probes.bounded_http``) so an unreachable server answers in ~10 s; a
        database store gets one bounded connection first (``unitune.probes.probe_database``).
        Nothing is created in the store; credentials in the URI are masked in messages.

        Raises:
            UserError: one line naming ``tracking.uri`` or ``tracking.artifact_location``,
                the path or URI (masked) and the reason.
        """
        shown = mask_uri(self.uri)
        reason = unreachable_store(self.uri, ray_address)
        if reason is not None:
            raise UserError(f"tracking.uri: {reason}")
        probe_store(self.uri)
        probe_database(self.uri)
        if self.artifact_location:
            probe_artifacts(self.artifact_location, f"tracking.artifact_location {mask_uri(self.artifact_location)!r}")
        with bounded_http():
            try:
                self.client.search_experiments(max_results=1)
                exp = self.client.get_experiment_by_name(experiment) if experiment else None
            except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
                raise UserError(
                    f"tracking.uri: MLflow tracking store {shown!r} cannot be opened: {first_line(exc)}"
                ) from None
        if exp is not None and exp.lifecycle_stage == "active" and exp.artifact_location:
            probe_artifacts(exp.artifact_location, f"the artifact location of experiment {experiment!r}")

    def experiment_id(self, name: str) -> str:
        """Id of the experiment called ``name``, created (with the artifact location) if absent.

        Raises:
            UserError: the experiment exists but is deleted.
        """
        if name in self._experiments:
            return self._experiments[name]
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            from mlflow.exceptions import MlflowException

            try:
                # The tag MLflow's UI reads to open the experiment on its runs (model training),
                # not on the GenAI traces view.
                exp_id = self.client.create_experiment(
                    name,
                    artifact_location=self.artifact_location,
                    tags={EXPERIMENT_KIND_TAG: "custom_model_development"},
                )
            except MlflowException:
                # Another process created it between our look-up and create.
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        elif exp.lifecycle_stage == "deleted":
            raise UserError(
                f"MLflow experiment {name!r} in {self.uri} is deleted; restore it "
                f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`) or "
                "pick another name (tracking.experiment)"
            )
        else:
            exp_id = exp.experiment_id
        self._experiments[name] = exp_id
        return exp_id

    def start_run(
        self, experiment: str, run_name: str, tags: dict | None = None, parent_run_id: str | None = None
    ) -> str:
        """Create a RUNNING run in experiment ``experiment`` (a name); return its id."""
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=all_tags)
        return run.info.run_id

    def query_runs(self, experiment_ids: list[str], tags: dict, *, newest_first: bool = False, limit: int = 10000):
        """Active runs of ``experiment_ids`` whose tags equal ``tags``, by start time (oldest
        first unless ``newest_first``): MLflow's search API, for ``unitune.record`` only."""
        return list(
            self.client.search_runs(
                experiment_ids,
                filter_string=tag_filter(tags),
                order_by=[f"attributes.start_time {'DESC' if newest_first else 'ASC'}"],
                max_results=limit,
            )
        )

    def experiment_ids(self, name: str | None = None) -> list[str]:
        """``[id]`` of the experiment ``name`` (created if absent), or the ids of every experiment."""
        if name is not None:
            return [self.experiment_id(name)]
        return [e.experiment_id for e in self.client.search_experiments()]

    def experiment_name(self, experiment_id: str) -> str:
        return self.client.get_experiment(experiment_id).name

    def experiment_named(self, name: str) -> str | None:
        """The id of the experiment ``name`` (active or deleted), or None; nothing is created."""
        exp = self.client.get_experiment_by_name(name)
        return None if exp is None else exp.experiment_id

    def get_run(self, run_id: str):
        """The MLflow run ``run_id``, or None when the store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            return None

    def log_params(self, run_id: str, params: dict) -> None:
        """Log params (values become strings). Re-logging an identical value is allowed."""
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i : i + _BATCH])

    def log_metrics(self, run_id: str, metrics: dict, step: int) -> None:
        """Log numeric metrics at ``step``; NaN/±inf are kept (see the module docstring).

        Raises:
            TypeError/ValueError: a value is not convertible to float.
        """
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        values = {k: float(v) for k, v in metrics.items()}
        items = [Metric(k, v, now, int(step)) for k, v in values.items()]
        inf_tags = [RunTag(INF_TAG_PREFIX + k, "+inf" if v > 0 else "-inf") for k, v in values.items() if math.isinf(v)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])
        if inf_tags:
            self.client.log_batch(run_id, tags=inf_tags)

    def get_metrics(self, run_id: str) -> dict[str, float]:
        """Latest value of each metric of a run, with tagged infinities restored."""
        data = self.client.get_run(run_id).data
        out = dict(data.metrics)
        for tag, sign in data.tags.items():
            key = tag[len(INF_TAG_PREFIX) :]
            if tag.startswith(INF_TAG_PREFIX) and key in out and abs(out[key]) >= sys.float_info.max:
                out[key] = math.inf if sign == "+inf" else -math.inf
        return out

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one metric, sorted by step."""
        hist = self.client.get_metric_history(run_id, key)
        return sorted((m.step, m.value) for m in hist)

    def log_artifact(self, run_id: str, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file (or every file of a directory) to the run's artifacts."""
        if Path(local_path).is_dir():
            self.client.log_artifacts(run_id, str(local_path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(local_path), artifact_path)

    def log_model(
        self, run_id: str, name: str, *, flavor, step: int = 0, register_as: str | None = None, **flavor_args
    ) -> tuple[str, str | None]:
        """Log an MLflow model of ``flavor`` (a module such as ``mlflow.pyfunc``; ``flavor_args``
        go to its ``save_model``) as run ``run_id``'s logged model ``name``, linked to the run's
        metrics at ``step``; with ``register_as``, also as a new version of that registered model
        in this store's registry. Returns ``(model URI, registered version or None)``."""
        import warnings

        from mlflow.models import Model

        # MLflow files a logged model under the global experiment (Default, ./mlruns), not its
        # run's, unless told: the run's experiment for the block.
        experiment = {"MLFLOW_EXPERIMENT_ID": self.client.get_run(run_id).info.experiment_id}
        with self._as_global_store(), _environ(experiment, drop=("MLFLOW_EXPERIMENT_NAME",)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="An input example was not provided")
            info = Model.log(
                artifact_path=None,
                name=name,
                flavor=flavor,
                run_id=run_id,
                step=step,
                registered_model_name=register_as,
                **flavor_args,
            )
        version = info.registered_model_version
        return info.model_uri, None if version is None else str(version)

    def download(self, uri: str, dst: str | os.PathLike) -> Path:
        """Download a run, model or registered-model URI of this store (``runs:/RUN_ID/PATH``,
        ``models:/NAME/VERSION``, ``models:/MODEL_ID``) into ``dst``; -> the local path."""
        import mlflow.artifacts

        saved = os.environ.get(_PROGRESS_BAR)
        os.environ[_PROGRESS_BAR] = "false"  # no progress bar per file on the user's terminal
        try:
            with self._as_global_store():
                return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        finally:
            if saved is None:
                os.environ.pop(_PROGRESS_BAR, None)
            else:
                os.environ[_PROGRESS_BAR] = saved

    def _as_global_store(self):
        """MLflow's model logging and ``models:/`` URIs read the global tracking (and registry)
        URI: this store's, for the ``with`` block only."""
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        return _use_tracking_uri(self.uri)

    def set_tags(self, run_id: str, tags: dict) -> None:
        """Set (or overwrite) tags; values become strings."""
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, tags=items[i : i + _BATCH])

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark a run terminated with ``status`` (FINISHED, FAILED or KILLED).

        Raises:
            ValueError: an unknown status.
        """
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        self.client.set_terminated(run_id, status=status)

    def reopen_run(self, run_id: str) -> None:
        """Mark a terminated run RUNNING again (a resumed search continues its runs)."""
        self.client.update_run(run_id, status="RUNNING")

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Write ``text`` to the run's artifact ``artifact_file`` (e.g. ``search_job.yaml``)."""
        self.client.log_text(run_id, text, artifact_file)

    def read_text(self, run_id: str, artifact_file: str) -> str | None:
        """The text of one artifact file of a run, or None when the run has no such file."""
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory(prefix="unitune-artifact-") as tmp:
            try:
                local = self.client.download_artifacts(run_id, artifact_file, tmp)
            except (MlflowException, OSError):
                return None
            path = Path(local)
            return path.read_text() if path.is_file() else None

    def run_status(self, run_id: str) -> str:
        """MLflow status of a run: RUNNING, SCHEDULED, FINISHED, FAILED or KILLED."""
        return self.client.get_run(run_id).info.status

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def run_url(self, run_id: str) -> str:
        """A URL (server stores) or a short reference (local stores) for a run."""
        run = self.client.get_run(run_id)
        ref = f"#/experiments/{run.info.experiment_id}/runs/{run_id}"
        if is_server(self.uri):
            return redact(self.uri.rstrip("/")) + "/" + ref
        return ref


def tag_filter(tags: dict) -> str:
    """An MLflow ``filter_string`` matching runs whose tags equal ``tags`` (values quoted)."""
    return " and ".join(f"tags.`{k}` = '{_quote(str(v))}'" for k, v in tags.items())


def numeric(metrics: dict) -> dict[str, float]:
    """The entries of a report MLflow can log as metrics: numbers (not booleans), as floats."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def param_value(text: str):
    """An MLflow param (a string) back to the YAML scalar it was logged from; ``"None"`` (how
    ``str`` writes a null value, such as a space's fixed ``visual_trainable_layers: null``) is None."""
    if text == "None":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _param_str(value) -> str:
    # MLflow caps param values at 6000 characters.
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


@contextlib.contextmanager
def _environ(values: dict[str, str], drop: tuple[str, ...] = ()) -> Iterator[None]:
    """These environment variables set (and ``drop`` unset) for the block, restored after."""
    saved = {k: os.environ.get(k) for k in (*values, *drop)}
    os.environ.update(values)
    for key in drop:
        os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
