"""``unitune search``: Ray Tune + an Optuna sampler + a Tune scheduler over a job, one MLflow run per trial.

    run_search(job, space) -> SearchResult

Names are deterministic: the search id is ``<job name>-<space name>-<hash of job and
space>`` (``-2``, ``-3``... for later searches of the same job and space), allocated
atomically through the Optuna study of that name (the storage's unique constraint), so two
searches started together get two ids, two Tune directories and two studies. ``--resume``
continues the newest unfinished search of the same job and space from Ray Tune's saved state
and finds the same MLflow runs and Optuna trials. The Optuna study (study name = search id)
lives in an RDB storage next to the MLflow store (``optuna.db``), so ``optuna-dashboard
sqlite:///optuna.db`` opens it and ``warm_start=<search id>`` seeds a later search.

Who writes what: trials train and report; the driver's recorder
(:mod:`unitune.search.record`) writes every child run and tells the study every outcome;
this module writes the parent run. docs/internals.md has the state machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import optuna
import yaml

from unitune import cluster, probes, terminal
from unitune import tags as T
from unitune.config import JobSpec, SearchSpaceSpec, apply_overrides
from unitune.errors import UserError, mask_uri
from unitune.preflight import check_fits
from unitune.progress import StepProgress
from unitune.record import Record, Role, State
from unitune.search.interrupt import Interrupt
from unitune.search.live import DriverCallback
from unitune.search.record import Recorder
from unitune.search.report import summarize, write_artifacts
from unitune.search.schedulers import make_scheduler
from unitune.search.space import distribution, make_searcher
from unitune.search.storage import check_tune_storage, open_storage, tune_storage
from unitune.search.trial import TrialSetup, run_trial, trial_resources
from unitune.tracking import Tracker

MAX_SEARCHES = 10_000  # ids tried per job and space


@dataclass
class SearchResult:
    search_id: str
    parent_run_id: str
    experiment: str
    summary: dict
    resumed: bool
    signal: int | None = None  # the signal that interrupted the search, if any

    @property
    def interrupted(self) -> bool:
        return self.summary.get("state") == State.INTERRUPTED


def search_key(job: JobSpec, space: SearchSpaceSpec) -> str:
    """8 hex digits identifying what is searched: the job and the space, not the file names
    nor where it runs, caches and logs (``ray``, ``tracking``, ``search.storage``, the
    space's path, the synthetic data's and the feature cache's directories), nor the
    ``study:`` block (a resumed study given more ``budget_minutes`` continues its
    interrupted search), so a submitted
    search unpacked in another directory on the cluster is the same search."""
    what = job.model_dump(
        mode="json",
        exclude={
            "ray": True,
            "tracking": True,
            "search": {"storage", "space"},
            "study": True,  # what a study does with the search's best: not the search
            "data": {"feature_cache": True, "synthetic": {"cache_dir"}},
        },
    )
    payload = json.dumps([what, space.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:8]


def space_name(space: SearchSpaceSpec) -> str:
    """The space's file name without suffix (``unified``), or ``space`` for one built in code."""
    return Path(space.source).stem if space.source is not None else "space"


def search_job(job: JobSpec, space: SearchSpaceSpec) -> JobSpec:
    """The base job of every trial: the space's fixed values, the ASHA budget as epochs."""
    overrides = dict(space.fixed)
    if space.asha is not None and space.asha.max_epochs is not None:
        overrides["train.epochs"] = space.asha.max_epochs
    return apply_overrides(job, overrides) if overrides else job


def init_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a private local Ray (see ``unitune.cluster``); True
    when this call did (the search shuts it down at its end).

    Raises:
        UserError: the cluster cannot be reached (names the address).
    """
    # No TensorBoard/CSV/JSON result files per trial: MLflow holds the results.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Every trial checkpoint forces a snapshot of the experiment state (num_to_keep=1): that
    # keeps a resume exact; Tune would warn about it at every epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    probes.bound_server_retries()  # a tracking server's restart is waited out (see unitune.probes)
    return cluster.init_ray(address)


def _directions(space: SearchSpaceSpec) -> list[Literal["minimize", "maximize"]]:
    _, modes = space.objective_names()
    return ["minimize" if m == "min" else "maximize" for m in modes]


def allocate_search(tracker: Tracker, storage, experiment: str, base_id: str, space: SearchSpaceSpec) -> str:
    """The first free id ``base_id``, ``base_id-2``, ...: its Optuna study is created here,
    atomically (the storage refuses a second study of one name), so no two searches share it."""
    metrics, _ = space.objective_names()
    for k in range(1, MAX_SEARCHES):
        search_id = base_id if k == 1 else f"{base_id}-{k}"
        if Record(tracker).run(experiment, Role.SEARCH, {T.SEARCH: search_id}) is not None:
            continue
        try:
            study = optuna.create_study(study_name=search_id, storage=storage, directions=_directions(space))
        except optuna.exceptions.DuplicatedStudyError:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metrics))
        return search_id
    raise UserError(f"search: {MAX_SEARCHES} searches of this job and space already exist in {tracker.uri}")


def find_unfinished(tracker: Tracker, experiment: str, key: str) -> tuple[str, str] | None:
    """(search id, parent run id) of the newest unfinished search with this key, else None."""
    runs = Record(tracker).searches(experiment, {T.SEARCH_KEY: key})  # newest first
    unfinished = [r for r in runs if r.status != "FINISHED"]
    if not unfinished:
        return None
    return unfinished[0].search_id, unfinished[0].run_id


def warm_start(storage: optuna.storages.BaseStorage, source: str, target: str, space: SearchSpaceSpec) -> int:
    """Copy the finished trials (COMPLETE, and PRUNED as pruned) of study ``source`` that fit
    ``space`` into study ``target``. Returns the number of trials copied.

    Raises:
        UserError: ``source`` is not a study in ``storage``.
    """
    try:
        old = optuna.load_study(study_name=source, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(f"--warm-start: no Optuna study {source!r} (studies: {', '.join(names) or 'none'})") from None
    directions = _directions(space)
    new = optuna.load_study(study_name=target, storage=storage)
    dists = {name: distribution(p) for name, p in space.params.items()}
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    copied = []
    for t in old.get_trials(deepcopy=False, states=states):
        if any(dists.get(k) != d for k, d in t.distributions.items()):
            continue
        if t.state == optuna.trial.TrialState.COMPLETE and len(t.values) != len(directions):
            continue
        copied.append(
            optuna.trial.create_trial(
                state=t.state,
                params=t.params,
                distributions=t.distributions,
                values=t.values,  # a pruned trial's: its last intermediate value
                intermediate_values=t.intermediate_values,
                user_attrs={**{k: v for k, v in t.user_attrs.items() if k != "trial_id"}, "warm_start_from": source},
            )
        )
    new.add_trials(copied)
    return len(copied)


def run_search(
    job: JobSpec,
    space: SearchSpaceSpec,
    *,
    address: str | None = None,
    warm_start_from: str | None = None,
    train_fn: Callable | None = None,
    callbacks: list | None = None,
    verbose: bool = True,
    resume: bool = False,
    resume_hint: str | None = None,
    tags: dict | None = None,
) -> SearchResult:
    """Run (or resume) the search of ``space`` over ``job``; return its summary.

    Args:
        address: Ray address; ``None`` uses ``job.ray.address`` (``None``: local Ray).
        resume: continue the newest unfinished search of this job and space from Ray
            Tune's saved state (finished trials are kept, unfinished ones continue from
            their last checkpoint, a trial that had just started is continued, not replaced).
        warm_start_from: a previous search id whose Optuna trials seed the sampler.
        train_fn: replaces ``unitune.train.run_training`` (tests).
        callbacks: more ``ray.tune.Callback``s (benchmarks); not used on resume.
        resume_hint: the command that resumes this search, printed when a signal interrupts it.
        tags: more tags of the parent run, set when it starts (a study's id and family).

    Returns:
        The summary; ``result.signal`` is set when SIGINT/SIGTERM interrupted the search
        (its record is then ``interrupted`` and resumable).

    Raises:
        UserError: unreachable MLflow store or Ray cluster (before any run is created), a
            local store with a remote cluster, an unknown warm-start study, nothing to resume.
    """
    address = address if address is not None else job.ray.address
    tracker = Tracker(job.tracking.uri, job.tracking.artifact_location)
    found = _refuse_early(tracker, job, space, address, resume)
    base = search_job(job, space)
    started_ray, cache = _start_ray(base, address, verbose)
    storage = open_storage(tracker)
    search_id, parent = _open_parent(tracker, storage, job, space, base, found, cache, tags, warm_start_from)
    steps = StepProgress(base.train.epochs, own_display=False) if verbose and space.max_concurrent == 1 else None
    setup = _trial_setup(tracker, base, space, search_id, parent, train_fn, steps)
    recorder = Recorder(setup, optuna.load_study(study_name=search_id, storage=storage), list(space.params))
    driver_cb = DriverCallback(recorder, space, verbose=verbose, steps=steps)
    if verbose and found is not None:
        print(f"unitune: resuming search {search_id}", file=sys.stderr)
    state = State.INTERRUPTED
    interrupt = Interrupt(lambda: _mark_interrupted(recorder), resume_hint)
    try:
        with interrupt:
            tuner = _tuner(setup, space, storage, [driver_cb, *(callbacks or [])], restore=found is not None)
            with terminal.to_log(), steps or contextlib.nullcontext():  # to_log: Tune's box
                tuner.fit()
        if interrupt.signal is None and _all_final(recorder, space.num_trials):
            state = State.COMPLETED
    finally:
        driver_cb.close()
        summary = _close(setup, recorder, space, job, storage, state, started_ray)
    return SearchResult(search_id, parent, job.experiment, summary, found is not None, interrupt.signal)


def _refuse_early(
    tracker: Tracker, job: JobSpec, space: SearchSpaceSpec, address: str | None, resume: bool
) -> tuple[str, str] | None:
    """What can be refused before Ray starts: the store, Tune's storage, a resume with
    nothing to resume. Returns the search to resume ``(search id, parent run id)`` or None."""
    from ray import tune  # Ray Tune: checked only here and in _tuner

    tracker.check(address, job.experiment)
    check_tune_storage(job.search.storage)
    if not resume:
        return None
    found = find_unfinished(tracker, job.experiment, search_key(job, space))
    if found is None:
        raise UserError(
            f"--resume: no interrupted search of experiment {job.experiment!r} with this job "
            f"and space in {tracker.uri}; run without --resume"
        )
    exp_dir = f"{tune_storage(job.search.storage).rstrip('/')}/{found[0]}"
    if not tune.Tuner.can_restore(exp_dir):
        raise UserError(
            f"--resume: search {found[0]} has no Ray Tune state in {exp_dir} (it was "
            "started in another directory, or on a cluster without search.storage)"
        )
    return found


def _start_ray(base: JobSpec, address: str | None, verbose: bool) -> tuple[bool, dict]:
    """Ray started (or joined) and the frozen-prefix feature cache ready, before any MLflow
    run exists (an unreachable cluster leaves nothing behind). Returns (whether this call
    started Ray, the cache's summary)."""
    from unitune import features  # torch and the data layer: imported by the driver only here

    features.check(base)  # cache refusals (unwritable directory, augmentation) before Ray starts
    started_ray = init_ray(address)
    terminal.adopt_library_loggers()  # Ray's and Optuna's loggers, now imported: to the log file
    # What the frozen layers compute, once for every trial (trials that sample a different
    # split point or image size build their own entry on first use).
    if verbose and features.setting(base) != "off":
        print("unitune: preparing the frozen-prefix feature cache ...", file=sys.stderr, flush=True)
    try:
        check_fits(base, address)
        cache = features.prepare(base)
    except BaseException:
        if started_ray:
            cluster.shutdown_ray()
        raise
    if verbose and cache["feature_cache_dir"] is not None:
        print(
            f"unitune: feature cache ready in {cache['feature_cache_s']:.1f} s ({cache['entries_built']} built, "
            f"{cache['entries_reused']} reused, {cache['bytes'] / 2**20:.1f} MiB)",
            file=sys.stderr,
            flush=True,
        )
    return started_ray, cache


def _open_parent(
    tracker: Tracker,
    storage,
    job: JobSpec,
    space: SearchSpaceSpec,
    base: JobSpec,
    found: tuple[str, str] | None,
    cache: dict,
    tags: dict | None,
    warm_start_from: str | None,
) -> tuple[str, str]:
    """A new search's id and parent run (its Optuna study seeded by ``warm_start_from``, the
    feature cache's numbers logged), or the resumed one's parent reopened."""
    if found is not None:
        search_id, parent = found
        tracker.reopen_run(parent)
        tracker.set_tags(parent, {**(tags or {}), T.STATE: State.RUNNING})
        return search_id, parent
    key = search_key(job, space)
    search_id = allocate_search(tracker, storage, job.experiment, f"{job.name}-{space_name(space)}-{key}", space)
    parent = _start_parent(tracker, job, space, base, search_id, key, storage)
    if tags:
        tracker.set_tags(parent, tags)
    if warm_start_from:
        copied = warm_start(storage, warm_start_from, search_id, space)
        tracker.set_tags(parent, {T.WARM_START_FROM: warm_start_from, T.WARM_START_TRIALS: copied})
    if cache["feature_cache_dir"] is not None:
        tracker.log_metrics(
            parent,
            {k: cache[k] for k in ("feature_cache_s", "entries_built", "entries_reused")}
            | {"feature_cache_bytes": cache["bytes"]},
            step=0,
        )
        tracker.set_tags(parent, {T.FEATURE_CACHE_DIR: cache["feature_cache_dir"]})
    return search_id, parent


def _trial_setup(
    tracker: Tracker,
    base: JobSpec,
    space: SearchSpaceSpec,
    search_id: str,
    parent: str,
    train_fn: Callable | None,
    steps: StepProgress | None,
) -> TrialSetup:
    """What every trial shares (sent once through Ray's object store)."""
    metrics, modes = space.objective_names()
    return TrialSetup(
        job=base,
        tracker=tracker,
        experiment=base.experiment,
        search_id=search_id,
        parent_run_id=parent,
        objectives=list(zip(metrics, modes)),
        target=space.target,
        storage_path=tune_storage(base.search.storage),
        train_fn=train_fn,
        on_step=steps.reporter if steps is not None else None,
        env={**{k: v for k, v in os.environ.items() if k.startswith("UNITUNE_")}, **probes.bound_server_retries()},
    )


def _tuner(setup: TrialSetup, space: SearchSpaceSpec, storage, callbacks: list, *, restore: bool):
    """The search's ``tune.Tuner``: a new one, or restored from Ray Tune's saved state."""
    from ray import tune  # Ray Tune: imported once Ray runs
    from ray.tune.logger import JsonLoggerCallback

    base, search_id = setup.job, setup.search_id
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), trial_resources(base))
    if restore:
        return tune.Tuner.restore(
            f"{setup.storage_path.rstrip('/')}/{search_id}",
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    return tune.Tuner(
        trainable,
        tune_config=_tune_config(space, search_id, storage),
        run_config=tune.RunConfig(
            name=search_id,
            storage_path=setup.storage_path,
            # result.json per trial: what Tune's ResultGrid reads back
            callbacks=[callbacks[0], JsonLoggerCallback(), *callbacks[1:]],
            # a trial whose process dies is retried from its checkpoint
            failure_config=tune.FailureConfig(max_failures=base.train.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )


def _mark_interrupted(recorder: Recorder) -> None:
    """The first SIGINT/SIGTERM: the parent and every running trial ``interrupted`` at once,
    so the record is right even if a SIGKILL follows."""
    tracker, parent = recorder.setup.tracker, recorder.setup.parent_run_id
    recorder.interrupting = True
    tracker.set_tags(parent, {T.STATE: State.INTERRUPTED})
    recorder.interrupt_running()
    tracker.end_run(parent, State.INTERRUPTED.status)


def _close(
    setup: TrialSetup,
    recorder: Recorder,
    space: SearchSpaceSpec,
    job: JobSpec,
    storage,
    state: State,
    started_ray: bool,
) -> dict:
    """The end of a search, however it ended: runs still open closed as interrupted, the
    summary, the parent's artifacts, headline and final state; Ray shut down if started here."""
    tracker, parent = setup.tracker, setup.parent_run_id
    recorder.interrupting = True
    recorder.interrupt_running()
    summary = summarize(setup, space, storage)
    summary["state"] = state
    try:
        write_artifacts(setup, space, job, storage, summary)
        log_headline(tracker, parent, summary)
    finally:
        tracker.set_tags(parent, {T.STATE: state})
        tracker.end_run(parent, state.status)
        if started_ray:
            cluster.shutdown_ray()
    return summary


def _start_parent(
    tracker: Tracker, job: JobSpec, space: SearchSpaceSpec, base: JobSpec, search_id: str, key: str, storage
) -> str:
    parent = tracker.start_run(
        job.experiment,
        search_id,
        tags={
            T.SEARCH: search_id,
            T.ROLE: Role.SEARCH,
            T.STATE: State.RUNNING,
            T.SEARCH_KEY: key,
            T.JOB_FILE: str(job.source or ""),
            T.SPACE_FILE: str(space.source or ""),
            T.OPTUNA_STORAGE: mask_uri(storage.url),
            T.OPTUNA_STUDY: search_id,
        },
    )
    metrics, modes = space.objective_names()
    tracker.log_params(
        parent,
        {
            "metric": space.metric,
            "mode": space.mode,
            "num_trials": space.num_trials,
            "max_concurrent": space.max_concurrent,
            "seed": space.seed,
            "sampler": space.sampler_name(),
            "scheduler": space.scheduler,
            "target": space.target,
            **{f"fixed.{k}": v for k, v in space.fixed.items()},
            **({"objectives": ",".join(f"{m}:{d}" for m, d in zip(metrics, modes))} if space.objectives else {}),
        },
    )
    tracker.log_text(parent, yaml.safe_dump(base.model_dump(mode="json"), sort_keys=False), T.BASE_JOB_ARTIFACT)
    return parent


def _all_final(recorder: Recorder, num_trials: int) -> bool:
    """Every planned trial has a final record (the record, not Tune, decides)."""
    setup = recorder.setup
    runs = Record(setup.tracker).trial_runs(setup.search_id, setup.experiment)
    return sum(r.state is not None and r.state.done for r in runs) >= num_trials


def log_headline(tracker: Tracker, parent: str, summary: dict) -> None:
    """The parent's metrics: best value, trials per state, trial-epochs spent (runs table);
    its tags: the best trial (the summary's, ``unitune.record.best``)."""
    metrics: dict[str, float] = {f"trials_{s}": n for s, n in summary["counts"].items()}
    metrics["trial_epochs"] = summary["trial_epochs"]
    if summary["best"] is not None:
        metrics[f"best_{summary['metric']}"] = summary["best"]["score"]
    tracker.log_metrics(parent, metrics, step=0)
    if summary["best"] is not None:
        tracker.set_tags(parent, {T.BEST_TRIAL: summary["best"]["trial_id"], T.BEST_RUN: summary["best"]["run_id"]})


def _tune_config(space: SearchSpaceSpec, search_id: str, storage):
    from ray import tune

    return tune.TuneConfig(
        search_alg=make_searcher(space, study_name=search_id, storage=storage),
        scheduler=make_scheduler(space),
        num_samples=space.num_trials,
        max_concurrent_trials=space.max_concurrent,
        reuse_actors=True,
    )  # imports (torch, mlflow) once per trial process
