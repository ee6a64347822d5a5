import http.server
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from unitune import cli, submit
from unitune.config import JobSpec, load_job
from unitune.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "demo.yaml"
TOKEN = "unitune-test-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_token(tmp_path, monkeypatch):
    """A client environment without any Ray address or auth token."""
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.ray/auth_token
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS",
                 "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_dashboard():
    """A stand-in for Ray's dashboard: /api/version behind a bearer token (status 401/403)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            auth = self.headers.get("Authorization")
            if self.path != "/api/version":
                self.send_response(404)
            elif auth is None:
                self.send_response(401)
            elif auth != f"Bearer {TOKEN}":
                self.send_response(403)
            else:
                body = b'{"version": "4", "ray_version": "2.60.0"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)
                return
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# ---- fast: bad inputs --------------------------------------------------------------------

def test_unreachable_address_exits_2_fast_with_one_line(no_token, capsys):
    address = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    code = cli.main(["submit", str(DEMO), "--address", address])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2
    assert elapsed < submit.PROBE_TIMEOUT_S + 3
    assert err.startswith("unitune: error: cannot reach the Ray dashboard at " + address)
    assert err.count("\n") == 1


@pytest.mark.parametrize("command", [["status", "x"], ["logs", "x"], ["logs", "x", "--follow"], ["stop", "x"]])
def test_job_commands_on_unreachable_address_exit_2(no_token, capsys, command):
    assert cli.main([*command, "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach the Ray dashboard" in capsys.readouterr().err


def test_missing_job_and_space_files_exit_2(no_token, tmp_path, capsys):
    assert cli.main(["submit", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: file not found" in capsys.readouterr().err
    assert cli.main(["submit", str(DEMO), "--space", str(tmp_path / "space.yaml")]) == 2
    assert "space.yaml" in capsys.readouterr().err


def test_non_http_address_is_refused(no_token, capsys):
    assert cli.main(["status", "x", "--address", "ray://head:10001"]) == 2
    assert "expected the Ray dashboard's HTTP address" in capsys.readouterr().err


def test_address_comes_from_flag_then_environment(no_token, monkeypatch):
    assert submit.resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://a:8265/")
    assert submit.resolve_address(None) == "http://a:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "https://b:443")
    assert submit.resolve_address(None) == "https://b:443"
    assert submit.resolve_address("http://c:8265") == "http://c:8265"


def test_local_store_on_a_remote_cluster_is_refused_unless_allowed(no_token, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert cli.main(["submit", str(DEMO), "--address", "http://10.1.2.3:8265"]) == 2
    assert "tracking.uri: sqlite:///mlruns.db is a local store" in capsys.readouterr().err
    job = load_job(DEMO)
    plan = submit.plan_submission(job, DEMO, [], address="http://10.1.2.3:8265", allow_local_store=True)
    assert shlex.split(plan.entrypoint)[:3] == ["python", "-m", "unitune"]  # the cluster's Python


def test_plan_runs_search_in_the_uploaded_project(no_token, tmp_path, monkeypatch):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "spaces").mkdir()
    space = (ROOT / "search_spaces" / "unified.yaml").read_text()
    (tmp_path / "spaces" / "s.yaml").write_text(space)
    job_text = DEMO.read_text().replace("../search_spaces/unified.yaml", "../spaces/s.yaml")
    job_text = job_text.replace("name: demo", "name: ${UT_TEST_NAME}")
    (tmp_path / "jobs" / "j.yaml").write_text(job_text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UT_TEST_NAME", "envname")
    monkeypatch.setenv("UNITUNE_SOMETHING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t")
    monkeypatch.setenv("UNRELATED_VAR", "x")
    job = load_job("jobs/j.yaml", ["train.epochs=1"])
    plan = submit.plan_submission(job, Path("jobs/j.yaml"), ["train.epochs=1"],
                                  address="http://127.0.0.1:8265")
    argv = shlex.split(plan.entrypoint)
    # A cluster on this machine runs this very Python; paths are relative to working_dir.
    assert argv[:5] == [sys.executable, "-m", "unitune", "search", "jobs/j.yaml"]
    assert argv[argv.index("--space") + 1] == "spaces/s.yaml"
    assert "train.epochs=1" in argv and "ray.address=auto" in argv
    # The store is this directory's, not a copy inside Ray's session directory.
    assert f"tracking.uri=sqlite:///{tmp_path.resolve()}/mlruns.db" in argv
    assert f"tracking.artifact_location={tmp_path.resolve()}/mlartifacts" in argv
    env = plan.runtime_env
    # Only what the run reads travels (synthetic data: the job and its space).
    assert plan.project == tmp_path.resolve()
    assert plan.files == ["jobs/j.yaml", "spaces/s.yaml"]
    assert "working_dir" not in env and "excludes" not in env
    assert env["env_vars"]["UT_TEST_NAME"] == "envname"
    assert env["env_vars"]["UNITUNE_SOMETHING"] == "1"
    assert env["env_vars"]["MLFLOW_TRACKING_TOKEN"] == "t"
    assert "UNRELATED_VAR" not in env["env_vars"]
    assert plan.metadata["unitune_job"] == "envname"


def test_token_is_sent_only_when_the_cluster_asks(no_token, fake_dashboard, monkeypatch, tmp_path):
    with pytest.raises(UserError, match="requires token authentication and no token was found"):
        submit.probe(fake_dashboard)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong")
    with pytest.raises(UserError, match="refused the auth token from RAY_AUTH_TOKEN"):
        submit.probe(fake_dashboard)
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    assert submit.probe(fake_dashboard) == {"Authorization": f"Bearer {TOKEN}"}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (tmp_path / "tok").write_text(TOKEN + "\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert submit.probe(fake_dashboard) == {"Authorization": f"Bearer {TOKEN}"}
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(TOKEN)  # Ray's default token file
    assert submit.probe(fake_dashboard) == {"Authorization": f"Bearer {TOKEN}"}


def test_a_server_that_is_not_a_ray_dashboard_is_refused(no_token, fake_dashboard):
    with pytest.raises(UserError, match="is not a Ray dashboard"):
        submit.probe(fake_dashboard + "/elsewhere")


# ---- slow: a real local cluster ----------------------------------------------------------

@pytest.fixture
def ray_cluster(request, no_token):
    """A private Ray head on 127.0.0.1 (own temp dir and ports; auth per ``request.param``).

    Yields ``(dashboard_url, env_of_the_cluster)``. Stopped by its own ``ray start --block``
    process (SIGTERM), then its process group, never by ``ray stop`` (that would stop every
    Ray on the machine).
    """
    mode = getattr(request, "param", "disabled")
    temp = tempfile.mkdtemp(prefix="ut_ray", dir="/tmp")  # short: Ray's socket paths are limited
    dashboard = free_port()
    ports = ["--port", "--ray-client-server-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
             "--node-manager-port", "--object-manager-port"]
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
           "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dashboard), "--num-cpus", "2", "--temp-dir", temp,
           "--object-store-memory", str(200 * 1024**2), "--disable-usage-stats"]
    for flag in ports:
        cmd += [flag, str(free_port())]
    env = {**os.environ, "RAY_AUTH_MODE": mode}
    if mode == "token":
        env["RAY_AUTH_TOKEN"] = TOKEN
    log = open(Path(temp) / "ray_start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        import requests

        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (Path(temp) / "ray_start.log").read_text()
            assert time.monotonic() < deadline, "the Ray head did not start in 180 s"
            try:
                requests.get(url + "/api/version", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of this cluster only: its own group
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_status(address: str, job_id: str, wanted: set[str], timeout: float = 120) -> str:
    client = submit.connect(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id))
        if status in wanted:
            return status
        time.sleep(0.5)
    raise AssertionError(f"{job_id} never reached {wanted} (last: {status})")


@pytest.mark.slow
def test_status_logs_stop_on_a_local_cluster(ray_cluster, capsys):
    client = submit.connect(ray_cluster)
    done = client.submit_job(entrypoint="echo unitune-hello; echo done")
    sleeper = client.submit_job(entrypoint="echo started; sleep 300")

    assert wait_for_status(ray_cluster, done, {"SUCCEEDED", "FAILED"}) == "SUCCEEDED"
    assert cli.main(["status", done, "--address", ray_cluster]) == 0
    assert capsys.readouterr().out.startswith(f"{done}: SUCCEEDED")
    assert cli.main(["logs", done, "--address", ray_cluster]) == 0
    assert "unitune-hello\ndone\n" in capsys.readouterr().out
    assert cli.main(["logs", done, "--follow", "--address", ray_cluster]) == 0
    assert "unitune-hello" in capsys.readouterr().out

    wait_for_status(ray_cluster, sleeper, {"RUNNING"})
    assert cli.main(["stop", sleeper, "--address", ray_cluster]) == 0
    assert "stop requested" in capsys.readouterr().out
    assert wait_for_status(ray_cluster, sleeper, {"STOPPED", "FAILED", "SUCCEEDED"}) == "STOPPED"
    assert cli.main(["stop", sleeper, "--address", ray_cluster]) == 0
    assert "already STOPPED" in capsys.readouterr().out

    assert cli.main(["status", "raysubmit_nosuchjob", "--address", ray_cluster]) == 2
    assert "no job 'raysubmit_nosuchjob'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("ray_cluster", ["token"], indirect=True)
def test_token_authenticated_cluster(ray_cluster, monkeypatch, capsys):
    assert cli.main(["status", "x", "--address", ray_cluster]) == 2
    assert "requires token authentication" in capsys.readouterr().err
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    assert cli.main(["status", "x", "--address", ray_cluster]) == 2
    assert "refused the auth token" in capsys.readouterr().err
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    job_id = submit.connect(ray_cluster).submit_job(entrypoint="echo authed")
    assert wait_for_status(ray_cluster, job_id, {"SUCCEEDED", "FAILED"}) == "SUCCEEDED"
    assert cli.main(["logs", job_id, "--follow", "--address", ray_cluster]) == 0
    assert "authed" in capsys.readouterr().out


# Stands in for the cluster's Python: runs `unitune validate` with exactly the arguments
# `unitune search` gets, in the uploaded working directory, and shows where it ran.
FAKE_PYTHON_CODE = ("import os, sys; from unitune.cli import main; print('cwd', os.getcwd()); "
                    "print('argv', sys.argv[1:]); sys.exit(main(['validate', *sys.argv[4:]]))")


def _project(tmp_path: Path) -> tuple[Path, JobSpec]:
    """A project: job, space, data inside it, and what a run does not read (a virtualenv,
    stores, notes); the demo job pointed at the data directory and a local checkpoint."""
    root = tmp_path / "proj"
    for rel, size in [("jobs/j.yaml", 10), ("spaces/s.yaml", 10), ("data/ann.jsonl", 10),
                      ("data/images/a.png", 10), ("data/images/sub/b.png", 10), ("data/videos/c.mp4", 10),
                      ("models/ckpt/weights.bin", 10), (".venv/lib/big.so", 150_000), ("mlruns.db", 10),
                      ("notes.txt", 10), (".git/objects/x", 10)]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * size)
    (tmp_path / "outside.png").write_bytes(b"x")
    job = load_job(DEMO)
    job = job.model_copy(update={
        "data": job.data.model_copy(update={"root": str(root / "data"), "annotations": str(root / "data/ann.jsonl")}),
        "model": job.model.model_copy(update={"checkpoint": str(root / "models/ckpt")})})
    return root, job


def test_upload_files_are_the_job_its_space_and_what_they_reference(tmp_path):
    root, job = _project(tmp_path)
    files = submit.upload_files(job, root / "jobs/j.yaml", root / "spaces/s.yaml", root)
    assert files == ["data/ann.jsonl", "data/images/a.png", "data/images/sub/b.png", "data/videos/c.mp4",
                     "jobs/j.yaml", "models/ckpt/weights.bin", "spaces/s.yaml"]


def test_upload_files_honour_excludes_but_always_send_the_job_and_space(tmp_path):
    root, job = _project(tmp_path)
    args = (job, root / "jobs/j.yaml", root / "spaces/s.yaml", root)
    assert submit.upload_files(*args, excludes=["*.mp4", "data/images", "*.yaml", "ckpt"]) == [
        "data/ann.jsonl", "jobs/j.yaml", "spaces/s.yaml"]
    assert submit.upload_files(*args, excludes=["videos/"]) == [
        "data/ann.jsonl", "data/images/a.png", "data/images/sub/b.png", "jobs/j.yaml",
        "models/ckpt/weights.bin", "spaces/s.yaml"]


def test_upload_files_leave_out_data_outside_the_project_and_unset_variables(tmp_path):
    root, job = _project(tmp_path)
    outside = job.model_copy(update={"data": job.data.model_copy(update={
        "root": "${SOME_DATA_ROOT}", "annotations": str(tmp_path / "outside.png")})})
    assert submit.upload_files(outside, root / "jobs/j.yaml", root / "spaces/s.yaml", root) == [
        "jobs/j.yaml", "models/ckpt/weights.bin", "spaces/s.yaml"]


def test_stage_copies_only_the_selected_files(tmp_path):
    root, job = _project(tmp_path)
    plan = submit.Submission("true", {"env_vars": {}}, {}, root, ["data/images/sub/b.png", "jobs/j.yaml"])
    env = submit.stage(plan, tmp_path / "staged")
    assert env == {"env_vars": {}, "working_dir": str(tmp_path / "staged")}
    got = sorted(str(p.relative_to(tmp_path / "staged")) for p in (tmp_path / "staged").rglob("*") if p.is_file())
    assert got == ["data/images/sub/b.png", "jobs/j.yaml"]


def test_an_upload_over_the_dashboard_limit_is_explained_in_one_line(tmp_path):
    root, job = _project(tmp_path)
    plan = submit.Submission("true", {}, {}, root, [".venv/lib/big.so", "jobs/j.yaml"])
    exc = RuntimeError("Request failed with status code 413: Maximum request body size 104857600 exceeded.")
    text = submit.upload_error(exc, plan, "http://h:8265")
    assert "\n" not in text and "2 files" in text and "largest: .venv/lib/big.so" in text
    assert "--exclude" in text and "100 MiB" in text
    other = submit.upload_error(RuntimeError("boom\nmore"), plan, "http://h:8265")
    assert other == "Ray cluster http://h:8265 rejected the job: boom"


@pytest.mark.slow
def test_submit_uploads_the_project_and_runs_unitune_there(ray_cluster, tmp_path, monkeypatch, capsys):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "jobs" / "demo.yaml").write_text(DEMO.read_text())
    (tmp_path / "search_spaces" / "unified.yaml").write_text((ROOT / "search_spaces" / "unified.yaml").read_text())
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "big").write_bytes(b"0" * 1024)  # excluded from the upload
    (tmp_path / "notes.txt").write_text("not read by the run")  # neither
    monkeypatch.chdir(tmp_path)
    python = f"{sys.executable} -c {shlex.quote(FAKE_PYTHON_CODE)}"
    assert cli.main(["submit", "jobs/demo.yaml", "--address", ray_cluster, "--python", python,
                     "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    job_id = out.split()[1]
    assert f"dashboard: {ray_cluster}/#/jobs/{job_id}" in out
    assert wait_for_status(ray_cluster, job_id, {"SUCCEEDED", "FAILED"}) == "SUCCEEDED"
    logs = submit.connect(ray_cluster).get_job_logs(job_id)
    cwd = Path(logs.split("cwd ", 1)[1].splitlines()[0])
    assert cwd != tmp_path and (cwd / "jobs" / "demo.yaml").is_file()  # Ray's copy of the project
    assert not (cwd / ".venv").exists() and not (cwd / "notes.txt").exists()
    assert "uploaded from" in out and "2 files" in out
    assert "'search', 'jobs/demo.yaml', '--space', 'search_spaces/unified.yaml'" in logs
    assert "train:     2 epochs" in logs and "OK" in logs
    assert f"tracking:  sqlite:///{tmp_path.resolve()}/mlruns.db" in logs  # this directory's store


TINY = ["search.num_trials=2", "search.max_concurrent=1", "train.epochs=1", "train.batch_size=16",
        "train.eval_batch_size=64", "model.embed_dim=32", "data.synthetic.num_train=64",
        "data.synthetic.num_val=32", "data.synthetic.num_test=16", "data.synthetic.image_size=16"]


@pytest.mark.slow
def test_submitted_demo_search_logs_into_this_directory(ray_cluster, tmp_path, monkeypatch, capsys):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "jobs" / "demo.yaml").write_text(DEMO.read_text())
    (tmp_path / "search_spaces" / "unified.yaml").write_text((ROOT / "search_spaces" / "unified.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert cli.main(["submit", "jobs/demo.yaml", "--address", ray_cluster, *TINY]) == 0
    job_id = capsys.readouterr().out.split()[1]
    status = wait_for_status(ray_cluster, job_id, {"SUCCEEDED", "FAILED", "STOPPED"}, timeout=600)
    logs = submit.connect(ray_cluster).get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")  # the store of this directory
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 3
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in runs if r not in parents)


@pytest.mark.slow
def test_submitted_search_stopped_then_resumed(ray_cluster, tmp_path, monkeypatch, capsys):
    """`unitune stop` of a submitted search (SIGTERM to its driver) leaves it interrupted;
    `unitune submit --resume` continues it to exactly num_trials runs, each epoch once."""
    from mlflow import MlflowClient

    (tmp_path / "jobs").mkdir()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "jobs" / "demo.yaml").write_text(DEMO.read_text())
    (tmp_path / "search_spaces" / "unified.yaml").write_text((ROOT / "search_spaces" / "unified.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    tiny = [a for a in TINY if not a.startswith(("search.num_trials", "train.epochs"))]
    args = ["jobs/demo.yaml", "--address", ray_cluster, "search.num_trials=3", "train.epochs=2", *tiny]
    assert cli.main(["submit", *args]) == 0
    job_id = capsys.readouterr().out.split()[1]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    deadline = time.monotonic() + 600
    while True:   # stop it once a trial has finished and another has started
        assert time.monotonic() < deadline, submit.connect(ray_cluster).get_job_logs(job_id)[-3000:]
        exp = client.get_experiment_by_name("demo") if (tmp_path / "mlruns.db").exists() else None
        runs = client.search_runs([exp.experiment_id], "tags.`unitune.role` = 'trial'") if exp else []
        states = [r.data.tags.get("unitune.state") for r in runs]
        if len(runs) >= 2 and any(s in ("completed", "stopped_by_asha") for s in states):
            break
        time.sleep(1)
    assert cli.main(["stop", job_id, "--address", ray_cluster]) == 0
    wait_for_status(ray_cluster, job_id, {"STOPPED", "FAILED", "SUCCEEDED"}, timeout=120)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`unitune.role` = 'search'")
    assert parent.data.tags["unitune.state"] == "interrupted" and parent.info.status == "KILLED"

    capsys.readouterr()
    assert cli.main(["submit", *args, "--resume"]) == 0
    resumed = capsys.readouterr().out.split()[1]
    status = wait_for_status(ray_cluster, resumed, {"SUCCEEDED", "FAILED", "STOPPED"}, timeout=600)
    assert status == "SUCCEEDED", submit.connect(ray_cluster).get_job_logs(resumed)[-3000:]
    (parent,) = client.search_runs([exp.experiment_id], "tags.`unitune.role` = 'search'")
    assert parent.data.tags["unitune.state"] == "completed" and parent.info.status == "FINISHED"
    runs = client.search_runs([exp.experiment_id], "tags.`unitune.role` = 'trial'")
    assert len(runs) == 3
    for run in runs:
        state = run.data.tags["unitune.state"]
        assert state in ("completed", "stopped_by_asha") and run.info.status == "FINISHED"
        last = 2 if state == "completed" else int(run.data.tags["unitune.stopped_at_epoch"])
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "rsum")) == list(range(last + 1))


def test_submit_resume_to_a_remote_cluster_needs_search_storage(tmp_path, monkeypatch):
    job = JobSpec.model_validate({"name": "demo", "search": {"space": str(ROOT / "search_spaces" / "unified.yaml")},
                                  "tracking": {"uri": "http://mlflow.example:5000"}})
    with pytest.raises(UserError, match="search.storage: not set"):
        submit.plan_submission(job, DEMO, [], address="http://10.1.2.3:8265", resume=True)
    ok = submit.plan_submission(job.model_copy(update={"search": job.search.model_copy(update={"storage": "s3://b/u"})}),
                                DEMO, [], address="http://10.1.2.3:8265", resume=True)
    assert ok.entrypoint.endswith("--resume") and "search.storage" not in ok.entrypoint
    local = submit.plan_submission(job, DEMO, [], address="http://127.0.0.1:8265")
    assert f"search.storage={(Path.cwd() / '.unitune/tune').resolve()}" in local.entrypoint
    assert local.runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "60"


def test_a_server_store_keeps_its_artifacts_on_the_server(no_token, tmp_path, monkeypatch):
    # tracking.artifact_location unset follows the URI: with an http:// store the job names
    # none (the server's served artifacts), so a submitted search writes no `mlartifacts`
    # folder in its job's temporary directory; an explicit location is kept.
    monkeypatch.chdir(tmp_path)
    server = "http://10.1.2.3:5000"
    job = load_job(DEMO, [f"tracking.uri={server}"])
    assert job.tracking.artifact_location is None
    plan = submit.plan_submission(job, DEMO, [f"tracking.uri={server}"], address="http://10.1.2.3:8265")
    argv = shlex.split(plan.entrypoint)
    assert not any(a.startswith("tracking.artifact_location") for a in argv)
    job_there = load_job(DEMO, [a for a in argv if "=" in a and not a.startswith("-")])
    assert job_there.tracking.uri == server and job_there.tracking.artifact_location is None
    assert load_job(DEMO).tracking.artifact_location == "mlartifacts"  # a local store: beside it
    kept = load_job(DEMO, [f"tracking.uri={server}", "tracking.artifact_location=s3://b/art"])
    assert kept.tracking.artifact_location == "s3://b/art"
