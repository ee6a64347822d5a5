"""Computing a split's frozen-prefix outputs, and serving them as training batches.

Layout of the tensors of an entry:

- visual: ``prefix`` ``[num_items, *S]`` (images) or ``[num_items, F, *S]`` (videos, the
  uniformly sampled frames), float32;
- text: each distinct caption once (captions shared by several items, such as the emoji
  styles of one concept, are computed and stored once); ``caption_index`` ``[num_captions]``
  maps caption ``j`` to its row ``u``. Cut inside the tower: ``hidden`` ``[total_tokens, H]``
  (each distinct caption's tokens, no padding, one after another), ``offsets``
  ``[num_distinct + 1]`` (row ``u`` is ``hidden[offsets[u]:offsets[u+1]]``) and per-caption
  extras such as ``pool_index`` ``[num_distinct]``; whole tower frozen: ``pooled``
  ``[num_distinct, H]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

SEQUENCE_KEYS = ("hidden",)


@torch.no_grad()
def build_visual(
    model, dataset, k: int, *, batch_size: int, device: torch.device, num_workers: int = 0
) -> dict[str, torch.Tensor]:
    """The visual prefix of every item of ``dataset`` (its transform must be the evaluation
    one; videos: uniform frames). -> ``{"prefix": [num_items, ...]}`` float32 on the CPU."""
    model.eval()
    loader = DataLoader(dataset.item_dataset(), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    out = []
    for batch in loader:
        visual = batch["visual"].to(device)
        if visual.dim() == 5:  # videos: every frame through the prefix, frames kept apart
            prefix = model.visual_prefix(visual.flatten(0, 1), k).unflatten(0, visual.shape[:2])
        else:
            prefix = model.visual_prefix(visual, k)
        out.append(prefix.float().cpu())
    return {"prefix": torch.cat(out)}


@torch.no_grad()
def build_text(model, captions: list[str], k: int, *, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The text prefix of every caption (see the module doc for the layout).

    Raises ValueError for a tokenizer that pads on the left (the layout needs each
    caption's tokens first).
    """
    model.eval()
    rows = {caption: row for row, caption in enumerate(dict.fromkeys(captions))}
    distinct = list(rows)
    parts: dict[str, list[torch.Tensor]] = {}
    lengths: list[torch.Tensor] = []
    for start in range(0, len(distinct), batch_size):
        tokens = model.tokenize(distinct[start : start + batch_size])
        mask = tokens["attention_mask"]
        prefix = model.text_prefix(tokens["input_ids"].to(device), mask.to(device), k)
        if "hidden" in prefix:
            length = mask.sum(dim=1)
            if not torch.equal(mask, (torch.arange(mask.shape[1]) < length[:, None]).long()):
                raise ValueError("the feature cache needs right-padded tokens (padding_side='right')")
            lengths.append(length)
            parts.setdefault("hidden", []).extend(
                row[:n].float().cpu() for row, n in zip(prefix["hidden"], length.tolist(), strict=True)
            )
        for name, value in prefix.items():
            if name not in ("hidden", "attention_mask"):
                parts.setdefault(name, []).append(value.float().cpu() if value.is_floating_point() else value.cpu())
    tensors = {name: torch.cat(values) for name, values in parts.items()}
    tensors["caption_index"] = torch.tensor([rows[caption] for caption in captions], dtype=torch.long)
    if lengths:
        tensors["offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), torch.cat(lengths).cumsum(0)])
    return tensors


@dataclass
class CachedSplit:
    """One split's cached prefixes: ``visual`` (the visual entry) and ``text`` (the text
    entry), each None when that tower is not cached; ``video``: the items are clips."""

    visual: dict[str, torch.Tensor] | None
    text: dict[str, torch.Tensor] | None
    video: bool = False

    def visual_prefix(self, index) -> torch.Tensor:
        """Prefix of item(s) ``index`` (int or index tensor)."""
        if self.visual is None:
            raise ValueError("the visual tower's prefixes are not cached")
        return self.visual["prefix"][index]

    def text_sample(self, j: int) -> dict[str, torch.Tensor]:
        """Caption ``j``'s prefix: ``{"hidden": [len_j, H], extras}`` or ``{"pooled": [H]}``."""
        text = self.text
        if text is None:
            raise ValueError("the text tower's prefixes are not cached")
        row = int(text["caption_index"][j])
        per_row = {
            name: value[row] for name, value in text.items() if name not in ("hidden", "offsets", "caption_index")
        }
        if "offsets" in text:
            per_row["hidden"] = text["hidden"][int(text["offsets"][row]) : int(text["offsets"][row + 1])]
        return per_row

    def text_batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return collate_text([self.text_sample(j) for j in indices])


def collate_text(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack text prefixes: ``hidden`` right-padded with zeros to the longest, plus its
    ``attention_mask`` ``[B, L]``; other entries stacked."""
    batch: dict[str, torch.Tensor] = {}
    if "hidden" in samples[0]:
        hidden = [s["hidden"] for s in samples]
        batch["hidden"] = torch.nn.utils.rnn.pad_sequence(hidden, batch_first=True)
        lengths = torch.tensor([len(h) for h in hidden])
        batch["attention_mask"] = (torch.arange(batch["hidden"].shape[1]) < lengths[:, None]).long()
    for name in samples[0]:
        if name != "hidden":
            batch[name] = torch.stack([s[name] for s in samples])
    return batch


class CachedPairs(Dataset):
    """A training split over captions, with cached prefixes where the cache has them.

    ``[j]`` -> ``{"positive_id", "visual_prefix" | "video_prefix" | "visual", "text_prefix" | "text"}``:
    an uncached tower gets its raw input (the image through ``dataset``'s transform, or
    the caption string), as ``RetrievalDataset`` gives it.
    """

    def __init__(self, dataset, cached: CachedSplit):
        self.dataset, self.cached = dataset, cached

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, j: int) -> dict:
        item = self.dataset._item_of_caption[j]
        sample = {"positive_id": self.dataset._positive_ids[item]}
        if self.cached.visual is not None:
            sample["video_prefix" if self.cached.video else "visual_prefix"] = self.cached.visual_prefix(item)
        else:
            sample["visual"] = self.dataset.load_visual(item)
        if self.cached.text is not None:
            sample["text_prefix"] = self.cached.text_sample(j)
        else:
            sample["text"] = self.dataset.captions[j]
        return sample


class CachedCollator:
    """Batches ``CachedPairs`` samples; tokenizes raw captions with ``tokenize``.

    Returns the keys of the samples, stacked (``text_prefix`` through ``collate_text``),
    with ``text`` replaced by ``input_ids`` / ``attention_mask`` ``[B, L]``.
    """

    def __init__(self, tokenize):
        self.tokenize = tokenize

    def __call__(self, samples: list[dict]) -> dict:
        batch: dict[str, torch.Tensor | dict[str, torch.Tensor]] = {
            "positive_id": torch.tensor([s["positive_id"] for s in samples], dtype=torch.long)
        }
        for name in ("visual", "visual_prefix", "video_prefix"):
            if name in samples[0]:
                batch[name] = torch.stack([s[name] for s in samples])
        if "text_prefix" in samples[0]:
            batch["text_prefix"] = collate_text([s["text_prefix"] for s in samples])
        else:
            tokens = self.tokenize([s["text"] for s in samples])
            batch["input_ids"], batch["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
        return batch
