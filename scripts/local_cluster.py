"""A rehearsal of the deployment in docs/cluster.md on this machine, on 127.0.0.1 only.

    python scripts/local_cluster.py up [--dir DIR]     # prints the env file it wrote
    python scripts/local_cluster.py down --dir DIR     # stops exactly what `up` started

``up`` starts, each on a free 127.0.0.1 port:

- PostgreSQL (the Debian package; installed with apt-get when its binaries are missing and
  this runs as root) in a new data directory under DIR, password authentication, with two
  databases: ``mlflow`` (MLflow's backend store) and ``optuna`` (the searches' studies);
- ``mlflow server`` on it with ``--serve-artifacts`` (artifact root DIR/artifacts);
- a Ray head (custom resource ``rehearsal_head``) and a second Ray node
  (``rehearsal_worker``), token authentication on.

It writes DIR/cluster.env (``KEY=value`` lines a shell can source): the URIs, the Ray token
and the PIDs started. ``down`` sends SIGTERM to each PID's process group (each was started
as its own group), then SIGKILL to what is left, and removes DIR. Nothing else is touched:
never ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
ENV_FILE = "cluster.env"
PG_USER = "unitune"
DATABASES = ("mlflow", "optuna")
START_TIMEOUT_S = 600   # each process; a busy 2-core machine starts Ray in minutes
BIN = Path(sys.executable).parent   # mlflow and ray of this Python's environment
# The one private Ray function this rehearsal replaces (see loopback_ray_start), and the Ray
# it was checked against: tests/test_local_cluster.py fails on any other Ray.
RAY_PRIVATE = ("ray._private.services", "resolve_ip_for_localhost")
RAY_CHECKED = "2.60.0"


def loopback_ray_start() -> list[str]:
    """``ray start`` (arguments to append) for a node that joins 127.0.0.1 and stays there.

    On Linux ``ray start`` passes ``--node-ip-address`` and ``--address`` through
    ``ray._private.services.resolve_ip_for_localhost``, which turns 127.0.0.1 into the
    machine's address (and a node whose address is not loopback binds every interface). No
    public option keeps a second node on loopback (the head's single-machine switch refuses
    to add nodes), so this runs Ray's own CLI with that one function replaced by the
    identity, after checking it is still there: a Ray without it stops here with a message
    instead of starting a node on another address.
    """
    module, name = RAY_PRIVATE
    code = (
        f"import importlib, sys; services = importlib.import_module({module!r}); "
        f"sys.exit('local_cluster: Ray has no {module}.{name}: re-check loopback_ray_start') "
        f"if not callable(getattr(services, {name!r}, None)) else None; "
        f"setattr(services, {name!r}, lambda host: host); "
        "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
    )
    return [sys.executable, "-c", code]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def pg_bin_dir() -> Path | None:
    """The directory of PostgreSQL's server binaries (Debian keeps them off PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    return Path(dirs[-1]) if dirs else None


