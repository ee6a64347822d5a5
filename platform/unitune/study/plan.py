"""What a study runs, resolved from the job and the command line, checked before any compute.

    plan_study(job, spaces=None, seeds=None) -> StudyPlan

A family is one search-space file; its name is the file's stem (``unified``, ``vlc``...).
The first family is the reference the others are compared with. Every mistake findable
here is a ``UserError`` naming the file and key: no space file, an unknown or duplicated
one, ``--seeds`` below 1 or above ``study.max_seeds``, spaces that disagree on the metric
or the budget, a metric that is not a mean over test queries (the comparison is paired
query by query), a job whose test split is missing or empty.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from unitune.config import METRICS, JobSpec, SearchSpaceSpec, load_space, missing_inputs
from unitune.errors import UserError
from unitune.study.sequential import sizes
from unitune.study.stats import per_query

# The budget every family's search must share (keys of the space file, after the job's
# search: values replaced them).
BUDGET_KEYS = ("num_trials", "max_concurrent", "seed", "target", "asha", "sampler", "scheduler")


@dataclass(frozen=True)
class Family:
    name: str
    path: Path
    space: SearchSpaceSpec


@dataclass(frozen=True)
class StudyPlan:
    """``study_key``: 8 hex digits of everything that changes the study's numbers.
    ``rounds``: the seeds after each round, up to ``study.max_seeds`` (default 3 × seeds);
    ``seeds``: the first round's."""

    job: JobSpec
    families: list[Family]
    seeds: int
    metric: str
    mode: str
    target: float | None
    final_epochs: int
    study_key: str
    rounds: tuple[int, ...] = ()
    search_repeats: int = 1
    budget_minutes: float | None = None

    @property
    def max_seeds(self) -> int:
        return self.rounds[-1] if self.rounds else self.seeds

    @property
    def reference(self) -> Family:
        return self.families[0]


def _where(job: JobSpec) -> str:
    return f"{job.source}: " if job.source else ""


def space_paths(job: JobSpec, spaces: list[str] | None) -> list[Path]:
    """``--spaces`` (relative to the working directory) or the job's ``study.spaces``
    (relative to the job file).

    Raises:
        UserError: no space file at all.
    """
    if spaces:
        return [Path(s).expanduser().resolve() for s in spaces]
    base = job.source.parent if job.source is not None else Path.cwd()
    paths = [p if p.is_absolute() else (base / p).resolve() for p in job.study.spaces]
    if not paths:
        raise UserError(
            f"{_where(job)}study.spaces: no search-space file; list the families' spaces "
            "in the job's study: block or give --spaces FILE,FILE"
        )
    return paths


def plan_study(job: JobSpec, spaces: list[str] | None = None, seeds: int | None = None) -> StudyPlan:
    """The study of ``job``: its families (``spaces`` override ``study.spaces``), seeds
    (``seeds`` overrides ``study.seeds``), metric, target and final epochs.

    Raises:
        UserError: see the module docstring (one line, naming the file or key).
    """
    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds: must be at least 1 (got {seeds})")
    seeds = seeds if seeds is not None else job.study.seeds
    if job.study.max_seeds is not None and seeds > job.study.max_seeds:
        raise UserError(f"{_where(job)}--seeds: {seeds} is above study.max_seeds ({job.study.max_seeds})")
    families: list[Family] = []
    for path in space_paths(job, spaces):
        if not path.is_file():
            raise UserError(f"{path}: search-space file not found (study.spaces / --spaces)")
        if any(f.name == path.stem for f in families):
            raise UserError(f"{path}: a second space named {path.stem!r}; family names are the file names")
        families.append(Family(path.stem, path, load_space(path, job)))
    first = families[0]
    metric = job.study.metric or first.space.metric
    if metric not in METRICS:
        raise UserError(f"{_where(job)}study.metric: unknown metric {metric!r}; one of {', '.join(METRICS)}")
    if not per_query(metric):
        raise UserError(
            f"{_where(job)}study.metric: {metric} is not a mean over test queries; a study compares "
            "families query by query (rsum, r1_i2t ... r10_t2i, meanr_i2t, meanr_t2i)"
        )
    for family in families:
        space = family.space
        if space.metric != metric:
            raise UserError(
                f"{family.path}: metric: {space.metric} differs from the study metric {metric} "
                f"(of {job.study.metric and 'study.metric' or first.path.name}); "
                "the families must be compared on one metric"
            )
        for key in BUDGET_KEYS:
            mine, theirs = getattr(space, key), getattr(first.space, key)
            if mine != theirs:
                raise UserError(
                    f"{family.path}: {key}: {_show(mine)} differs from {_show(theirs)} in "
                    f"{first.path.name}; a study searches every family on the same budget"
                )
    _check_test_split(job)
    final_epochs = job.study.final_epochs or job.train.final_epochs
    payload = json.dumps(
        [
            job.model_dump(mode="json", exclude={"study"}),
            seeds,
            job.study.max_seeds,
            job.study.search_repeats,
            metric,
            final_epochs,
            [[f.name, f.space.model_dump(mode="json")] for f in families],
        ],
        sort_keys=True,
    )
    key = hashlib.sha1(payload.encode()).hexdigest()[:8]
    return StudyPlan(
        job,
        families,
        seeds,
        metric,
        METRICS[metric],
        first.space.target,
        final_epochs,
        key,
        rounds=tuple(sizes(seeds, job.study.max_seeds if job.study.max_seeds is not None else 3 * seeds)),
        search_repeats=job.study.search_repeats,
        budget_minutes=job.study.budget_minutes,
    )


def _show(value) -> str:
    return json.dumps(value.model_dump(mode="json")) if hasattr(value, "model_dump") else repr(value)


def _check_test_split(job: JobSpec) -> None:
    """The final runs are measured on the test split: it must exist and hold items.

    Raises:
        UserError: naming ``data.splits.test`` and what is missing.
    """
    if missing_inputs(job):
        return  # require_inputs (the command) reports missing data first, with the path
    if job.data.format == "synthetic":
        return  # data.synthetic.num_test >= 1 by the schema
    from unitune.data import build_dataset  # torch and PIL: only for a split to read

    try:
        build_dataset("test", **job.data.dataset_options(), train=False)
    except UserError as exc:
        raise UserError(
            f"{_where(job)}data.splits.test: the study evaluates its final runs on the test "
            f"split ({job.data.splits.test!r}), which this job lacks: {str(exc).splitlines()[0]}"
        ) from None
