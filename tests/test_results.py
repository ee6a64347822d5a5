"""``unitune results`` and ``unitune.results`` against a store this test writes itself with
the MLflow client (parent and child runs, their tags, params and metric histories), so every
expected row is known here, not computed by the code under test."""

import io
import json
import math

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from unitune import results
from unitune import tags as T
from unitune.cli import main

A, B = "demo-unified-aaaa1111", "demo-unified-bbbb2222"   # B is the older search
# name, state, epochs_run tag, params, rsum per epoch from 0, convergence metrics, error
TRIALS_A = [
    ("t00 all m=0.175", "completed", 3,
     {"loss.margin": 0.175034884505077, "loss.mining": "all", "optim.lr": 0.000312345},
     [100.0, 200.0, 250.0, 240.0], {"epochs_to_target": 2, "seconds_to_target": 12.4567,
                                    "epochs_to_90pct_best": 2, "normalized_auc": 0.41234}, None),
    ("t01 hardest m=0.3", "stopped_by_asha", 1, {"loss.margin": 0.3, "loss.mining": "hardest", "optim.lr": 0.001},
     [100.0, 150.0], {"epochs_to_target": 4, "seconds_to_target": math.nan,
                      "epochs_to_90pct_best": 4, "normalized_auc": 0.0833}, None),
    ("t02 topk m=0.05", "failed", 1, {"loss.margin": 0.05, "loss.mining": "topk", "optim.lr": 0.002},
     [100.0, math.nan], {}, "training loss is nan"),
    ("t03 all m=0.2", "running", None, {"loss.margin": 0.2, "loss.mining": "all", "optim.lr": 0.0005},
     [100.0, 300.0], {}, None),
]
TRIALS_B = [
    ("t00 all m=0.1", "completed", 3, {"loss.margin": 0.1, "loss.mining": "all", "optim.lr": 0.001},
     [90.0, 150.0, 170.0, 180.0], {"epochs_to_target": 4, "seconds_to_target": math.nan,
                                   "epochs_to_90pct_best": 3, "normalized_auc": 0.25}, None),
    ("t01 all m=0.3", "interrupted", 2, {"loss.margin": 0.3, "loss.mining": "all", "optim.lr": 0.002},
     [90.0, 110.0, 120.0], {}, None),
]


def write_search(client, exp_id, search_id, trials, start):
    parent = client.create_run(exp_id, run_name=search_id, start_time=start,
                               tags={T.SEARCH: search_id, T.ROLE: "search", T.STATE: "completed"})
    client.log_param(parent.info.run_id, "metric", "rsum")
    client.log_param(parent.info.run_id, "mode", "max")
    for i, (name, state, epochs, params, curve, speed, error) in enumerate(trials):
        tags = {"mlflow.parentRunId": parent.info.run_id, T.SEARCH: search_id, T.ROLE: "trial",
                T.TRIAL: f"{search_id[-4:]}_{i:05d}", T.STATE: state}
        if epochs is not None:
            tags[T.EPOCHS_RUN] = str(epochs)
        if error:
            tags[T.ERROR] = error
        run = client.create_run(exp_id, run_name=name, start_time=start + 1 + i, tags=tags)
        rid = run.info.run_id
        for key, value in params.items():
            client.log_param(rid, key, value)
        client.log_batch(rid, metrics=[Metric("rsum", v, 0, step) for step, v in enumerate(curve)]
                         + [Metric(k, float(v), 0, len(curve) - 1) for k, v in speed.items()])
        if state != "running":
            client.set_terminated(rid, T.STATUS_OF_STATE[state])
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('results')}/m.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("demo")
    write_search(client, exp, B, TRIALS_B, start=1_000)
    write_search(client, exp, A, TRIALS_A, start=2_000)
    return uri


