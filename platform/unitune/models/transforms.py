"""The models' image transforms: ``unitune.data.images.ImageTransform`` at a Hugging Face
image processor's settings."""

from __future__ import annotations

from typing import Any

from unitune.data.images import CLIP_MEAN, CLIP_STD, ImageTransform

__all__ = ["CLIP_MEAN", "CLIP_STD", "ImageTransform", "transform_from_processor"]


def _entry(size: Any, key: str) -> int | None:
    """`size[key]` for dict-like or attribute-like (SizeDict) image-processor sizes."""
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def transform_from_processor(processor: Any, train: bool) -> ImageTransform:
    """An ImageTransform with a Hugging Face image processor's size, crop size, mean and std."""
    size, crop_size = processor.size, getattr(processor, "crop_size", None) or processor.size
    crop = _entry(crop_size, "height") or _entry(crop_size, "shortest_edge")
    resize = _entry(size, "shortest_edge") or _entry(size, "height") or crop
    if resize is None or crop is None:
        raise ValueError(f"{type(processor).__name__}: no height or shortest_edge in its size {size!r}")
    return ImageTransform(resize=resize, crop=crop, mean=processor.image_mean, std=processor.image_std, train=train)
