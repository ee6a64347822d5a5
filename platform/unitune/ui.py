"""``unitune ui [JOB]``: the MLflow UI on a job's tracking store.

The UI is MLflow's own server (``python -m mlflow server``) started as a child process
of this Python, so this module never imports mlflow. It starts in a few seconds because
it runs one web worker and leaves MLflow's server-side job runner (Huey consumers,
which only serve GenAI features) off. It binds 127.0.0.1 unless ``--host`` says
otherwise. Ctrl-C (or SIGTERM) stops the server and every process it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from unitune.errors import UserError
from unitune.probes import probe_database
from unitune.stores import DEFAULT_ARTIFACTS, DEFAULT_STORE, local_store_path, resolve_uri, sqlite_path

START_TIMEOUT_S = 120.0

# MLflow's server starts Huey consumers for server-side jobs (GenAI scorers, trace
# rollups) unless this is off; they double the start time and browsing needs none.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "job",
        nargs="?",
        help="job YAML whose tracking store to browse "
        f"(default: the demo store {DEFAULT_STORE} in the current directory)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")


def run(args: argparse.Namespace) -> int:
    """Start the UI, print its URL, serve until Ctrl-C. Returns the exit code (0)."""
    uri, artifacts = store_of(args.job)
    if urlparse(uri).scheme in ("http", "https"):
        print(f"The job's store is an MLflow server; open {uri}", flush=True)
        return 0
    probe_database(uri)  # an unreachable database: refused in seconds, not after the server's retries
    started = time.monotonic()
    proc = start_ui(uri, artifacts, host=args.host, port=args.port)
    # SIGTERM takes the same path as Ctrl-C, so the server never outlives this process.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        print(
            f"MLflow UI on {uri}: {runs_url(ui_url(args.host, args.port), experiment_of(args.job))}  "
            f"(ready in {time.monotonic() - started:.1f} s; Ctrl-C stops it)",
            flush=True,
        )
        code = proc.wait()
        if code != 0:
            raise UserError(f"the MLflow UI server exited with code {code}")
    except KeyboardInterrupt:
        print("stopping the MLflow UI", flush=True)
    finally:
        stop_ui(proc)
        signal.signal(signal.SIGTERM, previous)
    return 0


def experiment_of(job_path: str | None) -> str | None:
    """The job's experiment name (``None`` without a job: the store's newest experiment)."""
    if job_path is None:
        return None
    from unitune.config import load_job  # the job schema (pydantic): not for --help

    return load_job(job_path).experiment


def runs_url(base: str, experiment: str | None = None) -> str:
    """The experiment's runs page on the UI at ``base`` (``experiment`` None: the most
    recently updated one), in MLflow's model-training view: MLflow 3's UI opens an
    experiment on its GenAI pages unless the URL asks for ``workflowType=machine_learning``.
    ``base`` itself when the server knows no such experiment."""
    import json

    try:
        if experiment is not None:
            query = urllib.parse.urlencode({"experiment_name": experiment})
            with urllib.request.urlopen(
                f"{base}ajax-api/2.0/mlflow/experiments/get-by-name?{query}", timeout=10
            ) as response:
                found = [json.load(response)["experiment"]]
        else:
            body = json.dumps({"max_results": 100, "order_by": ["last_update_time DESC"]}).encode()
            request = urllib.request.Request(
                f"{base}ajax-api/2.0/mlflow/experiments/search", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                found = [e for e in json.load(response).get("experiments", []) if e["name"] != "Default"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return base
    if not found:
        return base
    return f"{base}#/experiments/{found[0]['experiment_id']}/runs?workflowType=machine_learning"


def store_of(job_path: str | None) -> tuple[str, str | None]:
    """The tracking URI and artifact location of a job file (or of the demo store).

    Relative sqlite/file paths are made absolute against the current directory, the
    directory a search run from here logs into.

    Raises:
        UserError: the job file is invalid, or its local store does not exist yet.
    """
    artifacts: str | None
    if job_path is None:
        uri, artifacts = DEFAULT_STORE, DEFAULT_ARTIFACTS
        where = f"the demo store {DEFAULT_STORE}"
    else:
        from unitune.config import load_job  # the job schema (pydantic): not for --help

        job = load_job(job_path)
        uri, artifacts = job.tracking.uri, job.tracking.artifact_location
        where = f"{job_path}: tracking.uri {uri}"
    uri = resolve_uri(uri)
    db = local_store_path(uri) if sqlite_path(uri) is not None else None
    if db is not None and not db.exists():
        raise UserError(f"{where}: no MLflow store at {db} (run a search from this directory first)")
    if artifacts is not None and "://" not in artifacts:
        artifacts = str(Path(artifacts).resolve())
    return uri, artifacts


def server_command(uri: str, artifacts: str | None, *, host: str, port: int) -> list[str]:
    """The ``mlflow server`` command line: one worker, this venv's Python."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if artifacts is not None:
        cmd += ["--default-artifact-root", artifacts]
    return cmd


def start_ui(
    uri: str, artifacts: str | None, *, host: str = "127.0.0.1", port: int = 5000, timeout: float = START_TIMEOUT_S
) -> subprocess.Popen:
    """Start the MLflow server in its own process group and wait until it answers HTTP.

    Returns the ``mlflow server`` process; pass it to :func:`stop_ui`.

    Raises:
        UserError: the port is taken, or the server exits or stays silent for ``timeout`` s.
    """
    if not _port_free(host, port):
        raise UserError(f"port {port} on {host} is in use (another MLflow UI?); pass --port")
    # Its own session: a terminal's Ctrl-C reaches only us, and we stop the whole group.
    proc = subprocess.Popen(
        server_command(uri, artifacts, host=host, port=port),
        env={**os.environ, **SERVER_ENV},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = ui_url(host, port) + "health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop_ui(proc)
            raise UserError(f"the MLflow UI on {uri} exited with code {proc.returncode} (its output is above)")
        if _answers(url):
            return proc
        time.sleep(0.2)
    stop_ui(proc)
    raise UserError(f"the MLflow UI on {uri} did not answer {url} within {timeout:.0f} s")


def stop_ui(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL after ``timeout`` s."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; uvicorn workers in the group may still be exiting.
        if _group_gone(proc.pid, wait):
            break
    proc.wait()


def ui_url(host: str, port: int) -> str:
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def _port_free(host: str, port: int) -> bool:
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    with socket.socket(socket.AF_INET6 if ":" in probe else socket.AF_INET) as sock:
        sock.settimeout(2)
        return sock.connect_ex((probe, port)) != 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
