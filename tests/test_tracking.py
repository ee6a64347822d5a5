import math
import sys

import pytest

from unitune.errors import UserError
from unitune.record import Record
from unitune.stores import is_remote_address as is_remote_ray_address
from unitune.stores import resolve_uri
from unitune.tracking import Tracker


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return Tracker(f"sqlite:///{root}/mlruns.db", str(root / "artifacts"))


def test_resolve_uri_makes_local_paths_absolute(tmp_path):
    assert resolve_uri("sqlite:///m.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/m.db"
    assert resolve_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert resolve_uri("mlruns", tmp_path) == (tmp_path.resolve() / "mlruns").as_uri()
    assert resolve_uri("http://host:5000", tmp_path) == "http://host:5000"


@pytest.mark.parametrize("address,remote", [
    (None, False), ("local", False), ("auto", False), ("127.0.0.1:6379", False),
    ("localhost:6379", False), ("ray://10.0.0.5:10001", True), ("10.0.0.5:6379", True),
    ("ray://head.cluster:10001", True),
])
def test_remote_ray_address(address, remote):
    assert is_remote_ray_address(address) is remote


def test_local_store_refused_with_remote_ray(tracker):
    with pytest.raises(UserError, match="mlruns.db.*remote cluster"):
        tracker.check("ray://10.0.0.5:10001")
    tracker.check(None)
    Tracker("http://example.invalid:5000").uri  # no connection until used


def test_unreachable_store_names_the_uri(tmp_path):
    (tmp_path / "not_a_dir").write_text("")
    bad = Tracker(f"sqlite:///{tmp_path}/not_a_dir/x.db")
    with pytest.raises(UserError, match="not_a_dir/x.db"):
        bad.check()


def test_runs_params_tags_and_parent(tracker):
    parent = tracker.start_run("exp", "search-1", tags={"unitune.search_id": "s1"})
    child = tracker.start_run("exp", "trial-a", tags={"unitune.trial_id": "a"}, parent_run_id=parent)
    assert tracker.experiment_id("exp") == tracker.experiment_id("exp")
    assert Record(tracker).run("exp", None, {"unitune.trial_id": "a"}).run_id == child
    assert Record(tracker).run("exp", None, {"unitune.trial_id": "it's-missing"}) is None
    assert tracker.run_tags(child)["mlflow.parentRunId"] == parent
    tracker.log_params(child, {"loss.margin": 0.2, "loss.mining": "topk"})
    tracker.log_params(child, {"loss.margin": 0.2})  # idempotent on resume
    assert tracker.client.get_run(child).data.params == {"loss.margin": "0.2", "loss.mining": "topk"}
    tracker.set_tags(child, {"unitune.state": "completed"})
    assert tracker.run_status(child) == "RUNNING"
    tracker.end_run(child, "KILLED")
    assert tracker.run_status(child) == "KILLED"
    with pytest.raises(ValueError):
        tracker.end_run(parent, "DONE")


def test_metrics_history_and_non_finite_values_are_kept(tracker):
    run = tracker.start_run("exp", "curves")
    for step, value in [(1, 10.0), (2, 30.0), (3, 20.0)]:
        tracker.log_metrics(run, {"rsum": value}, step=step)
    assert tracker.metric_history(run, "rsum") == [(1, 10.0), (2, 30.0), (3, 20.0)]
    tracker.log_metrics(run, {"epochs_to_target": math.inf, "seconds_to_target": -math.inf,
                              "auc": math.nan}, step=3)
    got = tracker.get_metrics(run)
    assert got["epochs_to_target"] == math.inf
    assert got["seconds_to_target"] == -math.inf
    assert math.isnan(got["auc"])
    # What the store itself holds is never "missing": inf sorts after every finite value.
    raw = tracker.client.get_run(run).data.metrics
    assert raw["epochs_to_target"] >= sys.float_info.max
    assert tracker.run_tags(run)["unitune.inf.epochs_to_target"] == "+inf"


def test_artifacts_file_and_directory(tracker, tmp_path):
    run = tracker.start_run("exp", "art")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("b")
    tracker.log_artifact(run, tmp_path / "a.txt")
    tracker.log_artifact(run, tmp_path / "d", "plots")
    names = {f.path for f in tracker.client.list_artifacts(run)}
    assert names == {"a.txt", "plots"}
    assert [f.path for f in tracker.client.list_artifacts(run, "plots")] == ["plots/b.txt"]


def test_deleted_experiment_is_a_user_error(tracker):
    exp_id = Tracker(tracker.uri).experiment_id("gone")
    tracker.client.delete_experiment(exp_id)
    with pytest.raises(UserError, match="'gone'.*deleted"):
        Tracker(tracker.uri).experiment_id("gone")


def test_new_experiments_are_marked_as_model_training(tmp_path):
    from unitune.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/m.db")
    exp_id = tracker.experiment_id("kind")
    assert tracker.client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_version_flag(capsys):
    import pytest

    from unitune import __version__
    from unitune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["-V"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"unitune {__version__}"


@pytest.mark.parametrize("value", [None, True, False, 0, 3, 0.25, 1e-4, "all", "hinge_mean"])
def test_a_logged_param_reads_back_as_the_value_it_was(value):
    from unitune.tracking import _param_str, param_value

    assert param_value(_param_str(value)) == value and type(param_value(_param_str(value))) is type(value)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:  # a port the kernel just gave out: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("command", ["results", "export", "ui", "eval"])
def test_an_unreachable_database_store_is_refused_in_seconds(command, tmp_path, monkeypatch, capsys):
    # A real PostgreSQL URL to a closed port: one bounded connection, not MLflow's engine
    # retries (minutes); one line on stderr, the password masked.
    import time

    from unitune.cli import main

    monkeypatch.chdir(tmp_path)
    url = f"postgresql://u:pw@127.0.0.1:{_closed_port()}/db"
    job = tmp_path / "job.yaml"
    job.write_text(f"name: pg\ntracking: {{uri: '{url}'}}\n")
    argv = {"results": ["results", "--tracking-uri", url], "export": ["export", "--store", url],
            "ui": ["ui", str(job)], "eval": ["eval", str(job), "--run", "0" * 32]}[command]
    started = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and elapsed <= 15, (code, elapsed, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("unitune: error: tracking.uri: database store")
    assert "pw" not in err and "u:***@127.0.0.1" in err
