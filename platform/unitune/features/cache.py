"""The job-level feature cache: is it on, where, refusals, and loading or building a split.

``data.feature_cache``:

- ``auto`` (default): on when the model freezes layers and ``data.augment`` is not true;
  entries in ``.unitune/features`` under the working directory of the process that calls
  :func:`check` (the driver), which it passes to the processes it starts through the
  ``UNITUNE_FEATURE_CACHE_DIR`` environment variable;
- ``off``: every step runs the whole model (random augmentation allowed);
- a directory: on, entries there (absolute; relative paths are made absolute at load).

With the cache on, training sees the deterministic (evaluation) transform and uniform frame
sampling. ``data.augment: true`` asks for random crops / segment-random frames: with
``auto`` it turns the cache off, with a directory it is refused (one cached view of each
item cannot be randomly augmented).
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unitune.data import build_dataset
from unitune.errors import UserError
from unitune.features.cached import CachedSplit, build_text, build_visual
from unitune.features.key import entry_name, text_key, visual_key
from unitune.features.store import KEY, check_writable, get_or_build, paths
from unitune.models import build_model

AUTO_DIR = ".unitune/features"
DIR_ENV = "UNITUNE_FEATURE_CACHE_DIR"


def setting(job) -> str:
    """``auto``, ``off`` or a directory (the job's ``data.feature_cache``)."""
    return str(getattr(job.data, "feature_cache", "auto") or "auto")


def augment(job) -> bool | None:
    """``data.augment``: True (random augmentation), False (deterministic) or None (default)."""
    return getattr(job.data, "augment", None)


def _freezes(job) -> bool:
    freeze = job.model.freeze
    return bool(
        freeze.projections_only
        or freeze.visual_trainable_layers is not None
        or freeze.text_trainable_layers is not None
    )


def cache_directory(job) -> Path | None:
    """Where the job's entries live, or None when ``data.feature_cache: off``."""
    value = setting(job)
    return None if value == "off" else _directory(value)


def _directory(value: str) -> Path:
    """The directory of a ``data.feature_cache`` setting other than ``off``."""
    if value == "auto":
        return Path(os.environ.get(DIR_ENV) or Path.cwd() / AUTO_DIR).resolve()
    return Path(value).expanduser().resolve()


def _no_effect(value: str) -> None:
    warnings.warn(
        f"{KEY}: {value} has no effect: the model has no frozen layer to cache "
        "(set model.freeze, or leave data.feature_cache at auto)",
        UserWarning,
        stacklevel=3,
    )


def check(job) -> Path | None:
    """Before any compute (the driver): the directory the job's trials cache in, or None.

    Warns when ``data.feature_cache`` names a directory but the model freezes nothing.
    With ``auto``, exports the directory as ``UNITUNE_FEATURE_CACHE_DIR`` for processes
    started later (trials in their own working directories find the same entries).

    Raises:
        UserError: a cache directory with ``data.augment: true``; a directory that cannot
            be created or written (the message names it).
    """
    value = setting(job)
    if value == "off":
        return None
    if not _freezes(job):
        if value != "auto":
            _no_effect(value)
        return None
    if augment(job) is True:
        if value == "auto":
            return None
        raise UserError(
            f"{KEY}: {value} caches one deterministic view per item, but data.augment is true "
            "(random augmentation); set data.feature_cache: off or data.augment: false"
        )
    directory = _directory(value)
    check_writable(directory)
    if value == "auto":
        os.environ.setdefault(DIR_ENV, str(directory))
    return directory


@dataclass
class FeatureCache:
    """The cache of one model: where (``directory``), which cut per tower (``split``, see
    ``DualEncoder.frozen_split``), and what loading has cost so far (``stats``)."""

    directory: Path
    split: dict[str, int | None]
    batch_size: int = 256
    num_workers: int = 0
    stats: dict = field(
        default_factory=lambda: {"feature_cache_s": 0.0, "entries_built": 0, "entries_reused": 0, "bytes": 0}
    )

    def _build(self, tower: str, model, dataset, k: int, device: torch.device) -> dict[str, torch.Tensor]:
        if tower == "visual":
            return build_visual(
                model, dataset, k, batch_size=self.batch_size, device=device, num_workers=self.num_workers
            )
        return build_text(model, dataset.captions, k, batch_size=self.batch_size, device=device)

    def load(self, model, dataset, *, device: torch.device) -> CachedSplit:
        """The split's cached prefixes, built (once, under the entry's lock) when missing
        or invalid. ``dataset`` must use the evaluation transform. Raises UserError when
        the cache directory cannot be written."""
        started = time.perf_counter()
        parts: dict[str, dict | None] = {"visual": None, "text": None}
        for tower, k in self.split.items():
            if k is None:
                continue
            key = visual_key(model, dataset, k) if tower == "visual" else text_key(model, dataset, k)
            name = entry_name(key)
            parts[tower], written = get_or_build(
                self.directory, name, key, functools.partial(self._build, tower, model, dataset, k, device)
            )
            self.stats["entries_built" if written else "entries_reused"] += 1
            self.stats["bytes"] += paths(self.directory, name)[0].stat().st_size
        self.stats["feature_cache_s"] += time.perf_counter() - started
        return CachedSplit(parts["visual"], parts["text"], video=dataset.modality == "video")


def open_cache(job, model) -> FeatureCache | None:
    """The job's cache for ``model`` (built from the job), or None when training runs the
    whole model: cache off, nothing frozen, or random augmentation under ``auto``."""
    value = setting(job)
    if value == "off" or (augment(job) is True and value == "auto"):
        return None
    split = model.frozen_split()
    if all(k is None for k in split.values()):
        if value != "auto":
            _no_effect(value)
        return None
    if augment(job) is True:
        check(job)  # raises: a cache directory and random augmentation
    directory = _directory(value)
    return FeatureCache(directory, split, batch_size=job.train.eval_batch_size, num_workers=job.data.num_workers)


def job_model(job):
    """``(train split, model)`` exactly as a trial builds them: seeded by the job, the
    tiny model's vocabulary from the training captions."""
    torch.manual_seed(job.seed)
    train_set = build_dataset("train", **job.data.dataset_options(), transform=None, train=True)
    model = build_model(job.model.model_dump(), captions=train_set.captions)
    return train_set, model


def prepare(job, splits: tuple[str, ...] = ("train", "val")) -> dict:
    """Build (or find) every entry the job's trials read, once, before the first trial.

    Trials whose sampled values change a key (a searched freeze split or image size) build
    their own entry on first use. Call it on the driver; ``"test"`` in ``splits`` for a
    final training that evaluates the test split.

    Returns:
        ``{"feature_cache_s", "entries_built", "entries_reused", "bytes",
        "feature_cache_dir"}`` (zeros and no directory when the cache is off).

    Raises:
        UserError: see :func:`check`; data or model errors.
    """
    started = time.perf_counter()
    empty = {"feature_cache_s": 0.0, "entries_built": 0, "entries_reused": 0, "bytes": 0, "feature_cache_dir": None}
    if check(job) is None:
        return empty
    train_set, model = job_model(job)
    cache = open_cache(job, model)
    if cache is None:
        return empty
    device = torch.device("cuda" if job.resources.use_gpu and torch.cuda.is_available() else "cpu")
    model.to(device)
    for role in splits:
        dataset = (
            train_set
            if role == "train"
            else build_dataset(role, **job.data.dataset_options(), transform=None, train=False)
        )
        dataset.transform, dataset.train = model.image_transform(train=False), False
        cache.load(model, dataset, device=device)
    return {**cache.stats, "feature_cache_s": time.perf_counter() - started, "feature_cache_dir": str(cache.directory)}
