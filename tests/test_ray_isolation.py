"""unitune talks to its own Ray only, whatever other Rays this machine has or had: a stale
``ray_current_cluster`` file naming a dead address, and a live, unrelated ``ray start`` cluster
(started and stopped here, by its process group). ``unitune train`` and ``unitune search``
succeed and their output names no other address."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_resume import write_job

pytestmark = pytest.mark.slow
RAY_TMP = Path(tempfile.gettempdir()) / "ray"
CURRENT = RAY_TMP / "ray_current_cluster"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stale_pointer():
    """Ray's "latest cluster" file naming a port nobody listens on."""
    saved = CURRENT.read_text() if CURRENT.exists() else None
    address = f"127.0.0.1:{free_port()}"
    RAY_TMP.mkdir(parents=True, exist_ok=True)
    CURRENT.write_text(address)
    yield address
    if saved is None:
        CURRENT.unlink(missing_ok=True)
    else:
        CURRENT.write_text(saved)


@pytest.fixture
def foreign_cluster():
    """An unrelated live Ray head on this machine (its own session, stopped by its group)."""
    saved = CURRENT.read_text() if CURRENT.exists() else None
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    ray_bin = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=1", "--include-dashboard=false",
                             "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, "ray start failed"
            time.sleep(1)
    else:
        pytest.fail("the foreign Ray head did not come up")
    yield f"127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    if saved is None:
        CURRENT.unlink(missing_ok=True)
    else:
        CURRENT.write_text(saved)


def run_unitune(tmp_path: Path, *args) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "unitune", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def assert_isolated(out: str, other: str) -> None:
    port = other.rsplit(":", 1)[1]
    assert f":{port}" not in out, [line for line in out.splitlines() if f":{port}" in line][:5]
    assert "multiple active Ray" not in out and "Connecting to latest cluster" not in out
    # what a helper bound to another Ray shows: it waits for a GCS that is not this run's
    for symptom in ("Timed out while waiting for GCS", "RpcError", "PlacementGroupCleaner"):
        assert symptom not in out, [line for line in out.splitlines() if symptom in line][:5]


@pytest.mark.parametrize("other", ["stale_pointer", "foreign_cluster"])
def test_train_and_search_ignore_other_rays(tmp_path, request, other):
    address = request.getfixturevalue(other)
    job = write_job(tmp_path, epochs=1, num_trials=2)
    out = run_unitune(tmp_path, "train", str(job), "train.epochs=1")
    assert_isolated(out, address)
    out = run_unitune(tmp_path, "search", str(job), "--quiet")
    assert_isolated(out, address)
