"""The training loop: one epoch of the unified loss, and retrieval evaluation.

Plain PyTorch, no Ray: ``worker.py`` wraps these for Ray Train and for one process.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from unitune.eval import retrieval_metrics_from_embeddings
from unitune.losses import MiningSchedule, unified_loss
from unitune.train.distributed import gather_batch


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run cannot continue."""


class ContrastiveStep(nn.Module):
    """What DDP wraps: the dual encoder and, when learnable, the loss scale.

    DDP only synchronises gradients of computations that go through its ``forward``, so
    both towers and the scale are called from here. Putting the scale inside DDP also
    averages its gradient over workers like any other parameter.
    """

    def __init__(self, encoder: nn.Module, scale: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.scale = scale

    def forward(
        self, visual: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``visual`` [B,3,H,W] or [B,F,3,H,W]; ids/mask [B,L] -> ([B,D], [B,D], gamma or None)."""
        v = self.encoder.encode_visual(visual)
        t = self.encoder.encode_text(input_ids, attention_mask)
        return v, t, (self.scale() if self.scale is not None else None)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA (``auto`` or ``bf16``); fp32 elsewhere and for ``fp32``.

    ``auto`` stays fp32 on CPU: CPU bf16 matmuls are slower than fp32 on most machines.
    """
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_cfg,
    epoch: int,
    *,
    device: torch.device,
    grad_clip: float | None = None,
    precision: str = "auto",
) -> dict:
    """Train ``model`` for one pass over ``loader``.

    Args:
        model: a ``ContrastiveStep`` (possibly DDP-wrapped).
        loader: yields ``collate`` batches ``{"visual", "input_ids", "attention_mask",
            "item_id"}`` of the *local* batch ``B``.
        optimizer, scheduler: stepped once per batch (the schedule is per step).
        loss_cfg: the job's ``LossSpec`` (margin, gamma, mining, topk, warmup_epochs,
            scale_by_gamma); ``gamma`` is ignored when the model returns a learnable one.
        epoch: 1-based epoch number; selects the mining mode (``MiningSchedule``).
        device: where the batch goes.
        grad_clip: max global gradient norm; None or 0 disables clipping.
        precision: ``auto`` | ``fp32`` | ``bf16`` (see :func:`autocast`).

    Returns:
        ``{"train_loss", "pos_sim", "hard_neg_sim", "violation_frac", "lr", "gamma",
        "num_samples"}``: means over steps of the global-batch loss and its
        diagnostics, the largest group learning rate after the last step, the gamma of
        the last step, and the number of pairs trained on by all workers together.

    Raises:
        NonFiniteLossError: the mean loss of the epoch is NaN or infinite.
        ValueError: the loader yields no batch.
    """
    model.train()
    mining = MiningSchedule(loss_cfg.mining, loss_cfg.warmup_epochs).at(epoch)
    # Sums stay on the device; .tolist() at the end is the only read-back of them.
    sums = torch.zeros(4, device=device)
    steps = samples = 0
    gamma = loss_cfg.gamma
    for batch in loader:
        visual = batch["visual"].to(device, non_blocking=True)
        input_ids = batch["input_ids"].to(device, non_blocking=True)
        mask = batch["attention_mask"].to(device, non_blocking=True)
        ids = batch["item_id"].to(device, non_blocking=True)

        with autocast(device, precision):
            v, t, learned = model(visual, input_ids, mask)
        # The loss runs in fp32 outside autocast: it is a [N, N] matmul plus logsumexps,
        # cheap next to the towers, and bf16 similarities would blur small margins.
        v, t, ids = gather_batch(v.float(), t.float(), ids)
        sim = v @ t.T
        if not torch.isfinite(sim).all():
            raise NonFiniteLossError(f"similarities became NaN/inf at epoch {epoch}, step {steps + 1}: the "
                                     "model diverged; lower optim.lr or loss.gamma")
        gamma = learned if learned is not None else loss_cfg.gamma
        out = unified_loss(
            sim, margin=loss_cfg.margin, gamma=gamma, mining=mining, topk=loss_cfg.topk,
            row_ids=ids, col_ids=ids, scale_by_gamma=loss_cfg.scale_by_gamma,
        )

        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if grad_clip:
            # Gradients are already averaged over workers (DDP), so every worker clips alike.
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()

        sums += torch.stack([out["loss"].detach(), out["pos_sim"], out["hard_neg_sim"], out["violation_frac"]])
        steps += 1
        samples += len(ids)
    if steps == 0:
        raise ValueError("the training loader yielded no batch (fewer samples than one batch?)")
    loss, pos, neg, viol = (sums / steps).tolist()
    if not torch.isfinite(torch.tensor(loss)):
        raise NonFiniteLossError(
            f"training loss is {loss} at epoch {epoch}: lower optim.lr or loss.gamma, or enable optim.grad_clip"
        )
    return {
        "train_loss": loss,
        "pos_sim": pos,
        "hard_neg_sim": neg,
        "violation_frac": viol,
        "lr": max(group["lr"] for group in optimizer.param_groups),
        "gamma": float(gamma.detach()) if torch.is_tensor(gamma) else float(gamma),
        "num_samples": samples,
    }


@torch.no_grad()
def embed_dataset(model: nn.Module, dataset, *, batch_size: int, device: torch.device,
                  precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Embed every item and every caption of a split.

    Args:
        model: a ``DualEncoder`` (not DDP-wrapped).
        dataset: a ``RetrievalDataset`` (evaluation transform).

    Returns:
        ``(visual [num_items, D], text [num_captions, D])``, fp32 on the CPU.
    """
    model.eval()
    visual = []
    items = torch.utils.data.DataLoader(dataset.item_dataset(), batch_size=batch_size, shuffle=False)
    for batch in items:
        with autocast(device, precision):
            visual.append(model.encode_visual(batch["visual"].to(device)).float().cpu())
    text = []
    for start in range(0, len(dataset.captions), batch_size):
        tokens = model.tokenize(dataset.captions[start:start + batch_size])
        with autocast(device, precision):
            text.append(model.encode_text(tokens["input_ids"].to(device),
                                          tokens["attention_mask"].to(device)).float().cpu())
    return torch.cat(visual), torch.cat(text)


def evaluate(model: nn.Module, dataset, *, batch_size: int, device: torch.device | None = None,
             precision: str = "auto") -> dict:
    """Retrieval metrics of ``model`` on a split: R@1/5/10 both ways, RSUM, MdR, MnR.

    Args:
        model: a ``DualEncoder``; dataset: a ``RetrievalDataset``.

    Returns:
        ``unitune.eval.retrieval_metrics`` of the item-caption cosine similarities.
    """
    device = device or next(model.parameters()).device
    visual, text = embed_dataset(model, dataset, batch_size=batch_size, device=device, precision=precision)
    return retrieval_metrics_from_embeddings(visual, text, dataset.caption_to_item, dataset.item_groups)
