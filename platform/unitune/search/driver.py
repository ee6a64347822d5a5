"""``unitune search``: Ray Tune + Optuna (TPE) + ASHA over a job, one MLflow run per trial.

    run_search(job, space) -> SearchResult

Names are deterministic: the search id is ``<job name>-<hash of job and space>`` (``-2``,
``-3``... for later searches of the same job and space), Tune trial ids are kept across a
resume, so the same command with ``--resume`` after an interruption (Ctrl-C, a killed
driver) continues the newest unfinished search from Ray Tune's saved state and finds the
same MLflow runs. The Optuna study (study name = search id) lives in an RDB storage next to the
MLflow store (``optuna.db``), so ``optuna-dashboard sqlite:///optuna.db`` opens it and
``warm_start=<search id>`` seeds a later search with its completed trials.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import optuna
import yaml

from unitune import cluster
from unitune.config import JobSpec, SearchSpaceSpec, apply_overrides
from unitune.errors import UserError
from unitune.search.live import SearchCallback, StopTaggingASHA
from unitune.search.report import write_artifacts, summarize
from unitune.search.space import distribution, make_searcher
from unitune.search.trial import (
    BASE_JOB_ARTIFACT, ROLE_TAG, SEARCH_TAG, STATE_TAG, TrialSetup, finalize_trial, run_trial, trial_resources,
)
from unitune.tracking import Tracker

TUNE_DIR = ".unitune/tune"   # Tune experiment state, relative to the working directory


@dataclass
class SearchResult:
    search_id: str
    parent_run_id: str
    experiment: str
    summary: dict
    resumed: bool


def search_key(job: JobSpec, space: SearchSpaceSpec) -> str:
    """8 hex digits identifying what is searched (the job and the space, not the file names)."""
    payload = json.dumps([job.model_dump(mode="json"), space.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:8]


def optuna_storage_url(tracking_uri: str) -> str:
    """``sqlite:///<dir>/optuna.db`` beside a sqlite/file MLflow store, else in the cwd."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        return "sqlite:///" + str(Path(tracking_uri[len("sqlite:///"):]).parent / "optuna.db")
    if parsed.scheme == "file":
        return "sqlite:///" + str(Path(parsed.path).parent / "optuna.db")
    return "sqlite:///" + str(Path.cwd() / "optuna.db")


def search_job(job: JobSpec, space: SearchSpaceSpec) -> JobSpec:
    """The base job of every trial: the space's fixed values, the ASHA budget as epochs."""
    overrides = dict(space.fixed)
    if space.asha is not None and space.asha.max_epochs is not None:
        overrides["train.epochs"] = space.asha.max_epochs
    return apply_overrides(job, overrides) if overrides else job


def init_ray(address: str | None) -> None:
    """Connect to ``address`` or start a local Ray on 127.0.0.1 (see ``unitune.cluster``).

    Raises:
        UserError: the cluster cannot be reached (names the address).
    """
    # No TensorBoard/CSV/JSON result files per trial: MLflow holds the results.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Every trial checkpoint forces a snapshot of the experiment state (num_to_keep=1): that
    # keeps a resume exact; Tune would warn about it at every epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    cluster.init_ray(address)


def _find_search(tracker: Tracker, experiment: str, base_id: str, resume: bool) -> tuple[str, str | None]:
    """(search id, parent run id or None). A new search takes the first free id; a resumed
    one is the newest unfinished search with this key.

    Raises:
        UserError: ``resume`` and no unfinished search of this job and space.
    """
    k, unfinished = 1, None
    while True:
        search_id = base_id if k == 1 else f"{base_id}-{k}"
        parent = tracker.find_run(experiment, {SEARCH_TAG: search_id, ROLE_TAG: "search"})
        if parent is None:
            break
        if tracker.run_status(parent) != "FINISHED":
            unfinished = (search_id, parent)
        k += 1
    if resume:
        if unfinished is None:
            raise UserError(f"--resume: no interrupted search of experiment {experiment!r} with this job "
                            f"and space (search id {base_id}) in {tracker.uri}; run without --resume")
        return unfinished
    if unfinished is not None:
        print(f"unitune: search {unfinished[0]} did not finish; `--resume` continues it. "
              f"Starting a new search {search_id}.", file=sys.stderr)
    return search_id, None


