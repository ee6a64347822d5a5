import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from unitune import ui
from unitune.errors import UserError

# `unitune ui` as its own process, the way a terminal runs it (Ctrl-C = SIGINT to it).
UI_MAIN = ("import argparse, sys; from unitune import ui; p = argparse.ArgumentParser(); "
           "ui.add_arguments(p); sys.exit(ui.run(p.parse_args(sys.argv[1:])))")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line or environment holds ``text`` (uvicorn workers get the
    store through the environment)."""
    pids = []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and any(text.encode() in (proc / part).read_bytes()
                                           for part in ("cmdline", "environ")):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_missing_demo_store_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="mlruns.db"):
        ui.store_of(None)
    assert not (tmp_path / "mlruns.db").exists()  # browsing never creates an empty store


def test_relative_store_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns.db").touch()
    uri, artifacts = ui.store_of(None)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    assert artifacts == str(tmp_path.resolve() / "mlartifacts")


def test_server_command_binds_the_given_host_with_one_worker():
    cmd = ui.server_command("sqlite:////x/m.db", "/x/art", host="127.0.0.1", port=5123)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--default-artifact-root") + 1] == "/x/art"


def test_port_in_use_is_a_user_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port}"):
            ui.start_ui(f"sqlite:///{tmp_path}/m.db", None, port=port)
    assert not (tmp_path / "m.db").exists()


@pytest.mark.slow  # 7 s on an idle machine, up to 40 s on a busy one (schema creation)
def test_ui_serves_the_store_and_ctrl_c_stops_every_process(tmp_path):
    (tmp_path / "mlruns.db").touch()  # an empty file is an empty sqlite database
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", UI_MAIN, "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "MLflow UI on" in line:
                break
        else:
            pytest.fail(f"unitune ui exited with {proc.wait()} before printing its URL")
        ready_s = time.monotonic() - started
        url = f"http://127.0.0.1:{port}/"
        assert url in line
        with urllib.request.urlopen(url + "health", timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(url, timeout=10) as response:
            assert "<html" in response.read().decode().lower()
        assert len(processes_mentioning(str(tmp_path / "mlruns.db"))) >= 2  # mlflow + uvicorn...
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)  # EOF: every process holding the pipe has exited
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert processes_mentioning(str(tmp_path / "mlruns.db")) == []  # ...and is gone
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    print(f"unitune ui ready in {ready_s:.1f} s (fresh sqlite store, schema created)")
