"""The per-worker training function, for Ray Train and for one plain process.

``_fit`` is the whole run of one worker: build data and model, resume, then per epoch
train, evaluate, checkpoint and report. Two thin entry points feed it:

- :func:`train_loop_per_worker` for ``ray.train.torch.TorchTrainer`` (DDP through
  ``prepare_model``/``prepare_data_loader``, report and resume through ``ray.train``);
- :func:`run_training`, the same loop in the calling process with a report callback
  (no Ray import; the search runs its one-worker trials this way).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, DistributedSampler

from unitune.config import JobSpec
from unitune.data import Collator, build_dataset, check_batch_size
from unitune.errors import UserError
from unitune.losses import LearnableScale
from unitune.models import build_model, save_model
from unitune.train.loop import ContrastiveStep, evaluate, train_one_epoch
from unitune.train.optim import build_optimizer, build_scheduler

CHECKPOINT_FILE = "state.pt"
MODEL_DIR = "model"  # inside the last epoch's checkpoint: the trained model, save_model format
# Fault injection for the resume test: rank 0 exits once at the start of this epoch,
# leaving the marker file so that the retried worker does not exit again.
FAULT_EPOCH_ENV = "UNITUNE_FAULT_EPOCH"
FAULT_MARKER_ENV = "UNITUNE_FAULT_MARKER"

Report = Callable[[dict, "str | None"], None]


def save_checkpoint(directory: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically (temp file, then rename)."""
    path = Path(directory) / CHECKPOINT_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        UserError: ``directory`` holds no ``state.pt``.
    """
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"{path}: no unitune checkpoint here")
    return torch.load(path, map_location="cpu", weights_only=True)


def run_training(
    job: JobSpec,
    *,
    report: Report,
    checkpoint_dir: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
    evaluate_test: bool = False,
) -> dict:
    """Train ``job`` in this process: one worker, no Ray, no DDP.

    Args:
        job: the validated job.
        report: called once per epoch as ``report(metrics, checkpoint)``: the flat
            metrics dict (see docs/internals.md "Train") and a directory holding that
            epoch's checkpoint (``state.pt``; after the last epoch also ``model/``).
            Without ``checkpoint_dir`` the directory is temporary: copy it during the
            call if you need it.
        checkpoint_dir: keep the latest checkpoint here (overwritten every epoch).
        resume_from: a checkpoint directory to continue from.
        evaluate_test: evaluate the test split after the last epoch (``test_*`` keys).

    Returns:
        The metrics of the last epoch.

    Raises:
        UserError: bad data or model settings; NonFiniteLossError: the loss diverged.
    """
    use_cuda = job.resources.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    resume = load_checkpoint(resume_from) if resume_from is not None else None
    return _fit(job, rank=0, world_size=1, device=device, report=report, resume=resume,
                checkpoint_dir=checkpoint_dir, evaluate_test=evaluate_test)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker function: ``config = {"job": job.model_dump(mode="json"),
    "evaluate_test": bool}``. Resumes from ``ray.train.get_checkpoint()`` when Ray
    restarts the workers after a failure."""
    import ray.train
    import ray.train.torch

    job = JobSpec.model_validate(config["job"])
    context = ray.train.get_context()
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(directory)

    def report(metrics: dict, directory: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(metrics, checkpoint=ckpt)

    _fit(
        job,
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        report=report,
        resume=resume,
        evaluate_test=bool(config.get("evaluate_test", False)),
        prepare_model=ray.train.torch.prepare_model,
        # Our loader already has its DistributedSampler (seeded by the job); Ray only
        # adds the host-to-device transfer.
        prepare_loader=lambda loader: ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False),
    )


