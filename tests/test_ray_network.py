"""The embedded Ray admits no stranger: every socket its processes listen on is loopback, and
a process without this run's token cannot join it or run a task, even from this machine."""

import os
import shutil
import subprocess
import sys

import psutil
import pytest

from unitune import cluster

STRANGER_TIMEOUT_S = 15


@pytest.fixture
def private_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    import ray

    assert cluster.init_ray(None)
    try:
        yield ray
    finally:
        cluster.shutdown_ray()


def ray_pids() -> set[int]:
    """This process and every process it started (the local Ray's GCS, raylet, workers, agents)."""
    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.children(recursive=True))}


def listening(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket of ``pids`` in LISTEN state, per psutil."""
    out = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            out.append((conn.laddr.ip, conn.laddr.port, conn.pid))
    return out


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or ip.startswith("::ffff:127.")


def test_embedded_ray_listens_on_loopback_only(private_ray):
    ray = private_ray

    @ray.remote
    def pid():
        return os.getpid()

    ray.get(pid.remote())   # a worker is up too
    sockets = listening(ray_pids())
    assert len({p for _, _, p in sockets}) >= 3, sockets   # GCS, raylet, a worker at least
    assert [s for s in sockets if not is_loopback(s[0])] == []
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    if shutil.which("ss"):   # the same seen by `ss -ltnp`, the tool a user would use
        text = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        pids = ray_pids()
        for line in text.splitlines():
            owners = {int(part.split("=", 1)[1].rstrip(")")) for part in line.split(",") if part.startswith("pid=")}
            if owners & pids:
                local = line.split()[3]
                assert is_loopback(local.rsplit(":", 1)[0].strip("[]")), line


def test_a_process_without_the_token_cannot_run_a_task(private_ray):
    ray = private_ray
    gcs = ray.get_runtime_context().gcs_address
    code = (f"import ray; ray.init(address={gcs!r}); "
            "print('RAN', ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=10))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    for extra in ({}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):   # none; a wrong one
        try:
            proc = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True,
                                  text=True, timeout=STRANGER_TIMEOUT_S)
            assert proc.returncode != 0 and "RAN" not in proc.stdout, proc.stdout[-500:]
        except subprocess.TimeoutExpired as exc:
            assert b"RAN" not in (exc.stdout or b"")
    # and the run's own processes still work
    assert ray.get(ray.remote(lambda: 42).remote()) == 42


def test_shutdown_restores_the_environment(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")   # would redirect a bare ray.init
    before = {k: os.environ.get(k) for k in cluster._PRIVATE_ENV}
    cluster._saved_env = {k: os.environ.get(k) for k in cluster._PRIVATE_ENV}
    os.environ["RAY_AUTH_MODE"] = "token"
    cluster._restore_env()
    assert {k: os.environ.get(k) for k in cluster._PRIVATE_ENV} == before
