"""The MLflow UI over a finished demo search, in headless Chromium (slow tier).

A user opens the URL ``unitune ui`` prints and should find: the experiment on its runs (not
MLflow's GenAI pages), trials whose names differ in their first characters, trials that
ASHA stopped shown like completed ones (not as failures), and the parent run's headline
metrics. What the page must show is read from the store with MLflow's client, not from
unitune. Debian's ``chromium`` is driven by Playwright (``executable_path``: no browser
download); the test is skipped, saying so, where chromium is not installed.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from unitune.ui import runs_url, start_ui, stop_ui

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "demo.yaml"
EXPAND_RUNS = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """A finished demo search (4 trials of 3 epochs, 2 at a time: ASHA stops some) in its own store."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium): this test drives the MLflow UI in it")
    root = tmp_path_factory.mktemp("ui_demo")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "unitune", "search", str(DEMO), f"tracking.uri={uri}",
         f"tracking.artifact_location={root / 'mlartifacts'}", "search.num_trials=4", "train.epochs=3"],
        cwd=root, capture_output=True, text=True, timeout=1200, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root, uri


def _record(uri: str):
    """(experiment id, parent run, trial runs) as MLflow's own client reads the store."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("demo")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("unitune.role") == "search"]
    trials = [r for r in runs if r.data.tags.get("unitune.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 4
    return exp, parents[0], trials


def _listening(pid: int) -> set[str]:
    """Addresses the server's process tree listens on."""
    pids = {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
    return {c.laddr.ip for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


@pytest.fixture(scope="module")
def ui(demo_store):
    root, uri = demo_store
    port = free_port()
    proc = start_ui(uri, str(root / "mlartifacts"), port=port)
    try:
        yield f"http://127.0.0.1:{port}/", proc
    finally:
        stop_ui(proc)
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE


@pytest.fixture(scope="module")
def page(ui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


def test_the_ui_listens_on_loopback_only(ui):
    _, proc = ui
    assert _listening(proc.pid) == {"127.0.0.1"}


def test_the_experiment_opens_on_its_runs(ui, page, demo_store):
    base, _ = ui
    exp, parent, _ = _record(demo_store[1])
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    url = runs_url(base, "demo")      # what `unitune ui JOB` prints
    assert url == f"{base}#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    assert runs_url(base) == url      # the store's newest experiment, without a job
    page.goto(url)
    page.wait_for_selector(EXPAND_RUNS, timeout=120_000)
    assert f"/experiments/{exp.experiment_id}/runs" in page.url and "genai" not in page.url
    assert page.get_by_role("link", name=parent.info.run_name).count() == 1
    body = page.inner_text("body")
    assert "No data available" not in body and "Traces 0" not in body.replace("\n", " ")


def _table_rows(page) -> dict[str, str]:
    """Run name -> the markup of its status icon, for every row of the expanded runs table."""
    page.locator(EXPAND_RUNS).first.click()
    page.wait_for_function("document.querySelectorAll('[role=row] a[href*=\"/runs/\"]').length >= 5", timeout=60_000)
    rows = page.evaluate("""() => [...document.querySelectorAll('[role=row]')]
        .filter(r => r.querySelector('a[href*="/runs/"]'))
        .map(r => [r.querySelector('a[href*="/runs/"]').innerText.trim(),
                   (r.querySelector('[col-id=runDateAndNestInfo] [role=img]') || {}).innerHTML || ''])""")
    return dict(rows)


def test_trials_are_named_distinctly_and_asha_stops_look_like_success(ui, page, demo_store):
    base, _ = ui
    exp, parent, trials = _record(demo_store[1])
    page.goto(runs_url(base, "demo"))
    page.wait_for_selector(EXPAND_RUNS, timeout=120_000)
    icons = _table_rows(page)
    names = {t.info.run_name for t in trials}
    assert names | {parent.info.run_name} == set(icons)
    assert len({n[:3] for n in names}) == len(names)     # distinct in what a narrow column shows
    state = {t.info.run_name: t.data.tags["unitune.state"] for t in trials}
    stopped = [n for n, s in state.items() if s == "stopped_by_asha"]
    completed = [n for n, s in state.items() if s == "completed"]
    assert stopped and completed, f"this demo search should have both kinds of trial: {state}"
    assert all(icons[n] and icons[n] == icons[completed[0]] for n in stopped)   # the same ✓ as a completed one
    run = next(t for t in trials if t.info.run_name == stopped[0])
    page.goto(f"{base}#/experiments/{exp.experiment_id}/runs/{run.info.run_id}")
    page.wait_for_selector("text=About this run", timeout=60_000)
    text = page.inner_text("body")
    assert "Finished" in text and "Failed" not in text and "stopped_by_asha" in text


def test_the_parent_run_shows_the_search_headline_metrics(ui, page, demo_store):
    base, _ = ui
    exp, parent, _ = _record(demo_store[1])
    metrics = parent.data.metrics
    assert {"best_rsum", "trial_epochs", "trials_completed", "trials_stopped_by_asha"} <= set(metrics)
    page.goto(f"{base}#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}")
    page.wait_for_selector("text=About this run", timeout=60_000)
    lines = [line.strip() for line in page.inner_text("body").splitlines()]
    for key in ("best_rsum", "trial_epochs", "trials_completed", "trials_stopped_by_asha"):
        assert key in lines, key
        shown = lines[lines.index(key) + 1]
        assert float(shown) == pytest.approx(metrics[key], rel=1e-6), (key, shown)
