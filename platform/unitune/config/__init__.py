"""Validated job and search-space specs: YAML in, typed objects out.

    load_job(path, overrides=()) -> JobSpec        apply_overrides(job, {"loss.margin": 0.3})
    load_space(path, job=None) -> SearchSpaceSpec  missing_inputs(job) / require_inputs(job)
    space_warnings(space) -> [message]

Imports no torch, Ray or MLflow, so every layer may read it; the local/remote rules it checks
jobs with is ``unitune.tracking.unreachable_store`` (``unitune.stores.is_remote_address`` and
``unitune.stores.is_local_store``).
"""

from unitune.choices import DATA_FORMATS, MINING_MODES, MODEL_NAMES
from unitune.config.job import (
    DataSpec,
    FreezeSpec,
    JobSpec,
    LossSpec,
    ModelSpec,
    OptimSpec,
    RaySpec,
    ResourcesSpec,
    SearchRef,
    SplitsSpec,
    StudySpec,
    SyntheticSpec,
    TrackingSpec,
    TrainSpec,
)
from unitune.config.loading import (
    apply_overrides,
    expand_env,
    load_job,
    missing_inputs,
    parse_override,
    read_yaml,
    require_inputs,
    require_space,
)
from unitune.config.space import (
    CONVERGENCE_METRICS,
    METRICS,
    AshaSpec,
    ObjectiveSpec,
    ParamSpec,
    SearchSpaceSpec,
    load_space,
    space_warnings,
)

__all__ = [
    "CONVERGENCE_METRICS",
    "DATA_FORMATS",
    "METRICS",
    "MINING_MODES",
    "MODEL_NAMES",
    "AshaSpec",
    "DataSpec",
    "FreezeSpec",
    "JobSpec",
    "LossSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "OptimSpec",
    "ParamSpec",
    "RaySpec",
    "ResourcesSpec",
    "SearchRef",
    "SearchSpaceSpec",
    "SplitsSpec",
    "StudySpec",
    "SyntheticSpec",
    "TrackingSpec",
    "TrainSpec",
    "apply_overrides",
    "expand_env",
    "load_job",
    "load_space",
    "missing_inputs",
    "parse_override",
    "read_yaml",
    "require_inputs",
    "require_space",
    "space_warnings",
]
