"""Retrieval datasets: karpathy, msrvtt, manifest and the built-in synthetic generator.

    build_dataset(spec, split, *, transform=None, num_frames=None, train=True) -> RetrievalDataset

`spec` is the job's `data` section (`unitune.config.DataSpec` or any object with the
same attributes): format, modality, root, annotations, splits, num_frames,
on_bad_sample, synthetic{num_train, num_val, num_test, captions_per_item, image_size,
num_frames, seed, cache_dir}. Library layer: no Ray, no MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from unitune.choices import DATA_FORMATS, NUM_FRAMES, SYNTHETIC_CACHE_DIR, SYNTHETIC_DEFAULTS
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


def _get(obj, name: str, default=None):
    """Attribute or mapping lookup (specs may be pydantic models, namespaces or dicts)."""
    if obj is None:
        return default
    value = obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)
    return default if value is None else value


def split_names(spec, split: str) -> tuple[list[str], str]:
    """Map a role ("train", "val", "test") through `data.splits` to the file's split names.

    A name may join several with "+" ("train+restval"). Returns (names, config key).
    Raises UserError when the role is not in `data.splits`.
    """
    splits = _get(spec, "splits")
    key = f"data.splits.{split}"
    name = split if splits is None else _get(splits, split)
    if not name:
        raise UserError(f"{key}: no split named {split!r} in data.splits")
    names = [part.strip() for part in str(name).split("+")]
    if not all(names):
        raise UserError(f"{key}: bad split name {name!r}")
    return names, key


def read_entries(
    fmt: str, modality: str, annotations: str | None, root: str | None, names: list[str], key: str, screen: Screen
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
    spec, split: str, *, transform: Callable | None = None, num_frames: int | None = None, train: bool = True
) -> RetrievalDataset:
    """Build the dataset for one split role of the job's `data` section.

    Args:
        spec: data spec (see module doc). Only its attributes are read.
        split: "train", "val" or "test" (a key of `data.splits`).
        transform: PIL.Image -> Tensor [3,H,W] (the model's); None: `default_transform`
            at the synthetic image size (synthetic) or 224.
        num_frames: frames per clip; None: `data.num_frames` (default 8).
        train: segment-random frame sampling when True, uniform otherwise.
    Raises:
        UserError: unknown format/modality/split, missing or unreadable annotation
            file, bad samples under `on_bad_sample: error`, an empty split.
    """
    fmt = _get(spec, "format", "synthetic")
    if fmt not in DATA_FORMATS:
        raise UserError(f"data.format: {fmt!r} is not one of {', '.join(DATA_FORMATS)}")
    modality = _get(spec, "modality", "image")
    if modality not in FORMAT_MODALITIES[fmt]:
        raise UserError(f"data.modality: format {fmt!r} supports {', '.join(FORMAT_MODALITIES[fmt])}, not {modality!r}")
    screen = Screen(_get(spec, "on_bad_sample", "error"))
    names, key = split_names(spec, split)
    root, annotations = _get(spec, "root"), _get(spec, "annotations")
    root = os.fspath(root) if root is not None else None
    annotations = os.fspath(annotations) if annotations is not None else None
    size = 224
    if fmt == "synthetic":
        synthetic = _get(spec, "synthetic")
        options = {name: _get(synthetic, name, default) for name, default in SYNTHETIC_DEFAULTS.items()}
        size = options["image_size"]
        cache_dir = os.fspath(_get(synthetic, "cache_dir", SYNTHETIC_CACHE_DIR))
        annotations = generate_synthetic(cache_dir, modality=modality, **options)
        root = None
    entries = read_entries(fmt, modality, annotations, root, names, key, screen)
    return assemble(
        entries,
        screen=screen,
        modality=modality,
        source=annotations,
        split="+".join(names),
        split_key=key,
        transform=transform if transform is not None else default_transform(size),
        num_frames=int(num_frames or _get(spec, "num_frames", NUM_FRAMES)),
        train=train,
    )
