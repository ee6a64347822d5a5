"""``unitune export``: best trial -> final job file, from a hand-built search store (fast)
and from a tiny real search followed by ``unitune train`` on the export (slow)."""

import math

import pytest
import yaml

from unitune.cli import main
from unitune.config import JobSpec, load_job
from unitune.tracking import Tracker

BASE = {"name": "exp1", "train": {"epochs": 2, "final_epochs": 7, "batch_size": 16},
        "data": {"synthetic": {"num_train": 64}},
        "search": {"space": None}}
# trial id -> (state, params, rsum per epoch, epochs_to_target); best RSUM by hand: t2 (0.9 at epoch 2)
TRIALS = {
    "t1": ("completed", {"loss.margin": 0.1, "loss.mining": "all"}, [0.2, 0.5], 2.0),
    "t2": ("stopped_by_asha", {"loss.margin": 0.3, "loss.mining": "topk", "loss.topk": 4}, [0.4, 0.9], math.inf),
    "t3": ("completed", {"loss.margin": 0.2, "loss.mining": "hardest"}, [0.7, 0.6], 1.0),
    "t4": ("failed", {"loss.margin": 0.0, "loss.mining": "all"}, [5.0], math.inf),   # never exported
    "t5": ("running", {"loss.margin": 0.05, "loss.mining": "all"}, [9.0], math.inf),  # not finished
}


def make_search(tracker, experiment, search_id, trials=TRIALS, objectives=None, base=BASE):
    parent = tracker.start_run(experiment, search_id, tags={"unitune.search_id": search_id,
                                                             "unitune.role": "search"})
    params = {"metric": "rsum", "mode": "max"}
    if objectives:
        params["objectives"] = objectives
    tracker.log_params(parent, params)
    tracker.log_text(parent, yaml.safe_dump(base), "search_job.yaml")
    runs = {}
    for trial_id, (state, params, curve, ett) in trials.items():
        run = tracker.start_run(experiment, f"{search_id}-{trial_id}", parent_run_id=parent, tags={
            "unitune.search_id": search_id, "unitune.trial_id": trial_id, "unitune.role": "trial",
            "unitune.state": state})
        tracker.log_params(run, params)
        for epoch, value in enumerate(curve, start=1):
            tracker.log_metrics(run, {"rsum": value, "epoch": epoch}, step=epoch)
        tracker.log_metrics(run, {"epochs_to_target": ett}, step=len(curve))
        if state != "running":
            tracker.end_run(run, {"completed": "FINISHED", "failed": "FAILED"}.get(state, "KILLED"))
        runs[trial_id] = run
    if objectives:
        tell_optuna(tracker, search_id, trials, objectives)
    tracker.end_run(parent)
    return parent, runs


