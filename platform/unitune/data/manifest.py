"""A generic manifest for users' own data: JSONL (`.jsonl`) or CSV (`.csv`) rows.

Row fields:
- `image` or `video`: media path, relative to `data.root` (default: the manifest's folder);
  the field must match `data.modality`;
- `caption` (str) or `captions` (list; in CSV a JSON list in the cell);
- `id` (optional, default: the media path): rows with the same id are one item and their
  captions are merged; integer ids are kept as item ids, otherwise items are numbered
  in order of first appearance in the file;
- `split` (required): e.g. train / val / test;
- `group` (optional): items of one group are all correct answers for each other's captions.
"""

from __future__ import annotations

import csv
import io
import json
import os

from unitune.data.base import Entry, Screen
from unitune.data.karpathy import check_split_names, read_text
from unitune.errors import UserError


def read_rows(path: str) -> list[tuple[str, dict]]:
    """(location, row) pairs of a JSONL or CSV manifest. Raises UserError when unreadable."""
    if not path:
        raise UserError("data.annotations: no manifest file given")
    if not path.endswith((".jsonl", ".csv")):
        raise UserError(f"{path}: manifest must be a .jsonl or .csv file (data.annotations)")
    try:
        text = read_text(path)
        if path.endswith(".csv"):
            return [
                (f"{path}: line {n + 2}", row) for n, row in enumerate(csv.DictReader(io.StringIO(text, newline="")))
            ]
        rows = []
        for n, line in enumerate(text.split("\n")):  # JSON Lines: only \n ends a line
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}: line {n + 1}: invalid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}: line {n + 1} is not a JSON object")
                rows.append((f"{path}: line {n + 1}", row))
        return rows
    except FileNotFoundError:
        raise UserError(f"{path}: manifest not found (data.annotations)") from None
    except (OSError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read manifest ({exc})") from None


def _captions(row: dict, where: str) -> list:
    if row.get("captions") not in (None, ""):
        captions = row["captions"]
        if isinstance(captions, str):
            try:
                captions = json.loads(captions)
            except json.JSONDecodeError:
                raise UserError(f"{where}: 'captions' must be a JSON list") from None
        if not isinstance(captions, list):
            raise UserError(f"{where}: 'captions' must be a list")
        return captions
    if "caption" in row:
        return [row["caption"]]
    raise UserError(f"{where}: needs 'caption' or 'captions'")


def load_manifest(
    path: str, root: str | None, modality: str, names: list[str], key: str, screen: Screen
) -> list[Entry]:
    """Entries of the rows whose `split` is in `names` (see module doc).

    Raises UserError for a missing field, a media field that does not match the
    modality, an id listed with two paths, or an unknown split; empty captions go to
    `screen`.
    """
    rows = read_rows(path)
    if not rows:
        raise UserError(f"{path}: the manifest has no rows (data.annotations)")
    root = root if root is not None else os.path.dirname(path)
    other = "image" if modality == "video" else "video"
    for where, row in rows:
        if not row.get(modality):
            hint = f" (it has '{other}'; set data.modality: {other})" if row.get(other) else ""
            raise UserError(f"{where}: '{modality}' is missing{hint}")
        if not row.get("split"):
            raise UserError(f"{where}: 'split' is missing")
    check_split_names(path, names, {row["split"] for _, row in rows}, key)
    keys = [str(row.get("id", "")) or row[modality] for _, row in rows]
    numeric = all(k.lstrip("-").isdigit() for k in keys)
    order: dict[str, int] = {}
    for k in keys:
        order.setdefault(k, len(order))
    wanted = set(names)
    entries: dict[str, Entry] = {}
    for (where, row), k in zip(rows, keys):
        if row["split"] not in wanted:
            continue
        media = os.path.join(root, row[modality])
        entry = entries.get(k)
        if entry is None:
            group = row.get("group")
            entry = entries[k] = Entry(
                path=media,
                item_id=int(k) if numeric else order[k],
                captions=[],
                group=None if group in (None, "") else str(group),
                where=where,
            )
        elif entry.path != media:
            raise UserError(f"{where}: id {k!r} was listed with another file at {entry.where}")
        for n, caption in enumerate(_captions(row, where)):
            if not isinstance(caption, str):
                screen.reject(f"{where}: caption {n} is not text (got {type(caption).__name__})")
                continue
            if not caption.strip():
                screen.reject(f"{where}: caption {n} is empty")
                continue
            entry.captions.append(caption.strip())
    return list(entries.values())
