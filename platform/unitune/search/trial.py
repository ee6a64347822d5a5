"""One Ray Tune trial: train a sampled config and log it to its MLflow child run.

A one-worker trial runs the training loop inside the trial process
(``unitune.train.run_training``): no Ray Train start-up, a few seconds of overhead. A
trial with several workers fits a ``TorchTrainer`` whose results reach Tune through
``TuneReportCallback``; the trial process itself reserves 0 CPU, so a 2-worker trial fits
a 2-CPU machine.

Each epoch is logged to MLflow (``step = epoch``) *before* it is reported to Tune: Tune
may stop the trial at that report (ASHA), and nothing after it is logged. The terminal
state of a run (tags, convergence speed, MLflow status) is written by
:func:`finalize_trial`, which the driver calls for every trial however it ended.

Resume: each epoch's checkpoint goes to Tune with its report, and a restarted trial (a
retry after its process died, or a resumed search) continues from ``tune.get_checkpoint()``.
MLflow is the record of what happened: epochs it already holds are not logged again (a
trial restarted from an older checkpoint recomputes them), and a trial whose run already
ended (completed, stopped by ASHA, failed) is not trained again: it only repeats its last
result to Tune, or its error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from unitune.config import JobSpec, apply_overrides
from unitune.search.convergence import convergence_summary
from unitune.tracking import Tracker

SEARCH_TAG = "unitune.search_id"
TRIAL_TAG = "unitune.trial_id"
ROLE_TAG = "unitune.role"          # "search" (parent) or "trial" (child)
STATE_TAG = "unitune.state"        # running | completed | stopped_by_asha | failed | interrupted
STOP_EPOCH_TAG = "unitune.stopped_at_epoch"
ERROR_TAG = "unitune.error"
STATUS_OF_STATE = {"completed": "FINISHED", "stopped_by_asha": "KILLED",
                   "failed": "FAILED", "interrupted": "KILLED"}
DONE_STATES = ("completed", "stopped_by_asha", "failed")   # a run in these is never trained again
TIME_KEY = "train_time_s"
EPOCH_KEY = "epoch"
BASE_JOB_ARTIFACT = "search_job.yaml"  # the parent run's copy of the trials' base job (export reads it)


class TrialFailedBefore(RuntimeError):
    """A retried trial whose MLflow run already failed: its error, raised again at once."""


@dataclass
class TrialSetup:
    """What every trial of one search shares (sent once through the Ray object store).

    ``job`` already carries the search's budget (``train.epochs = asha.max_epochs``);
    ``objectives`` are ``[(metric, mode), ...]``, the first being the study metric.
    ``train_fn`` replaces ``unitune.train.run_training`` (same signature) in tests.
    """

    job: JobSpec
    tracker: Tracker
    experiment: str
    search_id: str
    parent_run_id: str
    objectives: list[tuple[str, str]]
    target: float | None
    storage_path: str
    train_fn: Callable | None = None

    @property
    def metric(self) -> str:
        return self.objectives[0][0]

    @property
    def mode(self) -> str:
        return self.objectives[0][1]


def child_run(setup: TrialSetup, trial_id: str, config: dict) -> str:
    """The MLflow child run of ``trial_id``: found again by its tags, else created.

    Params are the sampled values (``config``), logged once (identical re-logs are allowed).
    """
    tags = {SEARCH_TAG: setup.search_id, TRIAL_TAG: trial_id}
    run_id = setup.tracker.find_run(setup.experiment, tags)
    if run_id is None:
        run_id = setup.tracker.start_run(
            setup.experiment, f"{setup.search_id}-{trial_id}",
            tags={**tags, ROLE_TAG: "trial", STATE_TAG: "running"}, parent_run_id=setup.parent_run_id,
        )
    if config:
        setup.tracker.log_params(run_id, config)
    return run_id


def reopen_child_run(setup: TrialSetup, trial_id: str, config: dict) -> tuple[str, dict]:
    """The child run of a trial that (re)starts: ``(run_id, tags)``; a run an interrupted
    search closed is RUNNING again, a run that already ended is left as it is."""
    run_id = child_run(setup, trial_id, config)
    tags = setup.tracker.run_tags(run_id)
    if tags.get(STATE_TAG) not in DONE_STATES:
        if setup.tracker.run_status(run_id) != "RUNNING":
            setup.tracker.reopen_run(run_id)
        if tags.get(STATE_TAG) != "running":
            setup.tracker.set_tags(run_id, {STATE_TAG: "running"})
    return run_id, tags


def last_logged_epoch(tracker: Tracker, run_id: str) -> int:
    """The highest epoch a run has logged (0 when none)."""
    return max((int(step) for step, _ in tracker.metric_history(run_id, EPOCH_KEY)), default=0)



def progress(setup: TrialSetup, curve: list[dict]) -> dict:
    """Convergence speed so far, added to every Tune result (a Pareto objective such as
    ``epochs_to_target`` must be in the result ASHA stops a trial at)."""
    return convergence_summary(curve, setup.metric, setup.mode, setup.target, TIME_KEY)


def numeric(metrics: dict) -> dict[str, float]:
    """The numeric entries of a result (what MLflow can log)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def error_message(exc: BaseException) -> str:
    """One line for a failed trial: the innermost error line of a (Ray-wrapped) exception."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[-1] if len(lines) > 1 else f"{type(exc).__name__}: {lines[0]}"
    return text[:500]


def run_trial(config: dict, setup: TrialSetup) -> None:
    """Tune function trainable: train ``setup.job`` with the sampled ``config`` applied.

    Raises whatever training raised (Tune marks the trial failed) after tagging the run
    ``unitune.state=failed`` with the error message.
    """
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    run_id, tags = reopen_child_run(setup, trial_id, config)
    if tags.get(STATE_TAG) == "failed":
        raise TrialFailedBefore(tags.get(ERROR_TAG) or "failed before")
    if tags.get(STATE_TAG) in DONE_STATES:
        _repeat_last_result(setup, run_id)
        return
    try:
        job = apply_overrides(setup.job, config)
        if job.resources.num_workers == 1:
            _train_in_process(setup, job, run_id)
        else:
            _train_with_torch_trainer(setup, job, run_id, trial_id)
    except Exception as exc:
        # SystemExit (Tune stopping the trial at a report) is not an Exception: not a failure.
        # A process killed from outside never gets here: Tune retries the trial (FailureConfig).
        setup.tracker.set_tags(run_id, {STATE_TAG: "failed", ERROR_TAG: error_message(exc)})
        raise


def _repeat_last_result(setup: TrialSetup, run_id: str) -> None:
    """Report a finished run's last logged epoch to Tune again (nothing is trained)."""
    from ray import tune

    curve = read_curve(setup.tracker, run_id, [m for m, _ in setup.objectives])
    if curve:
        tune.report({**curve[-1], **progress(setup, curve)})


