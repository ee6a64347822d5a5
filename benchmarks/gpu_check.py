"""Step cost of the unified loss vs CLIP's cross-entropy on a ViT-B/32-sized CLIP.

    .venv/bin/python benchmarks/gpu_check.py [--steps 300] [--batch 256]
    .venv/bin/python benchmarks/gpu_check.py --steps 3 --batch 8 --warmup 1   # CPU smoke run

The `clip` backbone (unitune's CLIPDualEncoder) around a random-initialised
``CLIPModel(CLIPConfig())`` (the defaults are ViT-B/32: 224 px, patch 32, 12+12 layers,
512-d projection; nothing is downloaded). One fixed random batch stays on the device, so
the rows time compute only: forward under bf16 autocast (CUDA; fp32 on CPU), the loss in
fp32, backward, gradient clipping, AdamW. Baseline: CLIP's symmetric cross-entropy.

Rows:
- ``step``: the benchmark's own step with each loss; ``train_one_epoch``: the real loop
  (unified loss, diagnostics, non-finite check) over the same batches.
- ``loss share``: the loss alone (similarity matmul, loss, its backward) timed on
  embeddings of the same shape, as a fraction of the CE step.
Goal: the unified step within 2% of the CE step at batch 256.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from unitune.config import LossSpec, OptimSpec
from unitune.losses import unified_loss
from unitune.models import model_config
from unitune.models.clip import CLIPDualEncoder
from unitune.train.loop import ContrastiveStep, autocast, train_one_epoch
from unitune.train.optim import build_optimizer, build_scheduler

GAMMA, MARGIN = 1 / 0.07, 0.2


def clip_ce(sim: torch.Tensor, ids: torch.Tensor, mining: str) -> torch.Tensor:
    """CLIP: cross-entropy of gamma * sim against the diagonal, both directions."""
    logits = GAMMA * sim
    target = torch.arange(len(sim), device=sim.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def unified(sim: torch.Tensor, ids: torch.Tensor, mining: str) -> torch.Tensor:
    return unified_loss(sim, margin=MARGIN, gamma=GAMMA, mining=mining, row_ids=ids, col_ids=ids)["loss"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    config = model_config({"name": "clip", "checkpoint": "random-init ViT-B/32 (CLIPConfig defaults)"})
    encoder = CLIPDualEncoder(config, CLIPModel(CLIPConfig()), tokenizer=None)
    step = ContrastiveStep(encoder).to(device)
    optimizer = build_optimizer(encoder, OptimSpec(lr=1e-5, warmup_epochs=0))
    return step, optimizer


def make_batch(batch: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(1)
    text = CLIPConfig().text_config
    return {
        "visual": torch.randn(batch, 3, 224, 224, generator=g).to(device),
        "input_ids": torch.randint(0, text.vocab_size, (batch, text.max_position_embeddings), generator=g).to(device),
        "attention_mask": torch.ones(batch, text.max_position_embeddings, dtype=torch.long, device=device),
        "positive_id": torch.arange(batch, device=device),  # one positive per anchor, as CLIP
    }


def time_steps(loss_fn, mining, args, device, batch) -> float:
    """Seconds per step of forward + fp32 loss + backward + clip + AdamW."""
    step, optimizer = build(device)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync(device)
            started = time.perf_counter()
        with autocast(device, "auto"):
            v, t, _ = step(batch["visual"], batch["input_ids"], batch["attention_mask"])
        loss = loss_fn(v.float() @ t.float().T, batch["positive_id"], mining)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(step.parameters(), 1.0)
        optimizer.step()
    sync(device)
    return (time.perf_counter() - started) / args.steps


def time_loop(args, device, batch) -> float:
    """Seconds per step of the real ``train_one_epoch`` (unified loss, mining all)."""
    step, optimizer = build(device)
    scheduler = build_scheduler(optimizer, warmup_epochs=0, epochs=2, steps_per_epoch=args.warmup + args.steps)
    loss_cfg = LossSpec(margin=MARGIN, gamma=GAMMA)
    train_one_epoch(step, [batch] * args.warmup, optimizer, scheduler, loss_cfg, 1, device=device, grad_clip=1.0)
    sync(device)
    started = time.perf_counter()
    train_one_epoch(step, [batch] * args.steps, optimizer, scheduler, loss_cfg, 1, device=device, grad_clip=1.0)
    sync(device)
    return (time.perf_counter() - started) / args.steps


def time_loss_only(loss_fn, mining, args, device, batch_size) -> float:
    """Seconds of the similarity matmul + loss + its backward on [B, 512] embeddings."""
    g = torch.Generator().manual_seed(2)
    v = F.normalize(torch.randn(batch_size, 512, generator=g), dim=-1).to(device).requires_grad_()
    t = F.normalize(torch.randn(batch_size, 512, generator=g), dim=-1).to(device).requires_grad_()
    ids = torch.arange(batch_size, device=device)
    reps = max(10, args.steps)
    for i in range(args.warmup + reps):
        if i == args.warmup:
            sync(device)
            started = time.perf_counter()
        loss_fn(v @ t.T, ids, mining).backward()
    sync(device)
    return (time.perf_counter() - started) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    batch = make_batch(args.batch, device)

    base = time_steps(clip_ce, "all", args, device, batch)
    rows = [("step", "clip cross-entropy (baseline)", base)]
    for mining in ("all", "hardest"):
        rows.append(("step", f"unified, mining {mining}", time_steps(unified, mining, args, device, batch)))
    rows.append(("train_one_epoch", "unified, mining all", time_loop(args, device, batch)))
    print(f"{name}, ViT-B/32 random init, batch {args.batch}, {args.steps} steps after {args.warmup} warm-up, "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}; loss in fp32")
    print(f"{'what':<16} {'loss':<30} {'ms/step':>9} {'samples/s':>10} {'vs CE':>7}")
    for what, loss, sec in rows:
        print(f"{what:<16} {loss:<30} {sec * 1e3:>9.2f} {args.batch / sec:>10.1f} {sec / base - 1:>+7.1%}")
    print(f"{'loss share':<16} {'loss':<30} {'ms':>9} {'of CE step':>10}")
    for loss, fn, mining in (("clip cross-entropy", clip_ce, "all"), ("unified, mining all", unified, "all"),
                             ("unified, mining hardest", unified, "hardest")):
        sec = time_loss_only(fn, mining, args, device, args.batch)
        print(f"{'loss only':<16} {loss:<30} {sec * 1e3:>9.3f} {sec / base:>10.2%}")


if __name__ == "__main__":
    main()
