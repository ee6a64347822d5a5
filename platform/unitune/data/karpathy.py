"""Karpathy-split JSON (Flickr30K, COCO, emoji): `images[].filename/filepath/split/
sentences[].raw/imgid`, plus an image root.

- Image path: `root / filepath / filename` (`filepath` only where present, as in COCO).
- Split names are the file's own (`train`, `restval`, `val`, `test`); join several with
  `+`. COCO's `restval` is NOT merged into `train` implicitly: ask for `train+restval`
  (the usual 113k training set) in `data.splits.train`.
- Groups: when images carry `concept` (the emoji set), all images of a concept form a
  group (their captions are shared, so each is a correct answer for the others).
"""

from __future__ import annotations

import json
import os

from unitune.data.base import Entry, Screen
from unitune.errors import UserError


def read_json(path: str, key: str):
    """Parse a JSON file; raises UserError naming the file (and config key) when it can't."""
    if not path:
        raise UserError(f"{key}: no annotation file given")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserError(f"{path}: annotation file not found ({key})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read JSON ({exc})") from None


def check_split_names(path: str, names: list[str], available: set[str], key: str) -> None:
    """Raise UserError when a requested split does not occur in the file."""
    for name in names:
        if name not in available:
            raise UserError(
                f"{path}: split {name!r} ({key}) not found; available: {', '.join(sorted(available))}"
            )


def load_karpathy(path: str, root: str | None, names: list[str], key: str, screen: Screen) -> list[Entry]:
    """Entries of the images whose `split` is in `names`.

    Raises UserError for a missing/invalid file, a missing field, or an unknown split;
    empty captions go to `screen`.
    """
    data = read_json(path, "data.annotations")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise UserError(f"{path}: expected a JSON object with an 'images' list (Karpathy format)")
    root = root if root is not None else os.path.dirname(path)
    available = {image.get("split") for image in images if isinstance(image, dict)}
    check_split_names(path, names, {s for s in available if isinstance(s, str)}, key)
    wanted = set(names)
    entries = []
    for i, image in enumerate(images):
        if image.get("split") not in wanted:
            continue
        for field in ("filename", "imgid", "sentences"):
            if field not in image:
                raise UserError(f"{path}: images[{i}].{field} is missing")
        captions = []
        for k, sentence in enumerate(image["sentences"]):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                screen.reject(f"{path}: images[{i}].sentences[{k}].raw is empty")
                continue
            captions.append(raw.strip())
        entries.append(
            Entry(
                path=os.path.join(root, image.get("filepath", ""), image["filename"]),
                item_id=int(image["imgid"]),
                captions=captions,
                group=image.get("concept"),
                where=f"{path}: images[{i}]",
            )
        )
    return entries
