"""Global-batch negatives on 2 gloo processes equal one process on the concatenated batch.

Reference: the same model, in one process, on all 2*B pairs (no gather, no DDP). The
distributed run splits the pairs in two, gathers embeddings with gradients and averages
parameter gradients with DDP; loss and gradients must agree with the reference.
"""

from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from unitune.losses import LearnableScale, unified_loss
from unitune.train.distributed import gather_batch
from unitune.train.loop import ContrastiveStep

WORLD = 2
B = 4  # local batch; the global batch is 8
# Items 3 and 0 have captions on both workers: positives across the split.
IDS = torch.tensor([0, 1, 2, 3, 3, 4, 5, 0])


class ToyEncoder(nn.Module):
    """Linear towers on fixed features, normalised like a DualEncoder."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(6, 5)
        self.text = nn.Linear(7, 5)

    def encode_visual(self, x):
        return nn.functional.normalize(self.visual(x), dim=-1)

    def encode_text(self, input_ids, attention_mask):
        return nn.functional.normalize(self.text(input_ids.float() * attention_mask), dim=-1)


def make_step(learnable: bool) -> ContrastiveStep:
    torch.manual_seed(0)
    return ContrastiveStep(ToyEncoder(), LearnableScale(10.0) if learnable else None)


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2 * B, 6, generator=g), torch.randn(2 * B, 7, generator=g), torch.ones(2 * B, 7)


def loss_of(step_out, ids, mining, gather):
    v, t, gamma = step_out
    if gather:
        v, t, ids = gather_batch(v, t, ids)
    return unified_loss(v @ t.T, margin=0.2, gamma=gamma if gamma is not None else 10.0, mining=mining,
                        topk=3, row_ids=ids, col_ids=ids)["loss"]


def reference(learnable, mining):
    step = make_step(learnable)
    visual, text, mask = batch()
    loss = loss_of(step(visual, text, mask), IDS, mining, gather=False)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in step.named_parameters()}


CASES = [(False, "all"), (True, "hardest"), (True, "topk")]


def worker(rank, init_file):
    # A timeout, so that a collective mismatch fails the test instead of hanging it.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))
    try:
        torch.set_num_threads(1)
        for learnable, mining in CASES:
            check_case(rank, learnable, mining)
        check_order(rank)
    finally:
        dist.destroy_process_group()


def check_case(rank, learnable, mining):
    want_loss, want_grads = reference(learnable, mining)
    step = DistributedDataParallel(make_step(learnable))
    visual, text, mask = batch()
    local = slice(rank * B, (rank + 1) * B)
    loss = loss_of(step(visual[local], text[local], mask[local]), IDS[local], mining, gather=True)
    loss.backward()
    case = f"rank {rank}, learnable={learnable}, mining={mining}"
    torch.testing.assert_close(loss.detach(), want_loss, msg=lambda m: f"{case} loss: {m}")
    for name, p in step.module.named_parameters():
        torch.testing.assert_close(p.grad, want_grads[name], msg=lambda m: f"{case} {name}: {m}")


def check_order(rank):
    v = torch.full((2, 3), float(rank))
    t = torch.full((2, 3), 10.0 + rank)
    ids = torch.tensor([7, 8]) if rank == 0 else torch.tensor([8, 9])
    gv, gt, gids = gather_batch(v, t, ids)
    assert gv[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert gt[:, 0].tolist() == [10.0, 10.0, 11.0, 11.0]
    # Ids are the items' global ids, not offset by rank: item 8 is on both workers.
    assert gids.tolist() == [7, 8, 8, 9]


def test_gathered_loss_and_grads_equal_single_process(tmp_path):
    """One pair of processes (spawning is the slow part) runs every case."""
    mp.spawn(worker, args=(str(tmp_path / "pg"),), nprocs=WORLD, join=True)


def test_gather_without_process_group_is_identity():
    v, t, ids = torch.randn(3, 4), torch.randn(3, 4), torch.arange(3)
    out = gather_batch(v, t, ids)
    assert out[0] is v and out[1] is t and out[2] is ids
