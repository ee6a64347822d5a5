"""``unitune train JOB``: one Ray Train ``TorchTrainer`` run, logged as one MLflow run.

The workers only report (``ray.train.report``); a Ray Train callback on the controller
(which Ray places on the driver's node) writes each report to MLflow as it arrives, so the
MLflow run fills in live and keeps what was logged if the run later fails.

The trained model is the run's MLflow model ``model`` (``unitune.pyfunc``: images and
captions in, embeddings out; the ``save_model`` directory inside it, stored once),
registered as a new version of ``tracking.register_as`` when set. The PyTorch object::

    from unitune.models import load_model
    model = load_model(f"runs:/{RUN_ID}/model", tracking_uri="sqlite:///mlruns.db")   # or models:/NAME/1
    tokens = model.tokenize(["a dog on a beach"])
    text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])   # [1, D]
    image = model.encode_image(model.image_transform(train=False)(pil_image)[None])
    video = model.encode_video(frames)                                          # [B, F, 3, H, W]
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ray.train import UserCallback

# The classes ray.train and ray.train.torch export under Ray Train v2 (the default; LoggingConfig
# and UserCallback exist only there): they pick them at import time, mypy sees the v1 ones.
from ray.train.v2.api.config import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.v2.torch.torch_trainer import TorchTrainer

from unitune import features, terminal, tracking
from unitune import tags as T
from unitune.choices import RETRIEVAL_METRIC_KEYS
from unitune.cluster import init_ray, shutdown_ray
from unitune.config import JobSpec
from unitune.errors import UserError, mask_uri, redact
from unitune.preflight import check_fits
from unitune.progress import StepProgress
from unitune.ranks import FILE as RANKS_FILE
from unitune.terminal import num, text_table
from unitune.tracking import Tracker
from unitune.train.loop import NonFiniteLossError
from unitune.train.worker import MODEL_DIR, train_loop_per_worker

STORAGE_DIR = ".unitune/ray"  # Ray Train checkpoints while a run lasts (relative to the cwd)
TABLE_KEYS = RETRIEVAL_METRIC_KEYS


def numeric(report: dict) -> dict[str, float]:
    """The metrics of a report (``tracking.numeric``) without ``epoch``: it is the MLflow step."""
    return tracking.numeric({k: v for k, v in report.items() if k != "epoch"})


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"margin": 0.2}}`` -> ``{"loss.margin": 0.2}`` (MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def epoch_line(report: dict, epochs: int) -> str:
    """``epoch 3/6: train loss 2.31, val rsum 301.2, 910 samples/s, 4.2 s``."""
    rsum = f"val rsum {num(report['rsum'])}" if "rsum" in report else "no validation"
    if "train_loss" not in report:  # epoch 0: the model before training
        return f"epoch 0/{epochs} (before training): {rsum}"
    return (
        f"epoch {report['epoch']}/{epochs}: train loss {report['train_loss']:.3f}, {rsum}, "
        f"{report.get('samples_per_s', float('nan')):.0f} samples/s, {num(report.get('epoch_time_s'))} s"
    )


class MlflowCallback(UserCallback):
    """Logs rank 0's report of each epoch to one MLflow run, with ``step = epoch``, and
    sends one line per epoch to the driver's terminal (``lines``: a step reporter)."""

    def __init__(self, tracker: Tracker, run_id: str, epochs: int, lines=None):
        self.tracker = tracker
        self.run_id = run_id
        self.epochs = epochs
        self.lines = lines

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        report = metrics[0]
        self.tracker.log_metrics(self.run_id, numeric(report), step=int(report["epoch"]))
        if self.lines is not None:
            self.lines.line(epoch_line(report, self.epochs))


def worker_config(job: JobSpec, *, evaluate_test: bool, save_model: bool = True, on_step=None) -> dict:
    """The ``train_loop_config`` of the trainer: the job as plain data (its paths are
    absolute already, so workers in their own run directories find the same files); epoch 0
    (the model before training) is reported first; ``on_step``: rank 0's step reporter."""
    return {
        "job": job.model_dump(mode="json"),
        "evaluate_test": evaluate_test,
        "save_model": save_model,
        "report_epoch_0": True,
        "on_step": on_step,
    }


def build_trainer(
    job: JobSpec,
    *,
    name: str,
    storage_path: str | os.PathLike,
    callbacks: list | None = None,
    evaluate_test: bool = True,
    save_model: bool = True,
    on_step=None,
) -> TorchTrainer:
    """One ``TorchTrainer`` with the job's resources, checkpoints and retry budget, for
    ``unitune train`` and for multi-worker search trials (``save_model=False``: their
    checkpoints hold the trainable state only).

    ``UNITUNE_*`` environment variables of this process are passed on to the workers.
    """
    res = job.resources
    per_worker = {"CPU": res.cpu_per_worker, **({"GPU": res.gpu_per_worker} if res.use_gpu else {})}
    env = {k: v for k, v in os.environ.items() if k.startswith("UNITUNE_")}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_config(job, evaluate_test=evaluate_test, save_model=save_model, on_step=on_step),
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()),
            failure_config=FailureConfig(max_failures=job.train.max_failures),
            # Only the latest checkpoint is needed to resume; the model goes to MLflow.
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=callbacks or [],
            # Ray Train's per-report INFO lines repeat every metric; the callback prints one line.
            logging_config=LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )


