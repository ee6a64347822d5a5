"""The space file's searcher: ``sampler`` (Optuna's samplers) and ``scheduler`` (Ray Tune's).

Names are checked, a sampler that cannot take the space is refused with one line naming the
file and key, each name builds the Optuna or Ray object it says, seeded by the space's seed.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

from unitune.cli import main
from unitune.config import SearchSpaceSpec, load_job, load_space
from unitune.errors import UserError
from unitune.search.schedulers import SeededHyperBand, brackets, make_scheduler
from unitune.search.space import define_by_run, make_sampler

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "jobs" / "demo.yaml"
NUMERIC = ("params:\n  loss.margin: {type: uniform, low: 0.0, high: 0.4}\n"
           "  optim.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
CHOICE = NUMERIC + "  loss.mining: {type: choice, values: [all, hardest]}\n"
CONDITIONAL = (NUMERIC + "  loss.mining: {type: choice, values: [all, topk]}\n"
               "  loss.topk: {type: int, low: 2, high: 8, when: {loss.mining: topk}}\n")
PARETO = "target: 100\nobjectives: [{metric: rsum}, {metric: epochs_to_target}]\n"


def space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


REFUSED = [
    ("sampler: bayes\n" + NUMERIC, "sampler", "must be one of"),
    ("scheduler: median\n" + NUMERIC, "scheduler", "must be one of"),
    ("scheduler: hyperband\nasha: null\n" + NUMERIC, "scheduler", "hyperband needs the asha section"),
    ("sampler: cmaes\n" + CHOICE, "sampler", "cmaes cannot take choice parameter loss.mining"),
    ("sampler: cmaes\n" + CONDITIONAL, "sampler", "cmaes cannot take choice parameter loss.mining"),
    ("sampler: qmc\n" + CONDITIONAL, "sampler", "qmc cannot take conditional parameter loss.topk"),
    ("sampler: gp\n" + CONDITIONAL, "sampler", "gp cannot take conditional parameter loss.topk"),
    ("sampler: cmaes\n" + PARETO + NUMERIC, "sampler", "cmaes takes one objective"),
]


@pytest.mark.parametrize("text, key, reason", REFUSED, ids=[r[2][:30] for r in REFUSED])
def test_a_searcher_that_cannot_run_is_refused_in_one_line(tmp_path, text, key, reason, capsys):
    path = space(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_space(path)
    line = str(info.value).splitlines()[0]
    assert line.startswith(f"{path}: {key}: ") and reason in line, line
    # `unitune validate` says the same, exit 2, one line, before anything runs
    assert main(["validate", str(DEMO), "--space", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"unitune: error: {path}: {key}: "), err


@pytest.mark.parametrize("text", [
    "sampler: qmc\n" + CHOICE,  # QMCSampler maps a choice to a coordinate of its sequence
    "sampler: gp\n" + CHOICE,  # GPSampler models categorical parameters
    "sampler: gp\n" + PARETO + NUMERIC,  # and several objectives
    "sampler: tpe\n" + PARETO + CONDITIONAL,
    "sampler: random\n" + CONDITIONAL,
])
def test_a_sampler_takes_what_optuna_models(tmp_path, text):
    load_space(space(tmp_path, text))


def test_defaults_are_todays_search_tpe_and_asha():
    spec = SearchSpaceSpec.model_validate({"num_trials": 12, "max_concurrent": 2, "seed": 3})
    assert (spec.sampler, spec.sampler_name(), spec.scheduler) == ("auto", "tpe", "asha")
    sampler = make_sampler(spec)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 4 and sampler._multivariate and sampler._group
    assert sampler._constant_liar


def test_asha_null_is_scheduler_none():
    spec = SearchSpaceSpec.model_validate({"asha": None})
    assert spec.scheduler == "none" and isinstance(make_scheduler(spec), FIFOScheduler)


def sampled(spec: SearchSpaceSpec, n: int) -> list[dict]:
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    fn = define_by_run(spec)
    for k in range(n):
        trial = study.ask()
        fn(trial)
        study.tell(trial, float(k % 3))
    return [t.params for t in study.trials]


@pytest.mark.parametrize("name, cls", [
    ("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
    ("qmc", optuna.samplers.QMCSampler), ("gp", optuna.samplers.GPSampler),
    ("cmaes", optuna.samplers.CmaEsSampler),
])
def test_each_sampler_is_optunas_and_repeats_with_its_seed(name, cls):
    def spec(seed):
        return SearchSpaceSpec.model_validate({
            "sampler": name, "seed": seed, "num_trials": 6, "max_concurrent": 1,
            "params": {"loss.margin": {"type": "uniform", "low": 0.0, "high": 0.4},
                       "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}})
    assert type(make_sampler(spec(0))) is cls
    first = sampled(spec(0), 5)
    assert first == sampled(spec(0), 5)
    assert first != sampled(spec(1), 5)


def test_random_sampler_draws_what_optuna_draws_with_that_seed():
    spec = SearchSpaceSpec.model_validate({
        "sampler": "random", "seed": 7, "params": {"loss.margin": {"type": "uniform", "low": 0.0, "high": 0.4}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    expected = [study.ask().suggest_float("loss.margin", 0.0, 0.4) for _ in range(3)]
    assert [p["loss.margin"] for p in sampled(spec, 3)] == expected


@pytest.mark.parametrize("max_epochs, grace, factor, expected", [
    (6, 1, 2, 3),  # first bracket's rungs at 1, 2, 4
    (3, 1, 2, 2),  # 1, 2
    (8, 1, 2, 4),  # 1, 2, 4, 8 (8 is max_t: ASHA's rung list stops below it, Hyperband counts it)
    (9, 1, 3, 3),  # 1, 3, 9
    (4, 4, 2, 1),
])
def test_hyperband_has_one_bracket_per_rung(max_epochs, grace, factor, expected):
    assert brackets(max_epochs, grace, factor) == expected


class FakeTrial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def test_schedulers_by_name_on_the_spaces_epochs():
    job = load_job(DEMO)
    asha = make_scheduler(load_space(REPO / "search_spaces" / "unified.yaml", job))
    assert type(asha) is AsyncHyperBandScheduler and asha._max_t == job.train.epochs and len(asha._brackets) == 1
    spec = load_space(REPO / "search_spaces" / "unified.yaml", job)
    spec.scheduler = "hyperband"
    bands = [make_scheduler(spec) for _ in range(2)]
    assert isinstance(bands[0], SeededHyperBand) and len(bands[0]._brackets) == 3
    drawn = []
    for band in bands:
        for k in range(20):
            band.on_trial_add(None, FakeTrial(f"t{k}"))
        drawn.append([band._brackets.index(band._trial_info[f"t{k}"]) for k in range(20)])
    assert drawn[0] == drawn[1] and len(set(drawn[0])) > 1  # seeded, and several brackets used
