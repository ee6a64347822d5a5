"""The dataset every format builds: captions over visual items, plus bad-data screening.

Bad data policy (`on_bad_sample`):
- Annotation problems (empty caption, item without captions) are found while parsing:
  `error` raises `UserError` naming the file and key; `skip` drops the caption/item and
  counts it in `skipped`.
- Media are checked eagerly at construction. Always: the file exists and is not empty.
  Under `skip`, every file is also fully decoded once (images: the whole image; videos:
  opened, frame count > 0, first and last frame decoded), in a thread pool, so that the
  bad ones are dropped *before* training and the count is exact.
- Anything that still fails to decode later in `__getitem__` raises `UserError` naming
  the file, under either policy. Nothing is ever substituted or silently dropped from a
  batch, so a batch is either right or an error.
- An empty split (also: empty after skipping) always raises `UserError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from unitune.data.images import load_image
from unitune.data.video import load_video, probe_video
from unitune.errors import UserError

BAD_SAMPLE_POLICIES = ("error", "skip")
MODALITIES = ("image", "video")


@dataclass
class Entry:
    """One visual item as parsed from an annotation file."""

    path: str  # media file
    item_id: int  # stable id (imgid, video number, manifest id)
    captions: list[str]
    group: Hashable | None = None  # items of one group are interchangeable positives
    where: str = ""  # file and key it was read from, for messages ("x.json: images[3]")


@dataclass
class Screen:
    """Collects rejected samples: raises under `error`, counts under `skip`."""

    policy: str
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.policy not in BAD_SAMPLE_POLICIES:
            raise UserError(f"data.on_bad_sample: {self.policy!r} is not one of {', '.join(BAD_SAMPLE_POLICIES)}")

    def reject(self, message: str) -> None:
        if self.policy == "error":
            raise UserError(message)
        self.skipped += 1
        self.reasons.append(message)


class RetrievalDataset(Dataset):
    """A retrieval split: iterates over captions, each paired with its visual item.

    Attributes:
        modality: "image" or "video".
        items: list[str], media path per item.
        captions: list[str].
        caption_to_item: LongTensor [num_captions], item index of each caption.
        item_ids: LongTensor [num_items], stable ids from the annotation file.
        item_groups: LongTensor [num_items] or None; items sharing a group are all
            correct answers for each other's captions (emoji styles of one concept).
        skipped: number of samples dropped under `on_bad_sample: skip`.
        skip_reasons: one message per dropped sample (file and key).
        source: the annotation file (or generator cache dir), for messages.
        split: the split name(s) read from it.

    `dataset[j]` -> {"visual": Tensor [3,H,W] (image) or [F,3,H,W] (video),
    "text": str, "positive_id": int}. `positive_id` is the id positives are matched on in
    a batch (the positive group): the item's group when the data has groups, else its item id.
    Raises UserError from `__getitem__` when a media file fails to decode.
    """

    def __init__(
        self,
        *,
        modality: str,
        entries: list[Entry],
        transform: Callable,
        num_frames: int,
        train: bool,
        source: str,
        split: str,
        skipped: int = 0,
        skip_reasons: list[str] | None = None,
    ):
        if modality not in MODALITIES:
            raise UserError(f"data.modality: {modality!r} is not one of {', '.join(MODALITIES)}")
        self.modality = modality
        self.transform = transform
        self.num_frames = int(num_frames)
        self.train = bool(train)
        self.source = str(source)
        self.split = split
        self.skipped = int(skipped)
        self.skip_reasons = list(skip_reasons or [])
        self.items = [entry.path for entry in entries]
        self.captions = [caption for entry in entries for caption in entry.captions]
        self.caption_to_item = torch.tensor(
            [index for index, entry in enumerate(entries) for _ in entry.captions], dtype=torch.long
        )
        self.item_ids = torch.tensor([entry.item_id for entry in entries], dtype=torch.long)
        if any(entry.group is not None for entry in entries):
            codes: dict = {}
            keys = [entry.group if entry.group is not None else ("item", entry.item_id) for entry in entries]
            self.item_groups: torch.Tensor | None = torch.tensor(
                [codes.setdefault(key, len(codes)) for key in keys], dtype=torch.long
            )
        else:
            self.item_groups = None
        positive = self.item_groups if self.item_groups is not None else self.item_ids
        self._positive_ids = positive.tolist()
        self._item_of_caption = self.caption_to_item.tolist()

    def __len__(self) -> int:
        return len(self.captions)

    def load_visual(self, index: int, *, train: bool | None = None) -> torch.Tensor:
        """Decode item `index` -> Tensor [3,H,W] or [F,3,H,W]. Raises UserError when bad."""
        train = self.train if train is None else train
        path = self.items[index]
        if self.modality == "video":
            return load_video(path, self.num_frames, train=train, transform=self.transform)
        return self.transform(load_image(path))

    def __getitem__(self, j: int) -> dict:
        item = self._item_of_caption[j]
        return {"visual": self.load_visual(item), "text": self.captions[j], "positive_id": self._positive_ids[item]}

    def item_dataset(self) -> ItemDataset:
        """A Dataset over items (uniform frame sampling) for evaluation."""
        return ItemDataset(self)

    def __repr__(self) -> str:
        return (
            f"RetrievalDataset({self.source!r}, split={self.split!r}, modality={self.modality}, "
            f"items={len(self.items)}, captions={len(self.captions)}, skipped={self.skipped})"
        )


class ItemDataset(Dataset):
    """Items of a RetrievalDataset: `[i]` -> {"visual": Tensor, "item_index": i}."""

    def __init__(self, parent: RetrievalDataset):
        self.parent = parent

    def __len__(self) -> int:
        return len(self.parent.items)

    def __getitem__(self, i: int) -> dict:
        return {"visual": self.parent.load_visual(i, train=False), "item_index": i}


class Collator:
    """Batches samples: stacks visuals, tokenizes texts.

    `tokenize(list[str]) -> {"input_ids": LongTensor [B,L], "attention_mask": LongTensor [B,L]}`.
    Returns {"visual": [B,3,H,W] or [B,F,3,H,W], "input_ids", "attention_mask",
    "positive_id": LongTensor [B]}. A class so that it pickles into DataLoader workers.
    """

    def __init__(self, tokenize: Callable[[list[str]], dict]):
        self.tokenize = tokenize

    def __call__(self, batch: list[dict]) -> dict:
        tokens = self.tokenize([sample["text"] for sample in batch])
        return {
            "visual": torch.stack([sample["visual"] for sample in batch]),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "positive_id": torch.tensor([sample["positive_id"] for sample in batch], dtype=torch.long),
        }


def collate(batch: list[dict], tokenize: Callable[[list[str]], dict]) -> dict:
    """Functional form of `Collator(tokenize)(batch)`."""
    return Collator(tokenize)(batch)


def check_batch_size(dataset: RetrievalDataset, batch_size: int, *, key: str = "train.batch_size") -> None:
    """Raise UserError when the split holds fewer captions than one batch.

    The trainer calls this with the global batch size before training starts.
    """
    if len(dataset) < batch_size:
        raise UserError(
            f"{dataset.source}: split {dataset.split!r} has {len(dataset)} captions, "
            f"fewer than one batch of {batch_size} ({key})"
        )


def assemble(
    entries: list[Entry],
    *,
    screen: Screen,
    modality: str,
    source: str,
    split: str,
    split_key: str,
    transform: Callable,
    num_frames: int,
    train: bool,
) -> RetrievalDataset:
    """Screen parsed entries (see module doc) and build the dataset.

    Raises UserError for bad samples under `error` and for an empty split.
    """
    kept = screen_files(entries, screen, modality)
    if screen.policy == "skip" and kept:
        kept = _decode_all(kept, screen, modality)
    if not kept:
        after = f" after skipping {screen.skipped} bad samples" if screen.skipped else ""
        raise UserError(f"{source}: split {split!r} ({split_key}) is empty{after}")
    return RetrievalDataset(
        modality=modality,
        entries=kept,
        transform=transform,
        num_frames=num_frames,
        train=train,
        source=source,
        split=split,
        skipped=screen.skipped,
        skip_reasons=screen.reasons,
    )


def screen_files(entries: list[Entry], screen: Screen, modality: str) -> list[Entry]:
    """The entries with captions whose media file exists and is not empty (no decoding);
    the others go to `screen` (raise under `error`, counted under `skip`)."""
    kept = []
    for entry in entries:
        if not entry.captions:
            screen.reject(f"{entry.where}: item has no captions")
            continue
        if not os.path.isfile(entry.path):
            found = "is a folder, not a file" if os.path.isdir(entry.path) else "file not found"
            screen.reject(f"{entry.path}: {modality} {found} (listed at {entry.where})")
            continue
        if os.path.getsize(entry.path) == 0:
            screen.reject(f"{entry.path}: {modality} file is empty (listed at {entry.where})")
            continue
        kept.append(entry)
    return kept


def _decode_all(entries: list[Entry], screen: Screen, modality: str) -> list[Entry]:
    check = probe_video if modality == "video" else load_image

    def problem(entry: Entry) -> str | None:
        try:
            check(entry.path)
        except UserError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(problem, entries))
    kept = []
    for entry, message in zip(entries, problems):
        if message is None:
            kept.append(entry)
        else:
            screen.reject(message)
    return kept
