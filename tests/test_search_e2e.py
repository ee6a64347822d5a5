"""End-to-end search on a local Ray with a temporary sqlite MLflow store and tiny data."""

import math

import optuna
import pytest

from unitune.config import JobSpec, SearchSpaceSpec
from unitune.search.driver import run_search
from unitune.search.storage import optuna_storage_url
from unitune.search.report import format_summary
from unitune.tracking import Tracker

DIVERGING_GAMMA = 1.0e39  # gamma * similarity overflows float32: the loss turns NaN at once
# Random sampling makes the sequence of sampled configs independent of the results, so this
# seed is known to give exactly one diverging trial (the 2nd of 5), both mining modes among
# the others, and a slow learning rate last (for ASHA to stop).
SAMPLER_SEED = 46
CHANCE_RSUM = 2 * 100 * (1 + 5 + 10) / 32  # R@1+R@5+R@10 of random ranking, both directions


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("search")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        job = JobSpec.model_validate({
            "name": "e2e",
            "data": {"synthetic": {"num_train": 64, "num_val": 32, "num_test": 16, "image_size": 16,
                                   "cache_dir": str(root / "data")}},
            "model": {"embed_dim": 32},
            "train": {"epochs": 2, "batch_size": 16, "eval_batch_size": 64},
            "tracking": {"uri": "sqlite:///mlruns.db", "artifact_location": "mlartifacts"},
        })
        space = SearchSpaceSpec.model_validate({
            "metric": "rsum", "mode": "max", "num_trials": 5, "max_concurrent": 2, "seed": SAMPLER_SEED,
            "sampler": "random",
            "target": 150, "asha": {"max_epochs": 2, "grace_period": 1, "reduction_factor": 2},
            "params": {
                "loss.margin": {"type": "uniform", "low": 0.0, "high": 0.4},
                "loss.gamma": {"type": "choice", "values": [20.0, DIVERGING_GAMMA]},
                "loss.mining": {"type": "choice", "values": ["all", "topk"]},
                "loss.topk": {"type": "int", "low": 2, "high": 8, "when": {"loss.mining": "topk"}},
                "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-3},
            },
            "fixed": {"loss.scale_by_gamma": False},
        })
        try:
            result = run_search(job, space, verbose=False)
        finally:
            ray.shutdown()
        tracker = Tracker(f"sqlite:///{root}/mlruns.db")
        yield result, tracker, space, root


def _runs(tracker, result):
    exp = tracker.experiment_id(result.experiment)
    return tracker.client.search_runs([exp], max_results=1000)


def test_one_parent_and_one_child_per_trial(search):
    result, tracker, space, _ = search
    runs = _runs(tracker, result)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    assert len(children) == len(runs) - 1 == space.num_trials
    assert len({c.data.tags["unitune.trial_id"] for c in children}) == space.num_trials
    assert all(r.info.status != "RUNNING" for r in runs)
    assert tracker.run_status(result.parent_run_id) == "FINISHED"
    params = tracker.client.get_run(result.parent_run_id).data.params
    assert (params["sampler"], params["scheduler"], params["seed"]) == ("random", "asha", str(SAMPLER_SEED))


def test_children_states_metrics_and_conditional_params(search):
    result, tracker, space, _ = search
    children = [r for r in _runs(tracker, result) if r.info.run_id != result.parent_run_id]
    states = {}
    for run in children:
        tags, params, run_id = run.data.tags, run.data.params, run.info.run_id
        state = tags["unitune.state"]
        states[run_id] = state
        expected_status = {"completed": "FINISHED", "stopped_by_asha": "FINISHED", "failed": "FAILED"}[state]
        assert run.info.status == expected_status
        # conditional parameter present exactly when its condition holds
        assert ("loss.topk" in params) == (params["loss.mining"] == "topk")
        metrics = tracker.get_metrics(run_id)
        for key in ("epochs_to_target", "seconds_to_target", "epochs_to_90pct_best",
                    "normalized_auc", "best_value", "best_epoch"):
            assert key in metrics
        if float(params["loss.gamma"]) == DIVERGING_GAMMA:
            assert state == "failed"
            assert "NaN" in tags["unitune.error"] or "nan" in tags["unitune.error"]
            # never reached within the budget: budget + 1, and target_reached 0
            assert metrics["epochs_to_target"] == space.asha.max_epochs + 1
            assert metrics["target_reached"] == 0
            continue
        assert state in ("completed", "stopped_by_asha")
        history = tracker.metric_history(run_id, "rsum")
        epochs = [step for step, _ in history]
        # epoch 0 (the model before training), then every epoch once
        assert epochs == list(range(0, len(epochs))) and len(epochs) > 1
        if state == "completed":
            assert len(epochs) == space.asha.max_epochs + 1
        else:
            assert int(tags["unitune.stopped_at_epoch"]) == len(epochs) - 1 < space.asha.max_epochs
        values = [v for _, v in history]
        assert metrics["best_value"] == max(values)
    assert "failed" in states.values(), "the diverging gamma was never sampled"
    assert "stopped_by_asha" in states.values()
    assert "completed" in states.values()


