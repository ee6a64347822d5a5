"""Retrieval datasets: karpathy, msrvtt, manifest and the built-in synthetic generator.

    build_dataset(split, *, format, modality, splits, num_frames, on_bad_sample,
                  annotations=None, root=None, synthetic=None, transform=None, train=True)
        -> RetrievalDataset

The keywords are the job's `data` section as plain values (`job.data.dataset_options()`);
the defaults of the job file live in `unitune.config`. Library layer: no Ray, no MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from unitune.choices import DATA_FORMATS, SYNTHETIC_DEFAULTS
from unitune.data.base import (
    BAD_SAMPLE_POLICIES,
    MODALITIES,
    Collator,
    Entry,
    ItemDataset,
    RetrievalDataset,
    Screen,
    assemble,
    check_batch_size,
    collate,
)
from unitune.data.images import CLIP_MEAN, CLIP_STD, ImageTransform, default_transform, load_image
from unitune.data.karpathy import load_karpathy
from unitune.data.manifest import load_manifest
from unitune.data.msrvtt import load_msrvtt
from unitune.data.synthetic import generate as generate_synthetic
from unitune.data.video import load_video, segment_random_indices, uniform_indices
from unitune.errors import UserError

FORMAT_MODALITIES = {"karpathy": ("image",), "msrvtt": ("video",), "manifest": MODALITIES, "synthetic": MODALITIES}

__all__ = [
    "BAD_SAMPLE_POLICIES",
    "CLIP_MEAN",
    "CLIP_STD",
    "Collator",
    "DATA_FORMATS",
    "ImageTransform",
    "ItemDataset",
    "RetrievalDataset",
    "build_dataset",
    "check_batch_size",
    "collate",
    "default_transform",
    "generate_synthetic",
    "load_image",
    "load_video",
    "read_entries",
    "segment_random_indices",
    "split_names",
    "uniform_indices",
]


def split_names(splits: Mapping[str, str | None], role: str) -> tuple[list[str], str]:
    """Map a role ("train", "val", "test") through `splits` (`data.splits`) to the file's
    split names.

    A name may join several with "+" ("train+restval"). Returns (names, config key).
    Raises UserError when the role is not in `splits`.
    """
    key = f"data.splits.{role}"
    name = splits.get(role)
    if not name:
        raise UserError(f"{key}: no split named {role!r} in data.splits")
    names = [part.strip() for part in str(name).split("+")]
    if not all(names):
        raise UserError(f"{key}: bad split name {name!r}")
    return names, key


def read_entries(
    fmt: str, modality: str, annotations: str, root: str | None, names: list[str], key: str, screen: Screen
) -> list[Entry]:
    """Parse the entries of split(s) `names` from an annotation file (no media is opened).

    `fmt`: karpathy, msrvtt or manifest (the synthetic set is a manifest). Annotation
    problems go to `screen` or raise UserError (see each loader).
    """
    if fmt == "karpathy":
        return load_karpathy(annotations, root, names, key, screen)
    if fmt == "msrvtt":
        return load_msrvtt(annotations, root, names, key, screen)
    return load_manifest(annotations, root, modality, names, key, screen)


def build_dataset(
    split: str,
    *,
    format: str,
    modality: str,
    splits: Mapping[str, str | None],
    num_frames: int,
    on_bad_sample: str,
    annotations: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    synthetic: Mapping[str, Any] | None = None,
    transform: Callable | None = None,
    train: bool = True,
) -> RetrievalDataset:
    """Build the dataset of one split role; the keywords are the job's `data` section
    (`unitune.config.DataSpec.dataset_options()`, which holds their defaults).

    Args:
        split: "train", "val" or "test" (a key of `splits`).
        format, modality, splits, num_frames, on_bad_sample, annotations, root: as the
            `data` keys of the job file (`annotations`: required by every format but synthetic).
        synthetic: `cache_dir` and the generator's options (format synthetic only; missing
            options take `unitune.choices.SYNTHETIC_DEFAULTS`).
        transform: PIL.Image -> Tensor [3,H,W] (the model's); None: `default_transform`
            at the synthetic image size (synthetic) or 224.
        train: segment-random frame sampling when True, uniform otherwise.
    Raises:
        UserError: unknown format/modality/split, missing or unreadable annotation
            file, bad samples under `on_bad_sample: error`, an empty split.
    """
    if format not in DATA_FORMATS:
        raise UserError(f"data.format: {format!r} is not one of {', '.join(DATA_FORMATS)}")
    if modality not in FORMAT_MODALITIES[format]:
        raise UserError(
            f"data.modality: format {format!r} supports {', '.join(FORMAT_MODALITIES[format])}, not {modality!r}"
        )
    screen = Screen(on_bad_sample)
    names, key = split_names(splits, split)
    size = 224
    if format == "synthetic":
        if synthetic is None or "cache_dir" not in synthetic:
            raise ValueError("format 'synthetic' needs synthetic={'cache_dir': ..., generator options}")
        options = {**SYNTHETIC_DEFAULTS, **synthetic}
        cache_dir = os.fspath(options.pop("cache_dir"))
        size = options["image_size"]
        annotations, root = generate_synthetic(cache_dir, modality=modality, **options), None
    if annotations is None:
        raise UserError(f"data.annotations: required for data.format {format!r}")
    source = os.fspath(annotations)
    entries = read_entries(format, modality, source, os.fspath(root) if root is not None else None, names, key, screen)
    return assemble(
        entries,
        screen=screen,
        modality=modality,
        source=source,
        split="+".join(names),
        split_key=key,
        transform=transform if transform is not None else default_transform(size),
        num_frames=int(num_frames),
        train=train,
    )
