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


def read_text(path: str) -> str:
    """A UTF-8 text file (a leading byte-order mark is dropped).

    Raises:
        UserError: the file is not UTF-8 (names the file, line and byte).
        OSError: it cannot be read (FileNotFoundError included).
    """
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: not UTF-8 text (byte {data[exc.start]:#04x})") from None


def read_json(path: str, key: str):
    """Parse a JSON file; raises UserError naming the file (and config key) when it can't."""
    if not path:
        raise UserError(f"{key}: no annotation file given")
    try:
        return json.loads(read_text(path))
    except FileNotFoundError:
        raise UserError(f"{path}: annotation file not found ({key})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except (OSError, RecursionError) as exc:
        raise UserError(f"{path}: cannot read JSON ({exc})") from None


def check_split_names(path: str, names: list[str], available: set[str], key: str) -> None:
    """Raise UserError when a requested split does not occur in the file."""
    for name in names:
        if name not in available:
            raise UserError(f"{path}: split {name!r} ({key}) not found; available: {', '.join(sorted(available))}")


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
    for i, image in enumerate(images):
        if not isinstance(image, dict):
            raise UserError(f"{path}: images[{i}] is not a JSON object")
    available = {image.get("split") for image in images}
    check_split_names(path, names, {s for s in available if isinstance(s, str)}, key)
    wanted = set(names)
    entries = []
    for i, image in enumerate(images):
        if image.get("split") not in wanted:
            continue
        for field in ("filename", "imgid", "sentences"):
            if field not in image:
                raise UserError(f"{path}: images[{i}].{field} is missing")
        if not isinstance(image["sentences"], list):
            raise UserError(f"{path}: images[{i}].sentences must be a list")
        captions = []
        for k, sentence in enumerate(image["sentences"]):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if raw is not None and not isinstance(raw, str):
                screen.reject(f"{path}: images[{i}].sentences[{k}].raw is not text (got {type(raw).__name__})")
                continue
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
