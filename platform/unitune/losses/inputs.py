"""Checks of the loss inputs and the positive pairs given by item ids.

Shared by the unified loss and the reference losses; every bad argument raises
ValueError naming it.
"""

import math
from dataclasses import dataclass

import torch


class NonFiniteSimilarityError(ValueError):
    """`sim` holds NaN or inf (a diverged model): the loss cannot be computed."""


def check_sim(sim):
    """Raise ValueError naming `sim` unless it is a 2-D floating tensor without NaN or inf
    (`NonFiniteSimilarityError` for NaN or inf: the one finiteness check of a training step)."""
    if not isinstance(sim, torch.Tensor) or sim.dim() != 2:
        shape = tuple(sim.shape) if isinstance(sim, torch.Tensor) else type(sim).__name__
        raise ValueError(f"sim must be a 2-D tensor (N_v x N_t), got {shape}")
    if not sim.is_floating_point():
        raise ValueError(f"sim must be a floating-point tensor, got {sim.dtype}")
    if sim.numel() == 0:
        raise ValueError(f"sim must not be empty, got shape {tuple(sim.shape)}")
    # One cheap reduction instead of an N x N isnan mask; the exact scan runs only on suspicion
    # (the sum is also non-finite when finite entries overflow, which the scan rules out).
    if not math.isfinite(sim.detach().sum().item()) and not torch.isfinite(sim.detach()).all():
        raise NonFiniteSimilarityError("sim contains NaN or inf")


def check_number(name, value, *, positive):
    """Return `value` (a number or a 0-d floating tensor) after checking it is finite
    (and > 0 when `positive`); a tensor comes back 0-d, a number as a float.

    Raises ValueError naming `name` otherwise.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{name} must be a number or a 0-d floating tensor, got {value!r}")
        number = value.detach().item()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    else:
        raise ValueError(f"{name} must be a number or a 0-d tensor, got {value!r}")
    if not math.isfinite(number) or (positive and number <= 0):
        raise ValueError(f"{name} must be finite{' and > 0' if positive else ''}, got {number!r}")
    return value.reshape(()) if isinstance(value, torch.Tensor) else float(value)


@dataclass(frozen=True)
class Positives:
    """The positive pairs of an N_v x N_t similarity matrix.

    diagonal: True when the positives are exactly the diagonal of a square matrix (one
        positive per anchor); `mask`, `rows` and `cols` are then None.
    mask: [N_v, N_t] bool, True where row id == column id.
    rows, cols: [P] long, the positive pairs (row-major order).
    min_negatives: the smallest number of negatives of any anchor, rows and columns.
    """

    diagonal: bool
    mask: torch.Tensor | None
    rows: torch.Tensor | None
    cols: torch.Tensor | None
    min_negatives: int

    def dense_mask(self, sim):
        """[N_v, N_t] bool mask of the positives (an identity for the diagonal case)."""
        if self.diagonal:
            return torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
        return self.mask


def _check_ids(name, ids, length, device):
    ids = torch.as_tensor(ids, device=device)
    if ids.dim() != 1 or ids.shape[0] != length:
        raise ValueError(f"{name} must be a 1-D sequence of length {length}, got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer ids, got {ids.dtype}")
    return ids


def find_positives(sim, row_ids=None, col_ids=None):
    """Positive pairs of `sim` [N_v, N_t]: entries whose row id equals their column id.

    Without ids (both None) the positives are the diagonal and `sim` must be square.
    row_ids: [N_v] integer ids of the rows (images/videos); col_ids: [N_t] of the columns
    (captions); give both or neither.

    Raises ValueError naming `sim` (ids missing for a non-square matrix), `row_ids` or
    `col_ids` (only one given, wrong length or dtype, an anchor with no positive, an
    anchor with no negative).
    """
    n_v, n_t = sim.shape
    if row_ids is None and col_ids is None:
        if n_v != n_t:
            raise ValueError(f"sim is {n_v} x {n_t}: a non-square sim needs row_ids and col_ids")
        if n_v < 2:
            raise ValueError("sim is 1 x 1: every anchor needs at least one negative")
        return Positives(True, None, None, None, n_v - 1)
    if row_ids is None or col_ids is None:
        missing = "row_ids" if row_ids is None else "col_ids"
        raise ValueError(f"{missing} is None: give row_ids and col_ids together, or neither")
    row_ids = _check_ids("row_ids", row_ids, n_v, sim.device)
    col_ids = _check_ids("col_ids", col_ids, n_t, sim.device)
    if n_v == n_t and torch.equal(row_ids, col_ids) and torch.unique(row_ids).numel() == n_v:
        if n_v < 2:
            raise ValueError("row_ids: every anchor needs at least one negative, the batch has one item")
        return Positives(True, None, None, None, n_v - 1)
    mask = row_ids[:, None] == col_ids[None, :]
    row_pos = mask.sum(1)
    col_pos = mask.sum(0)
    for name, counts, other, kind in (("row_ids", row_pos, n_t, "row"), ("col_ids", col_pos, n_v, "column")):
        lonely = torch.nonzero(counts == 0).flatten()
        if lonely.numel():
            raise ValueError(f"{name}: {kind}s {lonely[:10].tolist()} have no positive (no same id on the other side)")
        crowded = torch.nonzero(counts == other).flatten()
        if crowded.numel():
            raise ValueError(
                f"{name}: {kind}s {crowded[:10].tolist()} have no negative (every id on the other side is the same)"
            )
    min_negatives = int(min(n_t - row_pos.max(), n_v - col_pos.max()))
    rows, cols = mask.nonzero(as_tuple=True)
    return Positives(False, mask, rows, cols, min_negatives)
