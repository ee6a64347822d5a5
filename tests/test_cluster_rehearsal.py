"""The deployment of docs/cluster.md rehearsed on this machine (slow tier).

One rehearsal cluster for the module (``scripts/local_cluster.py up``): PostgreSQL, an MLflow
server on it with served artifacts, a Ray head and a second Ray node, token authentication,
everything on 127.0.0.1. Searches are submitted with ``unitune submit`` and read back through
the server (``MlflowClient``) and, independently, straight from PostgreSQL's tables.

The tests run in file order: the node-loss test kills the second node, so it comes last.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from unitune import cli, submit

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("local_cluster", ROOT / "scripts" / "local_cluster.py")
local_cluster = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(local_cluster)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(local_cluster.pg_bin_dir() is None,
                       reason="PostgreSQL's server binaries (initdb, postgres) are not installed: "
                              "apt-get install -y postgresql, or scripts/local_cluster.sh up as root"),
]

TINY = ["train.batch_size=16", "train.eval_batch_size=64", "model.embed_dim=32", "data.synthetic.num_train=64",
        "data.synthetic.num_val=32", "data.synthetic.num_test=16", "data.synthetic.image_size=16",
        "tracking.artifact_location=null"]   # the server chooses: mlflow-artifacts:/ (served)
JOB_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def rehearsal():
    root = Path(local_cluster.tempfile.mkdtemp(prefix="unitune-cluster-"))
    try:
        local_cluster.up(root)   # stops what it started if it fails
    except BaseException:
        local_cluster.shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield root
    finally:
        local_cluster.down(root)


@pytest.fixture
def env(rehearsal, tmp_path, monkeypatch):
    """A project directory (the demo job, a space without ASHA so every trial runs its
    epochs) and this process's environment pointed at the rehearsal cluster."""
    values = local_cluster.read_env(rehearsal)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "jobs" / "demo.yaml").write_text((ROOT / "jobs" / "demo.yaml").read_text())
    space = (ROOT / "search_spaces" / "unified.yaml").read_text()
    space = "\n".join("asha: null" if line.startswith("asha:") else line for line in space.splitlines())
    (tmp_path / "search_spaces" / "unified.yaml").write_text(space + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", values["RAY_AUTH_TOKEN"])
    # Forwarded by `unitune submit` (UNITUNE_*): the studies live in the same PostgreSQL.
    monkeypatch.setenv("UNITUNE_OPTUNA_STORAGE", values["UNITUNE_OPTUNA_STORAGE"])
    values["project"] = str(tmp_path)
    values["root"] = str(rehearsal)
    return values


def submit_search(env: dict, capsys, experiment: str, *args: str) -> str:
    argv = ["submit", "jobs/demo.yaml", "--address", env["RAY_DASHBOARD"],
            f"tracking.uri={env['MLFLOW_TRACKING_URI']}", f"tracking.experiment={experiment}", *TINY, *args]
    assert cli.main(argv) == 0
    return capsys.readouterr().out.split()[1]


def wait_job(env: dict, job_id: str, timeout: float = JOB_TIMEOUT_S) -> None:
    client = submit.connect(env["RAY_DASHBOARD"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id))
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            assert status == "SUCCEEDED", client.get_job_logs(job_id)[-4000:]
            return
        time.sleep(2)
    raise AssertionError(f"{job_id} still {status} after {timeout} s:\n{client.get_job_logs(job_id)[-4000:]}")


def mlflow_client(env: dict):
    from mlflow import MlflowClient

    return MlflowClient(env["MLFLOW_TRACKING_URI"])


def runs_of(env: dict, experiment: str, role: str) -> list:
    client = mlflow_client(env)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return list(client.search_runs([exp.experiment_id], f"tags.`unitune.role` = '{role}'", max_results=1000))


def sql(env: dict, query: str, *params) -> list[tuple]:
    """Rows straight from PostgreSQL (MLflow's schema: runs, tags, experiments, metrics)."""
    import psycopg

    url = env["MLFLOW_BACKEND_STORE_URI"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def runs_in_postgres(env: dict, experiment: str) -> dict[str, str | None]:
    """{run id: parent run id or None} of the experiment's active runs, read from the tables."""
    rows = sql(env, "select r.run_uuid, t.value from runs r join experiments e on e.experiment_id = r.experiment_id "
                    "left join tags t on t.run_uuid = r.run_uuid and t.key = 'mlflow.parentRunId' "
                    "where e.name = %s and r.lifecycle_stage = 'active'", experiment)
    return dict(rows)


def nodes(env: dict) -> dict[str, str]:
    """{"head"|"worker": Ray node id}, told apart by the custom resource each node was given."""
    import urllib.request

    req = urllib.request.Request(env["RAY_DASHBOARD"] + "/nodes?view=summary",
                                 headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        summary = json.load(r)["data"]["summary"]
    out = {}
    for node in summary:
        resources = node["raylet"]["resourcesTotal"]
        role = "head" if "rehearsalHead" in resources or "rehearsal_head" in resources else "worker"
        out[role] = node["raylet"]["nodeId"]
    return out


def epochs_logged(client, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "epoch"))


def assert_trials_complete(env: dict, experiment: str, parent, num_trials: int, epochs: int) -> list:
    """``num_trials`` child runs of ``parent``, completed, each epoch 0..epochs once (in
    MLflow's metric history and in PostgreSQL's metrics table)."""
    client = mlflow_client(env)
    children = [r for r in runs_of(env, experiment, "trial") if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
    assert len(children) == num_trials
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["unitune.state"] == "completed", run.data.tags
        assert run.data.tags["unitune.search_id"] == parent.data.tags["unitune.search_id"]
        assert epochs_logged(client, run) == list(range(epochs + 1))
        steps = sql(env, "select step from metrics where run_uuid = %s and key = 'rsum' order by step", run.info.run_id)
        assert [s for (s,) in steps] == list(range(epochs + 1))
    return children


def test_demo_search_on_the_rehearsal_cluster(env, capsys):
    """Every trial's run is in PostgreSQL through the server, artifacts come back through
    the server, and the trials ran on both nodes."""
    started = time.monotonic()
    job_id = submit_search(env, capsys, "rehearsal-demo", "search.num_trials=3", "search.max_concurrent=2",
                           "train.epochs=2")
    wait_job(env, job_id)
    (parent,) = runs_of(env, "rehearsal-demo", "search")
    assert parent.data.tags["unitune.state"] == "completed"
    children = assert_trials_complete(env, "rehearsal-demo", parent, 3, 2)
    in_db = runs_in_postgres(env, "rehearsal-demo")
    assert len(in_db) == 4 and in_db[parent.info.run_id] is None
    assert sorted(r.info.run_id for r in children) == sorted(k for k, v in in_db.items() if v == parent.info.run_id)
    # The study is in PostgreSQL's optuna database, under the search id, one trial per run.
    import optuna

    study = optuna.load_study(study_name=parent.data.tags["unitune.search_id"], storage=env["UNITUNE_OPTUNA_STORAGE"])
    assert len(study.trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert env["PG_PASSWORD"] not in parent.data.tags["unitune.optuna_storage"]
    # Both nodes ran trials.
    node_ids = nodes(env)
    ran_on = {n for r in children for n in r.data.tags["unitune.ray_nodes"].split(",")}
    assert ran_on == {node_ids["head"], node_ids["worker"]}

    # Artifacts: stored by the server under its artifact root, fetched back through it.
    client = mlflow_client(env)
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:/")
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    plots = sorted(n for n in names if n.endswith(".png"))
    assert "plots/curves.png" in plots, names
    local = Path(client.download_artifacts(parent.info.run_id, plots[0], env["project"]))
    on_server = list(Path(env["MLFLOW_ARTIFACTS_DIR"]).rglob(plots[0]))
    assert len(on_server) == 1 and local.read_bytes() == on_server[0].read_bytes()
    search_s = time.monotonic() - started

    # A final `unitune train` on the cluster: its model is a served artifact too.
    import subprocess

    # Joins the head at 127.0.0.1 (see docs/cluster.md, Rehearsal) with the cluster's token.
    train_env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    proc = subprocess.run([sys.executable, "-m", "unitune", "train", "jobs/demo.yaml", f"ray.address={env['RAY_GCS_ADDRESS']}",
                           f"tracking.uri={env['MLFLOW_TRACKING_URI']}", "tracking.experiment=rehearsal-train",
                           "train.epochs=1", *TINY], env=train_env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    exp = client.get_experiment_by_name("rehearsal-train")
    (run,) = client.search_runs([exp.experiment_id])
    model = Path(client.download_artifacts(run.info.run_id, "model", env["project"]))
    fetched = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())
    stored = list(Path(env["MLFLOW_ARTIFACTS_DIR"]).rglob(f"{run.info.run_id}/artifacts/model"))
    assert fetched and len(stored) == 1
    assert fetched == sorted(p.relative_to(stored[0]).as_posix() for p in stored[0].rglob("*") if p.is_file())
    print(f"rehearsal timings: search {search_s:.0f} s, train {time.monotonic() - started - search_s:.0f} s")


def test_two_searches_at_once_on_one_server_and_experiment(env, capsys):
    """Both finish; each search's children point to its own parent; two Optuna studies."""
    import optuna

    jobs = [submit_search(env, capsys, "rehearsal-concurrent", "search.num_trials=2", "search.max_concurrent=1",
                          "train.epochs=2") for _ in range(2)]
    for job_id in jobs:
        wait_job(env, job_id)
    parents = runs_of(env, "rehearsal-concurrent", "search")
    ids = sorted(p.data.tags["unitune.search_id"] for p in parents)
    assert len(parents) == 2 and len(set(ids)) == 2
    all_children = runs_of(env, "rehearsal-concurrent", "trial")
    assert len(all_children) == 4
    for parent in parents:
        assert parent.data.tags["unitune.state"] == "completed"
        assert_trials_complete(env, "rehearsal-concurrent", parent, 2, 2)
    in_db = runs_in_postgres(env, "rehearsal-concurrent")
    assert sorted(v for v in in_db.values() if v) == sorted(
        [p.info.run_id for p in parents for _ in range(2)])   # 2 children per parent, no other parent
    studies = [s for s in optuna.get_all_study_names(env["UNITUNE_OPTUNA_STORAGE"]) if s in ids]
    assert sorted(studies) == ids
    for name in ids:
        trials = optuna.load_study(study_name=name, storage=env["UNITUNE_OPTUNA_STORAGE"]).trials
        assert len(trials) == 2 and all(t.state.is_finished() for t in trials)


def test_tracking_server_restarted_mid_search(env, capsys):
    """The server goes away for a while during a search: the driver's and trials' MLflow
    calls wait and retry (unitune.probes.SERVER_RETRIES), the search completes, and what was
    logged before the restart is all there."""
    client = mlflow_client(env)
    # 4096 items (256 steps an epoch): epochs 2 and 3 outlast the poll below, so the outage
    # falls while trials still log (with TINY's 64 items they could finish before it began).
    job_id = submit_search(env, capsys, "rehearsal-restart", "search.num_trials=2", "search.max_concurrent=2",
                           "train.epochs=3", "data.synthetic.num_train=4096")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:   # a trial has logged an epoch of training
        assert time.monotonic() < deadline
        runs = runs_of(env, "rehearsal-restart", "trial")
        if any(1 in epochs_logged(client, r) for r in runs):
            break
        time.sleep(2)
    before = {r.info.run_id: {k: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)]
                              for k in r.data.metrics} for r in runs}
    assert str(submit.connect(env["RAY_DASHBOARD"]).get_job_status(job_id)) == "RUNNING"
    down_at = time.time()
    local_cluster.stop_group(int(local_cluster.read_env(Path(env["root"]))["MLFLOW_PID"]))
    time.sleep(10)
    local_cluster.restart_mlflow(Path(env["root"]))
    up_at = time.time()   # the outage: down_at..up_at (a restart on a busy machine takes a while)
    assert up_at - down_at < 120, "the outage outlasted unitune's retry bound: no test of waiting it out"
    wait_job(env, job_id)
    (parent,) = runs_of(env, "rehearsal-restart", "search")
    children = assert_trials_complete(env, "rehearsal-restart", parent, 2, 3)
    for run_id, metrics in before.items():   # nothing logged before the restart is lost
        for key, history in metrics.items():
            now = {(m.step, m.value) for m in client.get_metric_history(run_id, key)}
            assert set(history) <= now, (run_id, key)
    # A call made while the server was away was retried and stored: its client-side timestamp
    # lies in the outage.
    stamps = [m.timestamp / 1000 for r in children for m in client.get_metric_history(r.info.run_id, "epoch")]
    assert any(down_at <= t <= up_at for t in stamps), (down_at, up_at, sorted(stamps))


def test_node_loss_mid_trial(env, capsys):
    """The second node's raylet is killed (SIGKILL) while a trial runs there: the search
    finishes, that trial continues from its checkpoint on the head, exactly num_trials child
    runs, each epoch once."""
    import psutil

    client = mlflow_client(env)
    node_ids = nodes(env)
    job_id = submit_search(env, capsys, "rehearsal-node-loss", "search.num_trials=2", "search.max_concurrent=2",
                           "train.epochs=4")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:   # the worker node's trial has a checkpoint (epoch 1 trained) and more to run
        assert time.monotonic() < deadline
        on_worker = [r for r in runs_of(env, "rehearsal-node-loss", "trial")
                     if r.data.tags.get("unitune.ray_nodes") == node_ids["worker"]]
        if on_worker and 1 in epochs_logged(client, on_worker[0]) and 4 not in epochs_logged(client, on_worker[0]):
            break
        time.sleep(1)
    lost = on_worker[0].info.run_id
    starter = psutil.Process(int(env["RAY_WORKER_PID"]))
    (raylet,) = [p for p in starter.children(recursive=True) if p.name() == "raylet"]
    raylet.send_signal(signal.SIGKILL)
    wait_job(env, job_id)
    (parent,) = runs_of(env, "rehearsal-node-loss", "search")
    assert parent.data.tags["unitune.state"] == "completed"
    children = assert_trials_complete(env, "rehearsal-node-loss", parent, 2, 4)
    assert len(runs_in_postgres(env, "rehearsal-node-loss")) == 3
    (moved,) = [r for r in children if r.info.run_id == lost]
    assert moved.data.tags["unitune.ray_nodes"] == f"{node_ids['worker']},{node_ids['head']}"
    # Continued from its checkpoint: Tune's results of that trial on the head start after
    # epoch 1 (a restart from scratch would report epoch 0 there again).
    trial_id = moved.data.tags["unitune.trial_id"]
    search_dir = Path(env["project"]) / ".unitune" / "tune" / parent.data.tags["unitune.search_id"]
    (results,) = [p for p in search_dir.rglob("result.json") if trial_id in p.parent.name]
    reports = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    on_head = [int(r["epoch"]) for r in reports if r.get("ray_node_id") == node_ids["head"]]
    assert on_head and min(on_head) >= 2 and sorted(on_head) == list(range(min(on_head), 5))
