"""The record layer's one "best trial" rule, seen by every reader: for one finished search,
the search summary's best trial, the parent run's best-trial tags (the driver's headline),
the first row of ``unitune results`` and the trial ``unitune export`` picks are the same
trial, also when the best value of the search belongs to a failed trial (never the best)
or to a trial ASHA stopped (finished: it may be). The store is written here with the
Tracker, so every expected trial comes from the table below and a plain loop."""

import math

import pytest
import yaml

from unitune import record, results
from unitune import tags as T
from unitune.cli import main
from unitune.config import JobSpec, SearchSpaceSpec, load_job
from unitune.search.driver import log_headline
from unitune.search.report import format_summary, summarize
from unitune.search.trial import TrialSetup
from unitune.tracking import Tracker

BASE = {"name": "rec", "train": {"epochs": 2, "final_epochs": 3, "batch_size": 16},
        "data": {"synthetic": {"num_train": 64}}, "search": {"space": None}}
# search -> [(state, margin, rsum per epoch from epoch 0)]; Optuna numbers in this order
SEARCHES = {
    # the highest value is the failed t02's (300), the best finished one the stopped t01's (250)
    "rec-a": [("completed", 0.1, [100.0, 180.0, 200.0]),
              ("stopped_by_asha", 0.2, [100.0, 250.0]),
              ("failed", 0.3, [100.0, 300.0]),
              ("completed", 0.05, [90.0, 120.0, math.nan])],
    # a tie at 250 between a stopped trial (earlier) and a completed one: the completed wins;
    # the failed t00 scored higher, the interrupted t03 too
    "rec-b": [("failed", 0.35, [100.0, 400.0]),
              ("stopped_by_asha", 0.15, [100.0, 250.0]),
              ("completed", 0.25, [100.0, 250.0, 230.0]),
              ("interrupted", 0.01, [100.0, 500.0])],
}


def best_by_hand(trials):
    """The documented rule as a plain loop: finished trials only, the highest best epoch,
    ties to a completed trial, then to the earlier one. Returns the trial's index."""
    best, key = None, None
    for i, (state, _, curve) in enumerate(trials):
        finite = [v for v in curve if not math.isnan(v)]
        if state not in ("completed", "stopped_by_asha") or not finite:
            continue
        candidate = (max(finite), state == "completed")
        if key is None or candidate > key:
            best, key = i, candidate
    return best


def write_search(tracker, search_id, trials):
    parent = tracker.start_run("rec", search_id, tags={T.SEARCH: search_id, T.ROLE: "search"})
    tracker.log_params(parent, {"metric": "rsum", "mode": "max"})
    tracker.log_text(parent, yaml.safe_dump(BASE), T.BASE_JOB_ARTIFACT)
    for number, (state, margin, curve) in enumerate(trials):
        run = tracker.start_run("rec", f"t{number:02d} margin={margin}", parent_run_id=parent, tags={
            T.SEARCH: search_id, T.TRIAL: f"{search_id}_{number:05d}", T.OPTUNA_TRIAL: number,
            T.ROLE: "trial", T.STATE: state, T.EPOCHS_RUN: len(curve) - 1})
        tracker.log_params(run, {"loss.margin": margin})
        for epoch, value in enumerate(curve):
            tracker.log_metrics(run, {"rsum": value, "epoch": epoch}, step=epoch)
        finite = [v for v in curve if not math.isnan(v)]
        tracker.log_metrics(run, {"best_value": max(finite), "best_epoch": curve.index(max(finite))},
                            step=len(curve) - 1)
        tracker.end_run(run, T.STATUS_OF_STATE[state])
    tracker.end_run(parent)
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("record")
    tracker = Tracker(f"sqlite:///{root}/mlruns.db", str(root / "art"))
    parents = {sid: write_search(tracker, sid, trials) for sid, trials in SEARCHES.items()}
    return tracker, parents