def format_table(metrics: dict) -> str:
    """Final metrics: one row per retrieval metric, validation and (if present) test."""

    def cell(value) -> str:
        return "-" if value is None else f"{value:.2f}" if math.isfinite(value) else str(value)

    prefixes = {"val": "", "test": "test_"}
    if any(key.startswith("test_folds_") for key in metrics):
        prefixes["test fold mean"] = "test_folds_"  # data.test_folds (COCO 1K)
    rows = [
        [key, *(cell(metrics.get(prefix + key)) for prefix in prefixes.values())]
        for key in TABLE_KEYS
        if key in metrics or f"test_{key}" in metrics
    ]
    table = text_table(["metric", *prefixes], rows, [False] + [True] * len(prefixes))
    summary = (
        f"epochs {num(metrics.get('epoch'))}, train loss {num(metrics.get('train_loss'))}, "
        f"train time {num(metrics.get('train_time_s'))} s"
    )
    return "\n".join([table, summary])


def worker_user_error(exc: Exception) -> UserError | None:
    """A one-line ``UserError`` for a run that failed because of the job, else None.

    Workers raise ``UserError`` (bad data, unsupported setting) or ``NonFiniteLossError``
    (the loss diverged under these hyperparameters); Ray wraps them in a
    ``WorkerGroupError`` with the remote traceback, which the user does not need. A job
    error that :class:`NoRetryOfJobErrors` stopped reaches the driver as the controller's
    failure (``ControllerError.controller_failure``), already one line.
    """
    if isinstance(exc, NonFiniteLossError):  # raised in this process (``unitune.train.runs``)
        return UserError(f"training failed: {str(exc).splitlines()[0]}")
    if isinstance(getattr(exc, "controller_failure", None), UserError):
        return exc.controller_failure  # type: ignore[attr-defined]
    return job_error(getattr(exc, "worker_failures", {}))


def job_error(failures: Mapping[int, BaseException]) -> UserError | None:
    """The first job error among the workers' failures (by rank) as one line, else None."""
    for rank, failure in sorted(failures.items()):
        if isinstance(failure, (UserError, NonFiniteLossError)):
            cause = failure.args[0] if failure.args else str(failure)
            return UserError(f"training failed on worker {rank}: {str(cause).splitlines()[0]}")
    return None


class NoRetryOfJobErrors(UserCallback):
    """A job error on any worker ends the run at once: training it again from the last
    checkpoint fails the same way (``train.max_failures`` is for workers that died).

    Ray Train calls this on the controller when workers raised, before its failure policy
    decides; an error raised here is the controller's own, which Ray does not retry.
    """

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        error = job_error(worker_exceptions)
        if error is not None:
            raise error


def train(job: JobSpec, *, storage_path: str | os.PathLike = STORAGE_DIR, out=print) -> dict:
    """Run ``job`` on Ray Train and log it as one MLflow run; print the final table.

    Returns:
        The last epoch's metrics (validation keys and ``test_*`` keys) plus ``run_id`` and
        ``model_uri``.

    Raises:
        UserError: the MLflow store or the Ray cluster cannot be reached, or the job is
            wrong in a way only the workers see (their error is re-raised).
        ray.train.TrainingFailedError: a worker failed more than ``train.max_failures``
            times. The MLflow run is then FAILED (KILLED on Ctrl-C), never left RUNNING.
    """
    tracker = checked_tracker(job)
    # Ray before the MLflow run: an unreachable cluster leaves no failed run behind. The
    # workers' and the controller's output stays in Ray's logs: the driver prints the epochs.
    started_ray = init_ray(job.ray.address)
    terminal.adopt_library_loggers()
    try:
        with terminate_as_interrupt():
            return train_on_ray(tracker, job, tags={}, log_model=True, storage_path=storage_path, out=out)
    finally:
        if started_ray:
            shutdown_ray()


def checked_tracker(job: JobSpec) -> Tracker:
    """The job's tracker, its store and the feature cache checked before Ray starts."""
    tracker = Tracker(job.tracking.uri, job.tracking.artifact_location)
    tracker.check(job.ray.address, job.experiment)
    features.check(job)  # cache refusals before Ray starts
    return tracker