def tell_optuna(tracker, search_id, trials, objectives):
    """The search's Optuna study as a search leaves it (``Recorder._tell``): a completed trial
    told its last report's values, one stopped by ASHA pruned, a failed one failed, a running
    one not told."""
    import optuna

    from unitune.search.storage import open_storage

    directions = [f"{mode}imize" for _, mode in (o.split(":") for o in objectives.split(","))]
    study = optuna.create_study(study_name=search_id, storage=open_storage(tracker), directions=directions)
    for trial_id, (state, _, curve, ett) in trials.items():
        trial = study.ask()
        trial.set_user_attr("trial_id", trial_id)
        values = [curve[-1], ett]
        if state == "completed" and all(math.isfinite(v) for v in values):
            study.tell(trial, values)
        elif state == "stopped_by_asha":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif state != "running":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One search (exp1/s-1) in its own store."""
    root = tmp_path_factory.mktemp("export")
    tracker = Tracker(f"sqlite:///{root}/mlruns.db", str(root / "artifacts"))
    parent, runs = make_search(tracker, "exp1", "s-1")
    return tracker, parent, runs


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """Searches in several experiments: exp1 s-1 then s-2, exp2 a Pareto search p-1 and s-3
    without a finished trial, exp3 another s-1."""
    root = tmp_path_factory.mktemp("crowded")
    tracker = Tracker(f"sqlite:///{root}/mlruns.db", str(root / "artifacts"))
    make_search(tracker, "exp1", "s-1")
    later = {"u1": ("completed", {"loss.margin": 0.15, "loss.mining": "all"}, [0.1, 0.2], 2.0)}
    _, newest = make_search(tracker, "exp1", "s-2", trials=later)
    make_search(tracker, "exp2", "p-1", objectives="rsum:max,epochs_to_target:min")
    make_search(tracker, "exp2", "s-3", trials={"x": TRIALS["t5"]})
    make_search(tracker, "exp3", "s-1")
    return tracker, newest


def best_by_hand(metric, mode, finished=("t1", "t2", "t3")):
    """Reference: a plain loop over the table above."""
    best, best_value = None, None
    for trial_id in finished:
        _, _, curve, ett = TRIALS[trial_id]
        value = (max(curve) if mode == "max" else min(curve)) if metric == "rsum" else ett
        if best is None or (value > best_value if mode == "max" else value < best_value):
            best, best_value = trial_id, value
    return best


def test_export_best_trial_writes_a_complete_final_job(store, tmp_path, capsys):
    tracker, parent, runs = store
    out = tmp_path / "final.yaml"
    assert main(["export", "--store", tracker.uri, "--out", str(out)]) == 0
    best = best_by_hand("rsum", "max")
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == f"# unitune train {out}"
    assert runs[best] in lines[1] and "s-1" in lines[1]
    job = load_job(out)
    assert job.train.epochs == 7 and job.search.space is None
    assert job.tracking.source_run == runs[best]
    assert (job.loss.margin, job.loss.mining, job.loss.topk) == (0.3, "topk", 4)
    data = yaml.safe_load(text)
    JobSpec.model_validate(data)  # complete: every key present, nothing unknown
    assert set(data) == set(JobSpec.model_fields) - {"search"}
    assert "unitune train" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["parent", "search_id", "experiment", "default"])
def test_search_is_found_by_run_id_search_id_or_experiment(store, tmp_path, how):
    tracker, parent, runs = store
    ref = {"parent": [parent], "search_id": ["s-1"], "experiment": ["exp1"], "default": []}[how]
    out = tmp_path / f"{how}.yaml"
    assert main(["export", *ref, "--store", tracker.uri, "--out", str(out)]) == 0
    assert load_job(out).tracking.source_run == runs[best_by_hand("rsum", "max")]


def test_trial_run_id_and_metric_option(store, tmp_path):
    tracker, parent, runs = store
    # a trial's run id exports that trial, best or not
    assert main(["export", runs["t1"], "--store", tracker.uri, "--out", str(tmp_path / "b.yaml")]) == 0
    assert load_job(tmp_path / "b.yaml").loss.margin == 0.1
    # --metric: the metric's own direction (epochs_to_target: min)
    out = tmp_path / "e.yaml"
    assert main(["export", "s-1", "--store", tracker.uri, "--metric", "epochs_to_target", "--out", str(out)]) == 0
    assert load_job(out).tracking.source_run == runs[best_by_hand("epochs_to_target", "min")]


def test_newest_search_of_the_job(crowded, tmp_path):
    tracker, newest = crowded
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({"name": "exp1", "tracking": {"uri": tracker.uri}}))
    out = tmp_path / "a.yaml"
    assert main(["export", "--job", str(job_file), "--out", str(out)]) == 0
    assert load_job(out).tracking.source_run == newest["u1"]


def test_pareto_front_is_listed(crowded, tmp_path, capsys):
    tracker, _ = crowded
    assert main(["export", "p-1", "--store", tracker.uri, "--pareto"]) == 0
    text = capsys.readouterr().out
    # by hand, the completed trials at their last report: t1 (0.5, 2) is dominated by t3 (0.6, 1);
    # t2 was stopped by ASHA (pruned: not on Optuna's front, as in the search summary)
    listed = {t for t in TRIALS if f"\n{t} " in text}
    assert listed == {"t3"}
    assert main(["export", "p-1", "--store", tracker.uri, "--out", str(tmp_path / "p.yaml")]) == 0
    assert load_job(tmp_path / "p.yaml").loss.margin == 0.3  # default: best RSUM
    assert main(["export", "p-1", "--store", tracker.uri, "--trial", "t3", "--out", str(tmp_path / "q.yaml")]) == 0
    assert load_job(tmp_path / "q.yaml").loss.mining == "hardest"


def test_failures_exit_2_with_the_reason(store, crowded, tmp_path, capsys):
    tracker, parent, runs = store
    other, _ = crowded
    cases = [
        (["export", "--store", f"sqlite:///{tmp_path}/absent.db"], "no MLflow store"),
        (["export", "nope", "--store", tracker.uri], "no search 'nope'"),
        (["export", "s-1", "--store", tracker.uri, "--metric", "r1_i2t"], "not logged"),
        (["export", "s-1", "--store", tracker.uri, "--metric", "bogus"], "unknown metric"),
        (["export", "s-1", "--store", tracker.uri, "--trial", "t4"], "not a finished trial"),
        (["export", "s-1", "--store", tracker.uri, "--pareto"], "one objective"),
        (["export", "s-3", "--store", other.uri], "no finished trial"),
        (["export", "--store", other.uri], "several experiments"),
        (["export", "s-1", "--store", other.uri], "ambiguous"),
    ]
    for argv, reason in cases:
        assert main(argv) == 2, argv
        assert reason in capsys.readouterr().err, argv
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.slow
def test_export_from_a_real_search_then_train(tmp_path, monkeypatch):
    """A 2-trial search, export, then ``unitune train`` on the export: its run is tagged
    with the source trial's run id."""
    import ray

    from unitune.config import SearchSpaceSpec
    from unitune.search.driver import run_search

    monkeypatch.chdir(tmp_path)
    job = JobSpec.model_validate({
        "name": "real", "data": {"synthetic": {"num_train": 64, "num_val": 32, "num_test": 16, "image_size": 16,
                                               "cache_dir": str(tmp_path / "data")}},
        "model": {"embed_dim": 32},
        "train": {"epochs": 1, "final_epochs": 2, "batch_size": 16, "eval_batch_size": 64},
        "tracking": {"uri": "sqlite:///mlruns.db", "artifact_location": "mlartifacts"},
    })
    space = SearchSpaceSpec.model_validate({
        "metric": "rsum", "mode": "max", "num_trials": 2, "max_concurrent": 1, "seed": 0, "target": 50,
        "asha": None, "params": {"loss.margin": {"type": "uniform", "low": 0.0, "high": 0.4}}})
    try:
        result = run_search(job, space, verbose=False)
    finally:
        ray.shutdown()
    assert main(["export", "--out", "final.yaml"]) == 0
    exported = load_job(tmp_path / "final.yaml")
    best = result.summary["best"]
    assert exported.tracking.source_run == best["run_id"]
    assert exported.loss.margin == best["params"]["loss.margin"] and exported.train.epochs == 2
    assert main(["train", "final.yaml", "train.epochs=1"]) == 0
    tracker = Tracker("sqlite:///mlruns.db")
    runs = tracker.client.search_runs([tracker.experiment_id("real")],
                                      filter_string="tags.`unitune.kind` = 'train'")
    assert [r.data.tags.get("unitune.source_run") for r in runs] == [best["run_id"]]
    assert runs[0].info.status == "FINISHED"
