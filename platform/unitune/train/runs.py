"""Several training runs in one call, each its own MLflow run: a study's final runs.

``train_runs(jobs, tags=...)`` records every job as ``unitune train`` does (params, the job
file, each epoch from 0, the test metrics and per-query ranks, the model), tagged from the
moment its run is created, so a study that is stopped finds its finished runs by tags on
``--resume`` and a stopped run reads KILLED, a failed one FAILED with ``unitune.error``.
The model is the plain ``model`` artifact, or with ``log_model=True`` the MLflow model
(the pyfunc, ``unitune.pyfunc``) holding it.

A run's cost should be its epochs. A one-worker job on a Ray of this machine alone trains
in this process (``run_training``, as a one-worker search trial does): no Ray Train
controller and worker processes to start, no second model build for the feature cache (the
worker loads its entries, building any that are missing; the run logs the worker's
``feature_cache_s`` at epoch 0, not the driver's ``feature_cache_bytes``). Other jobs (see
:func:`in_process`) fit a ``TorchTrainer`` each, as ``unitune train`` does.
``benchmarks/bench_final_runs.py`` measures what a run costs beyond its epochs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from unitune.cluster import init_ray, shutdown_ray
from unitune.config import JobSpec
from unitune.stores import is_remote_address
from unitune.tracking import Tracker
from unitune.train.run import (
    checked_tracker,
    epoch_line,
    log_outputs,
    numeric,
    print_outcome,
    recorded_run,
    terminate_as_interrupt,
    train_on_ray,
)


def train_runs(
    jobs: Sequence[JobSpec], *, tags: Sequence[Mapping[str, str]], log_model: bool = False, out=print
) -> list[dict]:
    """Train each job and record it as one MLflow run tagged with its ``tags`` (in order).

    Returns:
        Per job, what ``unitune.train.run.train`` returns: the last epoch's metrics
        (``test_*`` keys included), ``run_id`` and ``model_uri`` (None without
        ``log_model``).

    Raises:
        ValueError: ``tags`` and ``jobs`` differ in length.
        UserError, KeyboardInterrupt, ...: as ``train`` (the runs before stay recorded).
    """
    if len(tags) != len(jobs):
        raise ValueError(f"train_runs: {len(jobs)} jobs but {len(tags)} tag sets")
    results: list[dict] = []
    with terminate_as_interrupt():
        for job, job_tags in zip(jobs, tags, strict=True):
            results.append(_train_one(job, job_tags, log_model, out))
    return results


def _train_one(job: JobSpec, tags: Mapping[str, str], log_model: bool, out) -> dict:
    tracker = checked_tracker(job)
    if in_process(job):
        return train_here(tracker, job, tags=tags, log_model=log_model, out=out)
    started_ray = init_ray(job.ray.address)
    try:
        return train_on_ray(tracker, job, tags=tags, log_model=log_model, out=out)
    finally:
        if started_ray:
            shutdown_ray()


def in_process(job: JobSpec) -> bool:
    """Train ``job`` here: one worker, Ray on this machine alone (``ray.address`` null, a
    loopback address or ``local``), and the GPU it asks for is here. ``auto`` (the cluster
    this machine is part of, e.g. a submitted study on its head node) and remote clusters
    hold the resources the job asks for on their own nodes: Ray Train places the run there."""
    address = job.ray.address
    if job.resources.num_workers != 1 or address == "auto" or is_remote_address(address):
        return False
    if job.resources.use_gpu:
        import torch

        return torch.cuda.is_available()  # else Ray Train refuses it in one line (check_fits)
    return True


def train_here(tracker: Tracker, job: JobSpec, *, tags: Mapping[str, str], log_model: bool, out=print) -> dict:
    """``job`` trained in this process (``run_training``), recorded as ``unitune train``
    records a run: each epoch logged as it is reported, the model from the last checkpoint."""
    import torch

    from unitune.train.worker import run_training  # Ray Train and the data layer: only to train here

    threads = torch.get_num_threads()  # run_training sets the job's; this process keeps its own
    with recorded_run(tracker, job, tags, None) as run_id, tempfile.TemporaryDirectory(prefix="unitune-run-") as tmp:

        def report(metrics: dict, directory: str | None) -> None:
            tracker.log_metrics(run_id, numeric(metrics), step=int(metrics["epoch"]))
            out(epoch_line(metrics, job.train.epochs))

        try:
            metrics = run_training(job, report=report, checkpoint_dir=tmp, evaluate_test=True)
        finally:
            torch.set_num_threads(threads)
        model_uri = log_outputs(tracker, run_id, job, Path(tmp), metrics, log_model=log_model)
        print_outcome(tracker, run_id, job, metrics, model_uri, out)
        return {**metrics, "run_id": run_id, "model_uri": model_uri}
