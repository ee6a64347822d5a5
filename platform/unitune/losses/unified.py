"""The unified loss of pair similarity optimization (docs/losses.md).

For an anchor (a row of `sim` for image->text, a column for text->image) with positive
similarities s_p and negative similarities s_n:

    L = softplus( LSE_n(γ·(s_n + m)) + LSE_p(−γ·s_p) )          (× 1/γ with scale_by_gamma)
      = log(1 + Σ_p Σ_n exp(γ·(s_n − s_p + m)))

`mining` picks the negatives that enter LSE_n: all of them, the hardest, or the k hardest.
Every logsumexp runs over −inf-masked entries, never over 0-masked exponentials.

Two implementations, each checked against plain loops in tests/test_losses.py:
- one positive per anchor on the diagonal (the common case: no ids, or distinct ids in the
  same order on both sides): the fused autograd Functions of fused.py. For mining="all"
  the loss is CLIP's cross-entropy on the logits γ·S − γ·m·I (docs/losses.md);
- otherwise (repeated ids, other orders, non-square): plain autograd, with a masked
  logsumexp over the negatives and a logsumexp over each anchor's positives gathered from
  the positive pairs.
For "hardest"/"topk" the k hardest negatives of each anchor are chosen, and the gradient
reaches exactly the chosen entries, as with torch.max / torch.topk.
"""

import torch

from .fused import DiagonalAll, DiagonalMined
from .inputs import check_number, check_sim, find_positives
from .mining import check_mining

_NEG_INF = float("-inf")


def unified_loss(sim, *, margin, gamma, mining="all", topk=None, row_ids=None, col_ids=None, scale_by_gamma=False):
    """Unified loss of a batch's similarity matrix, both retrieval directions.

    Args:
        sim: [N_v, N_t] floating similarities (rows: images/videos, columns: captions).
            float16/bfloat16 input is computed in float32.
        margin: m, a number or a 0-d tensor.
        gamma: γ = 1/temperature > 0, a number or a 0-d tensor (e.g. `LearnableScale()()`).
        mining: "all", "hardest" or "topk" (see MINING_MODES).
        topk: k for mining="topk": 1 <= k < the smallest number of negatives of any
            anchor; ignored by the other modes.
        row_ids: [N_v] integer item ids of the rows; col_ids: [N_t] of the columns. Entries
            with equal ids are positives, all others negatives. Both None: the diagonal of a
            square `sim`.
        scale_by_gamma: multiply the loss by 1/γ (its γ→∞ limit is the max-violation hinge).

    Returns:
        dict of 0-d tensors: "loss" = ("i2t" + "t2i") / 2, where "i2t" is the mean over
        rows and "t2i" the mean over columns of the per-anchor loss; detached diagnostics
        "pos_sim" (mean similarity of the positive pairs), "hard_neg_sim" (mean over
        anchors of the hardest negative's similarity, the two directions averaged) and
        "violation_frac" (fraction of anchors whose hardest negative s_n and hardest
        positive s_p have s_n + m > s_p, the two directions averaged). The loss is float32
        for low-precision `sim`, else `sim`'s dtype.

    Raises:
        ValueError naming the argument: `sim` not 2-D, empty, non-floating, with NaN or inf,
        or non-square without ids; `row_ids`/`col_ids` of the wrong length or dtype, only one
        given, or with an anchor that has no positive or no negative; `gamma` <= 0;
        `margin` not finite; unknown `mining`; `topk` missing, < 1 or >= the smallest
        number of negatives of an anchor.
    """
    check_sim(sim)
    margin = check_number("margin", margin, positive=False)
    gamma = check_number("gamma", gamma, positive=True)
    check_mining(mining)
    pos = find_positives(sim, row_ids, col_ids)
    k = _check_topk(topk, pos.min_negatives) if mining == "topk" else 1
    x = sim if sim.dtype in (torch.float32, torch.float64) else sim.float()

    if pos.diagonal:
        if mining == "all":
            losses, hard = DiagonalAll.apply(x, gamma, margin)
        else:
            losses, hard = DiagonalMined.apply(x, gamma, margin, k)
        if scale_by_gamma:
            losses = losses / gamma
        d = x.detach().diagonal()
        diagnostics = _diagnostics(d, hard, d, margin)
    else:
        b_row, b_col, pos_values, pos_min_row, pos_min_col = _positive_terms(x, gamma, pos)
        if mining == "all":
            a_row, a_col, hard_row, hard_col = _all_masked(x, gamma, margin, pos)
        else:
            a_row, a_col, hard_row, hard_col = _mined(x, gamma, margin, pos, k)
        losses = torch.stack([_softplus(a_row + b_row).mean(), _softplus(a_col + b_col).mean()])
        if scale_by_gamma:
            losses = losses / gamma
        if hard_row.shape == hard_col.shape:
            diagnostics = _diagnostics(
                pos_values, torch.stack([hard_row, hard_col]), torch.stack([pos_min_row, pos_min_col]), margin
            )
        else:  # each direction's mean counts once, whatever its number of anchors
            rows = _diagnostics(pos_values, hard_row, pos_min_row, margin)
            cols = _diagnostics(pos_values, hard_col, pos_min_col, margin)
            diagnostics = {key: (rows[key] + cols[key]) / 2 for key in rows}

    i2t, t2i = losses.unbind()
    return {"loss": losses.mean(), "i2t": i2t, "t2i": t2i, **diagnostics}