def _train_in_process(setup: TrialSetup, job: JobSpec, run_id: str) -> None:
    from ray import tune

    if setup.train_fn is None:
        from unitune.train import run_training as train_fn
    else:
        train_fn = setup.train_fn
    logged = last_logged_epoch(setup.tracker, run_id)
    checkpoint = tune.get_checkpoint()
    curve: list[dict] = read_curve(setup.tracker, run_id, [setup.metric]) if logged else []

    def report(metrics: dict, checkpoint_dir: str | None = None) -> None:
        values = numeric(metrics)
        epoch = int(values[EPOCH_KEY])
        curve[:] = [r for r in curve if r["epoch"] < epoch] + [values]
        if epoch > logged:  # an epoch recomputed after a restart is in MLflow already
            setup.tracker.log_metrics(run_id, values, step=epoch)
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report({**values, **progress(setup, curve)}, checkpoint=ckpt)

    if checkpoint is None:
        train_fn(job, report=report)
        return
    with checkpoint.as_directory() as directory:
        train_fn(job, report=report, resume_from=directory)


def _train_with_torch_trainer(setup: TrialSetup, job: JobSpec, run_id: str, trial_id: str) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from unitune.train import train_loop_per_worker

    res = job.resources
    per_worker = {"CPU": res.cpu_per_worker, **({"GPU": res.gpu_per_worker} if res.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump(mode="json"), "trial_id": trial_id},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"{setup.search_id}-{trial_id}", storage_path=setup.storage_path,
            callbacks=[_logging_report_callback(setup, run_id)],
            failure_config=FailureConfig(max_failures=job.train.max_failures),
        ),
    )
    trainer.fit()


