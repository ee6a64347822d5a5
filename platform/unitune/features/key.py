"""What a cache entry's numbers depend on, as a JSON-able key, and the entry's file name.

A visual entry depends on the model (name, sources), the frozen weights of its visual
tower, the split point, the deterministic transform (resize, crop, normalisation), the
frames sampled (videos: count, uniform sampling), the data (annotation file digest, the
items with their size and modification time) and the split. A text entry on the text
tower's frozen weights and split point, the tokenizer (class, source, max length,
vocabulary digest), the captions and the split. Each key holds ``FORMAT_VERSION``: a
cache written by another version of the format is never read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

from unitune.features.store import file_sha256

FORMAT_VERSION = 1
_MODEL_KEYS = ("name", "preset", "checkpoint", "image_encoder", "text_encoder", "image_size")


@functools.lru_cache(maxsize=64)
def _annotation_digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def data_digest(source: str) -> str:
    """sha256 of the annotation file (or of a directory's listing with sizes)."""
    if os.path.isdir(source):
        listing = sorted((name, os.path.getsize(os.path.join(source, name))) for name in os.listdir(source))
        return _sha(listing)
    stat = os.stat(source)
    return _annotation_digest(os.path.abspath(source), stat.st_size, stat.st_mtime_ns)


def _sha(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _items_digest(items: list[str]) -> str:
    digest = hashlib.sha256()
    for path in items:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _common(model, dataset, tower: str, k: int) -> dict:
    return {
        "format": FORMAT_VERSION,
        "tower": tower,
        "model": {key: model.config.get(key) for key in _MODEL_KEYS},
        "weights_sha256": model.tower_digest(tower),
        "split_point": k,
        "data_sha256": data_digest(dataset.source),
        "split": dataset.split,
    }


def visual_key(model, dataset, k: int) -> dict:
    """Key of the visual entry of ``dataset`` (a ``RetrievalDataset``) under ``model``'s cut ``k``."""
    transform = model.image_transform(train=False)
    key = _common(model, dataset, "visual", k)
    key.update(
        {
            "transform": transform.describe(),
            "modality": dataset.modality,
            "frames": {"count": dataset.num_frames, "sampling": "uniform"} if dataset.modality == "video" else None,
            "items_sha256": _items_digest(dataset.items),
        }
    )
    return key


def text_key(model, dataset, k: int) -> dict:
    """Key of the text entry of ``dataset``'s captions under ``model``'s cut ``k``."""
    key = _common(model, dataset, "text", k)
    key.update({"tokenizer": model.tokenizer.describe(), "captions_sha256": _sha(dataset.captions)})
    return key


def entry_name(key: dict) -> str:
    """``{split}-{tower}-{16 hex digits of the key's sha256}`` (a safe file name)."""
    split = "".join(c if c.isalnum() else "_" for c in key["split"])
    return f"{split}-{key['tower']}-{_sha(key)[:16]}"
