"""``unitune train`` bookkeeping without starting Ray: MLflow status on errors, helpers."""

import pytest

from unitune.cli import main
from unitune.errors import UserError
from unitune.tracking import Tracker
from unitune.train import run as train_run
from unitune.train.loop import NonFiniteLossError


def args(tmp_path):
    return ["train", "jobs/demo.yaml", f"tracking.uri=sqlite:///{tmp_path}/m.db",
            f"tracking.artifact_location={tmp_path}/art", f"data.synthetic.cache_dir={tmp_path}/data"]


def only_run(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db")
    runs = tracker.client.search_runs([tracker.experiment_id("demo")])
    assert len(runs) == 1
    return tracker, runs[0].info.run_id


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setattr(train_run, "init_ray", lambda address, **kwargs: False)
    monkeypatch.setattr(train_run, "check_fits", lambda job, address: None)   # no cluster to ask


def test_failure_marks_run_failed_with_error(tmp_path, monkeypatch, no_ray):
    def boom(*a, **k):
        raise RuntimeError("trainer exploded")

    monkeypatch.setattr(train_run, "build_trainer", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        main(args(tmp_path))
    tracker, run_id = only_run(tmp_path)
    assert tracker.run_status(run_id) == "FAILED"
    assert "trainer exploded" in tracker.run_tags(run_id)["unitune.error"]
    assert tracker.client.get_run(run_id).data.params["loss.margin"] == "0.2"


def test_ctrl_c_marks_run_killed(tmp_path, monkeypatch, capsys, no_ray):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_run, "build_trainer", interrupted)
    assert main(args(tmp_path)) == 130
    tracker, run_id = only_run(tmp_path)
    assert tracker.run_status(run_id) == "KILLED"


class FakeWorkerGroupError(Exception):
    def __init__(self, failures):
        super().__init__("Training failed due to worker errors: <long remote traceback>")
        self.worker_failures = failures


def test_worker_user_errors_become_one_line():
    err = train_run.worker_user_error(FakeWorkerGroupError({1: UserError("x.png: corrupt image\ntrace"),
                                                              0: RuntimeError("other")}))
    assert str(err) == "training failed on worker 1: x.png: corrupt image"
    err = train_run.worker_user_error(FakeWorkerGroupError({0: NonFiniteLossError("training loss is nan")}))
    assert "training loss is nan" in str(err)
    assert train_run.worker_user_error(FakeWorkerGroupError({0: RuntimeError("bug")})) is None
    assert train_run.worker_user_error(RuntimeError("no workers")) is None


def test_flatten_and_numeric():
    assert train_run.flatten({"a": {"b": 1, "c": {"d": None}}, "e": "x"}) == {"a.b": 1, "a.c.d": None, "e": "x"}
    assert train_run.numeric({"epoch": 3, "rsum": 1, "ok": True, "name": "x", "lr": 0.5}) == {"rsum": 1.0, "lr": 0.5}


def test_cache_dir_is_fixed_at_load_time(tmp_path, monkeypatch):
    # Tune and Train run trials/workers in their own directories: the synthetic cache must
    # stay where the working directory was when the job was loaded.
    from pathlib import Path

    from unitune.config import load_job

    demo = Path(__file__).parents[1] / "jobs/demo.yaml"
    monkeypatch.chdir(tmp_path)
    job = load_job(demo)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = train_run.worker_config(job, evaluate_test=True)
    assert config["job"]["data"]["synthetic"]["cache_dir"] == str(tmp_path / ".unitune/data")
    assert config["evaluate_test"] is True
