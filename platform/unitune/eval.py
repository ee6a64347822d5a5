"""Retrieval metrics: R@K, RSUM, median and mean rank, and the COCO 1K/5K protocol.

Rows are visual items (images or videos), columns are captions. ``caption_to_item[j]``
is the index of caption ``j``'s item. With ``item_groups`` every item of the same group
as a caption's item is a ground truth for it, and every caption of an item's group is a
ground truth for the item (the emoji set has three images per concept sharing captions).

Ranks are 1-based:

- item -> text: rank of the best-ranked ground-truth caption (VSE++/VSE-infinity);
- text -> item: rank of the best-ranked ground-truth item.

The rank of an anchor is ``1 + the number of candidates scoring strictly higher than its
best ground-truth score``. **Ties are optimistic**: a candidate with exactly the ground
truth's score does not count against it. Ranks are counted, never sorted.

Memory: the similarity matrix is visited tile by tile. Items are ordered by group and
cut into blocks of whole groups of at most ``chunk_size`` items (a single group larger
than that makes a block of its own); a tile holds one block's items against another
block's captions, so at most ``chunk_size x (captions of chunk_size items)`` similarity
entries exist at a time (with a few temporaries of the tile's size and per-anchor
vectors). All ground truths of a block lie in its diagonal tile, so the diagonal tiles are
visited first to find the best ground-truth scores; every tile is computed exactly once.

Exactness: ``retrieval_ranks(sim)`` gives the same ranks for every ``chunk_size`` (tiles
are slices of ``sim``). From embeddings each similarity is one matrix product and the
ground-truth score is compared with candidates from the same products; different
``chunk_size`` can differ only where two similarities lie within floating-point rounding
of each other (tiles of other shapes may round differently).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from unitune.choices import RETRIEVAL_METRIC_KEYS

METRIC_KEYS = RETRIEVAL_METRIC_KEYS  # what retrieval_metrics returns, in its order
DEFAULT_CHUNK_SIZE = 512
RECALL_KS = (1, 5, 10)

Tile = Callable[[int, int, int, int], torch.Tensor]


def retrieval_metrics(
    sim: torch.Tensor,
    caption_to_item: torch.Tensor | Sequence[int],
    item_groups: torch.Tensor | Sequence[int] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Retrieval metrics of a similarity matrix.

    Args:
        sim: [num_items, num_captions] floating similarities (rows: items).
        caption_to_item: [num_captions] integer item index of each caption.
        item_groups: optional [num_items] integer group of each item; items of one
            group are ground truths of each other's captions.
        chunk_size: items per block (see the module docstring).

    Returns:
        dict of floats with the keys of ``METRIC_KEYS``: recalls in percent, ``rsum``
        their sum, ``medr``/``meanr`` 1-based median (floored) and mean ranks.

    Raises:
        ValueError: naming the argument, for a non-2-D or non-floating ``sim``, NaN in
            ``sim``, ``caption_to_item`` of the wrong length or out of range, an item
            with no caption, ``item_groups`` of the wrong length, ``chunk_size`` < 1.
    """
    return metrics_from_ranks(*retrieval_ranks(sim, caption_to_item, item_groups, chunk_size=chunk_size))


