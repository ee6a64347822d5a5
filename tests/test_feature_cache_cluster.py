"""The feature cache on a two-node Ray cluster: each node builds the entries once, in the
directory the driver resolved, on its own disk.

Two real nodes on this machine (`ray start --head` and `ray start --address`, token
authentication, each with its own temp directory and ports). A real second machine has the
same absolute path on another disk; here the second node runs in its own mount namespace
where another directory is bind-mounted on the cache path, so each node sees its own cache
and nothing else. A `unitune search ... ray.address=HOST:PORT` of the demo job with both
towers frozen runs 4 trials, 2 at a time, one CPU per node.

References: the files in each node's cache directory; the nodes' own working directories
(where Ray Tune puts a trial); a cache-off run of one trial's values in this process.

Ray binds the GCS and the raylets to every interface (`127.0.0.1` given to `ray start` on
Linux becomes the machine's address); the token keeps other processes out. The nodes are
stopped by the PIDs this test started (SIGTERM, then their process groups), never `ray stop`.
"""

from __future__ import annotations

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
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two Ray nodes and a 4-trial search: ~3 min on 2 cores

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
UNITUNE = str(Path(sys.executable).parent / "unitune")
ENTRIES = 4  # {train, val} x {visual, text}: both towers frozen whole
SMALL = ["train.epochs=2", "train.batch_size=16", "model.embed_dim=32", "data.synthetic.num_train=64",
         "data.synthetic.num_val=32", "data.synthetic.num_test=16", "data.synthetic.image_size=16",
         "data.augment=false"]
SPACE = """\
metric: rsum
mode: max
num_trials: 4
max_concurrent: 2
seed: 0
params:
  optim.lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2}
fixed:
  model.freeze.projections_only: true
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_ports() -> list[str]:
    flags = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
             "--metrics-export-port", "--node-manager-port", "--object-manager-port"]
    return [arg for flag in flags for arg in (flag, str(free_port()))]


def own_mounts() -> list[str]:
    """``unshare`` arguments for a private mount namespace (root, or a user namespace)."""
    base = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    if shutil.which("unshare") is None or subprocess.run([*base, "true"], capture_output=True).returncode != 0:
        pytest.skip("needs `unshare --mount` (a private mount namespace) to give the second node its own disk")
    return base


def wait_started(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no Ray node after {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to this test's `ray start --block`, then its process group (its own Ray only)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture
def two_nodes(tmp_path):
    """``(gcs address, env with the token, cache dir, node B's disk, {node: temp dir})``."""
    unshare = own_mounts()
    project, disk_b = tmp_path / "project", tmp_path / "disk_b"
    cache = project / ".unitune" / "features"   # what `auto` resolves to in the driver's directory
    cache.mkdir(parents=True)
    disk_b.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH")
           and not k.startswith("UNITUNE_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    temps = {node: tempfile.mkdtemp(prefix=f"ut_fc{node}", dir="/tmp") for node in "ab"}  # short socket paths
    port = free_port()
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
              "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
    head = [RAY, "start", "--head", "--port", str(port), "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
            "--temp-dir", temps["a"], "--resources", '{"node_a": 1}', *common, *node_ports()]
    worker = [RAY, "start", "--address", f"127.0.0.1:{port}", "--temp-dir", temps["b"],
              "--resources", '{"node_b": 1}', *common, *node_ports()]
    # Node B: its own mount namespace, where disk_b is mounted on the cache path.
    worker = [*unshare, "sh", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh",
              str(disk_b), str(cache), *worker]
    logs = {node: tmp_path / f"node_{node}.log" for node in "ab"}
    procs = []
    try:
        for node, cmd in (("a", head), ("b", worker)):
            with open(logs[node], "w") as log:
                procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
            wait_started(procs[-1], logs[node])
        yield f"127.0.0.1:{port}", env, project, disk_b, temps
    finally:
        for proc in reversed(procs):
            stop(proc)
        for temp in temps.values():
            shutil.rmtree(temp, ignore_errors=True)


def entry_files(directory: Path) -> dict[str, dict]:
    """``{entry name: its sidecar's key}`` of the valid-looking entries in ``directory``."""
    return {p.stem: json.loads(p.with_suffix(".json").read_text())["key"]
            for p in sorted(directory.glob("*.safetensors"))}


def test_each_node_builds_the_cache_once_in_the_drivers_directory(two_nodes, tmp_path):
    from mlflow import MlflowClient

    from unitune.config import load_job
    from unitune.train import run_training

    address, env, project, disk_b, temps = two_nodes
    (project / "job.yaml").write_text((REPO / "jobs" / "demo.yaml").read_text()
                                      .replace("../search_spaces/unified.yaml", "space.yaml"))
    (project / "space.yaml").write_text(SPACE)
    search = subprocess.run([UNITUNE, "search", "job.yaml", f"ray.address={address}", *SMALL], cwd=project,
                            env=env, capture_output=True, text=True, timeout=900)
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]

    # Each node's disk holds one set of the same entries: the head's built by the driver
    # before the first trial, node B's by its first trial. No entry anywhere else.
    head_entries, b_entries = entry_files(project / ".unitune" / "features"), entry_files(disk_b)
    assert len(head_entries) == ENTRIES and b_entries == head_entries
    for temp in temps.values():
        assert not list(Path(temp).rglob("*.safetensors"))

    client = MlflowClient(f"sqlite:///{project}/mlruns.db")
    experiment = client.get_experiment_by_name("demo").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`unitune.role` = 'search'")
    assert parent.data.metrics["entries_built"] == ENTRIES
    assert parent.data.tags["unitune.feature_cache_dir"] == str((project / ".unitune" / "features").resolve())
    trials = client.search_runs([experiment], "tags.`unitune.role` = 'trial'")
    assert len(trials) == 4

    # Where each trial ran: Ray Tune's working directory of the trial, in its node's temp dir.
    def node_of(trial_id: str) -> str:
        (node,) = [n for n, temp in temps.items()
                   if list(Path(temp).glob(f"session_*/artifacts/*/*/working_dirs/run_trial_{trial_id}_*"))]
        return node

    built = {"a": 0, "b": 0}
    ran = {"a": [], "b": []}
    for run in trials:
        node = node_of(run.data.tags["unitune.trial_id"])
        ran[node].append(run)
        built[node] += int(run.data.metrics["entries_built"])  # logged at the trial's epoch 0
    assert ran["a"] and ran["b"], {n: len(r) for n, r in ran.items()}
    assert built == {"a": 0, "b": ENTRIES}   # node B built each entry once; the head reused the driver's

    # The trial of node B that built its entries, against its values with the cache off.
    run = next(r for r in ran["b"] if r.data.metrics["entries_built"])
    job = load_job(project / "job.yaml", [*SMALL, "model.freeze.projections_only=true",
                                          f"optim.lr={run.data.params['optim.lr']}", "data.feature_cache=off",
                                          f"data.synthetic.cache_dir={project / '.unitune' / 'data'}"])
    reference = []
    run_training(job, report=lambda metrics, directory: reference.append(dict(metrics)))
    for key in ("rsum", "r1_i2t", "r1_t2i", "train_loss"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        expected = {int(r["epoch"]): r[key] for r in reference if key in r and int(r["epoch"]) in history}
        assert history and expected.keys() == history.keys(), key
        for epoch, value in expected.items():
            assert history[epoch] == pytest.approx(value, abs=1e-4), (key, epoch)