def test_best_trial_and_summary(search):
    result, tracker, space, _ = search
    best = result.summary["best"]
    assert best is not None and best["metrics"]["best_value"] > 1.3 * CHANCE_RSUM
    assert best["state"] != "failed"
    text = format_summary(result.summary, "sqlite:///mlruns.db", "jobs/x.yaml")
    assert best["run_id"] in text and "unitune ui jobs/x.yaml" in text
    artifacts = {f.path for f in tracker.client.list_artifacts(result.parent_run_id)}
    assert {"job.yaml", "space.yaml", "trials.csv", "best_config.yaml", "plots"} <= artifacts
    plots = {f.path for f in tracker.client.list_artifacts(result.parent_run_id, "plots")}
    assert "plots/curves.png" in plots and "plots/parallel_coordinates.png" in plots


def test_every_reader_names_the_same_best_trial(search, tmp_path, capsys):
    # The summary, the parent's best-trial tag, `unitune results`' first row and `unitune
    # export`'s choice: one trial, the best finished one by a plain loop over the runs.
    from unitune import results
    from unitune.cli import main
    from unitune.config import load_job

    result, tracker, space, root = search
    children = [r for r in _runs(tracker, result) if r.info.run_id != result.parent_run_id]
    finished = [r for r in children if r.data.tags["unitune.state"] in ("completed", "stopped_by_asha")]
    top = max(max(v for _, v in tracker.metric_history(r.info.run_id, "rsum") if not math.isnan(v))
              for r in finished)
    by_hand = [r.info.run_id for r in finished
               if max(v for _, v in tracker.metric_history(r.info.run_id, "rsum") if not math.isnan(v)) == top]
    best = result.summary["best"]["run_id"]
    assert best in by_hand
    assert tracker.run_tags(result.parent_run_id)["unitune.best_run"] == best
    assert results.trials(result.search_id, tracking_uri=tracker.uri).loc[0, "run_id"] == best
    out = tmp_path / "final.yaml"
    assert main(["export", result.search_id, "--store", tracker.uri, "--out", str(out)]) == 0
    assert load_job(out).tracking.source_run == best
    assert f"trial {result.summary['best']['label']} (run {best})" in capsys.readouterr().out


def test_optuna_study_holds_the_same_trials(search):
    result, tracker, space, root = search
    url = optuna_storage_url(f"sqlite:///{root}/mlruns.db")
    study = optuna.load_study(study_name=result.search_id, storage=url)
    children = [r for r in _runs(tracker, result) if r.info.run_id != result.parent_run_id]
    mlflow_trials = {r.data.tags["unitune.trial_id"]: r for r in children}
    optuna_trials = {t.user_attrs["trial_id"]: t for t in study.trials}
    assert set(optuna_trials) == set(mlflow_trials)
    for trial_id, t in optuna_trials.items():
        run = mlflow_trials[trial_id]
        sampled = {k: v for k, v in run.data.params.items() if k in space.params}
        assert {k: str(v) for k, v in t.params.items()} == sampled
        state = run.data.tags["unitune.state"]
        expected = {"completed": optuna.trial.TrialState.COMPLETE, "failed": optuna.trial.TrialState.FAIL,
                    "stopped_by_asha": optuna.trial.TrialState.PRUNED}[state]
        assert t.state == expected, (trial_id, state, t.state)
        history = dict(tracker.metric_history(run.info.run_id, "rsum"))
        if state == "failed":
            assert t.user_attrs["fail_reason"] == run.data.tags["unitune.error"]
            continue
        # every epoch's value is an intermediate value with step = epoch, equal to MLflow's
        assert t.intermediate_values == pytest.approx(history)
        last = max(t.intermediate_values)
        assert t.value == pytest.approx(history[last])
        if state == "stopped_by_asha":
            assert last == int(run.data.tags["unitune.stopped_at_epoch"])
        else:
            assert last == space.asha.max_epochs
    assert study.metric_names == ["rsum"]


def test_finished_trials_leave_no_checkpoint_behind(search):
    """A trial's checkpoint serves only its resume: once its record is closed it is deleted."""
    result, tracker, space, root = search
    tune_dir = root / ".unitune" / "tune"
    trial_dirs = {p.parent for p in tune_dir.rglob("params.json")}
    assert len(trial_dirs) == space.num_trials
    assert [p for p in tune_dir.rglob("checkpoint_*") if p.is_dir()] == []
