"""What the terminal shows: library logs in a file, numbers for people, the trials table
sorted by the metric (fast; no Ray, no MLflow run)."""

import io
import logging
from types import SimpleNamespace

import pytest

from unitune import terminal


@pytest.mark.parametrize("value, text", [
    (0.175034884505077, "0.175"), (2.0, "2"), (445.83, "445.8"), (0.0015463658665632544, "0.00155"),
    (12.537438246641637, "12.5"), (7, "7"), (None, "-"), (float("inf"), "inf"), ("all", "all"),
    (False, "False"), (-0.5, "-0.5"), (150.0, "150"),
])
def test_numbers_are_rounded_for_people(value, text):
    assert terminal.num(value) == text


def test_duration():
    assert terminal.duration(65.4) == "0:01:05"
    assert terminal.duration(3 * 3600 + 7) == "3:00:07"
    assert terminal.duration(None) == "-"


def test_library_info_goes_to_the_log_file_and_user_warnings_stay(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    chatty = logging.getLogger("mlflow.store.db.utils")
    own = logging.StreamHandler(io.StringIO())   # a library's own terminal handler
    logging.getLogger("mlflow").addHandler(own)
    path = terminal.open_log("search")
    try:
        assert own not in logging.getLogger("mlflow").handlers
        chatty.info("Creating initial MLflow database tables...")
        logging.getLogger("ray.train").warning("Failed to send resource request for train-1: GetTimeoutError")
        logging.getLogger("optuna").warning("the storage is locked; retrying")
        print("Configuration for experiment", end="")
        with terminal.to_log():
            print("\nView detailed results here: /x")
    finally:
        written = terminal.close_log()
    err = capsys.readouterr()
    assert written == path.relative_to(tmp_path) and path.parent == tmp_path / ".unitune" / "logs"
    text = path.read_text()
    assert "Creating initial MLflow database tables" in text and "View detailed results" in text
    assert "GetTimeoutError" in text
    assert "Creating initial" not in err.err and "GetTimeoutError" not in err.err
    assert "optuna: WARNING: the storage is locked; retrying" in err.err
    assert "View detailed" not in err.out


def test_no_transformers_progress_bar_after_open_log(tmp_path):
    """The feature cache's model load printed transformers' "Loading weights" bar in a search."""
    import os
    import subprocess
    import sys

    code = ("from pathlib import Path; from unitune import terminal; terminal.open_log('t', Path('.')); "
            "from transformers.utils import logging; print(logging.is_progress_bar_enabled())")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_nothing_logged_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    terminal.open_log("validate")
    assert terminal.close_log() is None
    assert not list((tmp_path / ".unitune" / "logs").iterdir())


def _callback(rows, mode="max"):
    from unitune.search.live import DriverCallback

    setup = SimpleNamespace(metric="rsum", mode=mode, search_id="demo-unified-1")
    recorder = SimpleNamespace(setup=setup, budget=6, runs={})
    space = SimpleNamespace(params={"loss.margin": None, "loss.warmup_epochs": None}, num_trials=len(rows))
    cb = DriverCallback(recorder, space)
    cb.rows = {r["name"]: {"config": {"loss.margin": r["margin"]}, "state": r["state"], "name": r["name"],
                           "epoch": r["epoch"], "value": r["best"], "best": r["best"]} for r in rows}
    return cb


def _table_lines(renderable) -> list[str]:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(renderable)
    return console.file.getvalue().splitlines()


ROWS = [dict(name="t00", state="stopped_by_asha", margin=0.175034884505077, epoch=1, best=125.0),
        dict(name="t01", state="completed", margin=0.3911, epoch=6, best=445.8),
        dict(name="t02", state="failed", margin=0.2, epoch=0, best=None),
        dict(name="t03", state="completed", margin=0.22, epoch=6, best=409.4)]
DEMO_PARAMS = ["loss.margin", "loss.gamma", "loss.mining", "loss.topk", "loss.warmup_epochs", "optim.lr"]


@pytest.mark.parametrize("mode, order", [("max", ["t01", "t03", "t00", "t02"]), ("min", ["t00", "t03", "t01", "t02"])])
def test_final_table_is_sorted_by_the_metric_best_first(mode, order):
    lines = _table_lines(_callback(ROWS, mode).render(final=True))
    names = [line.split()[0] for line in lines if line.strip().startswith("t0")]
    assert names == order
    body = "\n".join(lines)
    assert "0.175" in body and "0.175034" not in body       # rounded
    assert "stopped" in body and "stopped_by_asha" not in body
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("demo-unified-1: 4/4 trials done")


def test_eta_from_finished_trials(monkeypatch):
    cb = _callback(ROWS[:2] + [dict(name="t02", state="RUNNING", margin=0.1, epoch=1, best=1.0),
                               dict(name="t03", state="RUNNING", margin=0.1, epoch=1, best=1.0)])
    monkeypatch.setattr(cb, "_elapsed", lambda: 60.0)
    assert cb.eta() == pytest.approx(60.0)   # 2 of 4 done in 60 s: 2 more take about 60 s
    assert "ETA 0:01:00" in cb.headline()


def test_the_demo_table_fits_80_columns_without_cutting_a_cell():
    """The demo space's six parameters with their widest values (make demo on an 80-column terminal)."""
    cb = _callback(ROWS)
    cb.params = DEMO_PARAMS
    config = {"loss.margin": 0.000602, "loss.gamma": 72.31, "loss.mining": "hardest", "loss.topk": 10,
              "loss.warmup_epochs": 2, "optim.lr": 0.000604}
    for row in cb.rows.values():
        row["config"] = config
    lines = _table_lines(cb.render(final=True))
    assert all(len(line) <= 80 for line in lines)
    assert "…" not in "\n".join(lines)
    assert "0.000602" in "\n".join(lines) and "completed" in "\n".join(lines)


def test_text_table_aligns_without_cutting_or_reading_markup():
    long = "loss.margin=0.2, " * 20  # 340 characters: never wrapped or cut
    rows = [["t0", "[bold]x[/bold]", "288.4"], ["t10", long.strip(), "2.5"]]
    lines = terminal.text_table(["trial", "params", "rsum"], rows, [False, False, True]).splitlines()
    assert len(lines) == 3
    assert lines[1].startswith("t0 ") and "[bold]x[/bold]" in lines[1] and long.strip() in lines[2]
    # Reference: left columns start where their header starts; right columns end together.
    assert lines[1].index("[bold]") == lines[2].index("loss.margin") == lines[0].index("params")
    assert len(lines[0]) == len(lines[1]) == len(lines[2])  # rsum right-aligned: one right edge
    assert lines[0].index("params") - len("trial") >= 2  # at least two spaces between columns
