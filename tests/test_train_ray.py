"""``unitune train`` end to end on a local Ray with an MLflow sqlite store.

Slow (a Ray start and worker start-up take about a minute on a loaded 2-core machine):
run with ``pytest -m slow tests/test_train_ray.py``.
"""

import csv

import pytest
import ray
import torch

from unitune.cli import main
from unitune.config import load_job
from unitune.models import load_model
from unitune.tracking import Tracker
from unitune import cluster
from unitune.train import run_training
from unitune.train.worker import FAULT_EPOCH_ENV, FAULT_MARKER_ENV

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # One private Ray for the module (whatever RAY_ADDRESS or Ray's temporary directory name):
    # `unitune train` reuses an initialised Ray and leaves it up.
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        assert cluster.init_ray(None)
        yield
        cluster.shutdown_ray()


def overrides(tmp_path, epochs):
    return [f"train.epochs={epochs}", "data.synthetic.num_train=48", "data.synthetic.num_val=24",
            "data.synthetic.num_test=24", "train.batch_size=16", "model.embed_dim=32",
            f"data.synthetic.cache_dir={tmp_path}/data", f"tracking.uri=sqlite:///{tmp_path}/m.db",
            f"tracking.artifact_location={tmp_path}/art"]


def the_run(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db")
    runs = tracker.client.search_runs([tracker.experiment_id("demo")])
    assert len(runs) == 1
    return tracker, runs[0].info.run_id


def test_train_logs_one_mlflow_run_and_a_loadable_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # Ray Train's checkpoints go to ./.unitune/ray
    job_file = str(__import__("pathlib").Path(__file__).parents[1] / "jobs/demo.yaml")
    assert main(["train", job_file, *overrides(tmp_path, 2)]) == 0
    assert "rsum" in capsys.readouterr().out

    tracker, run_id = the_run(tmp_path)
    assert tracker.run_status(run_id) == "FINISHED"
    for key in ("train_loss", "lr", "samples_per_s"):   # training keys: epochs 1 and 2
        assert [step for step, _ in tracker.metric_history(run_id, key)] == [1, 2], key
    for key in ("rsum", "r1_i2t", "medr_t2i", "train_time_s"):   # evaluation from epoch 0 (before training)
        assert [step for step, _ in tracker.metric_history(run_id, key)] == [0, 1, 2], key
    assert [step for step, _ in tracker.metric_history(run_id, "test_rsum")] == [2]
    assert tracker.client.get_run(run_id).data.params["train.epochs"] == "2"
    assert not any((tmp_path / ".unitune/ray").iterdir())  # resume checkpoints removed

    # The Ray Train run is the plain loop: same seed, same numbers as run_training.
    plain = []
    run_training(load_job(job_file, overrides(tmp_path, 2)), report=lambda m, d: plain.append(m))
    logged = dict(tracker.metric_history(run_id, "train_loss"))
    assert [logged[1], logged[2]] == pytest.approx([m["train_loss"] for m in plain if m["epoch"] >= 1], rel=1e-5)

    tracker.client.download_artifacts(run_id, "", str(tmp_path / "dl"))
    assert (tmp_path / "dl" / "demo.yaml").is_file()
    # the test split's per-query ranks recompute the logged test metrics (a plain count)
    rows = list(csv.DictReader(open(tmp_path / "dl" / "test_ranks.csv")))
    for direction in ("i2t", "t2i"):
        ranks = [int(r["rank"]) for r in rows if r["direction"] == direction]
        for k in (1, 5, 10):
            logged = dict(tracker.metric_history(run_id, f"test_r{k}_{direction}"))[2]
            assert 100.0 * sum(r <= k for r in ranks) / len(ranks) == pytest.approx(logged, abs=1e-9)
    # The model is the run's MLflow model `model` (the weights stored once), by its run URI.
    model = load_model(f"runs:/{run_id}/model", tracking_uri=tracker.uri)
    tokens = model.tokenize(["a small red circle"])
    with torch.no_grad():
        text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        image = model.encode_image(torch.zeros(1, 3, 64, 64))
    assert text.shape == image.shape == (1, 32)


def test_killed_worker_resumes_from_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "fault-happened"
    monkeypatch.setenv(FAULT_EPOCH_ENV, "2")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(marker))
    job_file = str(__import__("pathlib").Path(__file__).parents[1] / "jobs/demo.yaml")
    assert main(["train", job_file, *overrides(tmp_path, 3), "train.max_failures=1"]) == 0
    assert marker.is_file()  # rank 0 did exit at the start of epoch 2
    tracker, run_id = the_run(tmp_path)
    assert tracker.run_status(run_id) == "FINISHED"
    # Epoch 1 came from the first worker group, 2 and 3 from the restarted one: each once.
    assert [step for step, _ in tracker.metric_history(run_id, "train_loss")] == [1, 2, 3]
    times = [value for _, value in tracker.metric_history(run_id, "train_time_s")]
    assert times == sorted(times)  # cumulative time carried over in the checkpoint


def test_a_job_error_fails_at_once_without_a_retry(tmp_path, monkeypatch, capsys):
    # A diverging loss is the job's (deterministic) error: train.max_failures is for workers
    # that died, so the run is not trained again from its last checkpoint.
    monkeypatch.chdir(tmp_path)
    job_file = str(__import__("pathlib").Path(__file__).parents[1] / "jobs/demo.yaml")
    diverge = ["optim.lr=1.0e30", "optim.grad_clip=null", "optim.warmup_epochs=0", "train.max_failures=1"]
    assert main(["train", job_file, *overrides(tmp_path, 2), *diverge]) == 2
    assert "training failed on worker 0" in capsys.readouterr().err
    tracker, run_id = the_run(tmp_path)
    assert tracker.run_status(run_id) == "FAILED"
    # Epoch 0 (before training) is reported once per worker group: a retry reports it again.
    assert [step for step, _ in tracker.metric_history(run_id, "rsum")] == [0]
