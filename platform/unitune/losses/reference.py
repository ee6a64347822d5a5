"""The two published losses that the unified loss contains, each in its textbook form.

Written apart from unified.py (dense masks, no shared code path) so that tests can check
the special-case identities of docs/losses.md against them.
"""

import torch
import torch.nn.functional as F

from .inputs import check_number, check_sim, find_positives


def vlc_loss(sim, *, temperature, row_ids=None, col_ids=None):
    """CLIP's symmetric cross-entropy (VLC / InfoNCE) on the logits sim / temperature.

    With one positive per anchor this is F.cross_entropy in both directions. When ids
    repeat, each (anchor, positive) pair is a cross-entropy over that positive and the
    anchor's negatives only (other same-id pairs are left out of the denominator), and an
    anchor's loss is the mean over its positives.

    Args:
        sim: [N_v, N_t] floating similarities; low precision is computed in float32.
        temperature: τ > 0, a number or a 0-d tensor.
        row_ids, col_ids: [N_v], [N_t] integer item ids, or both None (the diagonal).

    Returns:
        dict of 0-d tensors "loss", "i2t", "t2i" and the detached diagnostics "pos_sim",
        "hard_neg_sim", "violation_frac" (margin 0), as `unified_loss` defines them.

    Raises:
        ValueError naming `sim`, `temperature`, `row_ids` or `col_ids` as `unified_loss` does.
    """
    check_sim(sim)
    temperature = check_number("temperature", temperature, positive=True)
    pos = find_positives(sim, row_ids, col_ids)
    x = sim if sim.dtype in (torch.float32, torch.float64) else sim.float()
    logits = x / temperature
    mask = pos.dense_mask(x)
    if pos.diagonal:
        labels = torch.arange(x.shape[0], device=x.device)
        i2t = F.cross_entropy(logits, labels)
        t2i = F.cross_entropy(logits.t(), labels)
    else:
        i2t = _cross_entropy_per_positive(logits, mask)
        t2i = _cross_entropy_per_positive(logits.t(), mask.t())
    return {"loss": (i2t + t2i) / 2, "i2t": i2t, "t2i": t2i, **dense_diagnostics(x, mask, 0.0)}


def _cross_entropy_per_positive(logits, mask):
    """Mean over rows of the mean over the row's positives p of
    −log( e^{z_p} / (e^{z_p} + Σ_negatives e^{z_n}) ).  logits, mask: [A, C]."""
    negatives_lse = torch.logsumexp(logits.masked_fill(mask, float("-inf")), dim=1, keepdim=True)
    pair_loss = torch.logaddexp(logits, negatives_lse) - logits
    per_anchor = torch.where(mask, pair_loss, 0.0).sum(1) / mask.sum(1)
    return per_anchor.mean()


def triplet_hn_loss(sim, *, margin, row_ids=None, col_ids=None):
    """VSE++ max-violation triplet loss: per anchor [m + s_n − s_p]_+ for its hardest
    negative s_n (and, when ids repeat, its hardest positive s_p), mean over anchors.

    Args:
        sim: [N_v, N_t] floating similarities; low precision is computed in float32.
        margin: m, a number or a 0-d tensor.
        row_ids, col_ids: [N_v], [N_t] integer item ids, or both None (the diagonal).

    Returns:
        dict like `vlc_loss` (diagnostics use `margin`).

    Raises:
        ValueError naming `sim`, `margin`, `row_ids` or `col_ids` as `unified_loss` does.
    """
    check_sim(sim)
    margin = check_number("margin", margin, positive=False)
    pos = find_positives(sim, row_ids, col_ids)
    x = sim if sim.dtype in (torch.float32, torch.float64) else sim.float()
    mask = pos.dense_mask(x)
    i2t = _max_violation(x, mask, margin)
    t2i = _max_violation(x.t(), mask.t(), margin)
    m = margin.detach() if isinstance(margin, torch.Tensor) else margin
    return {"loss": (i2t + t2i) / 2, "i2t": i2t, "t2i": t2i, **dense_diagnostics(x, mask, m)}


def _max_violation(x, mask, margin):
    """Mean over rows of max_n [m + s_n − s_p]_+ with s_p the row's hardest positive.  x, mask: [A, C]."""
    hardest_positive = x.masked_fill(~mask, float("inf")).amin(1, keepdim=True)
    cost = (margin + x - hardest_positive).clamp(min=0).masked_fill(mask, 0.0)
    return cost.max(dim=1).values.mean()


def dense_diagnostics(x, mask, margin):
    """Detached diagnostics of `unified_loss` from a dense positives mask.  x, mask: [A, C]."""
    with torch.no_grad():
        x = x.detach()
        negatives = x.masked_fill(mask, float("-inf"))
        positives = x.masked_fill(~mask, float("inf"))
        hard_row, hard_col = negatives.amax(1), negatives.amax(0)
        violation_row = (hard_row + margin > positives.amin(1)).to(x.dtype).mean()
        violation_col = (hard_col + margin > positives.amin(0)).to(x.dtype).mean()
        return {
            "pos_sim": x[mask].mean(),
            "hard_neg_sim": (hard_row.mean() + hard_col.mean()) / 2,
            "violation_frac": (violation_row + violation_col) / 2,
        }
