"""scripts/local_cluster.py replaces one private Ray function on its second node
(``loopback_ray_start``): this fails loudly when Ray changes under it."""

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import ray

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "local_cluster.py"


def _script():
    spec = importlib.util.spec_from_file_location("local_cluster", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_private_ray_function_is_the_one_checked():
    script = _script()
    module, name = script.RAY_PRIVATE
    assert ray.__version__ == script.RAY_CHECKED, (
        f"Ray {ray.__version__}: re-check loopback_ray_start in scripts/local_cluster.py against this Ray "
        f"(checked with {script.RAY_CHECKED}), then update RAY_CHECKED")
    services = importlib.import_module(module)
    assert list(inspect.signature(getattr(services, name)).parameters) == ["host"]
    # the call site the patch is for: `ray start` resolves --node-ip-address through it
    from ray.scripts import scripts as cli

    assert f"services.{name}(node_ip_address)" in inspect.getsource(cli)


def test_the_patched_command_runs_ray_s_cli_with_loopback_kept(tmp_path):
    command = _script().loopback_ray_start()
    assert command[:2] == [sys.executable, "-c"]
    run = subprocess.run([*command, "start", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "--node-ip-address" in run.stdout, run.stderr[-2000:]
    probe = command[2].split("from ray.scripts.scripts")[0] + (
        "print(services.resolve_ip_for_localhost('127.0.0.1'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "127.0.0.1", out.stderr[-2000:]
