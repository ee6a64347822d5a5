"""A validated ``SearchSpaceSpec`` -> Optuna define-by-run function and Ray Tune searcher.

The define-by-run function samples the parameters in dependency order
(``SearchSpaceSpec.ordered_params``); a parameter with a ``when`` condition is sampled only
when its condition holds on the values sampled before it. So ``loss.topk`` exists in a
trial's config only when ``loss.mining == "topk"``, and Optuna's TPE sees a conditional
space (``TPESampler(multivariate=True, group=True)`` models each group of co-occurring
parameters jointly).
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import optuna
from ray.tune.search.optuna import OptunaSearch

from unitune.config import ParamSpec, SearchSpaceSpec


def distribution(param: ParamSpec) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one parameter (what :func:`define_by_run` samples)."""
    if param.type == "choice":
        return optuna.distributions.CategoricalDistribution(list(param.choices()))
    if param.type == "int":
        return optuna.distributions.IntDistribution(*param.int_bounds(), log=param.log)
    return optuna.distributions.FloatDistribution(*param.bounds(), log=param.type == "loguniform")


class DefineByRun:
    """Optuna define-by-run function for a ``SearchSpaceSpec`` (a picklable callable:
    Tune saves the searcher, this included, with plain ``pickle``).

    Calling it samples the active parameters through ``trial.suggest_*`` (Ray's
    ``OptunaSearch`` captures those as the trial config) and returns ``spec.fixed``, which
    Ray merges into the config. Keys are dotted job keys (``loss.margin``).
    """

    def __init__(self, spec: SearchSpaceSpec):
        self.ordered = spec.ordered_params()
        self.fixed = dict(spec.fixed)

    def __call__(self, trial: optuna.Trial) -> dict:
        sampled: dict[str, Any] = {}
        for name, param in self.ordered:
            if not param.is_active(sampled):
                continue
            if param.type == "choice":
                sampled[name] = trial.suggest_categorical(name, list(param.choices()))
            elif param.type == "int":
                sampled[name] = trial.suggest_int(name, *param.int_bounds(), log=param.log)
            else:
                sampled[name] = trial.suggest_float(name, *param.bounds(), log=param.type == "loguniform")
        return dict(self.fixed)


def define_by_run(spec: SearchSpaceSpec) -> DefineByRun:
    """The define-by-run function of ``spec`` (see :class:`DefineByRun`)."""
    return DefineByRun(spec)


def startup_trials(spec: SearchSpaceSpec) -> int:
    """Random trials before a model-based sampler (tpe, gp, cmaes) starts modelling: a third
    of the budget, 2 to 10."""
    return min(10, max(2, spec.num_trials // 3))


def make_sampler(spec: SearchSpaceSpec) -> optuna.samplers.BaseSampler:
    """The space's Optuna sampler (``spec.sampler_name()``), seeded with ``spec.seed``.

    ``tpe``: multivariate TPE over the conditional space, with the constant liar keeping
    concurrent asks apart; ``gp``, ``cmaes``: Optuna's defaults; ``qmc``: a scrambled Sobol
    sequence; the model-based ones start with :func:`startup_trials` random trials.
    """
    name, seed = spec.sampler_name(), spec.seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(
                multivariate=True,
                group=True,
                seed=seed,
                n_startup_trials=startup_trials(spec),
                constant_liar=spec.max_concurrent > 1,
            )
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "qmc":
            return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(spec))
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup_trials(spec))
    raise ValueError(f"unknown sampler {name!r}")


def make_searcher(
    spec: SearchSpaceSpec, *, study_name: str | None = None, storage: optuna.storages.BaseStorage | None = None
):
    """Ray Tune ``OptunaSearch`` over ``spec`` (a Pareto search when ``spec.objectives`` is set).

    With ``storage`` (an ``optuna.storages.RDBStorage``) the study lives in that database
    under ``study_name``: every Tune trial is asked from and told to it, so
    ``optuna-dashboard`` shows the search, and an existing study of that name is continued.
    Each Optuna trial carries the Tune trial id as user attribute ``trial_id``.
    """
    metrics, modes = spec.objective_names()
    metric: str | list[str] = metrics if spec.objectives else metrics[0]
    mode: str | list[str] = list(modes) if spec.objectives else modes[0]
    return TaggedOptunaSearch(
        space=define_by_run(spec),
        metric=metric,
        mode=mode,
        sampler=make_sampler(spec),
        study_name=study_name,
        storage=storage,
    )


class TaggedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that only asks: the driver's recorder tells the study each trial's
    outcome and intermediate values (``unitune.search.record``), so Ray's own reporting
    (by training iteration, ASHA stops told as COMPLETE) is switched off here.

    Each Optuna trial carries the Tune trial id as user attribute ``trial_id``, so the
    study, the Tune trials and the MLflow runs join on one key. A trial that had started
    when a previous driver died (RUNNING in the study, unknown to the restored searcher) is
    continued: the next new Tune trial takes it over, with the same sampled values, instead
    of a new sample.
    """

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials:
            orphan = self._next_orphan()
            if orphan is not None:
                previous = orphan.user_attrs.get("trial_id")
                # Ray's __init__ sets _ot_study to None (mypy's type of it); the study is set up by now
                study = cast(optuna.Study, self._ot_study)
                self._ot_trials[trial_id] = optuna.trial.Trial(study, orphan._trial_id)
                if previous:
                    self._ot_trials[trial_id].set_user_attr("previous_trial_id", previous)
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and ot_trial.user_attrs.get("trial_id") != trial_id:
            ot_trial.set_user_attr("trial_id", trial_id)
        return config

    def _next_orphan(self):
        known = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.number not in known:
                return t
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # the recorder reports each epoch with step = epoch

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # the recorder tells the outcome (COMPLETE / PRUNED / FAIL)
