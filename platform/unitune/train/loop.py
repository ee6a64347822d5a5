"""The training loop: one epoch of the unified loss, and retrieval evaluation.

Plain PyTorch, no Ray: ``worker.py`` wraps these for Ray Train and for one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from unitune.eval import coco_protocol, metrics_from_ranks, retrieval_ranks_from_embeddings
from unitune.losses import MiningSchedule, NonFiniteSimilarityError, scheduled_loss
from unitune.ranks import QueryRanks
from unitune.train.distributed import gather_batch

if TYPE_CHECKING:
    from unitune.models.base import DualEncoder


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run cannot continue."""


class ContrastiveStep(nn.Module):
    """What DDP wraps: the dual encoder and, when learnable, the loss scale.

    DDP only synchronises gradients of computations that go through its ``forward``, so
    both towers and the scale are called from here. Putting the scale inside DDP also
    averages its gradient over workers like any other parameter.
    """

    def __init__(self, encoder: DualEncoder, scale: nn.Module | None = None):
        super().__init__()
        self.encoder: DualEncoder = encoder
        self.scale = scale

    def forward(
        self,
        visual: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        visual_prefix: torch.Tensor | None = None,
        video_prefix: torch.Tensor | None = None,
        text_prefix: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> ([B,D], [B,D], gamma or None).

        Visual input: ``visual`` [B,3,H,W] or [B,F,3,H,W], or the feature cache's
        ``visual_prefix`` [B,*S] / ``video_prefix`` [B,F,*S]. Text: ids/mask [B,L], or the
        cache's ``text_prefix`` dict (see ``DualEncoder.text_prefix``).
        """
        if video_prefix is not None:
            v = self.encoder.encode_visual_prefix(video_prefix, video=True)
        elif visual_prefix is not None:
            v = self.encoder.encode_visual_prefix(visual_prefix, video=False)
        elif visual is not None:
            v = self.encoder.encode_visual(visual)
        else:
            raise ValueError("ContrastiveStep: no visual input (visual, visual_prefix or video_prefix)")
        if text_prefix is not None:
            t = self.encoder.encode_text_prefix(text_prefix)
        elif input_ids is not None and attention_mask is not None:
            t = self.encoder.encode_text(input_ids, attention_mask)
        else:
            raise ValueError("ContrastiveStep: no text input (input_ids with attention_mask, or text_prefix)")
        return v, t, (self.scale() if self.scale is not None else None)


def to_device(batch: dict, device: torch.device) -> dict:
    """Every tensor of a (nested) batch dict on ``device``."""
    return {
        k: to_device(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True) for k, v in batch.items()
    }


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
    on_step: Callable[[int, int, int, int], None] | None = None,
) -> dict:
    """Train ``model`` for one pass over ``loader``.

    Args:
        model: a ``ContrastiveStep`` (possibly DDP-wrapped).
        loader: yields ``collate`` batches ``{"visual", "input_ids", "attention_mask",
            "positive_id"}`` of the *local* batch ``B``, or the feature cache's batches
            (``CachedCollator``: prefixes instead of a cached tower's input).
        optimizer, scheduler: stepped once per batch (the schedule is per step).
        loss_cfg: the job's ``LossSpec`` (margin, gamma, mining, topk, warmup_epochs,
            scale_by_gamma); ``gamma`` is ignored when the model returns a learnable one.
        epoch: 1-based epoch number; selects the mining mode (``MiningSchedule``).
        device: where the batch goes.
        grad_clip: max global gradient norm; None or 0 disables clipping.
        precision: ``auto`` | ``fp32`` | ``bf16`` (see :func:`autocast`).
        on_step: called after each step as ``on_step(epoch, step, steps, samples)``
            (1-based step, steps per epoch, pairs trained on so far): a progress bar.

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
    mining = MiningSchedule(loss_cfg.mining, loss_cfg.warmup_epochs, getattr(loss_cfg, "warmup_mining", "all")).at(
        epoch
    )
    # Sums stay on the device; .tolist() at the end is the only read-back of them.
    sums = torch.zeros(4, device=device)
    steps = samples = 0
    total = len(loader) if on_step is not None else 0
    gamma = loss_cfg.gamma
    for batch in loader:
        out, gamma, pairs = _train_step(
            model, batch, optimizer, scheduler, loss_cfg, mining, epoch, steps + 1, device, grad_clip, precision
        )
        sums += torch.stack([out["loss"].detach(), out["pos_sim"], out["hard_neg_sim"], out["violation_frac"]])
        steps += 1
        samples += pairs
        if on_step is not None:
            on_step(epoch, steps, total, samples)
    return _epoch_summary(sums, steps, samples, epoch, optimizer, gamma)


def _train_step(
    model: nn.Module,
    batch: dict,
    optimizer,
    scheduler,
    loss_cfg,
    mining: str,
    epoch: int,
    step: int,
    device: torch.device,
    grad_clip: float | None,
    precision: str,
) -> tuple[dict, float | torch.Tensor, int]:
    """One optimiser step on one local batch -> (the loss's dict, gamma, pairs in the global batch)."""
    inputs = to_device(batch, device)
    ids = inputs.pop("positive_id")
    with autocast(device, precision):
        v, t, learned = model(**inputs)
    # The loss runs in fp32 outside autocast: it is a [N, N] matmul plus logsumexps,
    # cheap next to the towers, and bf16 similarities would blur small margins.
    v, t, ids = gather_batch(v.float(), t.float(), ids)
    gamma = learned if learned is not None else loss_cfg.gamma
    try:  # the loss checks sim for NaN/inf (one host sync per step, not two)
        out = scheduled_loss(
            v @ t.T,
            mining,
            margin=loss_cfg.margin,
            gamma=gamma,
            topk=loss_cfg.topk,
            row_ids=ids,
            col_ids=ids,
            scale_by_gamma=loss_cfg.scale_by_gamma,
        )
    except NonFiniteSimilarityError:
        raise NonFiniteLossError(
            f"similarities became NaN/inf at epoch {epoch}, step {step}: the "
            "model diverged; lower optim.lr or loss.gamma"
        ) from None
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    if grad_clip:
        # Gradients are already averaged over workers (DDP), so every worker clips alike.
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return out, gamma, len(ids)


def _epoch_summary(sums: torch.Tensor, steps: int, samples: int, epoch: int, optimizer, gamma) -> dict:
    """The epoch's means (see :func:`train_one_epoch`); raises on no step or a non-finite loss."""
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
def embed_dataset(
    model: DualEncoder, dataset, *, batch_size: int, device: torch.device, precision: str = "auto", cached=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed every item and every caption of a split.

    Args:
        model: a ``DualEncoder`` (not DDP-wrapped).
        dataset: a ``RetrievalDataset`` (evaluation transform).
        cached: the split's ``unitune.features.CachedSplit`` or None; a tower it caches
            runs only its suffix on the cached prefixes.

    Returns:
        ``(visual [num_items, D], text [num_captions, D])``, fp32 on the CPU.
    """
    model.eval()
    visual = []
    if cached is not None and cached.visual is not None:
        for start in range(0, len(dataset.items), batch_size):
            prefix = cached.visual_prefix(slice(start, start + batch_size)).to(device)
            with autocast(device, precision):
                visual.append(model.encode_visual_prefix(prefix, video=cached.video).float().cpu())
    else:
        items = torch.utils.data.DataLoader(dataset.item_dataset(), batch_size=batch_size, shuffle=False)
        for batch in items:
            with autocast(device, precision):
                visual.append(model.encode_visual(batch["visual"].to(device)).float().cpu())
    text = []
    for start in range(0, len(dataset.captions), batch_size):
        if cached is not None and cached.text is not None:
            indices = range(start, min(start + batch_size, len(dataset.captions)))
            prefix = to_device(cached.text_batch(list(indices)), device)
            with autocast(device, precision):
                text.append(model.encode_text_prefix(prefix).float().cpu())
            continue
        tokens = model.tokenize(dataset.captions[start : start + batch_size])
        with autocast(device, precision):
            text.append(
                model.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)).float().cpu()
            )
    return torch.cat(visual), torch.cat(text)


def evaluate(
    model: DualEncoder,
    dataset,
    *,
    batch_size: int,
    device: torch.device | None = None,
    precision: str = "auto",
    cached=None,
    folds: int = 1,
) -> dict:
    """Retrieval metrics of ``model`` on a split: R@1/5/10 both ways, RSUM, MdR, MnR.

    Args:
        model: a ``DualEncoder``; dataset: a ``RetrievalDataset``; cached: its
            ``CachedSplit`` or None (see :func:`embed_dataset`).
        folds: > 1 adds ``folds_<metric>``, the mean over that many folds of consecutive
            items (``unitune.eval.coco_protocol``: COCO's 1K result for 5 folds of 5K).

    Returns:
        ``unitune.eval.retrieval_metrics`` of the item-caption cosine similarities on all
        items, and the fold means when ``folds > 1``.

    Raises:
        ValueError: ``folds`` does not divide the number of items.
    """
    return _evaluate(model, dataset, batch_size, device, precision, cached, folds)[0]


def evaluate_with_ranks(
    model: DualEncoder,
    dataset,
    *,
    batch_size: int,
    device: torch.device | None = None,
    precision: str = "auto",
    cached=None,
    folds: int = 1,
) -> tuple[dict, QueryRanks]:
    """:func:`evaluate`'s metrics and the split's per-query ranks (all items), from which
    the metrics on all items are computed (``unitune.ranks``)."""
    metrics, (item_ranks, caption_ranks) = _evaluate(model, dataset, batch_size, device, precision, cached, folds)
    return metrics, QueryRanks.from_dataset(dataset, item_ranks, caption_ranks)


def _evaluate(model, dataset, batch_size, device, precision, cached, folds):
    device = device or next(model.parameters()).device
    visual, text = embed_dataset(
        model, dataset, batch_size=batch_size, device=device, precision=precision, cached=cached
    )
    ranks = retrieval_ranks_from_embeddings(visual, text, dataset.caption_to_item, dataset.item_groups)
    metrics = metrics_from_ranks(*ranks)
    if folds > 1:
        protocol = coco_protocol(visual, text, dataset.caption_to_item, dataset.item_groups, num_folds=folds)
        metrics.update({f"folds_{key}": value for key, value in protocol["folds_mean"].items()})
    return metrics, ranks
