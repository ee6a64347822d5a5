"""Interruptions of a real ``unitune search`` subprocess, then ``--resume``: what the store
holds afterwards, counted. Signals go to the search's whole process group (what a terminal's
Ctrl-C does), SIGKILL to its whole session (the driver and its local Ray)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from test_resume import steps, trial_runs, write_job
from unitune.tracking import Tracker

EPOCHS = 3
KEYS = {"rsum": 0, "epoch": 0, "r1_i2t": 0, "train_loss": 1}   # key: its first epoch


def start(tmp_path: Path, log_name: str, *args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "unitune", "search", str(tmp_path / "job.yaml"), "--quiet", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    with open(tmp_path / log_name, "w") as log:
        return subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def wait_for(tmp_path: Path, proc: subprocess.Popen, log_name: str, ready, timeout=400.0) -> None:
    """Poll the store until ``ready(runs)`` holds."""
    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns.db")
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, (tmp_path / log_name).read_text()[-3000:]
        assert time.monotonic() < deadline, "the moment to interrupt never came"
        if ready(tracker, trial_runs(tracker)):
            return
        time.sleep(0.5)


def finished(tracker, runs):
    return [r for r in runs if r.data.tags.get("unitune.state") in ("completed", "stopped_by_asha")]


def session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def kill_session(proc: subprocess.Popen) -> None:
    for pid in sorted(session_pids(proc.pid), key=lambda p: p != proc.pid):  # the driver first
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def resume_and_count(tmp_path: Path, num_trials: int) -> None:
    """``--resume`` to the end, then the invariants of the record (counted, not sampled)."""
    proc = start(tmp_path, "resume.log", "search.max_concurrent=1", "--resume")
    rc = proc.wait(timeout=600)
    assert rc == 0, (tmp_path / "resume.log").read_text()[-4000:]
    deadline = time.monotonic() + 60  # the search's processes end with it
    while session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(1)
    assert not session_pids(proc.pid), "processes of the search outlived it"
    assert_complete_record(tmp_path, num_trials)


def assert_complete_record(tmp_path: Path, num_trials: int) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns.db")
    exp = tracker.client.get_experiment_by_name("resume").experiment_id
    parents = tracker.client.search_runs([exp], filter_string="tags.`unitune.role` = 'search'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["unitune.state"] == "completed"
    runs = trial_runs(tracker)
    assert len(runs) == num_trials, [r.data.tags.get("unitune.trial_id") for r in runs]
    assert len({r.data.tags["unitune.optuna_trial"] for r in runs}) == num_trials
    for run in runs:
        state = run.data.tags["unitune.state"]
        assert state in ("completed", "stopped_by_asha"), state
        assert run.info.status == "FINISHED"
        last = EPOCHS if state == "completed" else int(run.data.tags["unitune.stopped_at_epoch"])
        for key, first in KEYS.items():   # every epoch Tune received, exactly once
            assert steps(tracker, run.info.run_id, key) == list(range(first, last + 1)), (key, run.info.run_id)
    search_id = parents[0].data.tags["unitune.search_id"]
    study = optuna.load_study(study_name=search_id, storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == num_trials
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    by_number = {t.number: t for t in study.trials}
    for run in runs:
        t = by_number[int(run.data.tags["unitune.optuna_trial"])]
        want = {"completed": optuna.trial.TrialState.COMPLETE,
                "stopped_by_asha": optuna.trial.TrialState.PRUNED}[run.data.tags["unitune.state"]]
        assert t.state == want
        assert t.intermediate_values == pytest.approx(dict(tracker.metric_history(run.info.run_id, "rsum")))


def assert_interrupted_record(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns.db")
    exp = tracker.client.get_experiment_by_name("resume").experiment_id
    (parent,) = tracker.client.search_runs([exp], filter_string="tags.`unitune.role` = 'search'")
    assert parent.data.tags["unitune.state"] == "interrupted" and parent.info.status == "KILLED"
    for run in trial_runs(tracker):
        state = run.data.tags["unitune.state"]
        assert state in ("completed", "stopped_by_asha", "interrupted"), state
        assert run.info.status == {"interrupted": "KILLED"}.get(state, "FINISHED")


@pytest.mark.parametrize("sig, code, times", [
    pytest.param(signal.SIGINT, 130, 1, id="SIGINT"),
    pytest.param(signal.SIGINT, 130, 2, id="SIGINT-twice", marks=pytest.mark.slow),
    pytest.param(signal.SIGTERM, 143, 1, id="SIGTERM", marks=pytest.mark.slow),
])
def test_signal_to_the_process_group_then_resume(tmp_path, sig, code, times):
    write_job(tmp_path, epochs=EPOCHS, num_trials=3)
    proc = start(tmp_path, "first.log", "search.max_concurrent=1")
    wait_for(tmp_path, proc, "first.log", lambda tr, runs: finished(tr, runs) and len(runs) >= 2)
    for i in range(times):   # a second Ctrl-C while the search closes its record
        if i:
            time.sleep(1.0)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
    rc = proc.wait(timeout=120)
    out = (tmp_path / "first.log").read_text()
    assert rc == code, out[-3000:]
    assert "--resume" in out and "Tuner.restore" not in out
    assert_interrupted_record(tmp_path)
    resume_and_count(tmp_path, 3)


def _just_started(tracker, runs):
    """A trial's run exists, with no epoch beyond 0 yet, after another finished."""
    return finished(tracker, runs) and any(
        r.data.tags.get("unitune.state") == "running" and max(steps(tracker, r.info.run_id, "epoch"), default=0) < 1
        for r in runs)


