"""MSR-VTT as CLIP4Clip distributes it, 1k-A protocol.

Files (in the directory of `data.annotations`, which points at `MSRVTT_data.json`):
- `MSRVTT_data.json`: `videos[].video_id`, `sentences[].{video_id, caption}`;
- `MSRVTT_train.9k.csv` (column `video_id`): split `train`, every caption of each video
  (20 per video) from `MSRVTT_data.json`;
- `MSRVTT_train.7k.csv`: split `train7k`, the same way (optional file);
- `MSRVTT_JSFUSION_test.csv` (columns `key, vid_key, video_id, sentence`): split `test`,
  the 1,000 video-sentence pairs.
Videos: `data.root/<video_id>.mp4` (default root: `<annotations dir>/videos/all`).
Item id: the number in `videoN`.
"""

from __future__ import annotations

import csv
import os

from unitune.data.base import Entry, Screen
from unitune.data.karpathy import check_split_names, read_json
from unitune.errors import UserError

SPLIT_FILES = {
    "train": "MSRVTT_train.9k.csv",
    "train7k": "MSRVTT_train.7k.csv",
    "test": "MSRVTT_JSFUSION_test.csv",
}


def read_csv(path: str, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a CSV file; raises UserError when it is missing or lacks a column."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read CSV ({exc})") from None
    for column in columns:
        if column not in header:
            raise UserError(f"{path}: column {column!r} is missing (have: {', '.join(header)})")
    return rows


def _video_number(video_id: str, where: str) -> int:
    digits = video_id[len("video") :] if video_id.startswith("video") else ""
    if not digits.isdigit():
        raise UserError(f"{where}: video_id {video_id!r} is not of the form videoN")
    return int(digits)


def load_msrvtt(path: str, root: str | None, names: list[str], key: str, screen: Screen) -> list[Entry]:
    """Entries for the 1k-A split(s) `names` (see module doc).

    Raises UserError for missing files/columns and unknown split names; empty captions
    go to `screen`.
    """
    folder = os.path.dirname(path)
    available = {name for name, file in SPLIT_FILES.items() if os.path.exists(os.path.join(folder, file))}
    check_split_names(folder or ".", names, available, key)
    root = root if root is not None else os.path.join(folder, "videos", "all")
    by_video: dict[str, Entry] = {}
    all_captions = None
    for name in names:
        split_file = os.path.join(folder, SPLIT_FILES[name])
        if name == "test":
            rows = read_csv(split_file, ("video_id", "sentence"))
            pairs = [(row["video_id"], row["sentence"], f"{split_file}: row {n + 2}") for n, row in enumerate(rows)]
        else:
            if all_captions is None:
                all_captions = _captions_by_video(path, screen)
            rows = read_csv(split_file, ("video_id",))
            pairs = []
            for n, row in enumerate(rows):
                captions = all_captions.get(row["video_id"])
                if captions is None:
                    screen.reject(f"{split_file}: row {n + 2}: {row['video_id']} has no sentences in {path}")
                    continue
                pairs += [(row["video_id"], text, where) for text, where in captions]
        for video_id, text, where in pairs:
            entry = by_video.get(video_id)
            if entry is None:
                entry = by_video[video_id] = Entry(
                    path=os.path.join(root, f"{video_id}.mp4"),
                    item_id=_video_number(video_id, where),
                    captions=[],
                    where=where,
                )
            if not isinstance(text, str) or not text.strip():
                screen.reject(f"{where}: caption is empty")
                continue
            entry.captions.append(text.strip())
    return list(by_video.values())


def _captions_by_video(path: str, screen: Screen) -> dict[str, list[tuple[str, str]]]:
    data = read_json(path, "data.annotations")
    sentences = data.get("sentences") if isinstance(data, dict) else None
    if not isinstance(sentences, list):
        raise UserError(f"{path}: expected a JSON object with a 'sentences' list (MSRVTT_data.json)")
    captions: dict[str, list[tuple[str, str]]] = {}
    for i, sentence in enumerate(sentences):
        if "video_id" not in sentence:
            raise UserError(f"{path}: sentences[{i}].video_id is missing")
        captions.setdefault(sentence["video_id"], []).append(
            (sentence.get("caption"), f"{path}: sentences[{i}].caption")
        )
    return captions