def _logging_report_callback(setup: TrialSetup, run_id: str):
    """A ``TuneReportCallback`` that first logs rank 0's metrics to the MLflow run."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class LoggingTuneReportCallback(TuneReportCallback):
        def __init__(self):
            super().__init__()
            self.curve: list[dict] = []
            self.logged = 0

        def after_report(self, run_context, metrics, checkpoint):
            values = numeric(metrics[0])
            epoch = int(values[EPOCH_KEY])
            if not self.curve:  # first report of this process: what MLflow holds already
                self.logged = last_logged_epoch(setup.tracker, run_id)
                self.curve = read_curve(setup.tracker, run_id, [setup.metric]) if self.logged else []
            self.curve = [r for r in self.curve if r["epoch"] < epoch] + [values]
            # After an ASHA stop the workers may run an epoch or two more: keep the
            # closed run as the driver left it. Epochs recomputed after a worker restart
            # (Train resumes from the last checkpoint) are in MLflow already.
            if epoch > self.logged and setup.tracker.run_status(run_id) == "RUNNING":
                setup.tracker.log_metrics(run_id, values, step=epoch)
            metrics = [{**values, **progress(setup, self.curve)}, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return LoggingTuneReportCallback()


def read_curve(tracker: Tracker, run_id: str, keys: list[str]) -> list[dict]:
    """Per-epoch results of a run as logged to MLflow: ``[{"epoch": e, key: value}, ...]``."""
    by_epoch: dict[int, dict] = {}
    for key in dict.fromkeys([*keys, TIME_KEY]):
        for step, value in tracker.metric_history(run_id, key):
            by_epoch.setdefault(step, {"epoch": step})[key] = value
    return [by_epoch[e] for e in sorted(by_epoch) if e >= 1]


def finalize_trial(setup: TrialSetup, run_id: str, state: str, *, stop_epoch: int | None = None,
                   error: str | None = None) -> dict[str, float]:
    """Write a trial's terminal state: convergence speed, state tags, MLflow status.

    Args:
        state: completed, stopped_by_asha, failed or interrupted.
        stop_epoch: the last epoch Tune saw (later epochs are ignored).
        error: the reason of a failed trial (kept if the trial already tagged one).

    Returns:
        The convergence metrics logged (see ``convergence_summary``).
    """
    curve = read_curve(setup.tracker, run_id, [setup.metric])
    if stop_epoch is not None:
        curve = [r for r in curve if r["epoch"] <= stop_epoch]
    conv = progress(setup, curve)
    last_epoch = int(curve[-1]["epoch"]) if curve else 0
    setup.tracker.log_metrics(run_id, conv, step=last_epoch)
    tags = {STATE_TAG: state, "unitune.epochs_run": last_epoch}
    if state == "stopped_by_asha":
        tags[STOP_EPOCH_TAG] = stop_epoch if stop_epoch is not None else last_epoch
    if state == "failed":
        tags[ERROR_TAG] = setup.tracker.run_tags(run_id).get(ERROR_TAG) or error or "unknown error"
    setup.tracker.set_tags(run_id, tags)
    setup.tracker.end_run(run_id, STATUS_OF_STATE[state])
    return conv


def trial_resources(job: JobSpec) -> dict:
    """Resources of the trial process: a one-worker trial trains in it; a multi-worker
    trial only waits on its ``TorchTrainer`` (0 CPU, else 2 workers deadlock on 2 CPUs)."""
    res = job.resources
    if res.num_workers == 1:
        return {"cpu": res.cpu_per_worker, "gpu": res.gpu_per_worker if res.use_gpu else 0}
    return {"cpu": 0, "memory": 512 * 1024 ** 2}