def train_on_ray(
    tracker: Tracker,
    job: JobSpec,
    *,
    tags: Mapping[str, str],
    log_model: bool,
    storage_path: str | os.PathLike = STORAGE_DIR,
    out=print,
) -> dict:
    """One ``TorchTrainer`` fit of ``job`` (Ray initialised) recorded as one MLflow run
    tagged ``tags`` from its start; see :func:`train`."""
    check_fits(job, job.ray.address)
    cache = features.prepare(job, splits=("train", "val", "test"))  # once, before the run
    with recorded_run(tracker, job, tags, cache) as run_id:
        name = f"{job.name}-{run_id}"
        steps = StepProgress(job.train.epochs)
        trainer = build_trainer(
            job,
            name=name,
            storage_path=storage_path,
            on_step=steps.reporter,
            callbacks=[MlflowCallback(tracker, run_id, job.train.epochs, steps.reporter), NoRetryOfJobErrors()],
        )
        with steps, terminal.to_log():
            result = trainer.fit()
        checkpoint, metrics = result.checkpoint, result.metrics
        if checkpoint is None or metrics is None:  # the workers report both (unitune.train.worker)
            raise RuntimeError(f"the training run {name} ended without a checkpoint and metrics")
        with checkpoint.as_directory() as directory:
            model_uri = log_outputs(tracker, run_id, job, Path(directory), metrics, log_model=log_model)
        # The model is in MLflow now; the resume checkpoints of a finished run are not needed.
        shutil.rmtree(Path(storage_path) / name, ignore_errors=True)
        print_outcome(tracker, run_id, job, metrics, model_uri, out)
        return {**metrics, "run_id": run_id, "model_uri": model_uri}


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``unitune stop``, a scheduler) takes Ctrl-C's path while the block runs, so
    the run it stops ends KILLED instead of RUNNING. Only where SIGTERM has its default
    action (a caller's own handler stays) and in the main thread (Python delivers signals there)."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def recorded_run(tracker: Tracker, job: JobSpec, tags: Mapping[str, str], cache: dict | None) -> Iterator[str]:
    """The MLflow run of one training: created tagged ``tags`` (a study finds its runs by
    them, finished or not), with the job's params, the job file and the feature cache's
    cost; ended FINISHED when the block returns, KILLED on Ctrl-C / SIGTERM (re-raised as
    KeyboardInterrupt), FAILED with the error tag otherwise (a job error from the workers
    re-raised as one ``UserError`` line). Never left RUNNING."""
    source = {T.SOURCE_RUN: job.tracking.source_run} if job.tracking.source_run else {}
    run_id = tracker.start_run(job.experiment, run_name=f"train-{job.name}", tags={T.KIND: "train", **source, **tags})
    status = "FAILED"
    try:
        if cache is not None and cache["feature_cache_dir"] is not None:
            tracker.log_metrics(
                run_id, {"feature_cache_s": cache["feature_cache_s"], "feature_cache_bytes": cache["bytes"]}, step=0
            )
        # Params are shown to everyone who opens the run: credentials in URIs masked.
        tracker.log_params(
            run_id, {k: redact(v) if isinstance(v, str) else v for k, v in flatten(job.model_dump(mode="json")).items()}
        )
        if job.source is not None:
            tracker.log_artifact(run_id, job.source)
        yield run_id
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise KeyboardInterrupt from None
    except Exception as exc:
        tracker.set_tags(run_id, {T.ERROR: f"{type(exc).__name__}: {exc}"[:5000]})
        user_error = worker_user_error(exc)
        if user_error is not None:
            raise user_error from None  # the job's mistake in one line, no Ray traceback
        raise
    finally:
        tracker.end_run(run_id, status)


def log_outputs(
    tracker: Tracker, run_id: str, job: JobSpec, directory: Path, metrics: dict, *, log_model: bool
) -> str | None:
    """Log the last checkpoint's trained model (``directory/model``) on the run, once: with
    ``log_model`` as the MLflow model ``model`` around it (registered as
    ``tracking.register_as`` when set), else as the plain artifact ``model``. Either way
    ``runs:/RUN_ID/model`` names it (``unitune eval --run``, ``load_model``). Also the test
    split's per-query ranks (``test_ranks.csv``, when the run evaluated it).

    Returns:
        The MLflow model's URI (``models:/NAME/VERSION`` when registered), else None.
    """
    if (directory / RANKS_FILE).is_file():  # the test split's per-query ranks (unitune.ranks)
        tracker.log_artifact(run_id, directory / RANKS_FILE)
    if not log_model:
        tracker.log_artifact(run_id, directory / MODEL_DIR, MODEL_DIR)
        return None
    from unitune import pyfunc  # mlflow.pyfunc: only when the MLflow model is logged

    with contextlib.redirect_stderr(terminal.log_stream()):  # MLflow's registration lines
        model_uri, version = pyfunc.log(
            tracker, run_id, directory / MODEL_DIR, step=int(metrics["epoch"]), register_as=job.tracking.register_as
        )
    return f"models:/{job.tracking.register_as}/{version}" if version else model_uri


def print_outcome(tracker: Tracker, run_id: str, job: JobSpec, metrics: dict, model_uri: str | None, out) -> None:
    """The final table, the run's address and the model's URI."""
    out(format_table(metrics))
    out(f"MLflow run {run_id} ({tracker.run_url(run_id)}) in {mask_uri(tracker.uri)}")
    if model_uri is not None:
        registered = job.tracking.register_as is not None  # then pyfunc.log returned its version
        out(
            f"model: {model_uri} (mlflow.pyfunc.load_model; "
            + ("registered" if registered else "register it with --register NAME")
            + ")"
        )
