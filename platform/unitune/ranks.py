"""Per-query ranks of one evaluation: the table a final run logs as ``test_ranks.csv``.

Every retrieval metric unitune reports is a function of two rank vectors
(``unitune.eval.retrieval_ranks``): for every item (image or video) the 1-based rank of its
best ground-truth caption (image→text), for every caption the rank of its best ground-truth
item (text→image). Kept per query, they let a study pair two models query by query (same
queries, same gallery) and recompute any recall, RSUM or rank statistic exactly.

The CSV has one row per query, image→text rows first::

    direction,query,item_id,cluster,rank
    i2t,0,17,0,3        # item 0 of the split (annotation id 17): its best caption ranked 3rd
    t2i,0,17,0,1        # caption 0 (of item 17): its best item ranked 1st

``query`` is the item index (i2t) or the caption index (t2i) in the split's order,
``item_id`` the annotation file's id of the query's item, ``cluster`` the unit a study
resamples: the item's group where the data has groups (the emoji set's styles of one
concept are ground truths of each other's captions), else the item itself, so an item's
image→text query and its captions' text→image queries are resampled together.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unitune.eval import metrics_from_ranks

FILE = "test_ranks.csv"
HEADER = ("direction", "query", "item_id", "cluster", "rank")


@dataclass(frozen=True)
class QueryRanks:
    """The ranks of one evaluation. Arrays are int64.

    item_ids, item_clusters, item_ranks: [num_items] (image→text queries);
    caption_items, caption_ranks: [num_captions] (text→image queries; the index of each
    caption's item).
    """

    item_ids: np.ndarray
    item_clusters: np.ndarray
    item_ranks: np.ndarray
    caption_items: np.ndarray
    caption_ranks: np.ndarray

    @classmethod
    def from_dataset(cls, dataset, item_ranks: torch.Tensor, caption_ranks: torch.Tensor) -> QueryRanks:
        """The ranks of ``dataset`` (a ``RetrievalDataset``) from ``unitune.eval.retrieval_ranks``."""
        groups = dataset.item_groups
        num_items = len(dataset.item_ids)
        clusters = groups if groups is not None else torch.arange(num_items)
        return cls(
            item_ids=dataset.item_ids.numpy().astype(np.int64),
            item_clusters=np.asarray(clusters, dtype=np.int64),
            item_ranks=item_ranks.cpu().numpy().astype(np.int64),
            caption_items=dataset.caption_to_item.numpy().astype(np.int64),
            caption_ranks=caption_ranks.cpu().numpy().astype(np.int64),
        )

    def metrics(self) -> dict[str, float]:
        """R@1/5/10 both ways, RSUM, median and mean ranks (``unitune.eval.metrics_from_ranks``)."""
        return metrics_from_ranks(torch.from_numpy(self.item_ranks), torch.from_numpy(self.caption_ranks))

    def queries(self) -> list[tuple[str, int, int]]:
        """``(direction, query, item_id)`` of every row: two runs are paired only on equal lists."""
        i2t = [("i2t", i, int(self.item_ids[i])) for i in range(len(self.item_ids))]
        t2i = [("t2i", j, int(self.item_ids[item])) for j, item in enumerate(self.caption_items)]
        return i2t + t2i

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write the table (module docstring) to ``path``; returns it."""
        path = Path(path)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(HEADER)
            for i, (item_id, cluster, rank) in enumerate(zip(self.item_ids, self.item_clusters, self.item_ranks)):
                writer.writerow(("i2t", i, int(item_id), int(cluster), int(rank)))
            for j, (item, rank) in enumerate(zip(self.caption_items, self.caption_ranks)):
                writer.writerow(("t2i", j, int(self.item_ids[item]), int(self.item_clusters[item]), int(rank)))
        return path

    @classmethod
    def read_csv(cls, path: str | os.PathLike) -> QueryRanks:
        """Read a table written by :meth:`write_csv`.

        Raises:
            ValueError: naming the file, for another header, a row out of order or a rank < 1.
        """
        with open(path, newline="") as f:
            return cls.parse(f.read(), str(path))

    @classmethod
    def parse(cls, text: str, source: str = "ranks table") -> QueryRanks:
        """The table of :meth:`read_csv` from its text (``source`` names it in errors)."""
        path = source
        rows = list(csv.reader(io.StringIO(text)))
        if not rows or tuple(rows[0]) != HEADER:
            raise ValueError(f"{path}: not a per-query ranks table (header {','.join(HEADER)})")
        i2t = [r for r in rows[1:] if r[0] == "i2t"]
        t2i = [r for r in rows[1:] if r[0] == "t2i"]
        if len(i2t) + len(t2i) != len(rows) - 1 or [int(r[1]) for r in i2t] != list(range(len(i2t))):
            raise ValueError(f"{path}: rows must be i2t then t2i, each numbered 0, 1, ... in order")
        if [int(r[1]) for r in t2i] != list(range(len(t2i))):
            raise ValueError(f"{path}: t2i rows must be numbered 0, 1, ... in order")
        index = {int(r[2]): i for i, r in enumerate(i2t)}
        try:
            caption_items = np.array([index[int(r[2])] for r in t2i], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"{path}: a t2i row names item {exc.args[0]}, which has no i2t row") from None
        ranks = cls(
            item_ids=np.array([int(r[2]) for r in i2t], dtype=np.int64),
            item_clusters=np.array([int(r[3]) for r in i2t], dtype=np.int64),
            item_ranks=np.array([int(r[4]) for r in i2t], dtype=np.int64),
            caption_items=caption_items,
            caption_ranks=np.array([int(r[4]) for r in t2i], dtype=np.int64),
        )
        if (ranks.item_ranks < 1).any() or (ranks.caption_ranks < 1).any():
            raise ValueError(f"{path}: ranks are 1-based; found one below 1")
        return ranks
