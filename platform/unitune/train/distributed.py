"""Global-batch negatives: gather embeddings and item ids from every worker.

Each worker embeds its local batch of ``B`` pairs. The unified loss should see the whole
global batch of ``W * B`` pairs (``W`` workers), as open_clip's ``gather_features`` does, so
every anchor meets ``W * B - 1`` candidate negatives instead of ``B - 1``.

Why ``torch.distributed.nn.functional.all_gather`` and not a plain ``all_gather`` with the
local slice re-inserted: the autograd version sums, in its backward, the gradients that
every worker computes for every slice. Every worker computes the same global loss ``L``,
so worker ``r`` receives ``W * dL/d(its embeddings)``; DDP then averages the parameter
gradients over the ``W`` workers, and the result is exactly the gradient of ``L`` on the
concatenated batch in one process. (The re-insert variant gives ``1/W`` of it, and a
learnable scale would need its own correction.) ``tests/test_train_distributed.py`` checks
this equality on two gloo processes.

Positive ids need no offset by rank: a batch's ``positive_id`` is already the global id of
the item's positive group,
so two captions of the same image that land on different workers are positives of each
other in the global batch, never negatives. (open_clip offsets *positions* by rank because
its labels are positions; ours are identities.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_batch(
    visual: torch.Tensor, text: torch.Tensor, positive_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate every worker's batch, in rank order, keeping gradients.

    Args:
        visual: ``[B, D]`` local visual embeddings (requires grad in training).
        text: ``[B, D]`` local text embeddings.
        positive_ids: ``[B]`` LongTensor, the global positive-group id of each pair.

    Returns:
        ``([W*B, D], [W*B, D], [W*B])``: visual, text (both differentiable with respect
        to every worker's local embeddings) and positive ids. Without a process group of
        two or more processes the inputs are returned unchanged.

    Raises:
        RuntimeError: from the collective when workers pass different ``B``; the
            training loader drops the last incomplete batch so that they never do.
    """
    if not is_distributed():
        return visual, text, positive_ids
    # One collective for both towers: [B, 2D] per worker.
    both = torch.cat(dist_fn.all_gather(torch.cat([visual, text], dim=1)), dim=0)
    all_visual, all_text = both.split([visual.shape[1], text.shape[1]], dim=1)
    # Ids carry no gradient: the plain collective is enough.
    id_list = [torch.empty_like(positive_ids) for _ in range(dist.get_world_size())]
    dist.all_gather(id_list, positive_ids.contiguous())
    return all_visual, all_text, torch.cat(id_list, dim=0)