@pytest.mark.parametrize("search_id", sorted(SEARCHES))
def test_summary_parent_results_and_export_name_the_same_best_trial(store, search_id, tmp_path, capsys):
    tracker, parents = store
    expected = best_by_hand(SEARCHES[search_id])
    label = f"t{expected:02d}"
    run_of = {int(r.tags[T.OPTUNA_TRIAL]): r.run_id
              for r in record.Record(tracker).trial_runs(search_id, "rec")}
    want = run_of[expected]

    job = JobSpec.model_validate(BASE)
    setup = TrialSetup(job=job, tracker=tracker, experiment="rec", search_id=search_id,
                       parent_run_id=parents[search_id], objectives=[("rsum", "max")], target=None,
                       storage_path=str(tmp_path))
    space = SearchSpaceSpec.model_validate({"metric": "rsum", "params": {
        "loss.margin": {"type": "uniform", "low": 0.0, "high": 0.4}}})
    summary = summarize(setup, space)
    assert summary["best"]["run_id"] == want and summary["best"]["label"] == label
    assert f"best trial {label} (run {want}" in format_summary(summary, tracker.uri, None)

    log_headline(tracker, parents[search_id], summary)  # the driver's parent run
    tags = tracker.run_tags(parents[search_id])
    assert tags[T.BEST_RUN] == want
    assert tracker.get_metrics(parents[search_id])["best_rsum"] == max(
        v for v in SEARCHES[search_id][expected][2] if not math.isnan(v))

    frame = results.trials(search_id, tracking_uri=tracker.uri)
    assert frame.loc[0, "run_id"] == want
    compared = results.compare([search_id], tracking_uri=tracker.uri)
    assert compared.loc[0, "best_trial"].split()[0] == label

    out = tmp_path / "final.yaml"
    assert main(["export", search_id, "--store", tracker.uri, "--out", str(out)]) == 0
    assert load_job(out).tracking.source_run == want
    printed = capsys.readouterr().out
    # export names the trial as the summary and `results` do (t03), not by its Tune id
    assert f"trial {label} (run {want})" in printed
    assert f"from trial {label} (MLflow run {want}" in out.read_text()


def test_export_takes_a_trial_by_its_label(store, tmp_path, capsys):
    tracker, _ = store
    out = tmp_path / "t00.yaml"
    assert main(["export", "rec-a", "--store", tracker.uri, "--trial", "t00", "--out", str(out)]) == 0
    assert load_job(out).loss.margin == 0.1
    assert main(["export", "rec-a", "--store", tracker.uri, "--trial", "t02"]) == 2  # failed: not finished
    assert "finished: t00, t01, t03" in capsys.readouterr().err


def test_counts_and_trial_epochs_come_from_the_states_and_epochs_run(store):
    tracker, parents = store
    rec = record.Record(tracker)
    trials = rec.trials(rec.search_run(parents["rec-b"]), ["rsum"])
    counts = record.counts(trials)
    assert {str(s): n for s, n in counts.items() if n} == {"failed": 1, "stopped_by_asha": 1, "completed": 1,
                                                         "interrupted": 1}
    assert record.trial_epochs(trials) == sum(len(c) - 1 for _, _, c in SEARCHES["rec-b"])
    assert [t.label for t in record.ranked(trials, "rsum", "max")] == ["t02", "t01", "t03", "t00"]


def test_study_query_returns_its_run_searches_and_final_runs(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", str(tmp_path / "art"))
    study = tracker.start_run("st", "s1", tags={T.ROLE: "study", T.STUDY: "s1"})
    old = tracker.start_run("st", "x", tags={T.ROLE: "search", T.SEARCH: "x-1", T.STUDY: "s1", T.FAMILY: "vlc"})
    new = tracker.start_run("st", "x", tags={T.ROLE: "search", T.SEARCH: "x-2", T.STUDY: "s1", T.FAMILY: "vlc"})
    final = tracker.start_run("st", "f", tags={T.ROLE: "final", T.STUDY: "s1", T.FAMILY: "vlc", T.SEED: 0})
    tracker.start_run("st", "other", tags={T.ROLE: "final", T.STUDY: "s2"})
    found = record.Record(tracker).study("s1", "st")
    assert found.run.run_id == study and found.run.role == record.Role.STUDY
    assert {f: s.run_id for f, s in found.searches.items()} == {"vlc": new}  # the newest of a family
    assert [r.run_id for r in found.finals] == [final]
    assert old != new and record.Record(tracker).study("nope", "st") is None


def test_only_the_record_layer_asks_mlflow_s_search_api():
    # Tracker (the one module importing MLflow) wraps the calls; the record layer is their one
    # caller.
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "platform" / "unitune"
    calls = ("search_runs(", "find_run(", "query_runs(", "search_experiments(", "get_experiment_by_name(")
    found = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name not in ("record.py", "tracking.py") and any(c in path.read_text() for c in calls)
    )
    assert found == [], found
