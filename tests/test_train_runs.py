"""``train_runs``: a study's final runs, one MLflow run per job, trained in this process
(one worker, local): no Ray starts here."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unitune.config import apply_overrides, load_job
from unitune.errors import UserError
from unitune.tracking import Tracker
from unitune.train import run_training
from unitune.train import worker as train_worker
from unitune.train.runs import train_runs

REPO = Path(__file__).resolve().parents[1]



def runs_tagged(tracker, tags):
    """The MLflow runs of the demo experiment with ``tags`` (the client directly: a test's view)."""
    filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return list(tracker.client.search_runs([tracker.experiment_id("demo")], filter_string=filt))

def tiny_job(tmp_path, seed=0, **extra):
    job = load_job(REPO / "jobs/demo.yaml")
    return apply_overrides(job, {
        "seed": seed, "train.epochs": 2, "data.synthetic.num_train": 48, "data.synthetic.num_val": 24,
        "data.synthetic.num_test": 24, "train.batch_size": 16, "model.embed_dim": 32,
        "data.synthetic.cache_dir": f"{tmp_path}/data", "tracking.uri": f"sqlite:///{tmp_path}/m.db",
        "tracking.artifact_location": f"{tmp_path}/art", **extra,
    })


def tracker_of(tmp_path):
    return Tracker(f"sqlite:///{tmp_path}/m.db")


def test_one_run_per_job_tagged_logged_like_the_plain_loop(tmp_path):
    jobs = [tiny_job(tmp_path, seed) for seed in (0, 1)]
    tags = [{"unitune.role": "final", "unitune.seed": str(j.seed)} for j in jobs]
    results = train_runs(jobs, tags=tags, out=lambda *a: None)

    tracker = tracker_of(tmp_path)
    assert len({r["run_id"] for r in results}) == 2
    for job, job_tags, result in zip(jobs, tags, results):
        run_id = result["run_id"]
        assert tracker.run_status(run_id) == "FINISHED"
        run_tags = tracker.run_tags(run_id)
        assert {k: run_tags[k] for k in job_tags} == job_tags and run_tags["unitune.kind"] == "train"
        # The reference: the plain loop of the same job, nothing logged.
        plain = []
        run_training(job, report=lambda m, d, into=plain: into.append(m), evaluate_test=True)
        losses = dict(tracker.metric_history(run_id, "train_loss"))
        assert [losses[1], losses[2]] == pytest.approx([m["train_loss"] for m in plain[1:]], rel=1e-5)
        for key in ("rsum", "train_time_s"):  # every curve starts at epoch 0
            assert [step for step, _ in tracker.metric_history(run_id, key)] == [0, 1, 2]
        assert dict(tracker.metric_history(run_id, "test_rsum")) == {2: pytest.approx(plain[-1]["test_rsum"])}
        assert result["test_rsum"] == pytest.approx(plain[-1]["test_rsum"])
        assert result["model_uri"] is None
        assert tracker.client.get_run(run_id).data.params["seed"] == str(job.seed)
        files = {a.path for a in tracker.client.list_artifacts(run_id)}
        assert {"model", "demo.yaml", "test_ranks.csv"} <= files  # the test split's per-query ranks
        assert {a.path for a in tracker.client.list_artifacts(run_id, "model")} >= {"model/model.json"}
    # No MLflow model without log_model.
    experiment = tracker.experiment_id("demo")
    assert tracker.client.search_logged_models(experiment_ids=[experiment]) == []


def test_a_failed_run_is_failed_with_its_error_and_was_tagged_from_its_start(tmp_path, monkeypatch):
    seen = {}
    real = train_worker.run_training

    def failing(job, *, report, **kwargs):
        def spy(metrics, directory):
            report(metrics, directory)
            if metrics["epoch"] == 1:  # mid-run: the run exists, RUNNING, already tagged
                tracker = tracker_of(tmp_path)
                (run,) = runs_tagged(tracker, {"study": "s1"})
                seen["status"], seen["tags"] = run.info.status, run.data.tags
                raise RuntimeError("disk on fire")

        return real(job, report=spy, **kwargs)

    monkeypatch.setattr(train_worker, "run_training", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train_runs([tiny_job(tmp_path)], tags=[{"study": "s1"}], out=lambda *a: None)
    assert seen["status"] == "RUNNING" and seen["tags"]["study"] == "s1"
    tracker = tracker_of(tmp_path)
    (run,) = runs_tagged(tracker, {"study": "s1"})
    assert run.info.status == "FAILED"
    assert "disk on fire" in run.data.tags["unitune.error"]


def test_a_diverged_loss_is_one_user_error_line(tmp_path):
    job = tiny_job(tmp_path, **{"optim.lr": 1.0e30, "optim.grad_clip": None, "optim.warmup_epochs": 0})
    with pytest.raises(UserError, match="training failed"):
        train_runs([job], tags=[{"study": "s2"}], out=lambda *a: None)
    (run,) = runs_tagged(tracker_of(tmp_path), {"study": "s2"})
    assert run.info.status == "FAILED"


def test_which_jobs_train_in_this_process(tmp_path):
    import torch

    from unitune.train.runs import in_process

    assert in_process(tiny_job(tmp_path))
    assert in_process(tiny_job(tmp_path, **{"ray.address": "127.0.0.1:6379"}))
    assert not in_process(tiny_job(tmp_path, **{"ray.address": "auto"}))  # a cluster's nodes
    remote = {"ray.address": "10.0.0.5:6379", "tracking.uri": "http://10.0.0.5:5000"}
    assert not in_process(tiny_job(tmp_path, **remote))
    assert not in_process(tiny_job(tmp_path, **{"resources.num_workers": 2}))
    gpu = tiny_job(tmp_path, **{"resources.use_gpu": True})
    assert in_process(gpu) == torch.cuda.is_available()


def test_tags_and_jobs_must_pair(tmp_path):
    with pytest.raises(ValueError, match="2 jobs but 1 tag"):
        train_runs([tiny_job(tmp_path), tiny_job(tmp_path)], tags=[{}])


SCRIPT = """
import sys
from unitune.config import apply_overrides, load_job
from unitune.train.runs import train_runs
job = apply_overrides(load_job(sys.argv[1]), {
    "train.epochs": 500, "data.synthetic.num_train": 48, "data.synthetic.num_val": 8,
    "data.synthetic.num_test": 8, "train.batch_size": 16, "model.embed_dim": 32,
    "data.synthetic.cache_dir": sys.argv[2] + "/data", "tracking.uri": "sqlite:///" + sys.argv[2] + "/m.db",
    "tracking.artifact_location": sys.argv[2] + "/art"})
try:
    train_runs([job], tags=[{"study": "sig"}], out=lambda line: print(line, flush=True))
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


# SIGTERM needs train_runs' handler; SIGINT is Python's KeyboardInterrupt (slow tier).
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])
def test_a_signal_ends_the_run_killed(tmp_path, sig):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(REPO / "jobs/demo.yaml"), str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait until it trains: epoch 0 logged
        if line.startswith("epoch 0/") or time.monotonic() > deadline:
            break
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in rest
    (run,) = runs_tagged(tracker_of(tmp_path), {"study": "sig"})
    assert run.info.status == "KILLED"


@pytest.mark.slow  # the default tier checks one copy through `unitune train` (tests/test_model_registry.py)
def test_with_log_model_the_weights_are_stored_once_and_every_uri_loads_them(tmp_path, monkeypatch):
    import mlflow
    import numpy as np
    import pandas as pd
    import torch

    from unitune.evaluate import load_for_eval
    from unitune.models import load_model
    from unitune.models.registry import WEIGHTS_FILE

    job = tiny_job(tmp_path)
    monkeypatch.chdir(tmp_path)
    (result,) = train_runs([job], tags=[{"study": "m"}], log_model=True, out=lambda *a: None)
    run_id = result["run_id"]
    # One copy of the weights in the whole store (run artifacts and logged models), in the
    # job's artifact location: the MLflow model belongs to the run's experiment.
    assert len(list(tmp_path.rglob(WEIGHTS_FILE))) == 1
    assert len(list((tmp_path / "art").rglob(WEIGHTS_FILE))) == 1
    tracker = tracker_of(tmp_path)
    logged = tracker.client.get_logged_model(result["model_uri"].removeprefix("models:/"))
    assert logged.experiment_id == tracker.client.get_run(run_id).info.experiment_id
    reference = load_model(f"runs:/{run_id}/model", tracking_uri=tracker.uri)
    for model in (load_for_eval(job, run_id=run_id), load_model(result["model_uri"], tracking_uri=tracker.uri)):
        for (key, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), key
    mlflow.set_tracking_uri(tracker.uri)
    try:
        served = mlflow.pyfunc.load_model(result["model_uri"])
    finally:
        mlflow.set_tracking_uri(None)
    emb = served.predict(pd.DataFrame({"caption": ["a red circle"]}))
    tokens = reference.tokenize(["a red circle"])
    with torch.no_grad():
        ref = reference.encode_text(tokens["input_ids"], tokens["attention_mask"]).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-5)
