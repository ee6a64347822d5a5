"""The frozen-prefix feature cache: what the frozen layers compute, once per search.

When a tower's first layers are frozen, their output for a split does not change during
a search. It is computed once, stored on disk (safetensors, verified, written atomically,
built once per machine under a file lock) and reused: training and evaluation run only the
trainable suffix and the projections. See docs/feature_cache.md.

    check(job) -> Path | None          refusals and warnings, before any compute (driver)
    prepare(job, splits) -> dict       build every entry the trials need (driver), with stats
    open_cache(job, model) -> FeatureCache | None; cache.load(model, dataset, device=...) -> CachedSplit

Library layer: no Ray, no MLflow.
"""

from unitune.features.cache import (
    AUTO_DIR,
    DIR_ENV,
    FeatureCache,
    augment,
    cache_directory,
    check,
    job_model,
    open_cache,
    prepare,
    setting,
)
from unitune.features.cached import CachedCollator, CachedPairs, CachedSplit
from unitune.features.key import FORMAT_VERSION

__all__ = [
    "AUTO_DIR",
    "DIR_ENV",
    "FORMAT_VERSION",
    "CachedCollator",
    "CachedPairs",
    "CachedSplit",
    "FeatureCache",
    "augment",
    "cache_directory",
    "check",
    "job_model",
    "open_cache",
    "prepare",
    "setting",
]
