"""VSE∞'s warm-up loss: the triplet hinge averaged over all negatives of each anchor.

VSE∞ (Chen et al. 2021) trains its first epoch(s) on the hinge of every negative, then
switches to the hardest negative (VSE++'s max-violation loss): averaging keeps the
gradient spread over many negatives while the embedding is still random. The Triplet-HN
family uses it as its warm-up (``MiningSchedule(..., warmup_mining="hinge_mean")``).

Per anchor with hardest (smallest) positive similarity s_p and negatives s_n:

    L_anchor = mean_n [m + s_n − s_p]_+

and the loss is the mean over anchors of both directions, in similarity units like
``triplet_hn_loss`` (the max over n instead of the mean), so the switch to the hardest
negative keeps the loss's scale.
"""

import torch

from .inputs import check_number, check_sim, find_positives
from .reference import dense_diagnostics


def hinge_mean_loss(sim, *, margin, row_ids=None, col_ids=None):
    """Mean-over-negatives triplet hinge, both retrieval directions.

    Args:
        sim: [N_v, N_t] floating similarities; low precision is computed in float32.
        margin: m, a number or a 0-d tensor.
        row_ids, col_ids: [N_v], [N_t] integer item ids, or both None (the diagonal).
            Same-id pairs are positives, never negatives.

    Returns:
        dict of 0-d tensors "loss", "i2t", "t2i" and the detached diagnostics "pos_sim",
        "hard_neg_sim", "violation_frac" (as `unified_loss` defines them).

    Raises:
        ValueError naming `sim`, `margin`, `row_ids` or `col_ids` as `unified_loss` does.
    """
    check_sim(sim)
    margin = check_number("margin", margin, positive=False)
    pos = find_positives(sim, row_ids, col_ids)
    x = sim if sim.dtype in (torch.float32, torch.float64) else sim.float()
    mask = pos.dense_mask(x)
    i2t = _mean_violation(x, mask, margin)
    t2i = _mean_violation(x.t(), mask.t(), margin)
    m = margin.detach() if isinstance(margin, torch.Tensor) else margin
    return {"loss": (i2t + t2i) / 2, "i2t": i2t, "t2i": t2i, **dense_diagnostics(x, mask, m)}


def _mean_violation(x, mask, margin):
    """Mean over rows of mean_n [m + s_n − s_p]_+ (s_p: the row's hardest positive).  x, mask: [A, C]."""
    hardest_positive = x.masked_fill(~mask, float("inf")).amin(1, keepdim=True)
    # where(), not a multiplication by the mask: a positive's cost is exactly 0, its gradient too.
    cost = torch.where(mask, 0.0, (margin + x - hardest_positive).clamp(min=0))
    negatives = (~mask).sum(1)
    return (cost.sum(1) / negatives).mean()
