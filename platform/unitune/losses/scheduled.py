"""The loss of one batch for a mode of `MiningSchedule`: what the training loop calls."""

from .hinge import hinge_mean_loss
from .unified import unified_loss


def scheduled_loss(sim, mode, *, margin, gamma, topk=None, row_ids=None, col_ids=None, scale_by_gamma=False):
    """`unified_loss(sim, mining=mode, ...)` for a mining mode, `hinge_mean_loss` for "hinge_mean".

    Args:
        sim: [N_v, N_t] floating similarities.
        mode: `MiningSchedule.at(epoch)`: "all", "hardest", "topk" or "hinge_mean".
        margin, gamma, topk, row_ids, col_ids, scale_by_gamma: as `unified_loss`; the
            hinge ignores `gamma`, `topk` and `scale_by_gamma` (it is in similarity units,
            like the 1/γ-scaled unified loss it warms up).

    Returns:
        The loss's dict ("loss", "i2t", "t2i" and the detached diagnostics).

    Raises:
        ValueError naming the bad argument (see `unified_loss`).
    """
    if mode == "hinge_mean":
        return hinge_mean_loss(sim, margin=margin, row_ids=row_ids, col_ids=col_ids)
    return unified_loss(
        sim,
        margin=margin,
        gamma=gamma,
        mining=mode,
        topk=topk,
        row_ids=row_ids,
        col_ids=col_ids,
        scale_by_gamma=scale_by_gamma,
    )
