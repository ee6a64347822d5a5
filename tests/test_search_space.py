import pickle
import warnings

import optuna
import pytest

from unitune.config import SearchSpaceSpec
from unitune.search.driver import warm_start
from unitune.search.space import define_by_run, distribution, make_searcher

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(**extra):
    data = {
        "metric": "rsum", "mode": "max", "num_trials": 8, "max_concurrent": 2, "seed": 3, "target": 150,
        "params": {
            # a child listed before its parent: sampling order must still be parent first
            "loss.topk": {"type": "int", "low": 2, "high": 16, "when": {"loss.mining": "topk"}},
            "loss.warmup_epochs": {"type": "int", "low": 0, "high": 2, "when": {"loss.mining": ["hardest"]}},
            "loss.mining": {"type": "choice", "values": ["all", "hardest", "topk"]},
            "loss.margin": {"type": "uniform", "low": 0.0, "high": 0.4},
            "loss.gamma": {"type": "loguniform", "low": 5.0, "high": 100.0},
        },
        "fixed": {"loss.scale_by_gamma": False},
    }
    data.update(extra)
    return SearchSpaceSpec.model_validate(data)


def _reference_keys(mining):
    """Which keys a config must hold, written out by hand."""
    keys = {"loss.mining", "loss.margin", "loss.gamma"}
    if mining == "topk":
        keys.add("loss.topk")
    if mining == "hardest":
        keys.add("loss.warmup_epochs")
    return keys