def enable_gradient_checkpointing(encoder: torch.nn.Module, model_name: str) -> int:
    """Turn on activation checkpointing in every backbone that supports it (Hugging Face
    ``PreTrainedModel`` towers): recompute activations in backward to save memory.

    Returns:
        The number of backbones switched.

    Raises:
        UserError: no backbone of the model supports it.
    """
    switched = 0
    for module in encoder.modules():
        if not getattr(module, "supports_gradient_checkpointing", False):
            continue
        # transformers 5 renamed the method; the old name warns and goes away in v6.
        enable = getattr(module, "activation_checkpointing_enable", None) or getattr(
            module, "gradient_checkpointing_enable", None)
        if enable is not None:
            enable()
            switched += 1
    if switched == 0:
        raise UserError(f"train.grad_checkpointing: no tower of model {model_name!r} supports it; set it to false")
    return switched


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch and Python per (epoch, rank): augmentations differ between workers,
    and a resumed run redraws exactly what the uninterrupted run would have drawn, so
    no RNG state needs to travel in the checkpoint."""
    value = seed + 100_003 * epoch + rank
    torch.manual_seed(value)
    random.seed(value)


def _maybe_fault(epoch: int, rank: int) -> None:
    marker = os.environ.get(FAULT_MARKER_ENV)
    if rank == 0 and marker and os.environ.get(FAULT_EPOCH_ENV) == str(epoch) and not os.path.exists(marker):
        Path(marker).write_text(f"worker exited at epoch {epoch}\n")
        os._exit(1)


def _fit(
    job: JobSpec,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    report: Report,
    resume: dict | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    evaluate_test: bool = False,
    prepare_model: Callable = lambda module: module,
    prepare_loader: Callable = lambda loader: loader,
) -> dict:
    """One worker's whole run. Rank 0 evaluates, checkpoints and returns the metrics."""
    if device.type == "cpu":
        # As many threads as the job gives each worker: more threads than cores slow
        # small models down by an order of magnitude on a shared machine.
        torch.set_num_threads(max(1, int(job.resources.cpu_per_worker)))
    # Same seed on every worker: identical initial weights (DDP also broadcasts rank 0's).
    torch.manual_seed(job.seed)
    train_set = build_dataset(job.data, "train", transform=None, train=True)
    check_batch_size(train_set, job.train.batch_size)
    encoder = build_model(job.model, captions=train_set.captions)
    train_set.transform = encoder.image_transform(train=True)
    if job.train.grad_checkpointing:
        enable_gradient_checkpointing(encoder, job.model.name)
    scale = LearnableScale(job.loss.gamma, job.loss.max_gamma) if job.loss.learnable_gamma else None

    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=job.seed, drop_last=True)
    # The collator holds only the tokenizer: a bound encoder.tokenize would pickle the whole
    # model into every DataLoader worker.
    # drop_last: every worker needs the same local batch size for the gather, and a tiny
    # last batch would have too few negatives to be worth a step.
    loader = DataLoader(
        train_set, batch_size=job.train.batch_size // world_size, sampler=sampler, drop_last=True,
        collate_fn=Collator(encoder.tokenizer), num_workers=job.data.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=job.data.num_workers > 0,
    )
    # On the device before the optimiser exists, so that its loaded state lands there too.
    step_module = ContrastiveStep(encoder, scale).to(device)
    optimizer = build_optimizer(encoder, job.optim, scale)
    scheduler = build_scheduler(optimizer, warmup_epochs=job.optim.warmup_epochs,
                                epochs=job.train.epochs, steps_per_epoch=len(loader))
    start_epoch, train_time = 0, 0.0
    if resume is not None:
        encoder.load_state_dict(resume["model"])
        if scale is not None:
            scale.load_state_dict(resume["scale"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start_epoch, train_time = resume["epoch"], resume["train_time_s"]
    step_module = prepare_model(step_module)
    loader = prepare_loader(loader)
    val_set = build_dataset(job.data, "val", transform=encoder.image_transform(train=False),
                            train=False) if rank == 0 else None

    metrics: dict = {}
    for epoch in range(start_epoch + 1, job.train.epochs + 1):
        _maybe_fault(epoch, rank)
        _seed_epoch(job.seed, epoch, rank)
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        stats = train_one_epoch(step_module, loader, optimizer, scheduler, job.loss, epoch, device=device,
                                grad_clip=job.optim.grad_clip, precision=job.train.precision)
        seconds = time.perf_counter() - started
        train_time += seconds
        last = epoch == job.train.epochs
        samples = stats.pop("num_samples")
        metrics = {"epoch": epoch, **stats, "samples_per_s": samples / seconds, "train_time_s": train_time}
        # Evaluation runs on rank 0 only, while the others wait in report() (a barrier):
        # validation splits are a few thousand items, one forward pass each, and the
        # metrics need the whole similarity matrix in one place anyway.
        if rank == 0 and (epoch % job.train.eval_every == 0 or last):
            metrics.update(evaluate(encoder, val_set, batch_size=job.train.eval_batch_size,
                                    device=device, precision=job.train.precision))
        if rank == 0 and last and evaluate_test:
            test_set = build_dataset(job.data, "test",
                                     transform=encoder.image_transform(train=False), train=False)
            test = evaluate(encoder, test_set, batch_size=job.train.eval_batch_size,
                            device=device, precision=job.train.precision)
            metrics.update({f"test_{key}": value for key, value in test.items()})
        metrics["epoch_time_s"] = time.perf_counter() - started
        state = {
            "model": encoder.state_dict(),
            "scale": scale.state_dict() if scale is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "train_time_s": train_time,
        }
        _checkpoint_and_report(report, metrics, state, encoder if last else None, rank, checkpoint_dir)
    return metrics


def _checkpoint_and_report(report: Report, metrics: dict, state: dict, final_model, rank: int,
                           checkpoint_dir: str | os.PathLike | None) -> None:
    """Rank 0 writes the checkpoint (and, after the last epoch, the model); all ranks report."""
    if rank != 0:
        report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="unitune-ckpt-") as tmp:
        directory = Path(checkpoint_dir) if checkpoint_dir is not None else Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        save_checkpoint(directory, state)
        if final_model is not None:
            save_model(final_model, directory / MODEL_DIR)
        report(metrics, str(directory))