def retrieval_metrics_from_embeddings(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    caption_to_item: torch.Tensor | Sequence[int],
    item_groups: torch.Tensor | Sequence[int] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Retrieval metrics of ``image_emb @ text_emb.T`` without building the whole matrix.

    Args:
        image_emb: [num_items, D] item embeddings (normally L2-normalised; the
            similarity is the plain dot product).
        text_emb: [num_captions, D] caption embeddings, same dtype and device.
        caption_to_item, item_groups, chunk_size: as in ``retrieval_metrics``.

    Returns:
        the dict of ``retrieval_metrics``.

    Raises:
        ValueError: as ``retrieval_metrics``, and naming ``image_emb``/``text_emb`` for
            non-2-D, non-floating or NaN embeddings or mismatched D, dtype or device.
    """
    ranks = retrieval_ranks_from_embeddings(image_emb, text_emb, caption_to_item, item_groups, chunk_size=chunk_size)
    return metrics_from_ranks(*ranks)


def coco_protocol(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    caption_to_item: torch.Tensor | Sequence[int],
    item_groups: torch.Tensor | Sequence[int] | None = None,
    *,
    num_folds: int = 5,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict:
    """COCO protocol: metrics on ``num_folds`` folds of consecutive items, and on all.

    On the COCO 5K test split this is the "1K" result (mean over 5 folds of 1000 images
    with their captions) and the "5K" result. Fold ``f`` holds items
    ``[f * n, (f + 1) * n)`` with ``n = num_items // num_folds`` and the captions of
    those items; ground truths (and groups) only count within the fold.

    Args:
        image_emb: [num_items, D]; text_emb: [num_captions, D]; caption_to_item:
            [num_captions]; item_groups: optional [num_items] (see
            ``retrieval_metrics_from_embeddings``).
        num_folds: number of folds; must divide num_items.

    Returns:
        ``{"folds": [metrics of each fold], "folds_mean": mean of each key over the
        folds, "full": metrics on all items}``.

    Raises:
        ValueError: as ``retrieval_metrics_from_embeddings``, and naming ``num_folds``
            when it is < 1 or does not divide num_items.
    """
    image_emb, text_emb = _check_embeddings(image_emb, text_emb)
    caption_to_item, item_groups = _check_ids(
        caption_to_item, item_groups, image_emb.shape[0], text_emb.shape[0], image_emb.device
    )
    num_items = image_emb.shape[0]
    if not isinstance(num_folds, int) or num_folds < 1 or num_items % num_folds:
        raise ValueError(f"num_folds must be a positive divisor of num_items={num_items}, got {num_folds!r}")
    fold_size = num_items // num_folds
    folds = []
    for f in range(num_folds):
        lo, hi = f * fold_size, (f + 1) * fold_size
        keep = (caption_to_item >= lo) & (caption_to_item < hi)
        groups = None if item_groups is None else item_groups[lo:hi]
        folds.append(
            retrieval_metrics_from_embeddings(
                image_emb[lo:hi], text_emb[keep], caption_to_item[keep] - lo, groups, chunk_size=chunk_size
            )
        )
    folds_mean = {key: sum(m[key] for m in folds) / num_folds for key in METRIC_KEYS}
    full = retrieval_metrics_from_embeddings(image_emb, text_emb, caption_to_item, item_groups, chunk_size=chunk_size)
    return {"folds": folds, "folds_mean": folds_mean, "full": full}


def metrics_from_ranks(item_ranks: torch.Tensor, caption_ranks: torch.Tensor) -> dict[str, float]:
    """Metrics from 1-based ranks.

    Args:
        item_ranks: [num_items] item -> text ranks; caption_ranks: [num_captions]
            text -> item ranks (integers >= 1).

    Returns:
        R@1/5/10 in percent per direction, ``rsum``, and per direction ``medr`` (the
        median, floored as in VSE++/SCAN, so an even count can give x.5 -> x) and
        ``meanr``, all floats, in the order of ``METRIC_KEYS``.
    """
    out: dict[str, float] = {}
    for direction, ranks in (("i2t", item_ranks), ("t2i", caption_ranks)):
        for k in RECALL_KS:
            out[f"r{k}_{direction}"] = 100.0 * (ranks <= k).double().mean().item()
    out["rsum"] = sum(out[f"r{k}_{d}"] for d in ("i2t", "t2i") for k in RECALL_KS)
    for direction, ranks in (("i2t", item_ranks), ("t2i", caption_ranks)):
        ordered = ranks.double().sort().values
        n = ordered.numel()
        median = (ordered[(n - 1) // 2] + ordered[n // 2]).item() / 2
        out[f"medr_{direction}"] = float(math.floor(median))
        out[f"meanr_{direction}"] = ordered.mean().item()
    return out


def retrieval_ranks(
    sim: torch.Tensor,
    caption_to_item: torch.Tensor | Sequence[int],
    item_groups: torch.Tensor | Sequence[int] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of a similarity matrix (arguments and errors as ``retrieval_metrics``).

    Returns:
        ``(item_ranks [num_items], caption_ranks [num_captions])``, int64 on
        ``sim``'s device: item -> text and text -> item ranks of the best ground truth.
    """
    if not isinstance(sim, torch.Tensor) or sim.dim() != 2 or not sim.is_floating_point():
        raise ValueError(f"sim must be a 2-D floating tensor [num_items, num_captions], got {_describe(sim)}")
    if sim.shape[0] == 0:
        raise ValueError("sim must have at least one item (row)")
    if torch.isnan(sim).any():
        raise ValueError("sim contains NaN")
    caption_to_item, item_groups = _check_ids(caption_to_item, item_groups, sim.shape[0], sim.shape[1], sim.device)
    layout = _Layout(caption_to_item, item_groups, sim.shape[0], chunk_size)
    rows_sorted, cols_sorted = layout.is_identity()
    sim = sim.detach()

    def tile(rs: int, re: int, cs: int, ce: int) -> torch.Tensor:
        rows = slice(rs, re) if rows_sorted else layout.item_order[rs:re]
        cols = slice(cs, ce) if cols_sorted else layout.caption_order[cs:ce]
        if isinstance(rows, slice):
            block = sim[rows]
            return block[:, cols] if isinstance(cols, slice) else block.index_select(1, cols)
        if isinstance(cols, slice):
            return sim[:, cols].index_select(0, rows)
        return sim[rows[:, None], cols[None, :]]

    return layout.ranks(tile)


def retrieval_ranks_from_embeddings(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    caption_to_item: torch.Tensor | Sequence[int],
    item_groups: torch.Tensor | Sequence[int] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of ``image_emb @ text_emb.T``, computed tile by tile.

    Arguments and errors as ``retrieval_metrics_from_embeddings``; returns as
    ``retrieval_ranks``.
    """
    image_emb, text_emb = _check_embeddings(image_emb, text_emb)
    caption_to_item, item_groups = _check_ids(
        caption_to_item, item_groups, image_emb.shape[0], text_emb.shape[0], image_emb.device
    )
    layout = _Layout(caption_to_item, item_groups, image_emb.shape[0], chunk_size)
    rows_sorted, cols_sorted = layout.is_identity()
    # One reordering copy of the embeddings (not of the similarities) makes blocks contiguous.
    images = image_emb if rows_sorted else image_emb.index_select(0, layout.item_order)
    texts = text_emb if cols_sorted else text_emb.index_select(0, layout.caption_order)

    def tile(rs: int, re: int, cs: int, ce: int) -> torch.Tensor:
        return images[rs:re] @ texts[cs:ce].T

    return layout.ranks(tile)


class _Layout:
    """Items ordered by group and cut into blocks; captions ordered by their item.

    ``item_order[p]`` is the item at position p, ``caption_order[q]`` the caption at
    position q; block b holds item positions ``item_bounds[b]:item_bounds[b+1]`` and
    caption positions ``caption_bounds[b]:caption_bounds[b+1]`` (the captions of its items).
    """

    def __init__(
        self, caption_to_item: torch.Tensor, item_groups: torch.Tensor | None, num_items: int, chunk_size: int
    ):
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        device = caption_to_item.device
        groups = torch.arange(num_items, device=device) if item_groups is None else item_groups
        self.item_order = torch.argsort(groups, stable=True)
        position = torch.empty_like(self.item_order)
        position[self.item_order] = torch.arange(num_items, device=device)
        self.caption_order = torch.argsort(position[caption_to_item], stable=True)
        self.item_group = groups[self.item_order]  # [num_items] group at each position
        self.caption_group = groups[caption_to_item[self.caption_order]]  # [num_captions]
        captions_per_item = torch.bincount(caption_to_item, minlength=num_items)[self.item_order]
        caption_start = torch.cat([captions_per_item.new_zeros(1), captions_per_item.cumsum(0)]).tolist()
        self.item_bounds = _group_blocks(self.item_group, chunk_size)
        self.caption_bounds = [caption_start[p] for p in self.item_bounds]

    def is_identity(self) -> tuple[bool, bool]:
        """Whether items and captions are already in layout order (no reordering needed)."""

        def identity(order: torch.Tensor) -> bool:
            return bool((order == torch.arange(order.numel(), device=order.device)).all())

        return identity(self.item_order), identity(self.caption_order)

    def ranks(self, tile: Tile) -> tuple[torch.Tensor, torch.Tensor]:
        """Ranks from ``tile(rs, re, cs, ce)``: similarities of item positions rs:re
        against caption positions cs:ce, [re - rs, ce - cs]."""
        ib, cb = self.item_bounds, self.caption_bounds
        num_blocks = len(ib) - 1
        device = self.item_order.device
        item_count = torch.zeros(ib[-1], dtype=torch.long, device=device)
        caption_count = torch.zeros(cb[-1], dtype=torch.long, device=device)
        # The best ground-truth score of each row and column, in the tiles' dtype (known
        # from the first tile).
        best_item = best_caption = torch.empty(0, device=device)
        with torch.no_grad():
            # Pass 1: diagonal tiles hold every ground truth of their rows and columns.
            for b in range(num_blocks):
                rs, re, cs, ce = ib[b], ib[b + 1], cb[b], cb[b + 1]
                s = tile(rs, re, cs, ce)
                if b == 0:
                    best_item = torch.empty(ib[-1], dtype=s.dtype, device=device)
                    best_caption = torch.empty(cb[-1], dtype=s.dtype, device=device)
                hit = self.item_group[rs:re, None] == self.caption_group[None, cs:ce]
                gt = torch.where(hit, s, float("-inf"))
                best_item[rs:re] = gt.amax(1)
                best_caption[cs:ce] = gt.amax(0)
                _count_above(s, best_item[rs:re], best_caption[cs:ce], item_count[rs:re], caption_count[cs:ce])
            # Pass 2: off-diagonal tiles hold only candidates; count those that beat the best ground truth.
            for b in range(num_blocks):
                rs, re = ib[b], ib[b + 1]
                for k in range(num_blocks):
                    if k == b:
                        continue
                    cs, ce = cb[k], cb[k + 1]
                    s = tile(rs, re, cs, ce)
                    _count_above(s, best_item[rs:re], best_caption[cs:ce], item_count[rs:re], caption_count[cs:ce])
        item_ranks = torch.empty_like(item_count)
        item_ranks[self.item_order] = item_count + 1
        caption_ranks = torch.empty_like(caption_count)
        caption_ranks[self.caption_order] = caption_count + 1
        return item_ranks, caption_ranks


def _count_above(
    s: torch.Tensor, row_best: torch.Tensor, col_best: torch.Tensor, row_count: torch.Tensor, col_count: torch.Tensor
) -> None:
    """Add to the counters, in place, how many entries of the tile ``s`` [R, C] lie strictly
    above each row's ``row_best`` [R] and each column's ``col_best`` [C]."""
    # int32 partial sums: a tile side is far below 2**31, and summing bools into int64 is
    # several times slower on CPU.
    row_count += (s > row_best[:, None]).sum(1, dtype=torch.int32)
    col_count += (s > col_best[None, :]).sum(0, dtype=torch.int32)


def _group_blocks(item_group: torch.Tensor, chunk_size: int) -> list[int]:
    """Block boundaries over positions of group-sorted items: whole groups, at most
    ``chunk_size`` items per block unless one group is larger."""
    n = item_group.numel()
    changes = (item_group[1:] != item_group[:-1]).nonzero().flatten() + 1
    group_starts = [0] + changes.tolist() + [n]
    bounds = [0]
    for start, end in zip(group_starts[:-1], group_starts[1:]):
        if end - bounds[-1] > chunk_size and start > bounds[-1]:
            bounds.append(start)
    bounds.append(n)
    return bounds


def _check_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for name, emb in (("image_emb", image_emb), ("text_emb", text_emb)):
        if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or not emb.is_floating_point():
            raise ValueError(f"{name} must be a 2-D floating tensor [N, D], got {_describe(emb)}")
        if torch.isnan(emb).any():
            raise ValueError(f"{name} contains NaN")
    if image_emb.shape[0] == 0:
        raise ValueError("image_emb must have at least one item (row)")
    if text_emb.shape[1] != image_emb.shape[1]:
        raise ValueError(f"text_emb has dimension {text_emb.shape[1]}, image_emb has {image_emb.shape[1]}")
    if text_emb.dtype != image_emb.dtype or text_emb.device != image_emb.device:
        raise ValueError(
            f"text_emb is {text_emb.dtype} on {text_emb.device}, image_emb is {image_emb.dtype} on {image_emb.device}"
        )
    return image_emb.detach(), text_emb.detach()


def _check_ids(
    caption_to_item: torch.Tensor | Sequence[int],
    item_groups: torch.Tensor | Sequence[int] | None,
    num_items: int,
    num_captions: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    caption_to_item = _as_index(caption_to_item, "caption_to_item", num_captions, device)
    if caption_to_item.numel() and (caption_to_item.min() < 0 or caption_to_item.max() >= num_items):
        bad = caption_to_item[(caption_to_item < 0) | (caption_to_item >= num_items)][0].item()
        raise ValueError(f"caption_to_item has item index {bad} outside [0, {num_items})")
    counts = torch.bincount(caption_to_item, minlength=num_items)
    if (counts == 0).any():
        missing = (counts == 0).nonzero()[0].item()
        raise ValueError(f"caption_to_item gives item {missing} no caption; every item needs at least one")
    if item_groups is not None:
        item_groups = _as_index(item_groups, "item_groups", num_items, device)
    return caption_to_item, item_groups


def _as_index(ids: torch.Tensor | Sequence[int], name: str, length: int, device: torch.device) -> torch.Tensor:
    ids = torch.as_tensor(ids, device=device)
    if (
        ids.dim() != 1
        or ids.shape[0] != length
        or (ids.numel() and (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool))
    ):
        raise ValueError(f"{name} must be a 1-D integer tensor of length {length}, got {_describe(ids)}")
    return ids.long()


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)} {x.dtype}"
    return type(x).__name__