def test_conditional_params_exist_only_when_their_condition_holds():
    spec = _space()
    fn = define_by_run(spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    seen = set()
    for _ in range(60):
        trial = study.ask()
        assert fn(trial) == {"loss.scale_by_gamma": False}
        params = trial.params
        assert set(params) == _reference_keys(params["loss.mining"])
        assert 0.0 <= params["loss.margin"] <= 0.4 and 5.0 <= params["loss.gamma"] <= 100.0
        if "loss.topk" in params:
            assert isinstance(params["loss.topk"], int) and 2 <= params["loss.topk"] <= 16
        for name, dist in trial.distributions.items():
            assert dist == distribution(spec.params[name])
        seen.add(params["loss.mining"])
        study.tell(trial, 1.0)
    assert seen == {"all", "hardest", "topk"}


def test_loguniform_is_log_scale():
    dist = distribution(_space().params["loss.gamma"])
    assert dist.log and (dist.low, dist.high) == (5.0, 100.0)


def test_define_by_run_pickles():
    fn = pickle.loads(pickle.dumps(define_by_run(_space())))
    trial = optuna.create_study().ask()
    fn(trial)
    assert "loss.mining" in trial.params


def test_searcher_in_rdb_storage_tags_trial_ids_and_is_seeded(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    configs = []
    for name in ("a", "b"):
        searcher = make_searcher(_space(), study_name=name, storage=optuna.storages.RDBStorage(url))
        configs.append([searcher.suggest(f"t{i}") for i in range(3)])
        for i in range(3):   # the searcher only asks: Ray's own tell (by training iteration) is off
            searcher.on_trial_result(f"t{i}", {"rsum": 1.0, "training_iteration": 1})
            searcher.on_trial_complete(f"t{i}", {"rsum": 100.0 + i, "training_iteration": 1})
        study = optuna.load_study(study_name=name, storage=url)
        assert all(t.state == optuna.trial.TrialState.RUNNING and not t.intermediate_values for t in study.trials)
        for i in range(3):   # what the driver's recorder does
            study.tell(i, 100.0 + i)
    assert configs[0] == configs[1]  # same seed, same samples
    assert all(c["loss.scale_by_gamma"] is False for c in configs[0])
    study = optuna.load_study(study_name="a", storage=url)
    assert [t.user_attrs["trial_id"] for t in study.trials] == ["t0", "t1", "t2"]
    assert [t.value for t in study.trials] == [100.0, 101.0, 102.0]


def test_a_trial_the_restored_searcher_never_saw_is_continued_not_replaced(tmp_path):
    """A RUNNING Optuna trial unknown to the searcher (its driver died before Tune saved it)
    is taken over by the next new Tune trial, with the same values and no new sample."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    first = make_searcher(_space(), study_name="s", storage=optuna.storages.RDBStorage(url))
    first.suggest("t0")
    orphan = first.suggest("t1")          # started, then the driver was killed
    restored = make_searcher(_space(), study_name="s", storage=optuna.storages.RDBStorage(url))
    restored._ot_trials = {"t0": first._ot_trials["t0"]}   # what Tune's last snapshot held
    assert restored.suggest("t9") == orphan
    study = optuna.load_study(study_name="s", storage=url)
    assert len(study.trials) == 2
    assert study.trials[1].user_attrs["trial_id"] == "t9"
    assert study.trials[1].user_attrs["previous_trial_id"] == "t1"
    restored.suggest("t10")                # nothing left to continue: a new sample
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 3


def test_pareto_searcher_has_two_directions(tmp_path):
    spec = _space(objectives=[{"metric": "rsum", "mode": "max"}, {"metric": "epochs_to_target", "mode": "min"}])
    searcher = make_searcher(spec, study_name="p", storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db"))
    assert searcher.metric == ["rsum", "epochs_to_target"]
    searcher.suggest("t0")
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path}/o.db")
    study.tell(0, [200.0, 2.0])
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path}/o.db")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.trials[0].values == [200.0, 2.0]


def test_warm_start_copies_completed_trials_that_fit(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    spec = _space()
    old = make_searcher(spec, study_name="old", storage=storage)
    for i in range(5):
        old.suggest(f"t{i}")
    study = optuna.load_study(study_name="old", storage=storage)
    for i in range(3):  # the 5th stays running: not copied
        study.tell(i, 10.0 * i)
    optuna.trial.Trial(study, study.trials[3]._trial_id).report(7.0, 1)
    study.tell(3, state=optuna.trial.TrialState.PRUNED)   # copied as pruned, at its step
    narrower = _space(params={**spec.model_dump()["params"],
                              "loss.margin": {"type": "uniform", "low": 0.0, "high": 0.3}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.create_study(study_name="same", storage=storage, direction="maximize")
        optuna.create_study(study_name="other", storage=storage, direction="maximize")
        assert warm_start(storage, "old", "same", spec) == 4
        assert warm_start(storage, "old", "other", narrower) == 0  # margin's distribution changed
    new = make_searcher(spec, study_name="same", storage=storage)
    copied = new._ot_study.trials
    assert [t.state for t in copied] == [optuna.trial.TrialState.COMPLETE] * 3 + [optuna.trial.TrialState.PRUNED]
    assert copied[3].intermediate_values == {1: 7.0} and copied[3].value == 7.0
    with pytest.raises(Exception, match="no Optuna study 'missing'"):
        warm_start(storage, "missing", "x", spec)


def test_bound_warnings_for_values_at_the_edges_of_their_range():
    from unitune.config import SearchSpaceSpec
    from unitune.search.report import bound_warnings

    space = SearchSpaceSpec.model_validate({
        "metric": "rsum", "mode": "max", "num_trials": 4,
        "params": {"loss.gamma": {"type": "uniform", "low": 5.0, "high": 105.0},
                   "optim.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-1},
                   "loss.margin": {"type": "uniform", "low": 0.0, "high": 1.0},
                   "loss.mining": {"type": "choice", "values": ["all", "hardest"]}}})
    # gamma 5 + 4% of 100 -> low end; lr 10^-1.1 is 97.5% of the way in log space -> high end;
    # margin in the middle; a choice is never a bound
    best = {"params": {"loss.gamma": 9.0, "optim.lr": 10 ** -1.1, "loss.margin": 0.5, "loss.mining": "all"}}
    lines = bound_warnings({"best": best}, space)
    assert len(lines) == 2
    assert "loss.gamma" in lines[0] and "low bound" in lines[0]
    assert "optim.lr" in lines[1] and "high bound" in lines[1]
    assert bound_warnings({"best": None}, space) == []
    best["params"]["loss.gamma"] = 11.0   # 6%: inside
    assert len(bound_warnings({"best": best}, space)) == 1
    # a low bound of 0 is the parameter's limit (no negative margin or warm-up): never "widen"
    best["params"]["loss.margin"] = 0.01
    assert len(bound_warnings({"best": best}, space)) == 1
    warmup = SearchSpaceSpec.model_validate({
        "metric": "rsum", "mode": "max", "num_trials": 4,
        "params": {"loss.warmup_epochs": {"type": "int", "low": 0, "high": 2}}})
    assert bound_warnings({"best": {"params": {"loss.warmup_epochs": 0}}}, warmup) == []
    assert bound_warnings({"best": {"params": {"loss.warmup_epochs": 2}}}, warmup) == [
        "best loss.warmup_epochs=2 lies at the high end of its range [0, 2]: widen loss.warmup_epochs's high bound"]