def _check_topk(topk, min_negatives):
    if isinstance(topk, bool) or not isinstance(topk, int):
        raise ValueError(f"topk must be an int when mining='topk', got {topk!r}")
    if not 1 <= topk < min_negatives:
        raise ValueError(
            f"topk must satisfy 1 <= topk < {min_negatives} (the fewest negatives of any "
            f"anchor in this batch), got {topk}"
        )
    return topk


def _softplus(v):
    """log(1 + exp(v)) without F.softplus's linear cut-off at v > 20 (exact to rounding)."""
    return torch.logaddexp(v, torch.zeros_like(v))


def _positive_terms(x, gamma, pos):
    """LSE_p(−γ·s_p) of every anchor and the positives' similarities (general positives).

    Returns b_row [N_v], b_col [N_t] (differentiable), the positive similarities [P] and
    the smallest positive similarity of each row [N_v] and column [N_t] (all detached).
    """
    values = x[pos.rows, pos.cols]
    scaled = -gamma * values
    n_v, n_t = x.shape
    b_row = _segment_logsumexp(scaled, pos.rows, n_v)
    b_col = _segment_logsumexp(scaled, pos.cols, n_t)
    with torch.no_grad():
        v = values.detach()
        min_row = v.new_full((n_v,), float("inf")).scatter_reduce_(0, pos.rows, v, "amin")
        min_col = v.new_full((n_t,), float("inf")).scatter_reduce_(0, pos.cols, v, "amin")
    return b_row, b_col, v, min_row, min_col


def _segment_logsumexp(values, segments, num_segments):
    """logsumexp of values[segments == s] for each s in [0, num_segments); none may be empty.

    values [P], segments [P] long -> [num_segments].
    """
    with torch.no_grad():
        # The shift cancels in value and gradient, so it needs no gradient of its own.
        peak = values.new_full((num_segments,), _NEG_INF).scatter_reduce_(0, segments, values.detach(), "amax")
    total = values.new_zeros(num_segments).index_add(0, segments, torch.exp(values - peak[segments]))
    return peak + torch.log(total)


def _all_masked(x, gamma, margin, pos):
    """LSE_n(γ·(s_n + m)) over all negatives of every anchor, positives masked with −inf.

    Returns a_row [N_v], a_col [N_t] and the hardest negatives of rows and columns (detached).
    """
    # Scale before masking: γ·(−inf) would give a NaN gradient for a learnable γ.
    z = (x * gamma).masked_fill(pos.mask, _NEG_INF)
    shift = gamma * margin
    a_row = torch.logsumexp(z, dim=1) + shift
    a_col = torch.logsumexp(z, dim=0) + shift
    with torch.no_grad():
        z = z.detach()
        return a_row, a_col, z.amax(1) / gamma, z.amax(0) / gamma


def _mined(x, gamma, margin, pos, k):
    """LSE over the k hardest negatives of every anchor of γ·(s_n + m).

    Returns a_row [N_v], a_col [N_t] and the hardest negatives of rows and columns (detached).
    """
    negatives = x.masked_fill(pos.mask, _NEG_INF)
    # k < the fewest negatives of any anchor, so no −inf (positive) entry is ever chosen; the
    # gradient reaches only the chosen entries (split evenly between exact ties by amax).
    if k == 1:
        s_row, s_col = negatives.amax(1, keepdim=True), negatives.amax(0, keepdim=True).t()
    else:
        s_row, s_col = negatives.topk(k, dim=1).values, negatives.topk(k, dim=0).values.t()
    a_row = torch.logsumexp(gamma * (s_row + margin), dim=1)
    a_col = torch.logsumexp(gamma * (s_col + margin), dim=1)
    return a_row, a_col, s_row[:, 0].detach(), s_col[:, 0].detach()


def _diagnostics(pos_values, hard, pos_min, margin):
    """Detached diagnostics (see `unified_loss`) from the positive similarities, and per
    anchor its hardest negative `hard` and hardest positive `pos_min` (same shape)."""
    m = margin.detach() if isinstance(margin, torch.Tensor) else margin
    return {
        "pos_sim": pos_values.mean(),
        "hard_neg_sim": hard.mean(),
        "violation_frac": (hard + m > pos_min).to(hard.dtype).mean(),
    }