def cli(*argv, capsys):
    code = main(["results", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_trials_dataframe(store):
    frame = results.trials(A, tracking_uri=store)
    assert frame.attrs["search_id"] == A and frame.attrs["metric"] == "rsum" and frame.attrs["mode"] == "max"
    # Best first by the one rule: the finished trials by best rsum (250, 150: the first row is
    # the trial `unitune export` picks), then the others by best rsum (running 300, failed 100).
    assert list(frame["run_name"]) == ["t00 all m=0.175", "t01 hardest m=0.3", "t03 all m=0.2", "t02 topk m=0.05"]
    assert list(frame["state"]) == ["completed", "stopped_by_asha", "running", "failed"]
    assert list(frame["best_rsum"]) == [250.0, 150.0, 300.0, 100.0]
    assert list(frame["best_epoch"]) == [2, 1, 1, 0]
    assert list(frame["last_rsum"]) == [240.0, 150.0, 300.0, 100.0]   # the failed trial's NaN epoch is skipped
    assert list(frame["epochs_run"]) == [3, 1, 1, 1]   # the running trial: its last logged epoch
    assert frame.loc[0, "config/loss.margin"] == 0.175034884505077
    assert frame.loc[0, "config/loss.mining"] == "all"
    assert frame.loc[0, "seconds_to_target"] == 12.4567 and frame.loc[0, "normalized_auc"] == 0.41234
    assert math.isnan(frame.loc[2, "epochs_to_target"]) and math.isnan(frame.loc[1, "seconds_to_target"])
    assert frame.loc[3, "error"] == "training loss is nan"
    # No SEARCH: the newest search in the store.
    assert results.trials(tracking_uri=store).attrs["search_id"] == A


def test_compare_dataframe(store):
    frame = results.compare([A, B], tracking_uri=store)
    assert list(frame["search_id"]) == [A, B]
    a, b = frame.iloc[0], frame.iloc[1]
    # Finished trials only (completed, stopped by ASHA): A 250 and 150, B 180.
    assert (a["best"], a["median"], a["best_trial"]) == (250.0, 200.0, "t00 all m=0.175")
    assert (b["best"], b["median"], b["best_trial"]) == (180.0, 180.0, "t00 all m=0.1")
    counts = ("trials", "completed", "stopped_by_asha", "failed", "running", "interrupted")
    assert tuple(a[c] for c in counts) == (4, 1, 1, 1, 1, 0)
    assert (b["trials"], b["completed"], b["interrupted"]) == (2, 1, 1)
    assert (a["trial_epochs"], b["trial_epochs"]) == (3 + 1 + 1 + 1, 3 + 2)


def test_table_is_rounded_and_sorted(store, capsys):
    code, out, _ = cli("--tracking-uri", store, capsys=capsys)   # the newest search
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"search {A} (experiment demo): 4 trials, by best rsum (max)"
    assert lines[1].split() == ["trial", "state", "margin", "mining", "lr", "best", "rsum", "last", "rsum",
                                "epochs", "epochs", "to", "target", "s", "to", "target", "auc"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["t00", "t01", "t03", "t02"]
    t00 = lines[2]
    for shown in ("0.175 ", "0.000312", " 250 ", " 240 ", " 3 ", " 12.5 ", " 0.412"):
        assert shown in t00 + " ", shown
    assert "0.17503" not in out and "3.0 " not in out
    assert lines[4].split()[-4:] == ["1", "-", "-", "-"]   # the running trial: no convergence speed yet


def test_csv_and_json_keep_every_digit(store, capsys):
    code, out, _ = cli(A, "--tracking-uri", store, "--format", "csv", capsys=capsys)
    assert code == 0
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame["run_name"])[:2] == ["t00 all m=0.175", "t01 hardest m=0.3"]
    assert frame.loc[0, "config/loss.margin"] == 0.175034884505077
    code, out, _ = cli(A, "--tracking-uri", store, "--format", "json", capsys=capsys)
    records = json.loads(out)
    assert [r["best_rsum"] for r in records] == [250.0, 150.0, 300.0, 100.0]
    assert records[0]["config/optim.lr"] == 0.000312345 and records[2]["epochs_to_target"] is None


def test_sort_by_convergence_speed(store, capsys):
    code, out, _ = cli(A, "--tracking-uri", store, "--sort", "epochs_to_target", "--format", "csv", capsys=capsys)
    assert code == 0
    frame = pd.read_csv(io.StringIO(out))
    # Fewest epochs first; the trials without a value last, among them the best rsum first.
    assert list(frame["run_name"]) == ["t00 all m=0.175", "t01 hardest m=0.3", "t03 all m=0.2", "t02 topk m=0.05"]


def test_compare_table(store, capsys):
    code, out, _ = cli("--compare", A, B, "--tracking-uri", store, capsys=capsys)
    assert code == 0
    head, row_a, row_b = out.splitlines()
    assert head.split()[:6] == ["search", "state", "metric", "best", "median", "trials"]
    assert row_a.split()[:8] == [A, "completed", "rsum", "(max)", "250", "200", "4", "1"]
    assert row_b.split()[:6] == [B, "completed", "rsum", "(max)", "180", "180"]


@pytest.mark.parametrize("argv, words", [
    (["nope"], ["no search 'nope'"]),
    (["--compare", A, "nope"], ["no search 'nope'"]),
    ([A, "--sort", "bogus"], ["--sort", "'bogus'"]),
])
def test_bad_input_is_one_line(store, capsys, argv, words):
    code, out, err = cli(*argv, "--tracking-uri", store, capsys=capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("unitune: error: ")
    for word in words:
        assert word in err


def test_missing_store_is_one_line(tmp_path, capsys):
    code, _, err = cli("--tracking-uri", f"sqlite:///{tmp_path}/none.db", capsys=capsys)
    assert code == 2 and f"no MLflow store at {tmp_path}/none.db" in err
    assert not (tmp_path / "none.db").exists()