def _mid_epoch(tracker, runs):
    """A trial has logged an epoch of training and has more to run (the first trial always
    runs its whole budget: ASHA has nothing to compare it with)."""
    return any(
        r.data.tags.get("unitune.state") == "running" and 1 <= max(steps(tracker, r.info.run_id, "epoch"), default=0) < EPOCHS
        for r in runs)


def _between_trials(tracker, runs):
    return finished(tracker, runs) and not [r for r in runs if r.data.tags.get("unitune.state") == "running"]


@pytest.mark.slow
@pytest.mark.parametrize("moment", [_just_started, _mid_epoch, _between_trials],
                         ids=["right-after-a-trial-started", "mid-trial", "between-trials"])
def test_sigkill_of_the_driver_at_several_moments_then_resume(tmp_path, moment):
    write_job(tmp_path, epochs=EPOCHS, num_trials=3)
    proc = start(tmp_path, "first.log", "search.max_concurrent=1")
    wait_for(tmp_path, proc, "first.log", moment)
    kill_session(proc)
    resume_and_count(tmp_path, 3)


@pytest.mark.slow
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh-store", "existing-store"])
def test_two_searches_started_together(tmp_path, fresh):
    """Same job, same space, same directory, same moment: two search ids, their own Tune
    directories and Optuna studies, 2 x num_trials child runs each under its own parent."""
    write_job(tmp_path, epochs=2, num_trials=2)
    if not fresh:   # a store with an earlier, finished search
        assert start(tmp_path, "earlier.log").wait(timeout=600) == 0, (tmp_path / "earlier.log").read_text()[-3000:]
    procs = [start(tmp_path, f"concurrent{i}.log") for i in range(2)]
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=900) == 0, (tmp_path / f"concurrent{i}.log").read_text()[-3000:]
    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns.db")
    exp = tracker.client.get_experiment_by_name("resume").experiment_id
    parents = tracker.client.search_runs([exp], filter_string="tags.`unitune.role` = 'search'")
    ids = [p.data.tags["unitune.search_id"] for p in parents]
    assert len(parents) == (2 if fresh else 3) and len(set(ids)) == len(ids)
    assert all(p.info.status == "FINISHED" and p.data.tags["unitune.state"] == "completed" for p in parents)
    runs = trial_runs(tracker)
    assert len(runs) == 2 * len(parents)
    for parent in parents:
        children = [r for r in runs if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert len(children) == 2
        assert {r.data.tags["unitune.search_id"] for r in children} == {parent.data.tags["unitune.search_id"]}
    studies = optuna.get_all_study_names(storage=f"sqlite:///{tmp_path}/optuna.db")
    assert sorted(studies) == sorted(ids)
    for name in studies:
        trials = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db").trials
        assert len(trials) == 2 and all(t.state.is_finished() for t in trials)
    assert sorted(p.name for p in (tmp_path / ".unitune" / "tune").iterdir() if p.is_dir()) == sorted(ids)
