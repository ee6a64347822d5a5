"""One Ray Tune trial: train a sampled config and report each epoch to Tune.

A trial writes nothing to the record: the driver's :class:`unitune.search.record.Recorder`
logs what the trial reports (one writer). A one-worker trial runs the training loop inside
the trial process (``unitune.train.run_training``): no Ray Train start-up. A trial with
several workers fits a ``TorchTrainer`` (the builder ``unitune train`` uses) whose rank-0
reports reach Tune through ``TuneReportCallback``; the trial process itself reserves 0 CPU,
so a 2-worker trial fits a 2-CPU machine.

Each report carries the epoch's metrics plus the convergence summary so far (a Pareto
objective such as ``epochs_to_target`` must be in the result ASHA stops a trial at) and,
for a one-worker trial, that epoch's checkpoint. A restarted trial (a retry after its
process died, or a resumed search) continues from ``tune.get_checkpoint()``; a trial whose
record is already final only repeats its last logged result.

A trial process on another node of a cluster does not inherit the driver's environment: the
driver's ``UNITUNE_*`` variables (the absolute feature cache directory of ``data.feature_cache:
auto`` among them, see ``unitune.features``) travel in :class:`TrialSetup` and are set in the
trial process before it trains, so every node caches in the directory the driver resolved.

A mistake of the job (``UserError``) or a diverged loss is not retried: the trial reports
one last result with :data:`FAILED_KEY` holding the one-line reason and returns; Tune's
retries stay for processes that died.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from unitune import tags as T
from unitune.config import JobSpec, apply_overrides
from unitune.errors import UserError
from unitune.record import Record, Role
from unitune.search.convergence import convergence_summary
from unitune.tracking import Tracker, numeric

TIME_KEY = "train_time_s"
EPOCH_KEY = "epoch"
FAILED_KEY = "unitune_error"  # a trial's last report when the job itself failed
NODE_KEY = "ray_node_id"  # the Ray node a one-worker trial's report comes from


@dataclass
class TrialSetup:
    """What every trial of one search shares (sent once through the Ray object store).

    ``job`` already carries the search's budget (``train.epochs = asha.max_epochs``);
    ``objectives`` are ``[(metric, mode), ...]``, the first being the study metric.
    ``train_fn`` replaces ``unitune.train.run_training`` (same signature) in tests.
    ``env``: the driver's ``UNITUNE_*`` environment variables (see the module docstring).
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
    on_step: Callable | None = None  # the driver's step reporter (a search of one trial at a time)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.objectives[0][0]

    @property
    def mode(self) -> str:
        return self.objectives[0][1]


def progress(setup: TrialSetup, curve: list[dict]) -> dict:
    """Convergence speed of ``curve`` over the search's epoch budget."""
    return convergence_summary(curve, setup.metric, setup.mode, setup.target, TIME_KEY, budget=setup.job.train.epochs)


