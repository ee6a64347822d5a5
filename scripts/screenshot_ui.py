"""Screenshot the MLflow UI's runs page of a search, in headless Chromium.

    python scripts/screenshot_ui.py --store sqlite:///mlruns.db --experiment demo --out docs/images/mlflow_runs.png
    python scripts/screenshot_ui.py --out /tmp/runs.png      # a dummy search in a temp store

Starts the UI the way ``unitune ui`` does (``unitune.ui.start_ui``), opens
``#/experiments/<id>/runs`` in headless Chromium, waits until the React app has rendered
the runs, expands each search (parent run) to show its trials, closes the Assistant panel
MLflow opens on a first visit, and saves a screenshot (all through the DevTools protocol).
Needs Debian's ``chromium`` (``apt-get install chromium``).
Without ``--store``, a dummy search (a parent run and two trial runs with per-epoch
metrics) is logged with mlflow into a temporary sqlite store.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from unitune.ui import start_ui, stop_ui

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
# The expander of a parent run's row, and the Assistant panel MLflow opens on a first visit.
EXPAND_RUNS = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'
CLOSE_ASSISTANT = '[data-component-id="mlflow.assistant.chat_panel.close"]'
CHART_SEARCH = 'input[placeholder="Search metric charts"]'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="tracking URI (default: a dummy search in a temp sqlite store)")
    parser.add_argument("--experiment", default="demo", help="experiment name (default: demo)")
    parser.add_argument("--out", default="mlflow_runs.png", help="PNG to write")
    parser.add_argument("--view", default="TABLE", choices=["TABLE", "CHART"],
                        help="the runs table or the metric charts (default TABLE)")
    parser.add_argument("--charts", metavar="TEXT",
                        help="CHART view: show only the charts whose metric name matches TEXT (e.g. rsum)")
    parser.add_argument("--size", default="1400,900", help="window size W,H")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds the page gets after the runs are expanded (default 3)")
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("screenshot_ui: chromium not found (apt-get install chromium)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ut_shot") as tmp:
        store = args.store or dummy_store(Path(tmp), args.experiment)
        port = free_port()
        proc = start_ui(store, str(Path(tmp) / "artifacts"), port=port)
        try:
            base = f"http://127.0.0.1:{port}"
            url = (f"{base}/#/experiments/{experiment_id(base, args.experiment)}/runs"
                   f"?workflowType=machine_learning&compareRunsMode={args.view}")
            out = Path(args.out).resolve()
            out.parent.mkdir(parents=True, exist_ok=True)
            shot = time.monotonic()
            png = asyncio.run(capture(browser, url, Path(tmp) / "chromium", args.size, args.settle, args.charts))
            out.write_bytes(png)
        finally:
            stop_ui(proc)
    print(f"{out}: {url} (browser {time.monotonic() - shot:.1f} s, total {time.monotonic() - started:.1f} s)")
    return 0


async def capture(browser: str, url: str, profile: Path, size: str, settle: float,
                  charts: str | None = None) -> bytes:
    """Open ``url`` in headless Chromium, expand the parent runs, close the Assistant
    panel, filter the charts by ``charts`` and return a PNG of the window (Chrome DevTools
    Protocol over a websocket)."""
    import aiohttp  # installed with ray[default]

    proc = subprocess.Popen([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                             "--remote-debugging-port=0", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port = await _devtools_port(profile / "DevToolsActivePort", proc)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                page = next(t for t in await response.json() if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = itertools.count(1)

                async def call(method: str, **params) -> dict:
                    key = next(ids)
                    await ws.send_json({"id": key, "method": method, "params": params})
                    while True:
                        message = await ws.receive_json(timeout=60)
                        if message.get("id") == key:
                            if "error" in message:
                                raise RuntimeError(f"{method}: {message['error']}")
                            return message["result"]

                async def js(expression: str):
                    result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
                    return result["result"].get("value")

                await call("Page.navigate", url=url)
                deadline = time.monotonic() + 120
                while not await js(f"document.querySelectorAll('{EXPAND_RUNS}').length > 0"):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{url}: no parent run rendered within 120 s")
                    await asyncio.sleep(0.5)
                await js(f"document.querySelectorAll('{EXPAND_RUNS}').forEach(b => b.click());"
                         f"document.querySelector('{CLOSE_ASSISTANT}')?.click()")
                if charts:   # React reads the value through the input's native setter and event
                    await js(f"const i = document.querySelector('{CHART_SEARCH}');"
                             "const set = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set;"
                             f"set.call(i, {json.dumps(charts)}); i.dispatchEvent(new Event('input', {{bubbles: true}}))")
                await asyncio.sleep(settle)
                return base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


async def _devtools_port(port_file: Path, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("chromium did not open its DevTools port")
        await asyncio.sleep(0.2)
    return int(port_file.read_text().split()[0])


def dummy_store(directory: Path, experiment: str) -> str:
    """Log a small fake search (parent + 2 trials, 6 epochs each) into a new sqlite store."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{directory / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(experiment, artifact_location=str(directory / "artifacts"))
    parent = client.create_run(exp, run_name="search-demo", tags={"unitune.role": "search"}).info.run_id
    for i, (margin, gamma, rate) in enumerate([(0.1, 20.0, 0.9), (0.3, 50.0, 0.6)]):
        run = client.create_run(exp, run_name=f"trial_{i:05d}",
                                tags={"mlflow.parentRunId": parent, "unitune.trial_state": "completed"})
        rid = run.info.run_id
        for key, value in {"loss.margin": margin, "loss.gamma": gamma, "loss.mining": "all"}.items():
            client.log_param(rid, key, value)
        for epoch in range(1, 7):
            rsum = 300 * (1 - math.exp(-rate * epoch))
            client.log_metric(rid, "rsum", rsum, step=epoch)
            client.log_metric(rid, "train_loss", 4 * math.exp(-rate * epoch), step=epoch)
        client.set_terminated(rid)
    client.set_terminated(parent)
    return uri


def experiment_id(base: str, name: str) -> str:
    query = urllib.parse.urlencode({"experiment_name": name})
    with urllib.request.urlopen(f"{base}/ajax-api/2.0/mlflow/experiments/get-by-name?{query}",
                                timeout=30) as response:
        return json.load(response)["experiment"]["experiment_id"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
