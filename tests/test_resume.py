"""Resume and faults of ``unitune search`` on a local Ray, with temporary stores:
an unreachable MLflow store or Ray address fails before any run; a trial whose process
dies resumes from its checkpoint in the same MLflow run; ``--resume`` after the driver is
killed (SIGKILL) ends with exactly the planned trials, each with one run and every epoch
logged once, and the trials that had finished untouched."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from unitune.cli import main
from unitune.tracking import Tracker

SPACE = {
    "metric": "rsum", "mode": "max", "num_trials": 3, "max_concurrent": 2, "seed": 0, "target": 150,
    "asha": {"grace_period": 1, "reduction_factor": 2},
    "params": {"loss.margin": {"type": "uniform", "low": 0.0, "high": 0.4},
               "optim.lr": {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-3}},
}


def write_job(root: Path, *, epochs=3, num_trials=3, **extra) -> Path:
    """A tiny job and its space in ``root``; stores, Ray state and data cache all under ``root``."""
    (root / "space.yaml").write_text(yaml.safe_dump({**SPACE, "num_trials": num_trials}))
    job = {
        "name": "resume",
        "data": {"synthetic": {"num_train": 64, "num_val": 32, "num_test": 16, "image_size": 16,
                               "cache_dir": str(root / "data")}},
        "model": {"embed_dim": 32},
        "train": {"epochs": epochs, "batch_size": 16, "eval_batch_size": 64},
        "tracking": {"uri": f"sqlite:///{root}/mlruns.db", "artifact_location": str(root / "mlartifacts")},
        "search": {"space": "space.yaml"},
        **extra,
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trial_runs(tracker: Tracker, experiment="resume"):
    exp = tracker.client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return tracker.client.search_runs([exp.experiment_id], filter_string="tags.`unitune.role` = 'trial'",
                                      max_results=1000)


def steps(tracker: Tracker, run_id: str, key: str) -> list[int]:
    """Every step a metric was logged at, duplicates included (sorted)."""
    return sorted(m.step for m in tracker.client.get_metric_history(run_id, key))


# -- fast: refusals before anything runs --------------------------------------------------

def test_unreachable_mlflow_store_refused_before_any_trial(tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.chdir(tmp_path)
    (tmp_path / "not_a_dir").write_text("")
    job = write_job(tmp_path)
    started = time.monotonic()
    assert main(["search", str(job), f"tracking.uri=sqlite:///{tmp_path}/not_a_dir/m.db"]) == 2
    assert "not_a_dir/m.db" in capsys.readouterr().err
    assert time.monotonic() - started < 30
    assert not ray.is_initialized() and not (tmp_path / ".unitune" / "tune").exists()


def test_unreachable_ray_address_is_a_fast_clear_error(tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert main(["search", str(job), "--address", address]) == 2
    err = capsys.readouterr().err
    assert f"cannot connect to the Ray cluster at {address}" in err and "Traceback" not in err
    assert time.monotonic() - started < 30  # ray.init alone retries for over a minute
    assert not ray.is_initialized()
    client = Tracker(f"sqlite:///{tmp_path}/mlruns.db").client
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []  # no parent run


def test_a_trial_the_local_ray_cannot_hold_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path)
    started = time.monotonic()
    assert main(["search", str(job), "resources.cpu_per_worker=64"]) == 2
    err = capsys.readouterr().err
    assert "resources.cpu_per_worker" in err and "64" in err and "Traceback" not in err
    assert time.monotonic() - started < 60   # not a search that waits for resources forever
    assert not ray.is_initialized()
    client = Tracker(f"sqlite:///{tmp_path}/mlruns.db").client
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_resume_without_an_interrupted_search_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    job = write_job(tmp_path)
    assert main(["search", str(job), "--resume"]) == 2
    assert "no interrupted search" in capsys.readouterr().err


# -- slow: faults during a search -----------------------------------------------------------

@pytest.mark.slow
def test_trial_process_killed_mid_trial_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """The trial's process exits at the start of epoch 2 (once); Tune retries it from the
    epoch-1 checkpoint: the run stays one run, epochs 0..3 logged once, Tune saw 0, 1, 2, 3."""
    import ray

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "fault.txt"
    # Set before Ray starts: the trial processes inherit the environment.
    monkeypatch.setenv("UNITUNE_FAULT_EPOCH", "2")
    monkeypatch.setenv("UNITUNE_FAULT_MARKER", str(marker))
    job = write_job(tmp_path, num_trials=1)
    try:
        assert main(["search", str(job), "--quiet", "search.max_concurrent=1"]) == 0
    finally:
        ray.shutdown()
    assert marker.exists(), "the fault was never injected"
    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns.db")
    (run,) = trial_runs(tracker)
    assert run.data.tags["unitune.state"] == "completed" and run.info.status == "FINISHED"
    for key in ("rsum", "epoch"):
        assert steps(tracker, run.info.run_id, key) == [0, 1, 2, 3]
    assert steps(tracker, run.info.run_id, "train_loss") == [1, 2, 3]
    results = list((tmp_path / ".unitune" / "tune").rglob("result.json"))
    assert len(results) == 1
    epochs = [json.loads(line)["epoch"] for line in results[0].read_text().splitlines() if line.strip()]
    assert epochs == [0, 1, 2, 3]  # from scratch it would be 0, 1, 0, 1, 2, 3


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process of its session (its local Ray included)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    pids = [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == proc.pid]
    for pid in sorted(pids, key=lambda p: p != proc.pid):  # the driver first
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path):
    job = write_job(tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlruns.db")
    cmd = [sys.executable, "-m", "unitune", "search", str(job), "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no finished trial while another runs"
            runs = trial_runs(tracker)
            done = [r for r in runs if r.data.tags.get("unitune.state") in ("completed", "stopped_by_asha")
                    and r.info.status != "RUNNING"]
            running = [r for r in runs if r.info.status == "RUNNING"
                       and r.data.tags.get("unitune.state") == "running" and steps(tracker, r.info.run_id, "epoch")]
            if done and running:
                break
            time.sleep(1.0)
    finally:
        _kill_session(proc)
    before = {r.info.run_id: (r.info.end_time, steps(tracker, r.info.run_id, "epoch"))
              for r in trial_runs(tracker) if r.info.status != "RUNNING"}
    assert before

    with open(tmp_path / "resume.log", "w") as log:
        rc = subprocess.run([*cmd, "--resume"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env=env, timeout=500).returncode
    assert rc == 0, (tmp_path / "resume.log").read_text()[-3000:]

    exp = tracker.client.get_experiment_by_name("resume").experiment_id
    parents = tracker.client.search_runs([exp], filter_string="tags.`unitune.role` = 'search'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = trial_runs(tracker)
    assert len(runs) == SPACE["num_trials"]
    assert len({r.data.tags["unitune.trial_id"] for r in runs}) == SPACE["num_trials"]
    for run in runs:
        state = run.data.tags["unitune.state"]
        assert state in ("completed", "stopped_by_asha"), state
        epochs = steps(tracker, run.info.run_id, "rsum")
        n = 3 if state == "completed" else int(run.data.tags["unitune.stopped_at_epoch"])
        assert epochs == list(range(0, n + 1)), (run.info.run_id, epochs)
        assert steps(tracker, run.info.run_id, "epoch") == epochs
        if run.info.run_id in before:  # finished before the kill: not trained or closed again
            assert (run.info.end_time, epochs) == before[run.info.run_id]


def test_trial_state_machine():
    """The moves a trial's record may make (unitune.tags), checked against the list in
    docs/internals.md: final states never move; interrupted comes back to running."""
    from unitune import tags as T

    allowed = {(None, "running"), ("running", "completed"), ("running", "stopped_by_asha"),
               ("running", "failed"), ("running", "interrupted"), ("interrupted", "running"),
               ("interrupted", "interrupted")}
    states = [None, "running", "completed", "stopped_by_asha", "failed", "interrupted"]
    for old in states:
        for new in states[1:]:
            if (old, new) in allowed:
                T.check_transition(old, new)
            else:
                with pytest.raises(ValueError):
                    T.check_transition(old, new)
    assert {s: T.STATUS_OF_STATE[s] for s in states[1:]} == {
        "running": "RUNNING", "completed": "FINISHED", "stopped_by_asha": "FINISHED",
        "failed": "FAILED", "interrupted": "KILLED"}