def error_message(exc: BaseException) -> str:
    """One line for a failed trial: the innermost error line of a (Ray-wrapped) exception."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[-1] if len(lines) > 1 else f"{type(exc).__name__}: {lines[0]}"
    return text[:500]


def read_curve(tracker: Tracker, run_id: str, keys: list[str]) -> list[dict]:
    """Per-epoch results of a run as logged to MLflow, epoch 0 included:
    ``[{"epoch": e, key: value}, ...]``."""
    by_epoch: dict[int, dict] = {}
    for key in dict.fromkeys([*keys, TIME_KEY]):
        for step, value in tracker.metric_history(run_id, key):
            by_epoch.setdefault(step, {"epoch": step})[key] = value
    return [by_epoch[e] for e in sorted(by_epoch) if e >= 0]


def _is_job_error(exc: BaseException) -> bool:
    from unitune.train.loop import NonFiniteLossError  # torch: in the trial process only

    if isinstance(exc, (UserError, NonFiniteLossError)):
        return True
    failures = getattr(exc, "worker_failures", None) or {}
    return any(isinstance(f, (UserError, NonFiniteLossError)) for f in failures.values())


def run_trial(config: dict, setup: TrialSetup) -> None:
    """Tune function trainable: train ``setup.job`` with the sampled ``config`` applied.

    Raises whatever training raised, except a job error (see the module docstring); Tune
    retries a raised error up to ``train.max_failures`` times.
    """
    from ray import tune

    os.environ.update(setup.env)
    trial_id = tune.get_context().get_trial_id()
    tracker = setup.tracker
    found = Record(tracker).run(setup.experiment, Role.TRIAL, {T.SEARCH: setup.search_id, T.TRIAL: trial_id})
    run_id = found.run_id if found is not None else None
    curve = read_curve(tracker, run_id, [m for m, _ in setup.objectives]) if run_id else []
    if found is not None and found.state is not None and found.state.done:
        if curve:  # its record is final (closed before the driver was killed): nothing to train
            tune.report({**curve[-1], **progress(setup, curve)})
        return
    try:
        job = apply_overrides(setup.job, config)
        if job.resources.num_workers == 1:
            _train_in_process(setup, job, curve)
        else:
            _train_with_torch_trainer(setup, job, trial_id)
    except Exception as exc:
        if not _is_job_error(exc):
            raise
        last = curve[-1]["epoch"] if curve else 0
        worst = -math.inf if setup.mode == "max" else math.inf
        tune.report({EPOCH_KEY: last, FAILED_KEY: error_message(exc), **{m: worst for m, _ in setup.objectives}})


def _train_in_process(setup: TrialSetup, job: JobSpec, curve: list[dict]) -> None:
    import ray
    from ray import tune

    if setup.train_fn is None:
        from unitune.train import run_training as train_fn  # torch: in the trial process only
    else:
        train_fn = setup.train_fn
    checkpoint = tune.get_checkpoint()

    node = ray.get_runtime_context().get_node_id()

    def report(metrics: dict, checkpoint_dir: str | None = None) -> None:
        values = numeric(metrics)
        epoch = int(values[EPOCH_KEY])
        curve[:] = [r for r in curve if r["epoch"] < epoch] + [values]
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report({**values, **progress(setup, curve), NODE_KEY: node}, checkpoint=ckpt)

    # A trial's checkpoint holds what its resume needs: the trainable state, not the model.
    kwargs = {"save_final_model": False, "on_step": setup.on_step} if setup.train_fn is None else {}
    if checkpoint is None:
        train_fn(job, report=report, **kwargs)
        return
    with checkpoint.as_directory() as directory:
        train_fn(job, report=report, resume_from=directory, **kwargs)


def _train_with_torch_trainer(setup: TrialSetup, job: JobSpec, trial_id: str) -> None:
    from unitune.train.run import build_trainer  # torch and Ray Train: in the trial process only

    trainer = build_trainer(
        job,
        name=f"{setup.search_id}-{trial_id}",
        storage_path=setup.storage_path,
        callbacks=[progress_report(setup)],
        evaluate_test=False,
        save_model=False,
        on_step=setup.on_step,
    )
    trainer.fit()


def progress_report(setup: TrialSetup):
    """A Ray Train callback forwarding rank 0's reports to Tune (a ``TuneReportCallback``)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ProgressReport(TuneReportCallback):
        """Forwards rank 0's report to Tune with the convergence summary so far."""

        def __init__(self, setup: TrialSetup):
            super().__init__()
            self.setup = setup
            self.curve: list[dict] = []

        def after_report(self, run_context, metrics, checkpoint):
            values = numeric(metrics[0])
            epoch = int(values[EPOCH_KEY])
            self.curve = [r for r in self.curve if r["epoch"] < epoch] + [values]
            metrics = [{**values, **progress(self.setup, self.curve)}, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return ProgressReport(setup)


def trial_resources(job: JobSpec) -> dict:
    """Resources of the trial process: a one-worker trial trains in it; a multi-worker
    trial only waits on its ``TorchTrainer`` (0 CPU, else 2 workers deadlock on 2 CPUs)."""
    res = job.resources
    if res.num_workers == 1:
        return {"cpu": res.cpu_per_worker, "gpu": res.gpu_per_worker if res.use_gpu else 0}
    return {"cpu": 0, "memory": 512 * 1024**2}