def ensure_postgres() -> Path:
    """PostgreSQL's bin directory, installing the Debian package first when it is missing."""
    found = pg_bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit("local_cluster: PostgreSQL is not installed: apt-get install -y postgresql (as root)")
    print("local_cluster: installing PostgreSQL (apt-get install -y postgresql) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "postgresql"], check=True, env=env, stdout=subprocess.DEVNULL)
    found = pg_bin_dir()
    if found is None:
        sys.exit("local_cluster: apt-get installed postgresql but no initdb was found")
    return found


def _as_user() -> dict:
    """Popen arguments that run PostgreSQL as the ``postgres`` user when this is root
    (it refuses to run as root), else as this user."""
    if os.geteuid() != 0:
        return {}
    import pwd

    entry = pwd.getpwnam("postgres")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _start(cmd: list[str], log: Path, env: dict | None = None, **kwargs) -> int:
    """Start ``cmd`` as its own process group (``down`` stops the group); its PID."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, **kwargs)
    return proc.pid


def _wait(what: str, ready, pid: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if not _alive(pid):
            raise RuntimeError(f"{what} exited; its log {log}:\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start in {START_TIMEOUT_S} s; see {log}")
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)   # reaps it if it is our exited child
        return waited == 0
    except ChildProcessError:   # not our child (down): is it there?
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def _store_ok(url: str) -> bool:
    """The server answers a request that reads its store (its first one is slow: imports and
    the database connection), not only /health."""
    return _http_ok(url + "/api/2.0/mlflow/experiments/search?max_results=1")


def _http_ok(url: str, headers: dict | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_postgres(root: Path, pids: dict, env: dict) -> None:
    bindir = ensure_postgres()
    data, sock = root / "pg", root / "pgsock"
    password = secrets.token_hex(16)
    pwfile = root / "pg.pw"
    pwfile.write_text(password + "\n")
    user = _as_user()
    if user:   # the postgres user owns what PostgreSQL writes
        for path in (root, pwfile):
            os.chown(path, user["user"], user["group"])
    sock.mkdir()
    if user:
        os.chown(sock, user["user"], user["group"])
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--pwfile", str(pwfile),
                    "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"],
                   check=True, stdout=subprocess.DEVNULL, **user)
    pwfile.unlink()
    port = free_port()
    log = root / "postgres.log"
    if user:
        log.touch()
        os.chown(log, user["user"], user["group"])
    pid = _start([str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-c", f"listen_addresses={HOST}",
                  "-c", f"unix_socket_directories={sock}"], log, **user)
    pids["PG_PID"] = pid
    client = {**os.environ, "PGPASSWORD": password}
    psql = [str(bindir / "psql"), "-h", HOST, "-p", str(port), "-U", PG_USER, "-d", "postgres", "-qAt"]
    _wait("PostgreSQL", lambda: subprocess.run([*psql, "-c", "select 1"], env=client,
                                               capture_output=True).returncode == 0, pid, log)
    for db in DATABASES:
        subprocess.run([*psql, "-c", f"create database {db}"], env=client, check=True, capture_output=True)
    base = f"postgresql+psycopg://{PG_USER}:{password}@{HOST}:{port}"
    env.update({"PG_BIN": str(bindir), "PG_PORT": str(port), "PG_USER": PG_USER, "PG_PASSWORD": password,
                "MLFLOW_BACKEND_STORE_URI": f"{base}/mlflow", "UNITUNE_OPTUNA_STORAGE": f"{base}/optuna"})


def start_mlflow(root: Path, pids: dict, env: dict) -> None:
    port = free_port()
    artifacts = root / "artifacts"
    artifacts.mkdir()
    log = root / "mlflow.log"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", env["MLFLOW_BACKEND_STORE_URI"],
           "--serve-artifacts", "--artifacts-destination", str(artifacts),
           "--host", HOST, "--port", str(port), "--workers", "1"]
    pid = _start(cmd, log)
    pids["MLFLOW_PID"] = pid
    url = f"http://{HOST}:{port}"
    _wait("mlflow server", lambda: _store_ok(url), pid, log)
    env.update({"MLFLOW_PORT": str(port), "MLFLOW_TRACKING_URI": url, "MLFLOW_ARTIFACTS_DIR": str(artifacts),
                "MLFLOW_SERVER_CMD": json.dumps(cmd)})


def restart_mlflow(root: Path) -> int:
    """Start the MLflow server again as `up` did (same port and store, after its process
    group was stopped); the env file gets its new PID. Returns the PID."""
    env = read_env(root)
    log = root / "mlflow.log"
    pid = _start(json.loads(env["MLFLOW_SERVER_CMD"]), log)
    _wait("mlflow server", lambda: _store_ok(env["MLFLOW_TRACKING_URI"]), pid, log)
    pids = {k: int(v) for k, v in env.items() if k.endswith("_PID")}
    pids["MLFLOW_PID"] = pid
    write_env(root, {k: v for k, v in env.items() if not k.endswith("_PID")}, pids)
    return pid


def _ray_ports() -> list[str]:
    flags = ["--node-manager-port", "--object-manager-port", "--runtime-env-agent-port",
             "--dashboard-agent-grpc-port", "--dashboard-agent-listen-port", "--metrics-export-port"]
    return [x for flag in flags for x in (flag, str(free_port()))]


def start_ray(root: Path, pids: dict, env: dict) -> None:
    token = secrets.token_hex(32)
    # Ray's socket paths are limited to ~100 characters: a short temp dir of its own.
    temp = tempfile.mkdtemp(prefix="utc_ray", dir="/tmp")
    # A busy machine registers a node slowly (Ray's default wait: 30 s).
    ray_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_raylet_start_wait_time_s": "600"}
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        ray_env.pop(name, None)
    gcs, dashboard = free_port(), free_port()
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats", "--object-store-memory", str(200 * 1024**2)]
    # On Linux, `ray start` turns 127.0.0.1 into the machine's address, and a node whose
    # address is not loopback binds its raylet and agents to every interface. The head keeps
    # 127.0.0.1 with Ray's single-machine switch (meant for macOS/Windows); that switch also
    # refuses to add a node, so the second node is `ray start` with the rewrite turned off
    # (loopback_ray_start): both nodes are 127.0.0.1, told apart by node id and resources.
    head = [str(BIN / "ray"), "start", "--head", "--node-ip-address", HOST, "--port", str(gcs),
            "--dashboard-host", HOST,
            "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
            "--temp-dir", temp, "--resources", json.dumps({"rehearsal_head": 1}), *common, *_ray_ports()]
    log = root / "ray_head.log"
    pids["RAY_HEAD_PID"] = _start(head, log, env={**ray_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    env.update({"RAY_TEMP_DIR": temp, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                "RAY_GCS_ADDRESS": f"{HOST}:{gcs}", "RAY_DASHBOARD": f"http://{HOST}:{dashboard}"})
    auth = {"Authorization": f"Bearer {token}"}
    # The dashboard answers before the head's raylet has registered; a node joining then fails.
    _wait("Ray head", lambda: _nodes_alive(env["RAY_DASHBOARD"], auth) >= 1, pids["RAY_HEAD_PID"], log)
    # Its own temp dir: two nodes in one session directory unpack the job's working_dir into
    # the same folder, and one node's runtime-env agent replaces the other's copy under it.
    worker_temp = tempfile.mkdtemp(prefix="utc_rayw", dir="/tmp")
    env["RAY_WORKER_TEMP_DIR"] = worker_temp
    worker = [*loopback_ray_start(), "start", "--address", f"{HOST}:{gcs}",
              "--temp-dir", worker_temp, "--node-ip-address", HOST, "--resources", json.dumps({"rehearsal_worker": 1}), *common, *_ray_ports()]
    log = root / "ray_worker.log"
    pids["RAY_WORKER_PID"] = _start(worker, log, env=ray_env)
    _wait("second Ray node", lambda: _nodes_alive(env["RAY_DASHBOARD"], auth) >= 2, pids["RAY_WORKER_PID"], log)


def _nodes_alive(dashboard: str, headers: dict) -> int:
    try:
        req = urllib.request.Request(dashboard + "/nodes?view=summary", headers=headers)
        with urllib.request.urlopen(req, timeout=2) as r:
            nodes = json.load(r)["data"]["summary"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(n.get("raylet", {}).get("state") == "ALIVE" for n in nodes)


def write_env(root: Path, env: dict, pids: dict) -> Path:
    path = root / ENV_FILE
    lines = [f"{k}={_shell_quote(str(v))}" for k, v in {**env, **pids}.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def read_env(root: Path) -> dict[str, str]:
    """The ``KEY=value`` lines of DIR/cluster.env."""
    import shlex

    out = {}
    for line in (root / ENV_FILE).read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = shlex.split(value)[0] if value else ""
    return out


def stop_group(pid: int, timeout: float = 30) -> None:
    """SIGTERM to the process group ``pid`` leads, then SIGKILL to what is left of it."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            _alive(pid)   # reap our own child
            time.sleep(0.2)


def up(root: Path) -> Path:
    pids: dict[str, int] = {}
    env: dict[str, str] = {"CLUSTER_DIR": str(root)}
    try:
        start_postgres(root, pids, env)
        start_mlflow(root, pids, env)
        start_ray(root, pids, env)
    except BaseException:
        for pid in reversed(list(pids.values())):
            stop_group(pid)
        for key in ("RAY_TEMP_DIR", "RAY_WORKER_TEMP_DIR"):
            shutil.rmtree(env.get(key, root / "none"), ignore_errors=True)
        raise
    return write_env(root, env, pids)


def down(root: Path) -> None:
    env = read_env(root)
    for key in ("RAY_WORKER_PID", "RAY_HEAD_PID", "MLFLOW_PID", "PG_PID"):
        if env.get(key):
            stop_group(int(env[key]))
    for key in ("RAY_TEMP_DIR", "RAY_WORKER_TEMP_DIR"):
        shutil.rmtree(env.get(key, root / "none"), ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, help="where everything lives (up: a new temporary directory)")
    args = parser.parse_args(argv)
    if args.action == "up":
        root = args.dir or Path(tempfile.mkdtemp(prefix="unitune-cluster-"))
        root.mkdir(parents=True, exist_ok=True)
        print(up(root.resolve()))
        return 0
    if args.dir is None or not (args.dir / ENV_FILE).is_file():
        parser.error(f"down needs --dir DIR holding the {ENV_FILE} that `up` wrote")
    down(args.dir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