def warm_start(storage: optuna.storages.BaseStorage, source: str, target: str,
               space: SearchSpaceSpec) -> int:
    """Copy the completed trials of study ``source`` that fit ``space`` into study ``target``.

    Returns the number of trials copied.

    Raises:
        UserError: ``source`` is not a study in ``storage``.
    """
    try:
        old = optuna.load_study(study_name=source, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(f"--warm-start: no Optuna study {source!r} (studies: {', '.join(names) or 'none'})") from None
    metrics, modes = space.objective_names()
    directions = ["minimize" if m == "min" else "maximize" for m in modes]
    new = optuna.create_study(study_name=target, storage=storage, directions=directions,
                              load_if_exists=True)
    dists = {name: distribution(p) for name, p in space.params.items()}
    copied = []
    for t in old.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if len(t.values) != len(directions) or any(dists.get(k) != d for k, d in t.distributions.items()):
            continue
        copied.append(optuna.trial.create_trial(
            params=t.params, distributions=t.distributions, values=t.values,
            user_attrs={**t.user_attrs, "warm_start_from": source}))
    new.add_trials(copied)
    return len(copied)


def run_search(job: JobSpec, space: SearchSpaceSpec, *, address: str | None = None,
               warm_start_from: str | None = None, train_fn: Callable | None = None,
               callbacks: list | None = None, verbose: bool = True, resume: bool = False) -> SearchResult:
    """Run (or resume) the search of ``space`` over ``job``; return its summary.

    Args:
        address: Ray address; ``None`` uses ``job.ray.address`` (``None``: local Ray).
        resume: continue the newest unfinished search of this job and space from Ray
            Tune's saved state (finished trials are kept, unfinished ones continue from
            their last checkpoint).
        warm_start_from: a previous search id whose Optuna trials seed the sampler.
        train_fn: replaces ``unitune.train.run_training`` (tests).
        callbacks: more ``ray.tune.Callback``s (benchmarks); not used on resume.

    Raises:
        UserError: unreachable MLflow store or Ray cluster (before any run is created), a
            local store with a remote cluster, an unknown warm-start study, nothing to resume.
    """
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    address = address if address is not None else job.ray.address
    tracker = Tracker(job.tracking.uri, job.tracking.artifact_location)
    tracker.check(address)
    experiment = job.experiment
    base = search_job(job, space)
    search_id, parent = _find_search(tracker, experiment, f"{job.name}-{search_key(job, space)}", resume)
    storage_path = str(Path(TUNE_DIR).resolve())
    exp_dir = Path(storage_path) / search_id
    resumed = parent is not None
    if resumed and not tune.Tuner.can_restore(str(exp_dir)):
        raise UserError(f"--resume: search {search_id} has no Ray Tune state in {exp_dir} "
                        "(it was started in another directory, or the state was deleted)")
    init_ray(address)  # before any MLflow run: an unreachable cluster leaves nothing behind
    storage = optuna.storages.RDBStorage(optuna_storage_url(tracker.uri))
    if parent is None:
        parent = tracker.start_run(experiment, search_id, tags={
            SEARCH_TAG: search_id, ROLE_TAG: "search", STATE_TAG: "running",
            "unitune.job_file": str(job.source or ""), "unitune.space_file": str(space.source or ""),
            "unitune.optuna_storage": storage.url, "unitune.optuna_study": search_id,
        })
        metrics, modes = space.objective_names()
        tracker.log_params(parent, {"metric": space.metric, "mode": space.mode, "num_trials": space.num_trials,
                                    "max_concurrent": space.max_concurrent, "seed": space.seed,
                                    "target": space.target, **{f"fixed.{k}": v for k, v in space.fixed.items()},
                                    **({"objectives": ",".join(f"{m}:{d}" for m, d in zip(metrics, modes))}
                                       if space.objectives else {})})
        tracker.log_text(parent, yaml.safe_dump(base.model_dump(mode="json"), sort_keys=False), BASE_JOB_ARTIFACT)
    else:
        tracker.reopen_run(parent)
        tracker.set_tags(parent, {STATE_TAG: "running"})
    if warm_start_from and not resumed:
        copied = warm_start(storage, warm_start_from, search_id, space)
        tracker.set_tags(parent, {"unitune.warm_start_from": warm_start_from, "unitune.warm_start_trials": copied})

    metrics, modes = space.objective_names()
    setup = TrialSetup(job=base, tracker=tracker, experiment=experiment, search_id=search_id,
                       parent_run_id=parent, objectives=list(zip(metrics, modes)),
                       target=space.target, storage_path=storage_path, train_fn=train_fn)
    callback = SearchCallback(setup, space, verbose=verbose)
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), trial_resources(base))
    state = "interrupted"
    try:
        if resumed:
            print(f"unitune: resuming search {search_id} from {exp_dir}", file=sys.stderr)
            tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            tuner = tune.Tuner(trainable, tune_config=_tune_config(setup, space, search_id, storage),
                               run_config=tune.RunConfig(
                                   name=search_id, storage_path=storage_path,
                                   callbacks=[callback, JsonLoggerCallback(), *(callbacks or [])],
                                   # a trial whose process dies is retried from its checkpoint
                                   failure_config=tune.FailureConfig(max_failures=base.train.max_failures),
                                   checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                   verbose=0))
        tuner.fit()
        state = "completed"
    finally:
        try:
            _close_leftovers(setup, state)
            summary = summarize(setup, space, storage)
            write_artifacts(setup, space, job, storage, summary)
        finally:
            tracker.set_tags(parent, {STATE_TAG: state})
            tracker.end_run(parent, "FINISHED" if state == "completed" else "KILLED")
    return SearchResult(search_id, parent, experiment, summary, resumed)


def _tune_config(setup: TrialSetup, space: SearchSpaceSpec, search_id: str, storage):
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    scheduler = FIFOScheduler()
    if space.asha is not None:
        scheduler = StopTaggingASHA(setup, time_attr="epoch", metric=space.metric, mode=space.mode,
                                  max_t=space.asha.max_epochs, grace_period=space.asha.grace_period,
                                  reduction_factor=space.asha.reduction_factor)
    return tune.TuneConfig(search_alg=make_searcher(space, study_name=search_id, storage=storage),
                           scheduler=scheduler, num_samples=space.num_trials,
                           max_concurrent_trials=space.max_concurrent,
                           reuse_actors=True)  # imports (torch, mlflow) once per trial process


def _close_leftovers(setup: TrialSetup, state: str) -> None:
    """No child run stays RUNNING: those the callbacks did not close are interrupted."""
    for run in setup.tracker.search_runs(setup.experiment, {SEARCH_TAG: setup.search_id, ROLE_TAG: "trial"}):
        if run.info.status in ("RUNNING", "SCHEDULED"):
            tag = run.data.tags.get(STATE_TAG)
            final = tag if tag in ("failed", "stopped_by_asha") else "interrupted"
            finalize_trial(setup, run.info.run_id, final)
