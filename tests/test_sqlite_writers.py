"""Several writers of one sqlite store (the embedded default): a writer waits for another's
lock instead of failing, and a lock held too long is one line pointing to the server set-up.
(Two whole searches at once on one sqlite store: tests/test_interrupt.py, slow tier.)"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from unitune import cli
from unitune.search.storage import open_storage
from unitune.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
PYSQLITE_DEFAULT_TIMEOUT_S = 5.0   # sqlite3.connect's documented default


def hold_exclusive_lock(db: Path, seconds: float) -> threading.Thread:
    """Another writer: an exclusive transaction on ``db`` for ``seconds``, in a thread."""
    ready = threading.Event()

    def hold():
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        ready.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert ready.wait(10)
    return thread


def test_an_optuna_write_waits_for_another_writer(tmp_path):
    import optuna

    storage = open_storage(Tracker(f"sqlite:///{tmp_path}/mlruns.db"))
    optuna.create_study(study_name="first", storage=storage)   # the database exists
    holder = hold_exclusive_lock(tmp_path / "optuna.db", PYSQLITE_DEFAULT_TIMEOUT_S + 2)
    started = time.monotonic()
    optuna.create_study(study_name="second", storage=storage)  # waits, does not fail
    waited = time.monotonic() - started
    holder.join()
    assert waited > PYSQLITE_DEFAULT_TIMEOUT_S
    assert sorted(optuna.get_all_study_names(storage)) == ["first", "second"]


@pytest.mark.slow
def test_a_store_locked_too_long_names_the_server_set_up(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Tracker(f"sqlite:///{tmp_path}/mlruns.db").client   # the store exists
    holder = hold_exclusive_lock(tmp_path / "mlruns.db", 40)   # longer than MLflow's 20 s busy timeout
    code = cli.main(["search", str(ROOT / "jobs" / "demo.yaml"), f"tracking.uri=sqlite:///{tmp_path}/mlruns.db",
                     "train.batch_size=16", "train.eval_batch_size=16", "data.synthetic.num_train=32", "data.synthetic.num_val=16", "data.synthetic.num_test=16",
                     "data.synthetic.image_size=16", f"data.synthetic.cache_dir={tmp_path}/data"])
    err = capsys.readouterr().err
    holder.join()
    assert code == 2
    line = [x for x in err.splitlines() if x.startswith("unitune: error:")]
    assert len(line) == 1 and "stayed locked by another writer" in line[0] and "docs/cluster.md" in line[0]
