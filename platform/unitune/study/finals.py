"""A study's final runs: each search's best trial trained with seeds, round by round, and
their per-query test outcomes read back for the comparisons (``unitune.study.sequential``).

A final run is identified by its tags (study, family, search repeat, seed); one that is
FINISHED is never trained again, so ``--resume`` continues a study at its round. Runs go
through ``unitune.train.runs.train_runs`` (one-worker local jobs train in this process, no
Ray Train start per run) and log no MLflow model: ``unitune export`` of the family's search
and ``unitune train`` make the model to keep.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import yaml

from unitune import export
from unitune import tags as T
from unitune.config import JobSpec, apply_overrides
from unitune.errors import UserError
from unitune.ranks import FILE as RANKS_FILE
from unitune.ranks import QueryRanks
from unitune.record import Record, Role, RunRecord
from unitune.study.plan import StudyPlan
from unitune.study.stats import Outcomes
from unitune.tracking import Tracker
from unitune.train.runs import train_runs

TIME_KEY = "train_time_s"


@dataclass
class SearchOutcome:
    family: str
    search_id: str
    parent_run_id: str
    best_trial: str
    best_run_id: str
    best_value: float
    params: dict
    trial_epochs: int
    wall_s: float
    at_bounds: list[str] = field(default_factory=list)  # best values at the edge of their range
    best_label: str = ""  # the best trial's name in the search's table (t03)
    repeat: int = 0  # the search's sampler seed is the space's seed + repeat


@dataclass
class FinalRun:
    family: str
    seed: int
    run_id: str
    metrics: dict  # the run's last value of every metric (test_* included)
    curve: list[dict] = field(default_factory=list)  # [{"epoch", metric, "train_time_s"}], epoch 0 first
    repeat: int = 0


def final_job(tracker: Tracker, plan: StudyPlan, search: SearchOutcome, seed: int) -> JobSpec:
    """The best trial of ``search`` as ``unitune export`` writes it, for ``seed`` and the final epochs."""
    base = tracker.read_text(search.parent_run_id, T.BASE_JOB_ARTIFACT)
    if base is None:
        raise UserError(f"search {search.search_id}: parent run {search.parent_run_id} has no {T.BASE_JOB_ARTIFACT}")
    trial = export.Trial(search.best_trial, search.best_run_id, "completed", search.params, {})
    exported = export.final_job(yaml.safe_load(base), trial)
    repeat = f"-r{search.repeat}" if plan.search_repeats > 1 else ""
    return apply_overrides(
        exported,
        {
            "seed": seed,
            "train.epochs": plan.final_epochs,
            "name": f"{plan.job.name}-{search.family}{repeat}-seed{seed}",
            "tracking.experiment": plan.job.experiment,
        },
    )


def read_curve(tracker: Tracker, run_id: str, metric: str) -> list[dict]:
    """``[{"epoch": e, metric: v, "train_time_s": t}, ...]`` of a run, epoch 0 included."""
    times = dict(tracker.metric_history(run_id, TIME_KEY))
    return [
        {"epoch": step, metric: value, TIME_KEY: times.get(step, 0.0 if step == 0 else float("nan"))}
        for step, value in tracker.metric_history(run_id, metric)
    ]


class Finals:
    """The final runs of one study: ``train(families, seeds)`` and ``outcomes()`` for
    ``run_looks``; ``runs()`` for the report. ``round_seconds``: the wall time of each
    ``train`` call that trained something (the budget's estimate of the next round)."""

    def __init__(self, tracker: Tracker, plan: StudyPlan, searches: dict[str, list[SearchOutcome]], study_id: str, out):
        self.tracker, self.plan, self.searches, self.study_id, self.out = tracker, plan, searches, study_id, out
        self._runs: dict[tuple[str, int, int], FinalRun] = {}
        self._outcomes: dict[str, Outcomes] = {}
        self.round_seconds: list[float] = []

    def _tags(self, family: str, repeat: int, seed: int) -> dict:
        return {
            T.ROLE: Role.FINAL.value,
            T.STUDY: self.study_id,
            T.FAMILY: family,
            T.SEARCH_REPEAT: repeat,
            T.SEED: seed,
        }

    def _finals(self, key: tuple[str, int, int]) -> list[RunRecord]:
        tags = {k: v for k, v in self._tags(*key).items() if k != T.ROLE}
        return Record(self.tracker).runs(self.plan.job.experiment, Role.FINAL, tags)

    def train(self, families: list[str], seeds: range) -> None:
        started, trained = time.monotonic(), False
        for family in families:
            for search in self.searches[family]:
                jobs, tags, keys = [], [], []
                for seed in seeds:
                    key = (family, search.repeat, seed)
                    if key in self._runs:
                        continue
                    found = [r for r in self._finals(key) if r.status == "FINISHED"]
                    if found:
                        self._record(key, found[0].run_id)
                        continue
                    jobs.append(final_job(self.tracker, self.plan, search, seed))
                    tags.append(self._tags(*key))
                    keys.append(key)
                if not jobs:
                    continue
                label = f" (search {search.repeat})" if self.plan.search_repeats > 1 else ""
                self.out(
                    f"study {self.study_id}: training {family}{label} seeds {', '.join(str(k[2]) for k in keys)} "
                    f"for {self.plan.final_epochs} epochs (best trial {search.best_label or search.best_trial} "
                    f"of {search.search_id})"
                )
                for key, result in zip(keys, train_runs(jobs, tags=tags, out=lambda line: None)):
                    self._record(key, result["run_id"])
                trained = True
        if trained:
            self.round_seconds.append(time.monotonic() - started)

    def _record(self, key: tuple[str, int, int], run_id: str) -> None:
        family, repeat, seed = key
        metric = self.plan.metric
        self._runs[key] = FinalRun(
            family, seed, run_id, self.tracker.get_metrics(run_id), read_curve(self.tracker, run_id, metric), repeat
        )

    def outcomes(self) -> dict[str, dict[tuple[int, int], Outcomes]]:
        """Every family's runs so far, by (repeat, seed), from their ``test_ranks.csv``.

        Raises:
            UserError: a final run without the table (trained by an unitune before it).
        """
        out: dict[str, dict[tuple[int, int], Outcomes]] = {f.name: {} for f in self.plan.families}
        for (family, repeat, seed), run in self._runs.items():
            if run.run_id not in self._outcomes:
                text = self.tracker.read_text(run.run_id, RANKS_FILE)
                if text is None:
                    raise UserError(
                        f"final run {run.run_id} ({family}, seed {seed}) has no {RANKS_FILE} "
                        "(trained by an older unitune?): start a new study without --resume"
                    )
                ranks = QueryRanks.parse(text, f"{run.run_id}/{RANKS_FILE}")
                self._outcomes[run.run_id] = Outcomes.from_ranks(ranks, self.plan.metric)
            out[family][(repeat, seed)] = self._outcomes[run.run_id]
        return out

    def runs(self) -> list[FinalRun]:
        """The final runs, by family (in the plan's order), repeat and seed."""
        order = {f.name: i for i, f in enumerate(self.plan.families)}
        return [self._runs[k] for k in sorted(self._runs, key=lambda k: (order[k[0]], k[1], k[2]))]
